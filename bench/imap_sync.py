"""IMAP benchmark: what a mail client's first and later syncs of a big INBOX cost, and
what an idle IMAP connection costs in memory. Dovecot's figures on the same kind of
2-core machine are printed beside ours.

    python bench/imap_sync.py                          # M = 10,000 messages, N = 1000 IDLEs
    python bench/imap_sync.py --count 100000           # the big-folder case
    python bench/imap_sync.py --connections 0          # skip the memory phase
    python bench/imap_sync.py --profile /tmp/f.txt     # py-spy the warm header FETCH
    python bench/imap_sync.py --profile /tmp/s.txt --profile-command "UID SEARCH SUBJECT quokka" \
        --profile-repeat 20                            # py-spy any warm command

Steps (one real ``pymaild run`` subprocess, IMAPS on 127.0.0.1, a throwaway CA):

1. fill: M realistic messages (2-50 KB: plain text, multipart/alternative text+HTML,
   ~7 % multipart/mixed with a base64 attachment; Received, DKIM-Signature, From, To,
   Cc, Subject, Date, Message-ID, References, In-Reply-To, Content-Type ...; fixed seed)
   written with MaildirWriter(fsync=False) into new/ of one account's INBOX before the
   daemon ever sees it. The fill check (``--skip-fill-check`` skips it) stats every file
   against its ``S=`` size and parses a sample of 1000 with the email package.
2. sync, with one raw blocking IMAPS client that reads responses (literals included)
   up to the tagged line and keeps them for checking afterwards, off the clock:

   session 1, "cold" (fresh daemon, folder never indexed or cached):
     LOGIN + SELECT INBOX            (the index is built: new/ -> cur/)
     UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Subject
       Date Message-ID References In-Reply-To Content-Type)])   (Thunderbird's)
     UID SEARCH TEXT "zanzibar"      (a word in ~1 % of the bodies)
     UID SEARCH SUBJECT "quokka"     (a word in ~1 % of the subjects)
     UID FETCH <100 random uids> BODY.PEEK[]
   session 2, "warm" (a new session, same daemon): the same, then
     STORE 1:* +FLAGS.SILENT (\\Seen), UID SEARCH UNSEEN, STORE 1:* -FLAGS.SILENT (\\Seen),
     STORE 1:* +FLAGS (\\Seen)  (non-silent: M untagged FETCH responses)
   session 3, "restart" (the daemon restarted: index and cache files on disk, nothing in
     memory): LOGIN + SELECT and the header FETCH again.

   Every answer is checked: EXISTS = M, one FETCH per message with the right size and
   Message-ID, the same headers cold and warm, the exact SEARCH hits, body CRCs.
   The page cache is warm throughout (the files were just written): "cold" means
   pymaild's index and header cache, not the disk. Dirty pages are written back
   (os.sync) before each server's sitting. Cold commands run once; warm and restart ones
   (and the STORE set/clear cycle) ``--repeat`` times (default 3), the median shown.
3. memory: the daemon restarted, N IMAPS connections (5 per account over N/5 small
   accounts of 20 messages each, as Thunderbird keeps ~5 per account) each do LOGIN,
   SELECT INBOX, IDLE; the daemon's RSS and PSS (/proc/<pid>/smaps_rollup) before and
   after give KiB per idle connection. Then DONE + LOGOUT on all, and the memory after.

First figures (2-core machine, seconds; Dovecot in brackets), before any tuning:

    M                      10,000              100,000
    LOGIN+SELECT cold      0.45-0.58 [0.03]    6.6   [0.25]
    LOGIN+SELECT warm      0.11-0.19 [0.03]    1.9   [0.25]
    header FETCH cold      2.9-4.9   [0.27]    35.8  [2.8]
    header FETCH warm      1.0-1.1   [0.04]    8.8   [0.42]
    SEARCH TEXT            10-16               148-151
    SEARCH SUBJECT         1.0-2.1             22-23
    STORE +FLAGS.SILENT    0.47-0.68 [0.14]    7.4   [1.5]
    memory per idle IDLE connection: ~169 KiB RSS/PSS [Dovecot ~500, target <= 50]

Server errors (a non-OK answer, a wrong answer, a dead connection, a timeout) are
reported with the command, the answer and the daemon's log tail; the run goes on where it
can. Loopback only; it prints figures, nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import email
import html
import os
import random
import re
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mailserver.storage.maildir import MaildirWriter, size_from_name  # noqa: E402
from tests.support import dovecot as dovecot_anchor  # noqa: E402
from tests.support.ca import TestCA  # noqa: E402
from tests.support.daemon import PymaildProcess  # noqa: E402
from tests.support.imap import PASSWORD, client_ctx, imap_daemon  # noqa: E402

SEED = 20261123
OWNER = "bench@example.test"
TEXT_WORD = "zanzibar"  # in ~1 % of the bodies, nowhere else
SUBJECT_WORD = "quokka"  # in ~1 % of the subjects, nowhere else
# (key, label, command): what a webmail asks for a list view (issue #16's benchmark).
SORT_COMMANDS = [
    ("sort_date", "UID SORT (REVERSE DATE)", "UID SORT (REVERSE DATE) UTF-8 ALL"),
    ("sort_subject", "UID SORT (SUBJECT)", "UID SORT (SUBJECT) UTF-8 ALL"),
    ("thread_refs", "UID THREAD REFERENCES", "UID THREAD REFERENCES UTF-8 ALL"),
]
HEADER_FIELDS = "From To Cc Subject Date Message-ID References In-Reply-To Content-Type"
HEADER_FETCH = f"UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS ({HEADER_FIELDS})])"
PER_ACCOUNT = 5  # IDLE connections per small account (Thunderbird: ~5-6)
IDLE_ACCOUNT_MESSAGES = 20

# Dovecot on the same 2-core machine kind: {row: {M: seconds}}.
DOVECOT: dict[str, dict[int, float]] = {
    "select_cold": {10_000: 0.03, 100_000: 0.25},
    "select_warm": {10_000: 0.03, 100_000: 0.25},
    "fetch_cold": {10_000: 0.27, 100_000: 2.8},
    "fetch_warm": {10_000: 0.04, 100_000: 0.42},
    "store_silent": {10_000: 0.14, 100_000: 1.5},
}
DOVECOT_KIB_PER_IDLE = 500
TARGET_KIB_PER_IDLE = 50


# ================================================================== the messages


def _words(text: str) -> list[str]:
    return text.split()


VOCABULARY = _words("""
the of and to in is that for it as with was on be at by this had not are but from or have an they which
one you were all there would their we been has when who will more no if out so said what up its about into
than them can only other new some could time these two may then do first any my now such like our over
even most made after also did many before must through back years where much your way well down should
because each just those people how too little good very make world still own see work long get here
between both life being under never day same another know while last might us great old year off come
since against go came right used take three meeting project report budget quarter release server deploy
database migration schedule review draft contract invoice customer support ticket issue feature branch
merge request deadline agenda minutes slides proposal estimate vendor shipment delivery warehouse order
payment account balance statement receipt travel flight hotel booking conference workshop training team
manager director colleague friend family weekend holiday birthday dinner lunch coffee office remote
network firewall backup storage cluster latency throughput benchmark regression test coverage build
pipeline container kernel patch upgrade version library module function parameter config option default
documentation tutorial example question answer feedback comment suggestion decision approval priority
risk mitigation roadmap milestone sprint planning retrospective estimate capacity hiring interview
candidate offer salary benefits policy compliance audit security incident outage postmortem alert monitor
dashboard metric graph chart spreadsheet document folder archive attachment photo picture video call
phone message reminder calendar invitation confirm cancel reschedule tomorrow today yesterday morning
afternoon evening Monday Tuesday Wednesday Thursday Friday January February March April September
October November December Berlin London Paris Madrid Vienna Zürich Grüße café naïve résumé Köln Málaga
""")
FIRST = _words("Anna Ben Clara David Emma Felix Greta Hugo Ines Jonas Kira Lukas Mia Noah Olga Paul "
               "Rosa Sven Tara Uwe Vera Wim Xenia Yusuf Zoe Ahmed Bruno Chloé Dmitri Elena Farid Giulia "
               "Hannah Igor Jürgen Katarzyna Lars Marta Nils Oksana Pierre Quentin Renée Sofia Tomás")
LAST = _words("Schmidt Müller Meyer Weber Fischer Wagner Becker Hoffmann Koch Richter Klein Wolf Neumann "
              "Schwarz Zimmermann Braun Krüger Hofmann Hartmann Lange Smith Jones Brown Taylor Wilson Martin "
              "Dubois Rossi García López Novak Kowalski Jensen Larsen Andersson Nilsson Silva Costa")
DOMAINS = _words("example.org example.net example.com mail.example.org lists.example.net corp.example.com "
                  "university.example.edu shop.example.com news.example.org")
MAILERS = ("Mozilla Thunderbird 128.3.1", "Apple Mail (2.3774.600.62)", "Microsoft Outlook 16.0",
           "Roundcube Webmail/1.6.9", "K-9 Mail for Android", "mutt/2.2.13 (2024-03-09)")


@dataclass
class Corpus:
    """Pools built once from the seed; messages are assembled from them quickly."""

    rng: random.Random
    paragraphs: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)  # (plain, qp, html)
    people: list[tuple[str, str]] = field(default_factory=list)  # (display name, address)
    blobs: list[list[bytes]] = field(default_factory=list)  # base64 lines of random data
    b64: list[str] = field(default_factory=list)  # DKIM-looking base64 strings

    @classmethod
    def build(cls, rng: random.Random) -> Corpus:
        c = cls(rng)
        for _ in range(3000):
            sentences = []
            for _ in range(rng.randint(2, 7)):
                words = rng.choices(VOCABULARY, k=rng.randint(5, 18))
                sentences.append(" ".join(words).capitalize() + rng.choice(".....?!"))
            c.paragraphs.append(_para(" ".join(sentences)))
        for _ in range(400):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            local = f"{first}.{last}".lower().encode("ascii", "ignore").decode() or "someone"
            c.people.append((f"{first} {last}", f"{local}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"))
        for _ in range(16):
            raw = rng.randbytes(36_000)
            c.blobs.append(base64.encodebytes(raw).replace(b"\n", b"\r\n").splitlines(keepends=True))
        c.b64 = [base64.b64encode(rng.randbytes(rng.choice((32, 256)))).decode() for _ in range(64)]
        return c


def _para(text: str) -> tuple[bytes, bytes, bytes]:
    lines = textwrap.wrap(text, 72)
    plain = ("\r\n".join(lines) + "\r\n\r\n").encode()
    qp = binascii.b2a_qp(plain, istext=True)
    markup = f"<p>{html.escape(text)}</p>\r\n".encode()
    return plain, qp, markup


TEXT_PARA = _para(f"By the way, the shipment for {TEXT_WORD} left the warehouse this morning, see the "
                  "tracking link in the portal.")


def _fold_b64(value: str, width: int = 70) -> str:
    return "\r\n\t".join(value[i:i + width] for i in range(0, len(value), width))


def _addr(person: tuple[str, str]) -> str:
    name, address = person
    if name.isascii():
        return f'"{name}" <{address}>'
    return f"=?UTF-8?B?{base64.b64encode(name.encode()).decode()}?= <{address}>"


@dataclass
class Message:
    data: bytes
    kind: str  # "plain", "alternative", "mixed"
    text_hit: bool
    subject_hit: bool


def make_message(c: Corpus, i: int, when: float, parent: tuple[str, list[str]] | None) -> Message:
    rng = c.rng
    target = int(2000 * 25 ** (rng.random() ** 1.6))  # 2 KB .. 50 KB, most of them small
    r = rng.random()
    kind = "plain" if r < 0.55 else "alternative" if r < 0.93 else "mixed"
    text_hit = rng.random() < 0.01
    subject_hit = rng.random() < 0.01
    sender = rng.choice(c.people)
    host = sender[1].rpartition("@")[2]
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
    msgid = f"<b{i}.{rng.getrandbits(40):010x}@{host}>"

    words = rng.choices(VOCABULARY, k=rng.randint(2, 7))
    if subject_hit:
        words.insert(rng.randint(0, len(words)), SUBJECT_WORD)
    subject = " ".join(words).capitalize()
    if parent is not None:
        subject = "Re: " + subject
    if subject.isascii():
        subject_header = subject
    else:
        subject_header = f"=?UTF-8?B?{base64.b64encode(subject.encode()).decode()}?="

    h = [
        f"Return-Path: <{sender[1]}>",
        f"Delivered-To: {OWNER}",
        f"Received: from mail.{host} (mail.{host} [198.51.100.{i % 250 + 1}])\r\n"
        f"\tby mx.example.test (pymaild) with ESMTPS id {rng.getrandbits(48):012X}\r\n"
        f"\tfor <{OWNER}>; {date}",
        f"Received: from [192.0.2.{i % 200 + 7}] (unknown [203.0.113.{i % 240 + 3}])\r\n"
        f"\tby mail.{host} with ESMTPSA id {rng.getrandbits(48):012x}; {date}",
    ]
    if rng.random() < 0.6:
        h.append(f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={host}; s=mail;\r\n"
                 f"\th=from:to:cc:subject:date:message-id:content-type; bh={rng.choice(c.b64)[:44]};\r\n"
                 f"\tb={_fold_b64(rng.choice(c.b64))}")
        h.append(f"Authentication-Results: mx.example.test; dkim=pass header.d={host};\r\n"
                 f"\tspf=pass smtp.mailfrom={host}; dmarc=pass header.from={host}")
    h.append(f"From: {_addr(sender)}")
    to = [f"Bench User <{OWNER}>"] + [_addr(rng.choice(c.people)) for _ in range(rng.choice((0, 0, 0, 1, 2)))]
    h.append("To: " + ",\r\n\t".join(to))
    if rng.random() < 0.3:
        h.append("Cc: " + ",\r\n\t".join(_addr(rng.choice(c.people)) for _ in range(rng.randint(1, 4))))
    h.append(f"Subject: {subject_header}")
    h.append(f"Date: {date}")
    h.append(f"Message-ID: {msgid}")
    if parent is not None:
        pid, prefs = parent
        refs = [*prefs, pid][-6:]
        h.append(f"In-Reply-To: {pid}")
        h.append("References: " + "\r\n\t".join(refs))
    h.append(f"{rng.choice(('User-Agent', 'X-Mailer'))}: {rng.choice(MAILERS)}")
    h.append("MIME-Version: 1.0")

    qp = rng.random() < 0.25
    used = sum(len(x) for x in h) + 200
    budget_text = min(target - used, rng.randint(600, 3000)) if kind == "mixed" else target - used
    paras = []
    total = 0
    while total < budget_text or not paras:
        p = rng.choice(c.paragraphs)
        paras.append(p)
        total += len(p[1 if qp else 0]) + (len(p[2]) if kind == "alternative" else 0)
    if text_hit:
        paras.insert(rng.randrange(len(paras) + 1), TEXT_PARA)
    plain = b"".join(p[1 if qp else 0] for p in paras)
    plain += b"-- \r\n" + sender[0].encode() + b"\r\n"
    cte = "quoted-printable" if qp else "8bit"
    text_part = (f'Content-Type: text/plain; charset="utf-8"; format=flowed\r\n'
                 f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode() + plain
    if kind == "plain":
        head = "\r\n".join(h).encode() + b"\r\n" + text_part
        return Message(head, kind, text_hit, subject_hit)
    boundary = f"----=_Part_{i}_{rng.getrandbits(32):08x}"
    if kind == "alternative":
        markup = b"".join(p[2] for p in paras)
        html_part = (b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
                     b'<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
                     b"</head><body>\r\n" + markup + b"</body></html>\r\n")
        parts = [text_part, html_part]
    else:
        lines = rng.choice(c.blobs)
        n = max(8, min(len(lines), (target - used - len(text_part)) // 78))
        start = rng.randrange(len(lines) - n + 1)
        name = rng.choice(("report.pdf", "scan.jpg", "slides.pptx", "invoice.pdf", "data.xlsx"))
        attachment = (f'Content-Type: application/octet-stream; name="{name}"\r\n'
                      f'Content-Disposition: attachment; filename="{name}"\r\n'
                      "Content-Transfer-Encoding: base64\r\n\r\n").encode() + b"".join(lines[start:start + n])
        parts = [text_part, attachment]
    h.append(f'Content-Type: multipart/{kind};\r\n\tboundary="{boundary}"')
    sep = f"--{boundary}\r\n".encode()
    body = (b"This is a multi-part message in MIME format.\r\n\r\n"
            + b"".join(sep + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode())
    return Message("\r\n".join(h).encode() + b"\r\n\r\n" + body, kind, text_hit, subject_hit)


@dataclass
class Filled:
    sizes: list[int]
    crcs: list[int]
    text_hits: set[int]
    subject_hits: set[int]
    kinds: dict[str, int]
    total_bytes: int


def fill(root: Path, count: int, seed: int = SEED) -> Filled:
    rng = random.Random(seed)
    c = Corpus.build(rng)
    writer = MaildirWriter(fsync=False, hostname="bench")
    out = Filled([], [], set(), set(), {}, 0)
    when = 1_672_531_200.0  # 2023-01-01
    recent: list[tuple[str, list[str]]] = []
    for i in range(count):
        when += rng.expovariate(1 / 900)
        parent = rng.choice(recent) if recent and rng.random() < 0.35 else None
        m = make_message(c, i, when, parent)
        writer.deliver(root, None, [m.data])
        out.sizes.append(len(m.data))
        out.crcs.append(zlib.crc32(m.data))
        out.total_bytes += len(m.data)
        out.kinds[m.kind] = out.kinds.get(m.kind, 0) + 1
        if m.text_hit:
            out.text_hits.add(i)
        if m.subject_hit:
            out.subject_hits.add(i)
        mid = re.search(rb"Message-ID: (<[^>]+>)", m.data)
        assert mid is not None
        refs = re.search(rb"References: ([^\r]+(?:\r\n\t[^\r]+)*)", m.data)
        recent.append((mid.group(1).decode(), refs.group(1).decode().split("\r\n\t") if refs else []))
        if len(recent) > 200:
            recent.pop(0)
    return out


def check_fill(root: Path, filled: Filled) -> list[str]:
    """Every file's S= size is its real size; a sample of 1000 parses as the intended MIME."""
    problems = []
    names = sorted((root / "new").iterdir())
    if len(names) != len(filled.sizes):
        problems.append(f"{len(names)} files in new/, expected {len(filled.sizes)}")
    for p in names:
        if size_from_name(p.name) != p.stat().st_size:
            problems.append(f"{p.name}: S= does not match the size {p.stat().st_size}")
    rng = random.Random(1)
    for p in rng.sample(names, min(1000, len(names))):
        msg = email.message_from_bytes(p.read_bytes())
        mid = re.match(r"<b(\d+)\.", msg["Message-ID"] or "")
        if not mid:
            problems.append(f"{p.name}: no Message-ID")
            continue
        i = int(mid.group(1))
        if msg.defects or any(part.defects for part in msg.walk()):
            problems.append(f"message {i}: MIME defects {msg.defects}")
        texts = [part.get_payload(decode=True).decode() for part in msg.walk()
                 if part.get_content_type() == "text/plain"]
        if (any(TEXT_WORD in t for t in texts)) != (i in filled.text_hits):
            problems.append(f"message {i}: search word placement wrong")
        for part in msg.walk():
            if part.get_content_type() == "application/octet-stream" and not part.get_payload(decode=True):
                problems.append(f"message {i}: empty attachment")
    return problems


# ================================================================== a raw IMAP client


class ServerError(Exception):
    """The server answered wrongly, not at all, or closed the connection."""


class IMAPClient:
    """Blocking IMAPS client: a response is one line plus any literals, read from one buffer."""

    def __init__(self, port: int, ctx: ssl.SSLContext, timeout: float) -> None:
        t0 = time.perf_counter()
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(sock)
        self.buf = bytearray()
        self.pos = 0
        self.tags = 0
        self.received = 0
        self.greeting = self._response()
        self.connect_time = time.perf_counter() - t0
        self.last_command = ""

    def _recv(self) -> None:
        try:
            chunk = self.sock.recv(1 << 18)
        except TimeoutError as e:
            raise ServerError(f"no answer within {self.sock.gettimeout()} s to {self.last_command!r}") from e
        except OSError as e:
            raise ServerError(f"connection error during {self.last_command!r}: {e}") from e
        if not chunk:
            raise ServerError(f"connection closed by the server during {self.last_command!r}; "
                              f"unparsed: {bytes(self.buf[self.pos:self.pos + 300])!r}")
        self.received += len(chunk)
        self.buf += chunk

    def _response(self) -> bytes:
        buf = self.buf
        if self.pos > 1 << 22:
            del buf[:self.pos]
            self.pos = 0
        start = scan = self.pos
        while True:
            eol = buf.find(b"\r\n", scan)
            if eol < 0:
                scan = max(start, len(buf) - 1)
                self._recv()
                continue
            if eol > start and buf[eol - 1] == 0x7D:  # "}": maybe a literal follows
                lb = buf.rfind(b"{", start, eol)
                digits = bytes(buf[lb + 1:eol - 1]).rstrip(b"+") if lb >= 0 else b""
                if digits.isdigit():
                    scan = eol + 2 + int(digits)
                    while len(buf) < scan:
                        self._recv()
                    continue
            self.pos = eol + 2
            return bytes(buf[start:eol + 2])

    def command(self, text: str, *, ok: bool = True) -> list[bytes]:
        """Send ``text``; every response up to and including the tagged one."""
        self.tags += 1
        tag = b"t%d" % self.tags
        self.last_command = text
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        return self.read_until(tag, ok=ok)

    def read_until(self, tag: bytes, *, ok: bool = True) -> list[bytes]:
        out = []
        prefix = tag + b" "
        while True:
            r = self._response()
            out.append(r)
            if r.startswith(prefix):
                if ok and not r.startswith(prefix + b"OK"):
                    raise ServerError(f"{self.last_command!r} -> {r!r}")
                return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ================================================================== measuring


@dataclass
class Row:
    key: str
    label: str
    seconds: float | None
    note: str = ""


@dataclass
class Bench:
    args: argparse.Namespace
    d: PymaildProcess | dovecot_anchor.DovecotServer
    ctx: ssl.SSLContext
    filled: Filled
    rows: list[Row] = field(default_factory=list)
    bugs: list[str] = field(default_factory=list)
    uid_of: dict[int, int] = field(default_factory=dict)  # message index -> UID
    headers: dict[int, bytes] = field(default_factory=dict)  # UID -> header literal, from the cold FETCH
    memory: dict[str, Any] = field(default_factory=dict)
    log_seen: int = 0
    samples: dict[str, list[float]] = field(default_factory=dict)  # timed(record=False)
    notes: dict[str, str] = field(default_factory=dict)
    orders: dict[str, bytes] = field(default_factory=dict)  # SORT/THREAD answer, UIDs as message indices

    def row(self, key: str, label: str, seconds: float | None, note: str = "") -> None:
        self.rows.append(Row(key, label, seconds, note))
        shown = f"{seconds:9.3f} s" if seconds is not None else "      n/a  "
        print(f"  {label:<34} {shown}  {note}", flush=True)

    def bug(self, what: str) -> None:
        tail = self.new_log_lines()
        text = what + ("\n      daemon log:\n      " + "\n      ".join(tail[-30:]) if tail else "")
        self.bugs.append(text)
        print(f"  !! {text}", flush=True)

    def new_log_lines(self) -> list[str]:
        lines = self.d.log_lines[self.log_seen:]
        self.log_seen = len(self.d.log_lines)
        return lines

    def rss(self) -> tuple[int, int]:
        """The server's (RSS, PSS) in KiB (Dovecot: summed over all its processes)."""
        if isinstance(self.d, dovecot_anchor.DovecotServer):
            return self.d.memory_kib()
        assert self.d.proc is not None
        return read_memory(self.d.proc.pid)

    def timed(self, client: IMAPClient, key: str, label: str, command: str,
              check: Callable[[list[bytes], float], str] | None = None, repeat: int = 1,
              record: bool = True) -> list[bytes] | None:
        """Run one command on the clock (``repeat`` times, the median kept: a single run
        of a 5 ms command moves by 30 % between runs); check each answer off the clock.
        ``record=False`` keeps the times in ``self.samples[key]`` for a later
        :meth:`row_median` instead of printing a row."""
        dts: list[float] = []
        out: list[bytes] = []
        extra = ""
        for _ in range(max(1, repeat)):
            received = client.received
            t0 = time.perf_counter()
            try:
                out = client.command(command)
            except ServerError as e:
                self.row(key, label, None, "FAILED")
                self.bug(f"{label}: {e}")
                e.reported = True  # type: ignore[attr-defined]
                raise
            dt = time.perf_counter() - t0
            dts.append(dt)
            if check is not None:
                try:
                    extra = check(out, dt)
                except Exception as e:  # a check that trips over a malformed answer is a finding too
                    extra = f"CHECK FAILED: {type(e).__name__}: {e}"
                    self.bug(f"{label}: {command!r}: {extra}; first responses: {out[:2]!r}")
        note = f"{len(out) - 1} untagged, {(client.received - received) / 1e6:.1f} MB"
        if extra:
            note += "; " + extra
        if not record:
            self.samples.setdefault(key, []).extend(dts)
            self.notes[key] = note
            return out
        if len(dts) > 1:
            note += f"; median of {len(dts)}"
        self.row(key, label, statistics.median(dts), note)
        return out

    def row_median(self, key: str, label: str) -> None:
        """The row of a command timed with ``record=False`` (several runs, the median)."""
        dts = self.samples.get(key, [])
        note = self.notes.get(key, "") + (f"; median of {len(dts)}" if len(dts) > 1 else "")
        self.row(key, label, statistics.median(dts) if dts else None, note)


def read_memory(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


UID_RE = re.compile(rb"\bUID (\d+)")
SIZE_RE = re.compile(rb"\bRFC822\.SIZE (\d+)")
MSGID_RE = re.compile(rb"(?im)^Message-ID:\s*<b(\d+)\.")
LITERAL_RE = re.compile(rb"\{(\d+)\}\r\n")


def fetch_parts(resp: bytes) -> tuple[int | None, int | None, bytes | None]:
    """(UID, RFC822.SIZE, first literal) of one FETCH response."""
    uid = UID_RE.search(resp)
    size = SIZE_RE.search(resp)
    lit = LITERAL_RE.search(resp)
    body = resp[lit.end():lit.end() + int(lit.group(1))] if lit else None
    return (int(uid.group(1)) if uid else None, int(size.group(1)) if size else None, body)


def is_fetch(resp: bytes) -> bool:
    return resp.startswith(b"* ") and b" FETCH " in resp[:24]


def session(b: Bench, name: str, *, first: bool, stores: bool) -> None:
    """One IMAP session over the big INBOX: the rows ``<what>_<name>``."""
    count = len(b.filled.sizes)
    try:
        c = IMAPClient(b.d.imaps_port, b.ctx, b.args.timeout)  # type: ignore[attr-defined]
    except (ServerError, OSError) as e:
        b.bug(f"{name}: connect: {e}")
        return
    try:
        t0 = time.perf_counter()
        c.command(f'LOGIN "{OWNER}" "{PASSWORD}"')
        t1 = time.perf_counter()

        def check_select(out: list[bytes], dt: float) -> str:
            exists = [int(m.group(1)) for r in out if (m := re.match(rb"\* (\d+) EXISTS", r))]
            if exists != [count]:
                b.bug(f"SELECT INBOX ({name}): EXISTS {exists}, expected [{count}]: {out[:8]!r}")
            return f"login {(t1 - t0) * 1000:.0f} ms, select {dt * 1000:.0f} ms"

        received, t2 = c.received, time.perf_counter()
        out = c.command("SELECT INBOX")
        dt = time.perf_counter() - t2
        note = check_select(out, dt)
        b.row(f"select_{name}", f"LOGIN+SELECT INBOX ({name})", time.perf_counter() - t0,
              f"{note}; connect+TLS {c.connect_time * 1000:.0f} ms, {c.received - received} B")
        b.memory[f"rss_after_select_{name}"] = b.rss()

        def check_headers(out: list[bytes], dt: float) -> str:
            fetches = [r for r in out if is_fetch(r)]
            problems = []
            if len(fetches) != count:
                problems.append(f"{len(fetches)} FETCH responses, expected {count}")
            by_uid: dict[int, bytes] = {}
            for r in fetches:
                uid, size, lit = fetch_parts(r)
                mid = MSGID_RE.search(lit or b"")
                if uid is None or size is None or lit is None or mid is None or b"FLAGS (" not in r:
                    problems.append(f"malformed: {r[:300]!r}")
                    continue
                i = int(mid.group(1))
                if first:
                    b.uid_of[i] = uid
                elif b.uid_of.get(i) != uid:
                    problems.append(f"message {i}: UID {uid}, was {b.uid_of.get(i)}")
                if size != b.filled.sizes[i]:
                    problems.append(f"UID {uid}: RFC822.SIZE {size}, file has {b.filled.sizes[i]}")
                if b"Received:" in lit or b"DKIM-Signature" in lit or not lit.endswith(b"\r\n\r\n"):
                    problems.append(f"UID {uid}: header fields wrong: {lit[:200]!r}")
                by_uid[uid] = lit
            if first:
                b.headers = by_uid
            elif b.headers and by_uid != b.headers:
                diff = [u for u in b.headers if by_uid.get(u) != b.headers[u]]
                problems.append(f"{len(diff)} header blocks differ from the cold FETCH, e.g. UID {diff[:1]}: "
                                f"{b.headers.get(diff[0]) if diff else b''!r} vs "
                                f"{by_uid.get(diff[0]) if diff else b''!r}")
            if problems:
                b.bug(f"header FETCH ({name}): {len(problems)} problems: " + "; ".join(problems[:5]))
            return f"{count / dt:,.0f} msg/s" + (" WRONG" if problems else "")

        # Cold runs happen once by nature; warm and restart ones are run --repeat times.
        reps = 1 if name == "cold" else b.args.repeat
        b.timed(c, f"fetch_{name}", f"header FETCH 1:* ({name})", HEADER_FETCH, check_headers, repeat=reps)
        b.memory[f"rss_after_fetch_{name}"] = b.rss()
        if name == "warm" and b.args.profile:
            profile_fetch(b, c)
        if name == "restart":
            return

        def check_search(expected: set[int], what: str) -> Callable[[list[bytes], float], str]:
            def check(out: list[bytes], dt: float) -> str:
                got = {int(x) for r in out if r.startswith(b"* SEARCH") for x in r.split()[2:]}
                want = {b.uid_of[i] for i in expected if i in b.uid_of}
                if got != want:
                    b.bug(f"SEARCH {what} ({name}): {len(got)} hits, expected {len(want)}: "
                          f"missing {sorted(want - got)[:10]}, extra {sorted(got - want)[:10]}")
                    return "WRONG"
                return f"{len(got)} hits"
            return check

        b.timed(c, f"search_text_{name}", f"UID SEARCH TEXT ({name})", f'UID SEARCH TEXT "{TEXT_WORD}"',
                check_search(b.filled.text_hits, "TEXT"), repeat=reps)
        b.timed(c, f"search_subject_{name}", f"UID SEARCH SUBJECT ({name})",
                f'UID SEARCH SUBJECT "{SUBJECT_WORD}"', check_search(b.filled.subject_hits, "SUBJECT"),
                repeat=reps)

        index_by_uid = {uid: i for i, uid in b.uid_of.items()}

        def check_order(key: str, what: str) -> Callable[[list[bytes], float], str]:
            """Every message once; the order (as message indices, which both servers
            share) is kept so the two servers' answers can be compared at the end."""
            def check(out: list[bytes], dt: float) -> str:
                data = b" ".join(r.split(b" ", 2)[2] if r.count(b" ") >= 2 else b""
                                 for r in out if r.startswith((b"* SORT", b"* THREAD")))
                got = [index_by_uid.get(int(x), -1) for x in re.findall(rb"\d+", data)]
                if sorted(got) != sorted(b.uid_of):
                    b.bug(f"{what} ({name}): {len(got)} messages, expected {len(b.uid_of)}")
                    return "WRONG"
                b.orders[key] = re.sub(rb"\d+", lambda m: b"%d" % index_by_uid.get(int(m[0]), -1), data)
                return f"{len(got)} messages"
            return check

        for key, label, command in SORT_COMMANDS:
            b.timed(c, f"{key}_{name}", f"{label} ({name})", command, check_order(key, label), repeat=reps)

        rng = random.Random(name)
        picked = rng.sample(sorted(b.uid_of), min(100, len(b.uid_of)))
        index_of = {b.uid_of[i]: i for i in picked}

        def check_bodies(out: list[bytes], dt: float) -> str:
            fetches = [r for r in out if is_fetch(r)]
            bad = []
            for r in fetches:
                uid, _size, lit = fetch_parts(r)
                i = index_of.get(uid or -1)
                if i is None or lit is None or zlib.crc32(lit) != b.filled.crcs[i]:
                    bad.append(uid)
            if len(fetches) != len(picked) or bad:
                b.bug(f"UID FETCH BODY.PEEK[] ({name}): {len(fetches)} responses for {len(picked)} UIDs, "
                      f"{len(bad)} wrong bodies (UIDs {bad[:10]})")
                return "WRONG"
            return f"{sum(b.filled.sizes[i] for i in picked) / 1e6:.1f} MB of bodies"

        uids = ",".join(str(b.uid_of[i]) for i in picked)
        b.timed(c, f"bodies_{name}", f"FETCH 100 BODY.PEEK[] ({name})", f"UID FETCH {uids} BODY.PEEK[]",
                check_bodies, repeat=reps)
        if not stores:
            return

        def check_untagged(expected: int) -> Callable[[list[bytes], float], str]:
            def check(out: list[bytes], dt: float) -> str:
                n = sum(1 for r in out if is_fetch(r))
                if n != expected:
                    b.bug(f"{c.last_command!r}: {n} FETCH responses, expected {expected}")
                    return "WRONG"
                return ""
            return check

        def check_unseen(expected: int) -> Callable[[list[bytes], float], str]:
            def check(out: list[bytes], dt: float) -> str:
                n = sum(len(r.split()) - 2 for r in out if r.startswith(b"* SEARCH"))
                if n != expected:
                    b.bug(f"UID SEARCH UNSEEN: {n} hits, expected {expected}")
                    return "WRONG"
                return f"{n} hits"
            return check

        # The set/clear cycle --repeat times (each STORE changes every message), medians.
        for _ in range(b.args.repeat):
            b.timed(c, "store_silent", "", "STORE 1:* +FLAGS.SILENT (\\Seen)", check_untagged(0),
                    record=False)
            b.timed(c, "search_unseen_0", "", "UID SEARCH UNSEEN", check_unseen(0), record=False)
            b.timed(c, "unstore_silent", "", "STORE 1:* -FLAGS.SILENT (\\Seen)", check_untagged(0),
                    record=False)
            b.timed(c, "search_unseen_all", "", "UID SEARCH UNSEEN", check_unseen(count), record=False)
        b.row_median("store_silent", "STORE 1:* +FLAGS.SILENT (\\Seen)")
        b.row_median("search_unseen_0", "UID SEARCH UNSEEN (none)")
        b.row_median("unstore_silent", "STORE 1:* -FLAGS.SILENT (\\Seen)")
        b.row_median("search_unseen_all", "UID SEARCH UNSEEN (all)")
        for i in range(b.args.repeat):
            if i:
                c.command("STORE 1:* -FLAGS.SILENT (\\Seen)")  # off the clock: unseen again
            b.timed(c, "store_loud", "", "STORE 1:* +FLAGS (\\Seen)", check_untagged(count), record=False)
        b.row_median("store_loud", "STORE 1:* +FLAGS (\\Seen)")
        with contextlib.suppress(ServerError):
            c.command("LOGOUT")
    except ServerError as e:  # the session's connection is unusable from here on
        if not getattr(e, "reported", False):
            b.row(f"select_{name}", f"LOGIN+SELECT INBOX ({name})", None, "FAILED")
            b.bug(f"{name}: {e}")
    finally:
        c.close()


def profile_fetch(b: Bench, c: IMAPClient) -> None:
    """A warm command (the header FETCH unless --profile-command) again under py-spy,
    not on the clock of the table."""
    assert b.d.proc is not None
    path = Path(b.args.profile)
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(path.suffix, "raw")
    # --gil: only the samples that hold the GIL, i.e. where the daemon spends CPU in Python.
    # --profile-wall: every thread's samples, idle and I/O waits included (where the wall
    # time goes when little of it is Python work).
    mode = ["--idle", "--threads"] if b.args.profile_wall else ["--gil"]
    cmd = ["py-spy", "record", "--pid", str(b.d.proc.pid), "--rate", "250", *mode, "--format", fmt,
           "-o", str(path)]
    try:
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        print(f"  (no profile: {e})")
        return
    time.sleep(1.5)  # attach
    t0 = time.perf_counter()
    commands = [part.strip() for part in b.args.profile_command.split(";;")]
    for _ in range(max(1, b.args.profile_repeat)):
        for command in commands:
            c.command(command)
    dt = (time.perf_counter() - t0) / max(1, b.args.profile_repeat) / len(commands)
    spy.send_signal(signal.SIGINT)
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    print(f"  {'(profiled, warm, per run)':<34} {dt:9.3f} s  py-spy -> {path}  "
          f"[{b.args.profile_command[:40]}]")
    if fmt == "raw" and path.exists():
        summarize_profile(path)
    elif not path.exists():
        print("  py-spy wrote nothing:", err.strip()[-500:])


def summarize_profile(path: Path, top: int = 15) -> None:
    """Own and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        samples = int(n)
        # "func (path/file.py:123)" -> "func (path/file.py)": per function, not per line
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]
        total += samples
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + samples
        for f in set(frames):
            incl[f] = incl.get(f, 0) + samples
    print(f"  py-spy: {total} samples; top by own time:")
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / max(total, 1):5.1f} %  {f}")
    print("  top by inclusive time:")
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / max(total, 1):5.1f} %  {f}")


# ================================================================== idle connections


class IdleConn:
    """One asyncio IMAPS connection, driven stage by stage: connect, LOGIN, SELECT + IDLE."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _until(self, tag: bytes) -> bytes:
        assert self.reader is not None
        while True:
            line = await self.reader.readline()
            if not line:
                raise ServerError(f"{self.user}: connection closed while waiting for {tag!r}")
            if line.startswith(tag):
                if tag != b"+" and not line.startswith(tag + b"OK"):
                    raise ServerError(f"{self.user}: {line!r}")
                return line

    async def connect(self, port: int, ctx: ssl.SSLContext) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        greeting = await self.reader.readline()
        if not greeting.startswith(b"* OK"):
            raise ServerError(f"{self.user}: greeting {greeting!r}")

    async def login(self) -> None:
        assert self.writer is not None
        self.writer.write(f'a LOGIN "{self.user}" "{PASSWORD}"\r\n'.encode())
        await self._until(b"a ")

    async def select_idle(self) -> None:
        assert self.writer is not None
        self.writer.write(b"b SELECT INBOX\r\n")
        await self._until(b"b ")
        self.writer.write(b"c IDLE\r\n")
        await self._until(b"+")

    async def end(self) -> None:
        assert self.writer is not None
        try:
            self.writer.write(b"DONE\r\nd LOGOUT\r\n")
            await self._until(b"c ")
            await self._until(b"d ")
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


async def _stage(b: Bench, conns: list[IdleConn], what: str,
                 step: Callable[[IdleConn], Any], timeout: float = 60.0) -> list[IdleConn]:
    """``step`` on every connection, 32 at a time; the ones that failed are reported and dropped."""
    sem = asyncio.Semaphore(32)

    async def one(c: IdleConn) -> None:
        async with sem:
            async with asyncio.timeout(timeout):
                await step(c)

    results = await asyncio.gather(*(one(c) for c in conns), return_exceptions=True)
    kept, errors = [], {}
    for c, r in zip(conns, results, strict=True):
        if isinstance(r, BaseException):
            text = f"{type(r).__name__}: {r}"[:200]
            errors[text] = errors.get(text, 0) + 1
            c.abort()
        else:
            kept.append(c)
    if errors:
        b.bug(f"{what}: {len(conns) - len(kept)} of {len(conns)} connections failed: "
              + "; ".join(f"{k} (x{v})" for k, v in errors.items()))
    return kept


async def idle_round(b: Bench, users: list[str], n: int, label: str) -> dict[str, Any]:
    """Open ``n`` connections stage by stage, measuring the daemon after each; then end them."""
    port = b.d.imaps_port  # type: ignore[attr-defined]
    conns = [IdleConn(users[i // PER_ACCOUNT % len(users)]) for i in range(n)]
    out: dict[str, Any] = {"before": b.rss()}
    t0 = time.perf_counter()
    stages: list[tuple[str, Callable[[IdleConn], Any]]] = [
        ("TLS connected", lambda c: c.connect(port, b.ctx)),
        ("+ LOGIN", lambda c: c.login()),
        ("+ SELECT INBOX, IDLE", lambda c: c.select_idle()),
    ]
    for name, step in stages:
        conns = await _stage(b, conns, f"{label}: {name}", step)
        await asyncio.sleep(2)  # let the daemon settle (log writer, GC)
        out[name] = b.rss()
    out["setup"] = time.perf_counter() - t0
    out["n"] = len(conns)
    await _stage(b, conns, f"{label}: DONE + LOGOUT", lambda c: c.end())
    await asyncio.sleep(2)
    out["closed"] = b.rss()
    prev = out["before"]
    print(f"  {label}: {n} connections in {out['setup']:.1f} s (stages, 32 at a time, 2 s pauses); "
          f"daemon RSS / PSS in KiB, and the increase per connection:")
    print(f"    {'before':<24} {prev[0]:>8} {prev[1]:>8}")
    for name, _ in stages:
        cur = out[name]
        print(f"    {name:<24} {cur[0]:>8} {cur[1]:>8}   +{(cur[0] - prev[0]) / max(n, 1):6.1f} "
              f"+{(cur[1] - prev[1]) / max(n, 1):6.1f} KiB each")
        prev = cur
    cur = out["closed"]
    print(f"    {'after DONE+LOGOUT':<24} {cur[0]:>8} {cur[1]:>8}")
    return out


async def idle_phase(b: Bench, users: list[str]) -> None:
    n = b.args.connections
    # Warm the daemon's code paths (imports, TLS, login) so that "before" includes them.
    warm = [IdleConn(users[i % len(users)]) for i in range(10)]
    port = b.d.imaps_port  # type: ignore[attr-defined]
    for c in warm:
        await c.connect(port, b.ctx)
        await c.login()
        await c.select_idle()
        await c.end()
    await asyncio.sleep(2)
    first = await idle_round(b, users, n, "round 1")
    # A second round on the same daemon: what the first left behind is reused, or it is a leak.
    second = await idle_round(b, users, n, "round 2")
    b.memory.update(idle_n=first["n"], idle_before=first["before"], idle_after=first["+ SELECT INBOX, IDLE"],
                    idle_connected=first["TLS connected"], idle_login=first["+ LOGIN"],
                    idle_closed=first["closed"], idle_setup=first["setup"],
                    idle2_before=second["before"], idle2_after=second["+ SELECT INBOX, IDLE"],
                    idle2_closed=second["closed"])


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ================================================================== the run


def dovecot(key: str, count: int) -> str:
    """Dovecot's figure from an earlier sitting (used only when no Dovecot runs here)."""
    figures = DOVECOT.get(key)
    if not figures:
        return ""
    if count in figures:
        return f"{figures[count]:.2f} s"
    near = min(figures, key=lambda m: abs(m - count))
    return f"~{figures[near] * count / near:.3f} s"


def server_trouble(b: Bench, code: int | None) -> None:
    """Error lines in the server's log, and a bad exit, are findings too."""
    log = b.d.log_lines
    if isinstance(b.d, dovecot_anchor.DovecotServer):
        trouble = [i for i, line in enumerate(log) if re.search(r" (Error|Fatal|Panic): ", line)]
    else:
        trouble = [i for i, line in enumerate(log) if "Traceback" in line or " ERROR " in line
                   or " CRITICAL " in line]
    if trouble:
        first = trouble[0]
        b.bugs.append(f"server log has {len(trouble)} error lines; the first:\n      "
                      + "\n      ".join(log[first:first + 25]))
    warnings = [line for line in log if " WARNING " in line]
    if warnings:
        print(f"server log: {len(warnings)} WARNING lines, e.g.:\n  " + "\n  ".join(warnings[:5]))
    if code not in (0, None):
        b.bugs.append(f"server exited with {code}")


def sessions(b: Bench, restart: Callable[[], None]) -> None:
    """The three sessions (cold, warm, after a restart) against one server."""
    print("session 1: cold (index and header cache are built)")
    session(b, "cold", first=True, stores=False)
    print("session 2: warm (a new session, same server)")
    session(b, "warm", first=False, stores=True)
    print("session 3: after a server restart (index and cache from disk)")
    restart()
    session(b, "restart", first=False, stores=False)
    rss = ", ".join(
        f"{k[10:]} {v[0] / 1024:.0f} MiB"
        for k, v in b.memory.items()
        if k.startswith("rss_after")
    )
    print(f"  server RSS after: {rss}")


def prepare_anchor(base: Path, ca: TestCA, args: argparse.Namespace, mailboxes: dict[str, Path]
                   ) -> dovecot_anchor.DovecotServer | None:
    """Dovecot over hard-link copies of the freshly filled Maildirs (before pymaild touches them)."""
    if args.no_dovecot:
        return None
    if not dovecot_anchor.available():
        print("  (no Dovecot here: `apt-get install dovecot-imapd` runs it as the anchor in the same "
              "sitting; older figures are printed instead)")
        return None
    cert, key = ca.issue("mx.example.test", "localhost", stem="dovecot")
    anchor = dovecot_anchor.DovecotServer(base / "dovecot", cert, key,
                                          max_connections=max(1000, args.connections + 100))
    t0 = time.perf_counter()
    for user, maildir in mailboxes.items():
        copy = base / "dovecot-mail" / user
        dovecot_anchor.copy_maildir(maildir, copy)
        anchor.add_user(user, PASSWORD, copy)
    print(f"  Dovecot's copy of the Maildirs (hard links) in {time.perf_counter() - t0:.1f} s")
    return anchor


def memory_line(b: Bench, who: str, per_idle: str) -> None:
    if not b.memory.get("idle_n"):
        return
    n = b.memory["idle_n"]
    (r0, p0), (r1, p1) = b.memory["idle_before"], b.memory["idle_after"]
    print(f"  {'KiB per idle IDLE connection':<34} {who}: RSS {(r1 - r0) / n:.1f}, PSS {(p1 - p0) / n:.1f}"
          f"  (N = {n}{per_idle})")
    c0, c1 = b.memory["idle_closed"], b.memory["idle2_closed"]
    print(f"  {'  RSS kept after all closed':<34} {who}: {(c0[0] - r0) / n:.1f} KiB each after round 1, "
          f"{(c1[0] - r0) / n:.1f} after round 2")


def run(base: Path, args: argparse.Namespace) -> int:
    count = args.count
    raise_nofile()
    ca = TestCA(base / "ca")
    limits = {"max_connections_per_ip": max(5000, args.connections + 100),
              "max_connections": max(5000, args.connections + 100)}
    d = imap_daemon(base / "d", ca, imap=limits, start=False)
    root = d.add_account(OWNER)
    print(f"M = {count} messages in {root}")
    t0 = time.perf_counter()
    filled = fill(root, count)
    t_fill = time.perf_counter() - t0
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(filled.kinds.items()))
    print(f"  {'fill':<34} {t_fill:9.3f} s  {filled.total_bytes / 1e6:.0f} MB, mean "
          f"{filled.total_bytes / count / 1024:.1f} KiB ({kinds}); {len(filled.text_hits)} with "
          f"{TEXT_WORD!r}, {len(filled.subject_hits)} with {SUBJECT_WORD!r} in the subject")
    b = Bench(args, d, client_ctx(ca), filled)
    if not args.skip_fill_check:
        problems = check_fill(root, filled)
        print(f"  fill check: {'ok' if not problems else problems[:5]}")
        if problems:
            return 1
    users: list[str] = []
    mailboxes = {OWNER: root}
    if args.connections:
        t0 = time.perf_counter()
        writer = MaildirWriter(fsync=False, hostname="bench")
        for k in range((args.connections + PER_ACCOUNT - 1) // PER_ACCOUNT):
            user = f"idle{k}@example.test"
            path = d.add_account(user)
            for j in range(IDLE_ACCOUNT_MESSAGES):
                note = (f"From: a{j}@example.org\r\nTo: {user}\r\nSubject: hello {j}\r\n"
                        f"Message-ID: <i{k}.{j}@bench>\r\n\r\nshort note {j}\r\n")
                writer.deliver(path, None, [note.encode()])
            users.append(user)
            mailboxes[user] = path
        print(f"  {len(users)} small accounts for the IDLE phase in {time.perf_counter() - t0:.1f} s")
    anchor = prepare_anchor(base, ca, args, mailboxes)

    print("== pymaild")
    settle()
    try:
        t0 = time.perf_counter()
        d.start()
        print(f"  {'daemon start':<34} {time.perf_counter() - t0:9.3f} s  pid {d.proc.pid}"  # type: ignore[union-attr]
              f", RSS {b.rss()[0]} KiB")
        b.new_log_lines()

        def restart_pymaild() -> None:
            d.stop()
            d.start()

        sessions(b, restart_pymaild)
        if args.connections:
            print(f"memory: {args.connections} IDLE connections over {len(users)} accounts "
                  "(daemon restarted)")
            restart_pymaild()
            asyncio.run(idle_phase(b, users))
    finally:
        server_trouble(b, d.stop())

    ba: Bench | None = None
    if anchor is not None:
        print("== Dovecot (the same client, the same messages, in the same sitting)")
        ba = Bench(args, anchor, client_ctx(ca), filled)
        settle()
        try:
            anchor.start()

            def restart_anchor() -> None:
                anchor.stop()
                anchor.start()

            sessions(ba, restart_anchor)
            if args.connections:
                print(f"memory: {args.connections} IDLE connections over {len(users)} accounts "
                      "(Dovecot restarted)")
                restart_anchor()
                asyncio.run(idle_phase(ba, users))
        finally:
            server_trouble(ba, anchor.stop())

    print()
    anchor_rows = {r.key: r.seconds for r in ba.rows} if ba else {}
    head = "Dovecot" if ba else "Dovecot (earlier)"
    print(f"{'M = ' + str(count):<36} {'pymaild':>10}  {head:>10}  {'ratio':>6}")
    for r in b.rows:
        if r.key.startswith(("select_", "fetch_", "search_", "bodies_", "store_", "unstore_", "sort_",
                             "thread_")):
            shown = f"{r.seconds:8.3f} s" if r.seconds is not None else "    FAILED"
            if ba:
                other = anchor_rows.get(r.key)
                theirs = f"{other:8.3f} s" if other is not None else "       n/a"
                ratio = f"{r.seconds / other:6.2f}" if r.seconds and other else ""
            else:
                theirs, ratio = f"{dovecot(r.key, count):>10}", ""
            print(f"  {r.label:<34} {shown}  {theirs}  {ratio:>6}")
    memory_line(b, "pymaild", f", Dovecot's earlier figure ~{DOVECOT_KIB_PER_IDLE}" if not ba else "")
    if ba:
        memory_line(ba, "Dovecot", ", summed over all its processes")
    if ba:
        for key, label, _command in SORT_COMMANDS:
            ours, theirs = b.orders.get(key), ba.orders.get(key)
            if ours is not None and theirs is not None and ours != theirs:
                at = next((i for i, (x, y) in enumerate(zip(ours, theirs, strict=False)) if x != y),
                          min(len(ours), len(theirs)))
                b.bug(f"{label}: the answer differs from Dovecot's at byte {at}: "
                      f"{ours[at:at + 40]!r} against {theirs[at:at + 40]!r}")
            elif ours is not None and theirs is not None:
                print(f"  {label}: the same order as Dovecot's")
    bugs = b.bugs + [f"(Dovecot) {text}" for text in (ba.bugs if ba else [])]
    if bugs:
        print(f"\n{len(bugs)} server problems:")
        for text in bugs:
            print("  - " + text)
    return 1 if b.bugs else 0


def settle() -> None:
    """Write back every dirty page before a server's sitting: the fill leaves ~1 GB per
    100k messages to flush, and the first server's cold phase would otherwise pay for
    that writeback (its renames wait on the journal) while the second's would not."""
    t0 = time.perf_counter()
    os.sync()
    print(f"  {'sync (dirty pages written back)':<34} {time.perf_counter() - t0:9.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000, help="messages in the INBOX (default 10000)")
    ap.add_argument("--connections", type=int, default=1000,
                    help="idle IDLE connections for the memory figure (default 1000, 0 skips)")
    ap.add_argument("--skip-fill-check", action="store_true",
                    help="do not check the generated Maildir (sizes, MIME of a sample)")
    ap.add_argument("--dir", type=Path, default=None, help="where to make the temporary directory")
    ap.add_argument("--no-dovecot", action="store_true",
                    help="do not run Dovecot (the anchor) after pymaild in the same sitting")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one answer")
    ap.add_argument("--repeat", type=int, default=3,
                    help="run each warm command (and the STORE set/clear cycle) this many times "
                         "and report the median (default 3; cold ones run once)")
    ap.add_argument("--profile", default="",
                    help="py-spy the warm header FETCH into this file (.svg flamegraph, .json "
                         "speedscope, else raw stacks, summarised)")
    ap.add_argument("--profile-command", default=HEADER_FETCH,
                    help="the command --profile records, e.g. 'UID SEARCH SUBJECT quokka' "
                         "(default: the header FETCH); several separated by ';;' run in turn")
    ap.add_argument("--profile-wall", action="store_true",
                    help="sample every thread, idle ones too, instead of only the GIL holder")
    ap.add_argument("--profile-repeat", type=int, default=1,
                    help="run the profiled command this many times (more samples for fast ones)")
    args = ap.parse_args()
    if args.count < 100:
        ap.error("--count must be at least 100")
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        code = run(Path(tmp), args)
    sys.exit(code)


if __name__ == "__main__":
    main()
