"""One invariant checker per fuzz target, shared by the property tests and the harness.

Each ``check_*`` function takes structured input, runs the code under test and raises
``AssertionError`` when an invariant is broken. Exceptions other than the module's
documented error types propagate as they are: for a fuzzer they are crashes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import re
from collections.abc import Sequence
from typing import Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype

from mailserver import address as smtp_address
from mailserver.commands import dnscheck as dns_check
from mailserver.dns import records as dns_records
from mailserver.dns.resolver import DNSAnswer
from mailserver.imap import dates, framing, mime
from mailserver.imap import format as imap_format
from mailserver.imap.commands import COMMAND_NAMES, Append, Command, parse_command, split_tag_and_name
from mailserver.imap.errors import DateError, IMAPError, MailboxNameError, SequenceSetError
from mailserver.imap.fetchitems import Section
from mailserver.imap.lexer import TAG_CHARS
from mailserver.imap.seqset import MAX_NUMBER, SequenceSet
from mailserver.imap.utf7 import decode_mailbox_name, encode_mailbox_name
from mailserver.pipeline import dkim_verify, dmarc, spf
from mailserver.smtp import protocol as smtp

# ============================================================================ SMTP core

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])(.*)")
_ENHANCED = re.compile(rb"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")
# Replies that carry no enhanced status code by design: the greeting (first reply), the
# EHLO answer (RFC 2034 leaves it out), 354 and 334 (a base64 challenge is the text).
_NO_ENHANCED_CODES = {b"354", b"334"}


def smtp_answer(conn: smtp.ServerConnection, event: smtp.Event) -> None:
    """A deterministic application policy: decisions depend only on the event's content, so
    the same input gives the same transcript however it is split."""
    if isinstance(event, smtp.Helo):
        if event.hostname.startswith("bad"):
            conn.reply(550, "5.7.1", "go away")
        elif event.hostname == "close":
            conn.reply(421, "4.3.2", "shutting down")
        else:
            conn.reply(250, "2.0.0", f"hello {event.hostname}")
    elif isinstance(event, smtp.MailFrom):
        if event.address is not None and event.address.local.startswith("deny"):
            conn.reply(550, "5.7.1", "sender refused")
        else:
            conn.reply(250, "2.1.0", "Sender OK")
    elif isinstance(event, smtp.RcptTo):
        if event.address.local.startswith("unknown"):
            conn.reply(550, "5.1.1", "no such user")
        elif event.address.local.startswith("full"):
            conn.reply(452, "4.2.2", "mailbox full")
        else:
            conn.reply(250, "2.1.5", "Recipient OK")
    elif isinstance(event, smtp.MessageReceived):
        if b"REJECT" in event.data:
            conn.reply(554, "5.7.1", "content refused")
        else:
            conn.reply(250, "2.0.0", "Queued")
    elif isinstance(event, smtp.AuthStart):
        if event.initial_response is None:
            conn.reply(334, "", "VXNlcm5hbWU6")
        elif event.initial_response == b"\0user\0pass":
            conn.auth_succeeded("user")
        else:
            conn.reply(535, "5.7.8", "Authentication credentials invalid")
    elif isinstance(event, smtp.AuthResponse):
        if event.response == b"pass":
            conn.auth_succeeded("user")
        elif event.response == b"more":
            conn.reply(334, "", "UGFzc3dvcmQ6")
        else:
            conn.reply(535, "5.7.8", "Authentication credentials invalid")


def _smtp_state(conn: smtp.ServerConnection) -> None:
    """State-machine invariants that hold between any two calls."""
    s = conn.state
    assert isinstance(s, smtp.State)
    tx = conn.transaction
    if s in (smtp.State.CONNECTED, smtp.State.READY, smtp.State.AUTH):
        assert tx.mail_from is None and not tx.recipients and not tx.mail_params, (s, tx)
    if s is smtp.State.MAIL:
        assert not tx.recipients, tx
    if s in (smtp.State.MAIL, smtp.State.RCPT, smtp.State.DATA):
        assert conn.helo_name, "transaction without HELO"
    if s in (smtp.State.RCPT, smtp.State.DATA):
        assert 1 <= len(tx.recipients) <= conn.params.max_recipients, tx
    if s is smtp.State.AUTH:
        assert conn._auth_mechanism is not None and conn.authenticated_as is None
    if conn.authenticated_as is not None:
        assert conn.tls or not conn.params.auth_requires_tls


def _smtp_event(conn: smtp.ServerConnection, event: smtp.Event) -> None:
    """What may be emitted in which state."""
    p = conn.params
    s = conn.state
    if isinstance(event, smtp.MailFrom):
        assert s is smtp.State.READY, s
    elif isinstance(event, smtp.RcptTo):
        assert s in (smtp.State.MAIL, smtp.State.RCPT), s
        assert len(conn.transaction.recipients) < p.max_recipients
    elif isinstance(event, smtp.MessageReceived):
        assert s is smtp.State.RCPT and conn.transaction.recipients, s
        data = event.data
        assert len(data) <= p.max_message_size
        if p.reject_bare_newlines:
            n = data.count(b"\r\n")
            assert data.count(b"\r") == n and data.count(b"\n") == n, "bare CR/LF accepted in DATA"
            assert not data or data.endswith(b"\r\n"), "message does not end with CRLF"
        for line in data.split(b"\n")[:-1]:
            assert len(line) + 1 <= p.max_line_length, "overlong DATA line accepted"
    elif isinstance(event, smtp.AuthStart):
        assert s is smtp.State.READY and event.mechanism in p.auth_mechanisms
        assert conn.tls or not p.auth_requires_tls, "AUTH without TLS"
        assert conn.authenticated_as is None
    elif isinstance(event, smtp.Helo):
        assert event.hostname and " " not in event.hostname


def check_smtp_output(out: bytes, hostname: str) -> None:
    """Every reply: CRLF lines, one code per reply, an enhanced code of the same class."""
    assert out.endswith(b"\r\n") or not out
    lines = out.split(b"\r\n")[:-1]
    reply: list[tuple[bytes, bytes]] = []
    first = True
    for line in lines:
        assert b"\r" not in line and b"\n" not in line, f"bare CR/LF in reply {line!r}"
        m = _REPLY_LINE.fullmatch(line)
        assert m, f"malformed reply line {line!r}"
        code, sep, text = m.groups()
        if reply:
            assert code == reply[0][0], f"code changes inside a multi-line reply: {line!r}"
        reply.append((code, text))
        if sep == b" ":
            is_ehlo = len(reply) > 1 and reply[0][1] == hostname.encode()
            exempt = first or is_ehlo or code in _NO_ENHANCED_CODES
            if not exempt:
                for _c, t in reply:
                    em = _ENHANCED.match(t)
                    assert em, f"reply without an enhanced status code: {code!r} {t!r}"
                    assert em.group(1) == code[:1], f"enhanced code class differs: {code!r} {t!r}"
            reply = []
            first = False
    assert not reply, "unterminated multi-line reply"


def smtp_transcript(params: smtp.ServerParams, chunks: Sequence[bytes]) -> tuple[list[Any], bytes]:
    """Feed the chunks, answer every event, check invariants; -> (events, all output).

    Stops at STARTTLS: what a client pipelines after it is discarded *by design* depending
    on how it arrived, so only the transcript up to there must not depend on the split.
    """
    conn = smtp.ServerConnection(params)
    out = [conn.greeting()]
    events: list[Any] = []
    closed = False
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            _smtp_state(conn)
            if event is smtp.NEED_DATA:
                # Memory bound: less than one line is ever left waiting for its end.
                assert conn.buffered <= params.max_line_length, conn.buffered
                break
            assert event is not smtp.PAUSED, "PAUSED without an outstanding event"
            assert not closed, f"event after ConnectionClosed: {event!r}"
            events.append(event)
            if isinstance(event, smtp.ConnectionClosed):
                closed = True
                assert conn.closed
                continue
            if isinstance(event, smtp.StartTLS):
                out.append(conn.data_to_send())
                events.append("tls")
                check_smtp_output(b"".join(out), params.hostname)
                return events, b"".join(out)
            _smtp_event(conn, event)
            smtp_answer(conn, event)
            _smtp_state(conn)
        out.append(conn.data_to_send())
    result = b"".join(out)
    check_smtp_output(result, params.hostname)
    return events, result


def split(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes (cycled), never empty pieces."""
    out, pos, i = [], 0, 0
    sizes = [max(1, s) for s in sizes] or [len(data) or 1]
    while pos < len(data):
        out.append(data[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    return out


def check_smtp(
    params: smtp.ServerParams, stream: bytes, sizes: Sequence[int], *, bytewise: bool = True
) -> None:
    whole = smtp_transcript(params, [stream])
    pieces = smtp_transcript(params, split(stream, sizes))
    assert pieces == whole, "transcript depends on how the input was split"
    if bytewise and len(stream) <= 4096:
        assert smtp_transcript(params, split(stream, [1])) == whole, "byte-at-a-time transcript differs"


# ============================================================================ address parser

_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def check_address(text: str, *, utf8: bool, allow_empty: bool) -> None:
    try:
        addr = smtp_address.parse_path(text, utf8=utf8, allow_empty=allow_empty)
    except smtp_address.AddressError:
        addr = False  # type: ignore[assignment]
    if addr is not False:
        assert not _CONTROLS.search(text), f"accepted a path with control characters: {text!r}"
    if addr is None:
        assert allow_empty and text == "<>"
    elif addr is not False:
        assert isinstance(addr, smtp_address.Address)
        assert not _CONTROLS.search(addr.local) and addr.local
        assert addr.domain.isascii() and (addr.is_literal or addr.domain == addr.domain.lower())
        if not utf8:
            assert text.isascii() and str(addr).isascii()
        if not addr.is_literal:
            assert smtp_address._DOMAIN.fullmatch(addr.domain), addr.domain
            assert not addr.domain.rsplit(".", 1)[-1].isdigit()
        again = smtp_address.parse_path(f"<{addr}>", utf8=True)
        assert again == addr, f"round trip: {text!r} -> {addr} -> {again}"
        if not utf8:
            assert smtp_address.parse_path(f"<{addr}>", utf8=False) == addr
    try:
        path, params = smtp_address.split_path_and_params(text)
    except smtp_address.AddressError:
        return
    assert path.startswith("<") and path.endswith(">")
    for key in params:
        assert key == key.upper() and key


# ============================================================================ IMAP framer


def _imap_event(conn: framing.IMAPConnection, event: Any, limits: framing.Limits) -> None:
    if isinstance(event, framing.CommandError):
        err = event.error
        assert isinstance(err, IMAPError) and err.status in ("BAD", "NO")
        line = imap_format.error_response(err)
        assert line.endswith(b"\r\n") and b"\r" not in line[:-2] and b"\n" not in line[:-2], line
    elif isinstance(event, framing.CommandReceived):
        cmd = event.command
        assert isinstance(cmd, Command) and cmd.tag and all(b in TAG_CHARS for b in cmd.tag.encode())
        if isinstance(cmd, Append):
            assert len(cmd.message) <= limits.max_literal
    elif isinstance(event, framing.ContinuationRequest):
        assert event.size <= limits.max_literal
        imap_format.tagged(event.tag, "OK", "x")  # the tag must be answerable
    elif isinstance(event, framing.AuthResponse | framing.IdleDone):
        imap_format.tagged(event.tag, "OK", "x")


def imap_transcript(limits: framing.Limits, chunks: Sequence[bytes]) -> list[Any]:
    """Feed the chunks, drive pauses deterministically, check invariants; -> events."""
    conn = framing.IMAPConnection(limits)
    events: list[Any] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            if event is framing.NEED_DATA:
                # Memory bound: whatever is left is less than one line; a command is bounded.
                assert conn.buffered <= limits.max_line_length or conn.closed, conn.buffered
                assert len(conn._cmd) <= limits.command_size
                break
            if event is framing.PAUSED:
                why = conn.paused_for
                events.append(("paused", why))
                if why == "STARTTLS":
                    return events  # plaintext after STARTTLS is dropped by design: stop here
                if why == "IDLE":
                    conn.start_idle()
                elif why == "AUTHENTICATE":
                    last = events[-2]
                    cmd = last.command if isinstance(last, framing.CommandReceived) else None
                    if getattr(cmd, "initial_response", None) is None:
                        conn.continue_authenticate()
                    else:
                        conn.resume()
                elif why == "AUTH-RESPONSE":
                    last = events[-2]
                    if isinstance(last, framing.AuthResponse) and last.data == b"more":
                        conn.continue_authenticate()
                    else:
                        conn.resume()
                else:
                    raise AssertionError(f"paused for {why!r}")
                continue
            events.append(event)
            _imap_event(conn, event, limits)
            if isinstance(event, framing.ConnectionClosed):
                assert conn.closed
                return events
    return events


def check_imap_framer(
    limits: framing.Limits, stream: bytes, sizes: Sequence[int], *, bytewise: bool = True
) -> list[Any]:
    whole = imap_transcript(limits, [stream])
    assert imap_transcript(limits, split(stream, sizes)) == whole, "events depend on the split"
    if bytewise and len(stream) <= 4096:
        assert imap_transcript(limits, split(stream, [1])) == whole, "byte-at-a-time events differ"
    return whole


def check_imap_parser(data: bytes) -> Command | None:
    try:
        cmd = parse_command(data)
    except IMAPError as exc:
        assert exc.status in ("BAD", "NO")
        imap_format.error_response(exc)  # must be formattable: the tag is valid or None
        return None
    assert data.endswith(b"\r\n")
    tag, name = split_tag_and_name(data[:-2])
    assert cmd.tag == tag and cmd.tag
    assert name in COMMAND_NAMES and (cmd.name == name or name == "UID"), (cmd.name, name)
    repr(cmd)
    imap_format.tagged(cmd.tag, "OK", "done")
    return cmd


# ============================================================================ MIME / BODYSTRUCTURE


class _Wire:
    """A strict reader of IMAP response data: lists, NIL, numbers, quoted, literals."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.depth = 0
        self.max_depth = 0

    def value(self) -> Any:
        d, p = self.data, self.pos
        assert p < len(d), "truncated"
        c = d[p]
        if c == 0x28:
            self.pos += 1
            self.depth += 1
            self.max_depth = max(self.max_depth, self.depth)
            items: list[Any] = []
            while True:
                assert self.pos < len(d), "unbalanced parentheses"
                if d[self.pos] == 0x29:
                    self.pos += 1
                    self.depth -= 1
                    return items
                if items:
                    if d[self.pos] == 0x20:
                        self.pos += 1
                        assert d[self.pos : self.pos + 1] not in (b" ", b")"), "double space"
                    else:
                        # body-type-mpart: bodies follow each other without a space
                        assert d[self.pos] == 0x28 and isinstance(items[-1], list), f"junk at {self.pos}"
                items.append(self.value())
        if c == 0x22:
            out = bytearray()
            p += 1
            while True:
                assert p < len(d), "unterminated quoted string"
                b = d[p]
                if b == 0x22:
                    self.pos = p + 1
                    return bytes(out)
                if b == 0x5C:
                    assert d[p + 1 : p + 2] in (b'"', b"\\"), "bad escape in quoted string"
                    out.append(d[p + 1])
                    p += 2
                    continue
                assert b not in (0, 0x0D, 0x0A), "CR/LF/NUL in a quoted string"
                out.append(b)
                p += 1
        if c == 0x7B:
            m = re.compile(rb"\{([0-9]+)\}\r\n").match(d, p)
            assert m, "bad literal"
            n = int(m.group(1))
            start = m.end()
            assert start + n <= len(d), "literal runs past the end"
            self.pos = start + n
            return d[start : start + n]
        m = re.compile(rb"[0-9]+").match(d, p)
        if m:
            self.pos = m.end()
            return int(m.group(0))
        assert d.startswith(b"NIL", p), f"unexpected {d[p : p + 20]!r}"
        self.pos = p + 3
        return None


def parse_wire(data: bytes) -> tuple[Any, int]:
    w = _Wire(data)
    v = w.value()
    assert w.pos == len(data), f"trailing data {data[w.pos : w.pos + 20]!r}"
    return v, w.max_depth


def _nstr(v: Any) -> bool:
    return v is None or isinstance(v, bytes)


def _str_list(v: Any, *, even: bool = False) -> bool:
    return v is None or (
        isinstance(v, list) and v and all(isinstance(x, bytes) for x in v) and (not even or len(v) % 2 == 0)
    )


def _check_envelope(env: Any) -> None:
    assert isinstance(env, list) and len(env) == 10, env
    assert _nstr(env[0]) and _nstr(env[1]) and _nstr(env[8]) and _nstr(env[9])
    for addrs in env[2:8]:
        assert addrs is None or (isinstance(addrs, list) and addrs), addrs
        for a in addrs or []:
            assert isinstance(a, list) and len(a) == 4 and all(_nstr(x) for x in a), a


def _check_ext(ext: list[Any]) -> None:
    disp, lang, loc = ext
    assert disp is None or (
        isinstance(disp, list)
        and len(disp) == 2
        and isinstance(disp[0], bytes)
        and _str_list(disp[1], even=True)
    ), disp
    assert _str_list(lang) and _nstr(loc)


def _check_body(data: bytes, tree: Any, node: mime.MimePart, extended: bool) -> None:
    assert isinstance(tree, list)
    if node.is_multipart:
        bodies = [x for x in tree if isinstance(x, list)]
        n = len(node.children)
        assert n >= 1 and bodies[:n] == tree[:n], tree
        for t, child in zip(tree[:n], node.children, strict=True):
            _check_body(data, t, child, extended)
        rest = tree[n:]
        assert rest[0] == node.subtype
        if extended:
            assert len(rest) == 5 and _str_list(rest[1], even=True), rest
            _check_ext(rest[2:])
        else:
            assert len(rest) == 1
        return
    assert tree[0] == node.type and tree[1] == node.subtype
    assert _str_list(tree[2], even=True) and _nstr(tree[3]) and _nstr(tree[4]) and isinstance(tree[5], bytes)
    assert tree[6] == node.end - node.body_start, "size field differs from the part's octets"
    rest = tree[7:]
    if node.message is not None:
        _check_envelope(rest[0])
        _check_body(data, rest[1], node.message, extended)
        assert rest[2] == data.count(b"\n", node.body_start, node.end)
        rest = rest[3:]
    elif node.type == b"TEXT":
        assert rest[0] == data.count(b"\n", node.body_start, node.end)
        rest = rest[1:]
    if extended:
        assert len(rest) == 4 and _nstr(rest[0]), rest
        _check_ext(rest[1:])
    else:
        assert not rest, rest


def _check_sections(pm: mime.ParsedMessage) -> None:
    data = pm.data

    def visit(node: mime.MimePart, path: tuple[int, ...]) -> None:
        assert pm.part(path) is node, path
        assert pm.section(Section(path)) == data[node.body_start : node.end]
        assert pm.section(Section(path, "MIME")) == data[node.start : node.body_start]
        if node.is_multipart:
            for i, child in enumerate(node.children, 1):
                visit(child, (*path, i))
        elif node.message is not None:
            assert pm.section(Section(path, "TEXT")) == data[node.message.body_start : node.message.end]
            walk(node.message, path)

    def walk(root: mime.MimePart, prefix: tuple[int, ...]) -> None:
        if root.is_multipart:
            for i, child in enumerate(root.children, 1):
                visit(child, (*prefix, i))
        else:
            visit(root, (*prefix, 1))

    walk(pm.root, ())


def check_mime(
    data: bytes, section_paths: Sequence[tuple[int, ...]] = (), fields: Sequence[str] = ()
) -> None:
    pm = mime.ParsedMessage(data)
    for extended in (True, False):
        wire = imap_format.format_value(pm.body_structure(extended=extended))
        tree, depth = parse_wire(wire)
        # Each nesting level (multipart or message/rfc822) adds at most 3 list levels.
        assert depth <= 3 * (mime.MAX_DEPTH + 2) + 3, depth
        _check_body(data, tree, pm.root, extended)
    env, _ = parse_wire(imap_format.format_value(pm.envelope()))
    _check_envelope(env)
    _check_sections(pm)
    for path in section_paths:
        for text in (None, "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            if text == "MIME" and not path:
                continue
            out = pm.section(Section(path, text, tuple(fields) if "FIELDS" in (text or "") else ()))
            assert isinstance(out, bytes)
            if text is None or text in ("HEADER", "TEXT", "MIME"):
                assert out in data
    out = mime.header_fields(pm.header, fields or ["From", "Subject"])
    assert isinstance(out, bytes)
    if out:
        assert out.endswith(b"\r\n")


# ============================================================================ modified UTF-7, seqset, dates


def check_utf7_roundtrip(name: str) -> None:
    try:
        wire = encode_mailbox_name(name)
    except MailboxNameError:
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in name)
        return
    assert wire.isascii() and all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert decode_mailbox_name(wire) == name
    assert decode_mailbox_name(wire.encode("ascii")) == name


def check_utf7_decode(wire: str | bytes) -> None:
    try:
        name = decode_mailbox_name(wire)
    except MailboxNameError:
        return
    text = wire.decode("ascii") if isinstance(wire, bytes) else wire
    assert encode_mailbox_name(name) == text, "accepted a non-canonical spelling"


def check_seqset(text: str | bytes, largest: int) -> None:
    try:
        s = SequenceSet.parse(text)
    except SequenceSetError:
        return
    assert SequenceSet.parse(str(s)) == s
    if s.saved:
        return
    for clamp in (False, True):
        spans = s.resolve(largest, clamp=clamp)
        for (lo, hi), nxt in itertools.pairwise(spans):
            assert lo <= hi < nxt[0] - 1, spans
        for lo, hi in spans:
            assert 1 <= lo <= hi <= max(largest, MAX_NUMBER)
            if clamp:
                assert hi <= largest
        count = s.count(largest, clamp=clamp)
        assert count == sum(hi - lo + 1 for lo, hi in spans)
        if count <= 2000:
            members = list(s.iter(largest, clamp=clamp))
            assert members == sorted(set(members)) and len(members) == count
            for n in members[:50]:
                assert s.contains(n, largest)


def check_dates(text: str) -> None:
    try:
        d = dates.parse_date(text)
    except DateError:
        pass
    else:
        assert dates.parse_date(dates.format_date(d)) == d
    try:
        dt = dates.parse_datetime(text)
    except DateError:
        return
    assert dt.utcoffset() is not None
    again = dates.parse_datetime(dates.format_datetime(dt))
    assert again == dt and again.utcoffset() == dt.utcoffset()


# ============================================================================ DKIM


_DKIM_CODES = {"pass", "fail", "neutral", "temperror", "permerror", "policy"}


def check_dkim_tags(sig_value: bytes, key_record: bytes) -> None:
    sig = dkim_verify._read_signature(0, sig_value)
    if sig.verdict is not None:
        assert sig.verdict[0] in _DKIM_CODES
        return
    assert sig.algorithm in dkim_verify._ACCEPTED_ALGORITHMS and sig.key_name
    verdict = dkim_verify._check_key(sig, key_record)
    assert verdict is None or verdict[0] in _DKIM_CODES


def reference_body_hash(body: bytes, canonicalization: str, limit: int | None) -> bytes:
    """dkimpy's own canonicalization, the reference for our streaming ``body_hash``."""
    import dkim.canonicalization as canon

    algo = canon.Relaxed if canonicalization == "relaxed" else canon.Simple
    body = re.sub(rb"(?<!\r)\n", b"\r\n", body)  # dkimpy's message parser does this
    out = algo.canonicalize_body(body)
    if limit is not None:
        out = out[:limit]
    return hashlib.sha256(out).digest()


def check_dkim_body_hash(body: bytes, canonicalization: str, limit: int | None) -> None:
    data = b"From: a@b.example\r\n\r\n" + body
    start = dkim_verify.body_start(data)
    assert start == 21
    got = dkim_verify.body_hash(data, start, canonicalization, limit)
    assert got == reference_body_hash(body, canonicalization, limit), "body hash differs from dkimpy"


class StubResolver:
    """DNS answers from a dict: ``{(name, type): [txt bytes or address str, ...]}``.

    For the pure parsers under fuzz only: the resolver itself is tested against a real DNS
    server elsewhere (tests/test_resolver.py)."""

    def __init__(self, answers: dict[tuple[str, str], list[Any]]) -> None:
        self.answers = {(k[0].lower().rstrip("."), k[1]): v for k, v in answers.items()}

    def _answer(self, name: Any, rdtype: Any) -> DNSAnswer:
        name = str(name).lower().rstrip(".")
        rdtype = str(rdtype) if not isinstance(rdtype, int) else dns.rdatatype.to_text(rdtype)
        values = self.answers.get((name, rdtype))
        if values is None:
            return DNSAnswer(name, rdtype, (), nxdomain=True)
        recs = []
        for v in values:
            if rdtype in ("TXT", "SPF"):
                chunks = [v[i : i + 255] for i in range(0, len(v), 255)] or [b""]
                recs.append(
                    dns.rdata.from_text(
                        dns.rdataclass.IN,
                        dns.rdatatype.TXT,
                        " ".join(dns_records._escape_txt_chunk(c) for c in chunks),
                    )
                )
            else:
                recs.append(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), v))
        return DNSAnswer(name, rdtype, tuple(recs))

    async def lookup(self, name: Any, rdtype: Any, *, lifetime: float | None = None) -> DNSAnswer:
        return self._answer(name, rdtype)

    def query_from_thread(self, name: Any, rdtype: Any, timeout: float, *, loop: Any = None) -> DNSAnswer:
        return self._answer(name, rdtype)


def check_dkim_message(message: bytes, keys: dict[str, bytes]) -> list[Any]:
    resolver = StubResolver({(name, "TXT"): [value] for name, value in keys.items()})
    results = asyncio.run(dkim_verify.verify_dkim(resolver, message))  # type: ignore[arg-type]
    for r in results:
        assert r.result in _DKIM_CODES, r
        assert isinstance(r.domain, str) and isinstance(r.header_b, str) and len(r.header_b) <= 12
    return results


# ============================================================================ DMARC


def check_dmarc_record(txt: str) -> None:
    try:
        rec = dmarc.parse_dmarc_record(txt)
    except dmarc.DMARCRecordError:
        return
    assert dmarc.is_dmarc_record(txt)
    assert rec.p in ("none", "quarantine", "reject") and rec.sp in (None, "none", "quarantine", "reject")
    assert 0 <= rec.pct <= 100 and rec.adkim in ("r", "s") and rec.aspf in ("r", "s")
    assert isinstance(rec.ri, int) and rec.ri >= 0


def check_from_header(value: bytes) -> None:
    data = b"From: " + value + b"\r\nSubject: x\r\n\r\nbody\r\n"
    try:
        domain = dmarc.author_domain(data)
    except dmarc.FromHeaderError:
        return
    assert domain and dmarc.normalize_domain(domain) == domain
    dmarc.organizational_domain(domain)


# ============================================================================ SPF (our wrapper) and DNS text


_SPF_CODES = {"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"}


@functools.cache
def _dummy_loop() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()  # never run: _dns_lookup only needs one bound


def check_spf(record: bytes, extra: dict[tuple[str, str], list[Any]], ip: str, sender: str, helo: str) -> str:
    answers: dict[tuple[str, str], list[Any]] = {("example.org", "TXT"): [record]}
    answers.update(extra)
    resolver = StubResolver(answers)
    result, explanation = spf._run_bound(resolver, _dummy_loop(), ip, sender, helo, 5.0)  # type: ignore[arg-type]
    assert result in _SPF_CODES | {"ambiguous"}, result
    assert isinstance(explanation, str)
    spf._domain_of(sender)
    spf._helo_is_domain(helo)
    txt = record.decode("utf-8", "replace")
    dns_check.spf_records([txt])
    dns_check.dkim_tags(txt)
    return result


def check_txt_rendering(value: str) -> None:
    """A TXT value written to the zone file reads back (dnspython) as the same strings."""
    rec = dns_records.Record("x.example.", "TXT", value)
    strings = dns_records.txt_strings(value)
    assert all(len(s) <= 255 for s in strings) and b"".join(strings) == value.encode()
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, dns_records.rdata_text(rec))
    assert list(rd.strings) == strings
