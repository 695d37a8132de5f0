"""Hypothesis strategies: grammars of valid protocol input, plus mutations.

Random bytes rarely get past a command parser's first check; these build input that is
valid (or almost valid) so the fuzzer reaches deep states (a DATA phase after EHLO, MAIL,
RCPT; an APPEND literal; a multipart inside a message/rfc822 inside a digest), and then
``mutate`` damages it a few bytes at a time.
"""

from __future__ import annotations

import base64

from hypothesis import strategies as st

from mailserver.imap.framing import Limits
from mailserver.smtp.protocol import ServerParams

# ---------------------------------------------------------------------------- mutations

_INTERESTING = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b".",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r\n.\n",
    b"{5}\r\n",
    b"{5+}\r\n",
    b"{99999999999999999999}\r\n",
    b'"',
    b"\\",
    b"(",
    b")",
    b"<",
    b">",
    b"@",
    b"--",
    b";",
    b"=",
    b"\xff",
    b"\xc3\xa9",
    b"~{3}\r\n",
    b" ",
    b"*",
    b"&",
    b"-",
]


@st.composite
def mutate(draw: st.DrawFn, data: bytes, max_edits: int = 4) -> bytes:
    """``data`` with up to ``max_edits`` insertions, deletions or replacements (often none)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, max_edits))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "dup"]))
        pos = draw(st.integers(0, len(buf)))
        if op == "insert":
            piece = draw(st.one_of(st.sampled_from(_INTERESTING), st.binary(min_size=1, max_size=4)))
            buf[pos:pos] = piece
        elif op == "delete" and buf:
            buf[pos : pos + draw(st.integers(1, 8))] = b""
        elif op == "replace" and pos < len(buf):
            buf[pos] = draw(st.integers(0, 255))
        elif op == "dup" and buf:
            end = min(len(buf), pos + draw(st.integers(1, 40)))
            buf[pos:pos] = buf[pos:end]
    return bytes(buf)


chunk_sizes = st.lists(st.integers(1, 64), min_size=1, max_size=8)

# ---------------------------------------------------------------------------- addresses

_ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
atoms = st.text(_ATEXT, min_size=1, max_size=10)
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)
quoted_locals = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
utf8_locals = st.text(st.sampled_from("éüßжא日本a.b+"), min_size=1, max_size=8)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domains = st.one_of(
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    st.sampled_from(
        [
            "example.org",
            "EXAMPLE.ORG",
            "mx.example",
            "bücher.example",
            "xn--bcher-kva.example",
            "straße.example",
            "\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.org",
            "192.0.2.1",
            "a..b",
            "example.org.",
            "-a.example",
            "[192.0.2.1]",
            "[300.1.1.1]",
            "[IPv6:2001:db8::1]",
            "[IPv6:::ffff:1.2.3.4]",
            "[ipv6:zz]",
            "[001.002.003.004]",
            "a" * 64 + ".example",
            ("a" * 60 + ".") * 5 + "org",
        ]
    ),
)
locals_ = st.one_of(
    dot_atoms,
    quoted_locals,
    utf8_locals,
    st.sampled_from(["postmaster", "a%b", "a!b", "deny", "unknown", "full", "x" * 65, "a..b"]),
)
routes = st.one_of(
    st.just(""), st.lists(domains, min_size=1, max_size=2).map(lambda ds: ",".join("@" + d for d in ds) + ":")
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    """``<local@domain>`` and near misses."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(
            st.sampled_from(
                [
                    "<>",
                    "<Postmaster>",
                    "<postmaster>",
                    "<@>",
                    "<a@>",
                    "<@b>",
                    "a@b",
                    "<a@b",
                    "<a@b>>",
                    '<"a b"@c.example>',
                    '<"a@b"@c.example>',
                    "<a@b@c.example>",
                ]
            )
        )
    text = f"<{draw(routes)}{draw(locals_)}@{draw(domains)}>"
    if kind == 1:
        text = draw(mutate(text.encode("utf-8"), 2)).decode("utf-8", "replace")
    return text


esmtp_params = st.lists(
    st.sampled_from(
        [
            "SIZE=100",
            "SIZE=99999999999",
            "SIZE=²",
            "SIZE",
            "BODY=8BITMIME",
            "BODY=7BIT",
            "BODY=x",
            "SMTPUTF8",
            "SMTPUTF8=1",
            "AUTH=<>",
            "AUTH",
            "RET=FULL",
            "NOTIFY=NEVER",
            "X=",
            "=y",
            "SIZE=1 SIZE=2",
        ]
    ),
    max_size=3,
).map(lambda ps: "".join(" " + p for p in ps))

# ---------------------------------------------------------------------------- SMTP sessions

smtp_params = st.builds(
    ServerParams,
    hostname=st.just("mx.example"),
    max_message_size=st.sampled_from([64, 1000, 25 * 1024 * 1024]),
    max_recipients=st.sampled_from([1, 2, 100]),
    max_line_length=st.sampled_from([24, 80, 2048]),
    max_errors=st.sampled_from([2, 5, 20]),
    tls_available=st.booleans(),
    tls_active=st.booleans(),
    auth_mechanisms=st.sampled_from([(), ("PLAIN", "LOGIN")]),
    auth_requires_tls=st.booleans(),
    reject_bare_newlines=st.booleans(),
)

_DATA_LINES = [
    b"",
    b".",
    b"..",
    b".x",
    b"Subject: hi",
    b"REJECT",
    b"a\rb",
    b"a\nb",
    b"x" * 30,
    b"y" * 100,
    b"\xc3\xa9t\xc3\xa9",
    b" ",
    b"\t",
    b"..\r",
    b"From: a@b",
]


@st.composite
def smtp_data_block(draw: st.DrawFn) -> bytes:
    """DATA, the content (dot-stuffed or not) and an end marker (usually the real one)."""
    lines = draw(st.lists(st.sampled_from(_DATA_LINES), max_size=8))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"]))
    stuff = draw(st.booleans())
    body = b"".join((b"." + ln if stuff and ln.startswith(b".") else ln) + eol for ln in lines)
    end = draw(st.sampled_from([b".\r\n", b".\r\n", b".\r\n", b".\n", b"\n.\n", b"", b"..\r\n.\r\n"]))
    return b"DATA\r\n" + body + end


@st.composite
def smtp_command(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 19))
    helo = st.sampled_from(
        ["client.example", "bad.example", "close", "[192.0.2.1]", "", "a b", "é.example", "x" * 300]
    )
    if kind <= 1:
        line = f"{draw(st.sampled_from(['EHLO', 'HELO', 'ehlo']))} {draw(helo)}"
    elif kind <= 4:
        line = f"MAIL FROM:{draw(paths())}{draw(esmtp_params)}"
    elif kind <= 8:
        line = f"RCPT TO:{draw(paths())}{draw(esmtp_params)}"
    elif kind <= 10:
        return draw(smtp_data_block())
    elif kind == 11:
        auth = draw(
            st.sampled_from(
                [
                    "AUTH PLAIN",
                    "AUTH PLAIN " + base64.b64encode(b"\0user\0pass").decode(),
                    "AUTH PLAIN =",
                    "AUTH PLAIN !!!",
                    "AUTH LOGIN",
                    "AUTH CRAM-MD5",
                    "AUTH",
                    "cGFzcw==",
                    "bW9yZQ==",
                    "*",
                    "Zm9v",
                    "@@",
                ]
            )
        )
        line = auth
    elif kind == 12:
        line = draw(st.sampled_from(["STARTTLS", "STARTTLS x"]))
    else:
        line = draw(
            st.sampled_from(
                [
                    "RSET",
                    "NOOP",
                    "QUIT",
                    "HELP",
                    "VRFY postmaster",
                    "VRFY",
                    "EXPN x",
                    "BDAT 1",
                    "DATA x",
                    "RSET x",
                    "FOO",
                    "",
                    " ",
                    "MAIL",
                    "RCPT",
                    "MAIL TO:<a@b>",
                    "x" * 100,
                    "\xe9",
                    "NOOP \x00",
                ]
            )
        )
    eol = draw(st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\r\n", b""]))
    return line.encode("utf-8", "surrogatepass") + eol


@st.composite
def smtp_session(draw: st.DrawFn) -> bytes:
    """A plausible session (EHLO, transactions, DATA...) with a few mutations."""
    cmds = [b"EHLO client.example\r\n"] if draw(st.booleans()) else []
    if draw(st.booleans()):
        cmds += [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@mx.example>\r\n"]
    cmds += draw(st.lists(smtp_command(), max_size=10))
    return draw(mutate(b"".join(cmds), 3))


# ---------------------------------------------------------------------------- IMAP commands

imap_limits = st.sampled_from(
    [
        Limits(),
        Limits(
            max_line_length=64, max_literal=200, max_small_literal=40, max_command_size=400, max_discard=300
        ),
        Limits(
            max_line_length=32, max_literal=20, max_small_literal=10, max_command_size=100, max_discard=50
        ),
    ]
)
tags = st.one_of(
    st.sampled_from(["a1", "A001", "*", "+", "a+b", "t]", "", "x" * 40]),
    st.text("abcdefgh0123456789.", min_size=1, max_size=6),
)


@st.composite
def astring(draw: st.DrawFn) -> bytes:
    text = draw(
        st.one_of(
            st.text("abcXYZ019._-/&", min_size=1, max_size=8),
            st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF), max_size=8),
            st.sampled_from(["INBOX", "inbox", "NIL", "", "&AOk-", "&-", "a b", 'q"uote', "back\\slash"]),
        )
    )
    raw = text.encode("utf-8", "surrogatepass")
    form = draw(st.integers(0, 3))
    if form == 0 and raw and all(c not in b'(){ %*"\\\r\n\0' and 0x20 < c < 0x7F for c in raw):
        return raw
    if form <= 1 and not any(c in b"\r\n\0" for c in raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    plus = draw(st.sampled_from([b"", b"+"]))
    return b"{%d%s}\r\n" % (len(raw), plus) + raw


seqsets = st.one_of(
    st.sampled_from(
        ["1", "*", "1:*", "$", "1,3:5,7", "4294967295", "0", "1:", "4294967296", "2:1", "*:*", ",", "1,,2"]
    ),
    st.lists(st.tuples(st.integers(1, 50), st.integers(1, 50)), min_size=1, max_size=4).map(
        lambda rs: ",".join(f"{a}:{b}" if a != b else str(a) for a, b in rs)
    ),
)
flags = st.lists(
    st.sampled_from(
        [
            "\\Seen",
            "\\Answered",
            "\\Flagged",
            "\\Deleted",
            "\\Draft",
            "\\Recent",
            "$Junk",
            "keyword",
            "\\Bogus",
            "\\*",
        ]
    ),
    max_size=4,
).map(lambda fs: "(" + " ".join(fs) + ")")
sections = st.sampled_from(
    [
        "",
        "1",
        "1.2",
        "HEADER",
        "TEXT",
        "1.MIME",
        "MIME",
        "2.HEADER.FIELDS (From To)",
        "HEADER.FIELDS.NOT (Subject)",
        "HEADER.FIELDS ()",
        "1.2.3.4.5",
        "0",
        "1.",
        ".1",
        "x",
    ]
)
fetch_atts = st.one_of(
    st.sampled_from(
        [
            "FLAGS",
            "UID",
            "INTERNALDATE",
            "RFC822.SIZE",
            "ENVELOPE",
            "BODYSTRUCTURE",
            "BODY",
            "RFC822",
            "RFC822.HEADER",
            "RFC822.TEXT",
            "MODSEQ",
            "ALL",
            "FAST",
            "FULL",
            "BINARY.SIZE[1]",
            "BOGUS",
        ]
    ),
    st.builds(
        lambda n, s, p: f"{n}[{s}]{p}",
        st.sampled_from(["BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK"]),
        sections,
        st.sampled_from(["", "<0.10>", "<5.0>", "<1>"]),
    ),
)
fetch_items = st.one_of(
    fetch_atts, st.lists(fetch_atts, min_size=1, max_size=4).map(lambda a: "(" + " ".join(a) + ")")
)
search_atoms = st.sampled_from(
    [
        "ALL",
        "SEEN",
        "UNSEEN",
        "NEW",
        "OLD",
        "RECENT",
        "DELETED",
        "FLAGGED",
        "ANSWERED",
        "DRAFT",
        "UNDRAFT",
        "FROM alice",
        'SUBJECT "hi there"',
        "BODY x",
        "TEXT {3}\r\nabc",
        "BEFORE 1-Feb-1994",
        "SINCE 31-Dec-2020",
        'SENTON "1-Jan-2000"',
        "ON 32-Jan-2000",
        "HEADER X-Spam yes",
        "KEYWORD $Junk",
        "LARGER 100",
        "SMALLER 99999999999",
        "UID 1:*",
        "1,2",
        "MODSEQ 5",
        'MODSEQ "/flags/\\\\Seen" all 3',
        "CHARSET UTF-8",
        "BOGUS",
    ]
)


@st.composite
def search_keys(draw: st.DrawFn, depth: int = 0) -> str:
    if depth >= 3:
        return draw(search_atoms)
    k = draw(st.integers(0, 5))
    if k == 0:
        return "NOT " + draw(search_keys(depth + 1))
    if k == 1:
        return f"OR {draw(search_keys(depth + 1))} {draw(search_keys(depth + 1))}"
    if k == 2:
        return "(" + " ".join(draw(st.lists(search_keys(depth + 1), min_size=1, max_size=3))) + ")"
    return draw(search_atoms)


@st.composite
def imap_command(draw: st.DrawFn) -> bytes:
    tag = draw(tags).encode()
    a = astring
    k = draw(st.integers(0, 22))
    if k == 0:
        body = b"LOGIN " + draw(a()) + b" " + draw(a())
    elif k == 1:
        mode = draw(
            st.sampled_from(
                [
                    "",
                    " (CONDSTORE)",
                    " (QRESYNC (1 2))",
                    " (QRESYNC (67890007 20050715194045000 41,43:211 (1,3:5 1,3:5)))",
                    " (QRESYNC (0 1))",
                    " (BOGUS)",
                    " ()",
                ]
            )
        )
        body = draw(st.sampled_from([b"SELECT ", b"EXAMINE "])) + draw(a()) + mode.encode()
    elif k == 2:
        body = draw(
            st.sampled_from([b"CREATE ", b"DELETE ", b"SUBSCRIBE ", b"UNSUBSCRIBE ", b"GETQUOTAROOT "])
        ) + draw(a())
    elif k == 3:
        body = b"RENAME " + draw(a()) + b" " + draw(a())
    elif k == 4:
        sel = draw(st.sampled_from(["", "(SPECIAL-USE) ", "(SUBSCRIBED RECURSIVEMATCH) ", "() "]))
        pats = draw(st.sampled_from(["*", "%", '""', "INBOX.*", '("a" "b*")', "{1}\r\n*"]))
        ret = draw(
            st.sampled_from(
                [
                    "",
                    " RETURN (CHILDREN)",
                    " RETURN (STATUS (MESSAGES UNSEEN))",
                    " RETURN ()",
                    " RETURN (SPECIAL-USE SUBSCRIBED)",
                ]
            )
        )
        body = b"LIST " + sel.encode() + draw(a()) + b" " + pats.encode() + ret.encode()
    elif k == 5:
        body = b"LSUB " + draw(a()) + b" " + draw(a())
    elif k == 6:
        items = draw(
            st.sampled_from(
                ["(MESSAGES)", "(UIDNEXT UNSEEN HIGHESTMODSEQ SIZE)", "()", "(BOGUS)", "MESSAGES"]
            )
        )
        body = b"STATUS " + draw(a()) + b" " + items.encode()
    elif k == 7:
        msg = draw(st.binary(max_size=60)) if draw(st.booleans()) else b"From: a@b\r\n\r\nhello\r\n"
        fl = (" " + draw(flags)) if draw(st.booleans()) else ""
        date = draw(
            st.sampled_from(
                [
                    "",
                    ' "17-Jul-1996 02:44:25 -0700"',
                    ' " 1-Jan-2000 00:00:00 +0000"',
                    ' "31-Feb-2000 00:00:00 +0000"',
                    ' "1-Jan-2000 25:00:00 +9999"',
                ]
            )
        )
        lit = draw(st.sampled_from([b"{%d}", b"{%d+}", b"~{%d}"])) % len(msg)
        body = b"APPEND " + draw(a()) + fl.encode() + date.encode() + b" " + lit + b"\r\n" + msg
    elif k == 8:
        prefix = draw(st.sampled_from(["", "UID "]))
        mods = draw(st.sampled_from(["", " (CHANGEDSINCE 5)", " (CHANGEDSINCE 5 VANISHED)", " (BOGUS)"]))
        body = f"{prefix}FETCH {draw(seqsets)} {draw(fetch_items)}{mods}".encode()
    elif k == 9:
        prefix = draw(st.sampled_from(["", "UID "]))
        mods = draw(st.sampled_from(["", " (UNCHANGEDSINCE 3)"]))
        op = draw(st.sampled_from(["FLAGS", "+FLAGS", "-FLAGS.SILENT", "FLAGS.SILENT", "BOGUS"]))
        body = f"{prefix}STORE {draw(seqsets)}{mods} {op} {draw(flags)}".encode()
    elif k == 10:
        prefix = draw(st.sampled_from(["", "UID "]))
        body = f"{prefix}{draw(st.sampled_from(['COPY', 'MOVE']))} {draw(seqsets)} ".encode() + draw(a())
    elif k == 11:
        prefix = draw(st.sampled_from(["", "UID "]))
        ret = draw(st.sampled_from(["", "RETURN (MIN MAX COUNT) ", "RETURN () ", "RETURN (ALL SAVE) "]))
        cs = draw(st.sampled_from(["", "CHARSET UTF-8 ", "CHARSET KOI8-R "]))
        body = f"{prefix}SEARCH {ret}{cs}{draw(search_keys())}".encode()
    elif k == 12:
        body = b"UID EXPUNGE " + draw(seqsets).encode()
    elif k == 13:
        body = b"ENABLE " + draw(st.sampled_from([b"CONDSTORE", b"QRESYNC UTF8=ACCEPT", b"", b"X"]))
    elif k == 14:
        body = b"ID " + draw(st.sampled_from([b"NIL", b'("name" "client" "version" NIL)', b"()", b'("a")']))
    elif k == 15:
        ir = draw(st.sampled_from(["", " " + base64.b64encode(b"\0user\0pass").decode(), " =", " !!"]))
        body = b"AUTHENTICATE " + draw(st.sampled_from([b"PLAIN", b"LOGIN", b"XOAUTH2"])) + ir.encode()
        tail = draw(st.lists(st.sampled_from([b"bW9yZQ==", b"cGFzcw==", b"*", b"!!!", b""]), max_size=3))
        return tag + b" " + body + b"\r\n" + b"".join(t + b"\r\n" for t in tail)
    elif k == 16:
        done = draw(st.sampled_from([b"DONE\r\n", b"done\r\n", b"NOOP\r\n", b"DONE {5+}\r\nabcde\r\n", b""]))
        return tag + b" IDLE\r\n" + done
    else:
        body = draw(
            st.sampled_from(
                [
                    b"CAPABILITY",
                    b"NOOP",
                    b"LOGOUT",
                    b"CHECK",
                    b"CLOSE",
                    b"UNSELECT",
                    b"EXPUNGE",
                    b"NAMESPACE",
                    b"STARTTLS",
                    b"NOOP x",
                    b"BOGUS",
                    b"",
                    b"FETCH",
                    b"UID",
                    b"UID BOGUS 1",
                ]
            )
        )
    eol = draw(st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b""]))
    return tag + b" " + body + eol


@st.composite
def imap_stream(draw: st.DrawFn) -> bytes:
    cmds = draw(st.lists(imap_command(), min_size=1, max_size=6))
    return draw(mutate(b"".join(cmds), 3))


# ---------------------------------------------------------------------------- MIME messages

addr_values = st.sampled_from(
    [
        b"alice@example.org",
        b"Alice <alice@example.org>",
        b'"Smith, Bob" <bob@example.org>',
        b"a@b (Ann)",
        b"undisclosed-recipients:;",
        b"team: a@b, c@d;",
        b"=?utf-8?q?Caf=C3=A9?= <c@example.org>",
        b"<@route:x@y>",
        b"no-at-sign",
        b"a@b, , c@d",
        b"(comment only)",
        b'"unterminated <x@y>',
        b"<>",
        b"a@[192.0.2.1]",
        b"\xc3\xa9@x",
        b"g: ;",
        b"x@y,",
        b"@",
        b'"\\\\"@x',
        b"a@b\r\n c@d",
    ]
)
ctype_values = st.sampled_from(
    [
        b"text/plain",
        b"text/plain; charset=utf-8",
        b'TEXT/HTML; CHARSET="iso-8859-1"',
        b"image/png; name=a.png",
        b"application/octet-stream; name*=utf-8''%C3%A9t%C3%A9.pdf",
        b"application/pdf; name*0=a; name*1=b.pdf",
        b"text/plain; a*0*=us-ascii'en'x; a*1*=%41",
        b"text/plain; (comment) charset=us-ascii",
        b"bogus",
        b"",
        b"text/; x=",
        b"text/plain; ;;",
        b'x/y; a="unterminated',
        b"message/rfc822",
        b"message/partial; id=x",
        b"message/global",
        b"text/plain; name*=''",
        b"text/plain; name*=bogus%zz",
        b"text/plain; name*0*=utf-8''%E9",
    ]
)
disp_values = st.sampled_from(
    [
        b"attachment; filename=a.txt",
        b"inline",
        b"attachment; filename*=utf-8''%E2%82%AC",
        b"",
        b";",
        b'attachment; size=5; creation-date="x"',
    ]
)
cte_values = st.sampled_from(
    [b"base64", b"quoted-printable", b"7bit", b"8BIT", b"binary", b"x-uuencode", b"(c) base64", b""]
)
other_headers = st.sampled_from(
    [
        (b"Subject", b"Hello =?utf-8?b?w6k=?="),
        (b"Date", b"Mon, 1 Jan 2024 00:00:00 +0000"),
        (b"Message-ID", b"<x@y>"),
        (b"In-Reply-To", b"<a@b> <c@d>"),
        (b"Content-ID", b"<part1@x>"),
        (b"Content-Description", b"a part"),
        (b"Content-Language", b"en, de"),
        (b"Content-Location", b"http://x/y"),
        (b"Content-MD5", b"abc=="),
        (b"X-Long", b"folded\r\n\tcontinued"),
        (b"Subject", b"\xff\xfe 8-bit"),
        (b"Subject", b""),
    ]
)
addr_header_names = st.sampled_from([b"From", b"To", b"Cc", b"Bcc", b"Reply-To", b"Sender"])


@st.composite
def header_block(draw: st.DrawFn, ctype: bytes | None) -> bytes:
    fields: list[tuple[bytes, bytes]] = []
    if ctype is not None:
        fields.append((draw(st.sampled_from([b"Content-Type", b"content-type", b"CONTENT-TYPE"])), ctype))
    fields += draw(
        st.lists(
            st.one_of(
                st.tuples(addr_header_names, addr_values),
                st.tuples(st.just(b"Content-Type"), ctype_values),
                st.tuples(st.just(b"Content-Disposition"), disp_values),
                st.tuples(st.just(b"Content-Transfer-Encoding"), cte_values),
                other_headers,
            ),
            max_size=4,
        )
    )
    draw(st.randoms()).shuffle(fields)
    return b"".join(n + b": " + v + b"\r\n" for n, v in fields)


@st.composite
def mime_entity(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A header block, a blank line and a body: text, multipart, or message/rfc822."""
    kind = draw(st.integers(0, 4)) if depth < 3 else 0
    if kind <= 1:
        body = draw(
            st.sampled_from([b"", b"hello\r\n", b"line1\r\nline2", b"\r\n\r\n", b"--b\r\n", b"x" * 100])
        )
        return draw(header_block(draw(st.sampled_from([None, b"text/plain", b"image/png"])))) + b"\r\n" + body
    if kind <= 3:
        boundary = draw(st.sampled_from([b"b", b"frontier", b"a b", b"=_x", b"b" * 70, b"x-y.z"]))
        sub = draw(st.sampled_from([b"mixed", b"alternative", b"digest", b"related"]))
        q = draw(st.booleans())
        bparam = b'"' + boundary + b'"' if q or b" " in boundary else boundary
        ctype = b"multipart/" + sub + b"; boundary=" + bparam
        children = draw(st.lists(mime_entity(depth + 1), max_size=3))
        preamble = draw(st.sampled_from([b"", b"This is MIME.\r\n"]))
        close = draw(
            st.sampled_from([b"--" + boundary + b"--\r\n", b"", b"--" + boundary + b"-- trailing\r\n"])
        )
        epilogue = draw(st.sampled_from([b"", b"epilogue\r\n"]))
        body = (
            preamble + b"".join(b"--" + boundary + b"\r\n" + c + b"\r\n" for c in children) + close + epilogue
        )
        return draw(header_block(ctype)) + b"\r\n" + body
    inner = draw(mime_entity(depth + 1))
    return draw(header_block(b"message/rfc822")) + b"\r\n" + inner


@st.composite
def mime_message(draw: st.DrawFn) -> bytes:
    data = draw(mime_entity())
    if draw(st.booleans()):
        data = data.replace(b"\r\n", b"\n")
    return draw(mutate(data, 3))


section_paths = st.lists(st.lists(st.integers(1, 4), max_size=4).map(tuple), max_size=3)
field_names = st.lists(
    st.sampled_from(["From", "to", "Subject", "X-Long", "Content-Type", "Nope"]), max_size=3
)

# ---------------------------------------------------------------------------- DKIM / DMARC / SPF

b64 = st.binary(min_size=0, max_size=40).map(lambda b: base64.b64encode(b))


@st.composite
def dkim_signature(draw: st.DrawFn) -> bytes:
    tags = {
        b"v": draw(st.sampled_from([b"1", b"2", b""])),
        b"a": draw(st.sampled_from([b"rsa-sha256", b"ed25519-sha256", b"rsa-sha1", b"RSA-SHA256", b"x"])),
        b"c": draw(
            st.sampled_from([b"relaxed/relaxed", b"simple", b"relaxed/simple", b"simple/bogus", b"a/b/c"])
        ),
        b"d": draw(st.sampled_from([b"example.org", b"EXAMPLE.org.", b"", b"\xc3\xa9.example", b"a..b"])),
        b"s": draw(st.sampled_from([b"sel", b"s1", b"", b"a.b"])),
        b"h": draw(st.sampled_from([b"from:to:subject", b"From", b"", b"to"])),
        b"bh": draw(b64),
        b"b": draw(b64),
        b"l": draw(st.sampled_from([b"10", b"-1", b"x", b"99999999999999999999"])),
        b"t": draw(st.sampled_from([b"1", b"x"])),
        b"x": draw(st.sampled_from([b"2", b"9999999999"])),
    }
    keep = draw(st.lists(st.sampled_from(sorted(tags)), unique=True, min_size=0, max_size=len(tags)))
    keep = sorted(set(keep) | {b"v", b"a", b"b", b"bh", b"d", b"h", b"s"}) if draw(st.booleans()) else keep
    sep = draw(st.sampled_from([b"; ", b";", b";\r\n\t", b" ; "]))
    return draw(mutate(sep.join(k + b"=" + tags[k] for k in keep), 3))


@st.composite
def dkim_key_record(draw: st.DrawFn, keys: dict[str, bytes]) -> bytes:
    p = draw(st.sampled_from([keys["rsa"], keys["rsa512"], keys["ed25519"], b"", b"AAAA", b"!!!"]))
    parts = [b"v=DKIM1"] if draw(st.booleans()) else []
    parts.append(b"k=" + draw(st.sampled_from([b"rsa", b"ed25519", b"dsa", b""])))
    if draw(st.booleans()):
        parts.append(b"h=" + draw(st.sampled_from([b"sha256", b"sha1", b"sha1:sha256", b""])))
    if draw(st.booleans()):
        parts.append(b"s=" + draw(st.sampled_from([b"email", b"*", b"other"])))
    if draw(st.booleans()):
        parts.append(b"t=y")
    parts.append(b"p=" + p)
    return draw(mutate(b"; ".join(parts), 2))


dkim_bodies = st.lists(
    st.sampled_from([b"", b"a", b" ", b"\t", b"a  b", b"a \t b ", b"\r\n", b"\n", b"\r", b"x" * 30]),
    max_size=12,
).map(b"".join)


@st.composite
def dmarc_record(draw: st.DrawFn) -> str:
    tags = draw(
        st.lists(
            st.sampled_from(
                [
                    "p=reject",
                    "p=quarantine",
                    "p=none",
                    "p=bogus",
                    "sp=none",
                    "sp=x",
                    "pct=50",
                    "pct=101",
                    "pct=²",
                    "pct=-1",
                    "pct=",
                    "adkim=s",
                    "adkim=r",
                    "adkim=x",
                    "aspf=s",
                    "rua=mailto:a@b.example",
                    "rua=mailto:a@b!10m,mailto:c@d",
                    "rua=bogus",
                    "ruf=mailto:x@y",
                    "fo=1:d",
                    "fo=x",
                    "rf=afrf",
                    "ri=3600",
                    "ri=²",
                    "ri=x",
                    "x=y",
                    "=x",
                    "p",
                    "P=REJECT",
                    "v=DMARC1",
                ]
            ),
            max_size=6,
        )
    )
    head = draw(
        st.sampled_from(["v=DMARC1", "v = DMARC1", "v=dmarc1", "v=DMARC1 ", " v=DMARC1", "v=DMARC2", ""])
    )
    sep = draw(st.sampled_from(["; ", ";", " ;  "]))
    text = sep.join([head, *tags]) + draw(st.sampled_from(["", ";", ";;"]))
    return draw(mutate(text.encode("utf-8"), 2)).decode("utf-8", "replace")


@st.composite
def from_value(draw: st.DrawFn) -> bytes:
    items = draw(st.lists(addr_values, min_size=0, max_size=3))
    return draw(mutate(b", ".join(items), 3))


spf_terms = st.sampled_from(
    [
        "ip4:192.0.2.0/24",
        "ip4:192.0.2.1",
        "ip4:1.2.3.4/33",
        "ip6:2001:db8::/32",
        "ip6:::1/129",
        "a",
        "a:mx.example.org",
        "a/24",
        "a//64",
        "mx",
        "mx:example.org/24",
        "ptr",
        "include:inc.example.org",
        "exists:%{i}.ex.example.org",
        "exists:%{ir}.%{l1r+-}._spf.%{d}",
        "redirect=red.example.org",
        "exp=exp.example.org",
        "-all",
        "~all",
        "?all",
        "+all",
        "all",
        "%{x}",
        "a:%{",
        "ip4:",
        "include:",
        "bogus:x",
        "v=spf1",
        "redirect=%{d2}",
        "exists:%{s}",
        "-include:%{h}",
        "a:-",
        "unknown-mod=x",
        "ip4:192.0.2.300",
    ]
)


@st.composite
def spf_record(draw: st.DrawFn) -> bytes:
    head = draw(st.sampled_from(["v=spf1", "V=SPF1", "v=spf1 ", "v=spf10", "spf2.0/pra"]))
    terms = draw(st.lists(spf_terms, max_size=6))
    text = " ".join([head, *terms])
    return draw(mutate(text.encode(), 2))


spf_extra = st.fixed_dictionaries(
    {},
    optional={
        ("inc.example.org", "TXT"): st.lists(spf_record(), max_size=2),
        ("red.example.org", "TXT"): st.lists(spf_record(), max_size=2),
        ("mx.example.org", "A"): st.just(["192.0.2.1"]),
        ("example.org", "A"): st.just(["192.0.2.2"]),
        ("example.org", "MX"): st.just(["10 mx.example.org."]),
        ("exp.example.org", "TXT"): st.just([b"denied %{i} for %{s}"]),
    },
)
