"""Crash-consistency harness: a real pymaild on powercutfs under load, power cuts at random.

Used by ``tests/test_powercut.py`` (short runs in CI) and ``bench/powercut.py`` (long
runs). See docs/design-notes.md, "Power cuts".

The daemon's whole ``state_dir`` lives on :mod:`tests.support.powercutfs`. Worker threads
load every durable path at once and record what the server acknowledged:

* MX: SMTP to port 25 for alice and bob (Maildir delivery), ack = 250;
* submission: alice sends to a remote domain through the queue, to a relay sink that
  answers 451 to two messages in three (state changes: attempts, retry times) and 250 to
  the rest (removal), ack = 250 to the client;
* IMAP: APPEND to Work, COPY to Keep, MOVE to Moved, STORE \\Deleted + EXPUNGE in Keep,
  now and then SELECT INBOX (its new/ files move to cur/), ack = tagged OK;
* ``pymaild creds create`` for new accounts, ack = exit status 0;
* the first start itself: DKIM keys and every directory, ack = "pymaild ready".

A cutter thread takes power cuts (:meth:`PowerCutFS.cut`) one after the other without
stopping anything, and checks each cut against the acknowledgements recorded *before*
it began (:meth:`Harness.check`): every acknowledged message present and whole (at most
one duplicate), no partial file in new/ or cur/, acknowledged expunges not undone, the
UIDs the client was given still naming the same messages, acknowledged accounts and DKIM
keys there and unchanged, queue state files that load. Now and then a cut is also opened
by pymaild itself (a second daemon on the recovered state_dir, read over IMAP).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import random
import re
import shutil
import smtplib
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailserver.auth.store import AccountStore
from tests.support.ca import TestCA
from tests.support.daemon import REPO, PymaildProcess, free_port
from tests.support.powercutfs import PowerCutFS

PASSWORD = "password-123456"
TOKEN = re.compile(rb"X-Test-Token: ([a-z]+-\d+)\r\n")
FOLDERS = ("Work", "Keep", "Moved")


def message(token: str, rcpt: str, size: int) -> bytes:
    body = b"".join(b"line %05d of a power-cut test message %s\r\n" % (i, token.encode())
                    for i in range(size // 50 + 1))
    return (f"From: alice@example.test\r\nTo: {rcpt}\r\nSubject: {token}\r\n"
            f"Message-ID: <{token}@example.test>\r\nX-Test-Token: {token}\r\n\r\n").encode() + body


class Daemon(PymaildProcess):
    """A pymaild started through tests.support.fsyncskip (``site`` "" removes nothing)."""

    site = ""

    def start(self, timeout: float = 30.0) -> None:
        self._ready.clear()
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), **self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fsyncskip", self.site, "run", "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("pymaild did not start:\n" + "\n".join(self.log_lines[-40:]))


class Sink(socketserver.ThreadingTCPServer):
    """The remote side of the queue: 451 to two messages in three, 250 to the rest.

    A token is recorded as delivered under ``lock`` *before* the 250 goes out, so a cut
    taken under the same lock sees every message the queue may already have removed."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, accept_every: int = 3) -> None:
        self.lock = threading.Lock()
        self.delivered: set[str] = set()
        self.accept_every = accept_every
        self.attempts = 0
        super().__init__(("127.0.0.1", 0), _SinkHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _SinkHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):  # the daemon killed at the end resets connections
            self._handle()

    def _handle(self) -> None:
        server: Sink = self.server  # type: ignore[assignment]
        w = self.wfile.write
        w(b"220 sink.remote.example ESMTP\r\n")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                w(b"250 sink.remote.example\r\n")
            elif verb == b"DATA":
                w(b"354 go on\r\n")
                data = bytearray()
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk
                m = TOKEN.search(data)
                with server.lock:
                    server.attempts += 1
                    accept = m is not None and server.attempts % server.accept_every == 0
                    if accept and m is not None:
                        server.delivered.add(m.group(1).decode())
                    w(b"250 ok\r\n" if accept else b"451 try again later\r\n")
            elif verb == b"QUIT":
                w(b"221 bye\r\n")
                return
            else:
                w(b"250 ok\r\n")


@dataclass
class ImapAck:
    data: bytes
    must: list[set[str]] = field(default_factory=list)  # each: present in one of these folders
    gone: set[str] = field(default_factory=set)  # acknowledged expunges: never back here
    uids: dict[str, int] = field(default_factory=dict)


@dataclass
class Acks:
    mx: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # token -> (account, bytes)
    sub: dict[str, bytes] = field(default_factory=dict)
    imap: dict[str, ImapAck] = field(default_factory=dict)
    accounts: set[str] = field(default_factory=set)
    dkim: dict[str, bytes] = field(default_factory=dict)  # path under state/ -> bytes

    def copy(self) -> Acks:
        return Acks(
            dict(self.mx), dict(self.sub),
            {t: ImapAck(a.data, [set(c) for c in a.must], set(a.gone), dict(a.uids))
             for t, a in self.imap.items()},
            set(self.accounts), dict(self.dkim),
        )


class Harness:
    def __init__(self, work: Path, ca: TestCA, *, site: str = "", seed: int = 0,
                 paths: tuple[str, ...] = ("mx", "sub", "imap", "creds"), pause: float = 0.1,
                 open_every: int = 100) -> None:
        self.work = work
        self.ca = ca
        self.site = site
        self.paths = paths
        self.rng = random.Random(seed)
        self.pause = pause  # between two messages of one MX worker
        self.open_every = open_every  # every so many cuts, start pymaild on the cut
        self.timing: dict[str, float] = {"cut": 0.0, "check": 0.0, "uids": 0.0, "open": 0.0}
        self.fs = PowerCutFS(work / "mnt", work / "ctl.sock")
        # Cuts are written and read once: in memory if the machine has a tmpfs for it.
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else work
        self.cuts_dir = Path(tempfile.mkdtemp(prefix="powercut-", dir=base))
        self.sink = Sink()
        self.lock = threading.Lock()  # acks
        self.acks = Acks()
        self.sent: dict[str, bytes] = {}  # every message ever sent (acknowledged or not)
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.cuts = 0
        self.opened = 0  # cuts opened by a second pymaild
        self.violations: list[str] = []
        self.errors: list[str] = []
        self._n = 0
        self.daemon: Daemon | None = None

    # ------------------------------------------------------------------ setup

    def _config(self) -> dict[str, Any]:
        cert, key = self.ca.issue("mx.example.test", "localhost", stem=f"pc{os.getpid()}{id(self)}")
        self.ports = {k: free_port() for k in ("smtp", "submission", "imaps")}
        return {
            "hostname": "mx.example.test",
            "primary_domain": "example.test",
            "local_domains": ["example.test"],
            "state_dir": str(self.fs.mountpoint / "state"),
            "tls": {"cert": str(cert), "key": str(key)},
            "listen": {k: [f"127.0.0.1:{p}"] for k, p in self.ports.items()},
            "checks": {"spf": False, "dkim": False, "dmarc": False},
            "dns": {"nameservers": ["127.0.0.1:9"], "timeout": "3s"},
            "submission": {"max_auth_failures_per_ip": 1000, "max_auth_failures_per_account": 1000},
            "queue": {"retry_schedule": ["0s", "300ms"]},
            "delivery": {"relay": f"127.0.0.1:{self.sink.server_address[1]}", "relay_tls": "none",
                         "mta_sts": False},
        }

    def start(self) -> None:
        self.fs.start()
        daemon = Daemon(self.work / "daemon", self._config())
        daemon.site = self.site
        daemon.host, daemon.port = "127.0.0.1", self.ports["smtp"]
        self.daemon = daemon
        # state_dir itself is the installation's (systemd's StateDirectory=): durable at start.
        daemon.state_dir.mkdir(mode=0o700)
        self.fs.sync_all()
        # The cutter runs from the first byte: account creation and the first start too.
        self._spawn(self._cutter)
        # The two accounts the load uses: made here; the creds worker covers `pymaild creds
        # create` with the site removed. Hashed with the daemon's own parameters: a cheaper
        # hash would be replaced at the first login (auth/login.py), and that write to
        # accounts.db fsyncs state_dir, hiding a missing fsync of the queue's directory.
        store = AccountStore.in_state_dir(daemon.state_dir)
        try:
            for address in ("alice@example.test", "bob@example.test"):
                store.create_account(address, PASSWORD)
                with self.lock:
                    self.acks.accounts.add(address)
        finally:
            store.close()
        daemon.start()
        with self.lock:
            for path in sorted((daemon.state_dir / "dkim").iterdir()):
                if not path.name.startswith("."):
                    self.acks.dkim[f"dkim/{path.name}"] = path.read_bytes()
        if "mx" in self.paths:
            self._spawn(self._mx, "alice")
            self._spawn(self._mx, "bob")
        if "sub" in self.paths:
            self._spawn(self._submission)
        if "imap" in self.paths:
            self._spawn(self._imap)
        if "creds" in self.paths:
            self._spawn(self._creds_loop)

    def _spawn(self, fn: Any, *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            except Exception as exc:  # a worker's own failure is a test failure too
                if not self.stop_event.is_set():
                    self.errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")
                    self.stop_event.set()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)
        if self.daemon is not None:
            self.daemon.kill()  # the cuts are taken; no need to drain
        self.fs.stop()
        self.sink.shutdown()
        self.sink.server_close()
        shutil.rmtree(self.cuts_dir, ignore_errors=True)

    def run(self, seconds: float, *, max_cuts: int | None = None, until_violation: bool = False) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stop_event.is_set():
            if max_cuts is not None and self.cuts >= max_cuts:
                break
            if until_violation and self.violations:
                break
            time.sleep(0.05)

    def token(self, kind: str) -> str:
        with self.lock:
            self._n += 1
            return f"{kind}-{self._n}"

    # ------------------------------------------------------------------ workers

    def _creds(self, address: str) -> None:
        assert self.daemon is not None
        env = dict(os.environ, PYTHONPATH=str(REPO))
        r = subprocess.run(
            [sys.executable, "-m", "tests.support.fsyncskip", self.site, "creds", "create", address,
             "--password-stdin", "-c", str(self.daemon.config_path)],
            input=PASSWORD + "\n", capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"creds create {address}: {r.stderr.strip()}")
        with self.lock:
            self.acks.accounts.add(address)

    def _creds_loop(self) -> None:
        while not self.stop_event.wait(1.0):
            self._creds(f"{self.token('user')}@example.test")

    def _mx(self, user: str) -> None:
        d = self.daemon
        assert d is not None
        rcpt = f"{user}@example.test"
        while not self.stop_event.is_set():
            with smtplib.SMTP(d.host, d.port, local_hostname="c.example.net", timeout=30) as client:
                for _ in range(20):
                    if self.stop_event.wait(self.pause):
                        return
                    token = self.token("mx")
                    msg = message(token, rcpt, self.rng.choice((300, 2000, 30_000)))
                    with self.lock:
                        self.sent[token] = msg
                    client.sendmail("sender@example.net", [rcpt], msg)
                    with self.lock:  # only reached after the server's 250
                        self.acks.mx[token] = (user, msg)

    def _submission(self) -> None:
        d = self.daemon
        assert d is not None
        while not self.stop_event.is_set():
            client = smtplib.SMTP("127.0.0.1", self.ports["submission"], local_hostname="laptop", timeout=30)
            try:
                client._host = "mx.example.test"  # type: ignore[attr-defined]
                client.starttls(context=self.ca.client_context())
                client.ehlo("laptop")
                client.login("alice@example.test", PASSWORD)
                for _ in range(20):
                    if self.stop_event.wait(0.02):
                        return
                    token = self.token("sub")
                    msg = message(token, "carol@remote.example", 1500)
                    with self.lock:
                        self.sent[token] = msg
                    client.sendmail("alice@example.test", ["carol@remote.example"], msg)
                    with self.lock:
                        self.acks.sub[token] = msg
            finally:
                with contextlib.suppress(Exception):
                    client.quit()

    def _imap(self) -> None:
        ctx = self.ca.client_context()
        ctx.check_hostname = False
        m = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=ctx, timeout=30)
        m.login("alice@example.test", PASSWORD)
        for folder in FOLDERS:
            m.create(folder)
        def ok(resp: tuple[str, list[Any]], what: str) -> bytes:
            typ, data = resp
            if typ != "OK":
                raise RuntimeError(f"IMAP {what}: {typ} {data}")
            return b" ".join(x for x in data if isinstance(x, bytes))

        n = 0
        while not self.stop_event.is_set():
            n += 1
            token = self.token("imap")
            msg = message(token, "alice@example.test", self.rng.choice((400, 5000)))
            with self.lock:
                self.sent[token] = msg
            text = ok(m.append("Work", "(\\Seen)", None, msg), "APPEND")
            uid = int(re.search(rb"APPENDUID \d+ (\d+)", text).group(1))  # type: ignore[union-attr]
            with self.lock:
                self.acks.imap[token] = ImapAck(msg, [{"Work"}], set(), {"Work": uid})
            ok(m.select("Work"), "SELECT")
            m.response("COPYUID")  # forget older ones
            ok(m.uid("COPY", str(uid), "Keep"), "COPY")
            keep_uid = int(m.response("COPYUID")[1][-1].split()[2])
            with self.lock:
                a = self.acks.imap[token]
                a.must.append({"Keep"})
                a.uids["Keep"] = keep_uid
                a.must[0] = {"Work", "Moved"}  # the MOVE below may be anywhere in between
                del a.uids["Work"]
            ok(m.uid("MOVE", str(uid), "Moved"), "MOVE")
            with self.lock:
                a = self.acks.imap[token]
                a.must[0] = {"Moved"}
                a.gone.add("Work")
            if n % 2 == 0:
                ok(m.select("Keep"), "SELECT")
                with self.lock:
                    a = self.acks.imap[token]
                    a.must.remove({"Keep"})
                    del a.uids["Keep"]
                ok(m.uid("STORE", str(keep_uid), "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
                ok(m.uid("EXPUNGE", str(keep_uid)), "UID EXPUNGE")
                with self.lock:
                    self.acks.imap[token].gone.add("Keep")
            if n % 5 == 0:
                ok(m.select("INBOX"), "SELECT")
            self.stop_event.wait(0.01)
        with contextlib.suppress(Exception):
            m.logout()

    # ------------------------------------------------------------------ cuts

    def _cutter(self) -> None:
        i = 0
        while not self.stop_event.is_set():
            i += 1
            target = self.cuts_dir / f"cut-{i}"
            mode = "names" if i % 4 == 0 else "strict"
            t0 = time.perf_counter()
            # Clients record an acknowledgement after the reply and widen what they
            # require (MOVE, EXPUNGE) before the command, both under self.lock: holding
            # it across the cut makes the copy exact. No 250 from the remote either.
            with self.lock:
                acks = self.acks.copy()
                with self.sink.lock:
                    delivered = set(self.sink.delivered)
                    self.fs.cut(target, mode)
                sent = dict(self.sent)
            t1 = time.perf_counter()
            problems = self.check(target / "state", acks, sent, delivered,
                                  open_it=(i % self.open_every == 0))
            self.timing["cut"] += t1 - t0
            self.timing["check"] += time.perf_counter() - t1
            self.cuts += 1
            if problems:
                self.violations.extend(f"cut {i} ({mode}): {p}" for p in problems)
                keep = self.work / "failed-cuts" / f"cut-{i}"  # for a human to look at
                keep.parent.mkdir(exist_ok=True)
                if len(list(keep.parent.iterdir())) < 3:
                    shutil.move(str(target), keep)
            shutil.rmtree(target, ignore_errors=True)

    def check(self, state: Path, acks: Acks, sent: dict[str, bytes], delivered: set[str],
              open_it: bool = False) -> list[str]:
        """Every violation of the invariant in the recovered ``state`` directory."""
        problems: list[str] = []
        mail = state / "mail" / "example.test"
        # Every visible message file, whole; where each token is.
        found: dict[tuple[str, str, str], int] = {}  # (account, folder, token) -> copies
        if mail.is_dir():
            for account in mail.iterdir():
                for folder_dir, folder in [(account, "INBOX")] + [
                    (p, p.name[1:]) for p in account.iterdir() if p.name.startswith(".") and p.is_dir()
                ]:
                    for sub in ("new", "cur"):
                        with contextlib.suppress(FileNotFoundError):
                            for entry in os.scandir(folder_dir / sub):
                                data = Path(entry.path).read_bytes()
                                m = TOKEN.search(data)
                                where = f"{account.name}/{folder}/{sub}/{entry.name}"
                                if m is None or m.group(1).decode() not in sent:
                                    problems.append(f"partial or unknown file visible: {where} "
                                                    f"({len(data)} bytes)")
                                    continue
                                token = m.group(1).decode()
                                if not data.endswith(sent[token]):
                                    problems.append(f"{token}: partial file visible: {where}")
                                    continue
                                size = re.search(r",S=(\d+)", entry.name)
                                if size and int(size.group(1)) != len(data):
                                    problems.append(f"{token}: S= says {size.group(1)}, file has {len(data)}")
                                key = (account.name, folder, token)
                                found[key] = found.get(key, 0) + 1
        for key, copies in found.items():
            if copies > 2:
                problems.append(f"{key[2]}: {copies} copies in {key[0]}/{key[1]}")
        for token, (user, _msg) in acks.mx.items():
            if not found.get((user, "INBOX", token)):
                problems.append(f"{token}: got 250, not in {user}'s INBOX")
        for token, a in acks.imap.items():
            for clause in a.must:
                if not any(found.get(("alice", f, token)) for f in clause):
                    problems.append(f"{token}: acknowledged, in none of {sorted(clause)}")
            for f in a.gone:
                if found.get(("alice", f, token)):
                    problems.append(f"{token}: expunge from {f} acknowledged, but it is back")
        problems += self._check_queue(state, acks, sent, delivered)
        problems += self._check_accounts(state, acks)
        for rel, data in acks.dkim.items():
            try:
                now = (state / rel).read_bytes()
            except FileNotFoundError:
                problems.append(f"{rel}: DKIM file gone")
                continue
            if now != data:
                problems.append(f"{rel}: DKIM file changed ({len(now)} bytes)")
        t0 = time.perf_counter()
        if not problems:
            problems += self._check_uids(mail / "alice", acks)
        t1 = time.perf_counter()
        if open_it and not problems:
            problems += self._open_with_pymaild(state, acks)
        self.timing["uids"] += t1 - t0
        self.timing["open"] += time.perf_counter() - t1
        return problems

    def _check_queue(self, state: Path, acks: Acks, sent: dict[str, bytes],
                     delivered: set[str]) -> list[str]:
        from mailserver.delivery import queue_store

        problems: list[str] = []
        qdir = state / "queue"
        queued: set[str] = set()
        if qdir.is_dir():
            with contextlib.suppress(FileNotFoundError):
                entries = queue_store.load_for_owner(qdir)
                for entry in entries:
                    data = queue_store.read_data(qdir, entry.id)
                    m = TOKEN.search(data)
                    if m is None or not data.endswith(sent.get(m.group(1).decode(), b"\0")):
                        problems.append(f"queue {entry.id}: data file is not a whole message")
                        continue
                    queued.add(m.group(1).decode())
            corrupt = qdir / queue_store.CORRUPT_DIR
            if corrupt.is_dir() and any(corrupt.iterdir()):
                problems.append(f"queue: entries could not be loaded: {sorted(os.listdir(corrupt))}")
        for token in acks.sub:
            if token not in queued and token not in delivered:
                problems.append(f"{token}: got 250 on submission, neither queued nor delivered")
        return problems

    def _check_accounts(self, state: Path, acks: Acks) -> list[str]:
        if not acks.accounts:
            return []
        from mailserver.auth.store import AccountStore

        problems: list[str] = []
        try:
            store = AccountStore.in_state_dir(state)
        except Exception as exc:
            return [f"accounts database does not open: {type(exc).__name__}: {exc}"]
        try:
            for address in sorted(acks.accounts):
                if store.get_account(address) is None:
                    problems.append(f"account {address}: created (exit 0), not in the database")
                elif not (store.maildir_path(address) / "new").is_dir():
                    problems.append(f"account {address}: Maildir missing")
        except Exception as exc:
            problems.append(f"accounts database: {type(exc).__name__}: {exc}")
        finally:
            store.close()
        return problems

    def _check_uids(self, alice: Path, acks: Acks) -> list[str]:
        """The UIDs APPENDUID/COPYUID gave the client still name the same messages."""
        from mailserver.storage.index import MailboxIndex

        wanted: dict[str, dict[int, str]] = {}
        for token, a in acks.imap.items():
            for folder, uid in a.uids.items():
                wanted.setdefault(folder, {})[uid] = token
        problems: list[str] = []
        for folder, uids in wanted.items():
            d = alice / f".{folder}"
            if not (d / "cur").is_dir():
                problems.append(f"folder {folder} gone")
                continue
            try:
                with MailboxIndex(d) as index:
                    index.sync()
                    for uid, token in uids.items():
                        try:
                            with index.open(uid) as f:
                                data = f.read()
                        except Exception as exc:
                            problems.append(f"{token}: UID {uid} in {folder} was acknowledged, now "
                                            f"{type(exc).__name__}")
                            continue
                        if not data.endswith(acks.imap[token].data):
                            problems.append(f"{token}: UID {uid} in {folder} names another message")
            except Exception as exc:
                problems.append(f"index of {folder}: {type(exc).__name__}: {exc}")
        return problems

    def _open_with_pymaild(self, state: Path, acks: Acks) -> list[str]:
        """Start a second pymaild on the recovered state; every message it serves is whole."""
        assert self.daemon is not None
        self.opened += 1
        config = dict(self.daemon.config)
        config["state_dir"] = str(state)
        ports = {k: free_port() for k in ("smtp", "imaps")}
        config["listen"] = {k: [f"127.0.0.1:{p}"] for k, p in ports.items()}
        config["delivery"] = dict(config["delivery"], relay="127.0.0.1:9")
        d = Daemon(state.parent / "daemon", config)
        problems: list[str] = []
        try:
            d.start()
        except RuntimeError as exc:
            return [f"pymaild does not start on the recovered state: {exc}"]
        if "alice@example.test" not in acks.accounts:
            d.stop()
            return []
        try:
            ctx = self.ca.client_context()
            ctx.check_hostname = False
            m = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], ssl_context=ctx, timeout=30)
            m.login("alice@example.test", PASSWORD)
            for folder in ("INBOX", *FOLDERS):
                typ, data = m.select(folder)
                if typ != "OK":
                    continue
                if int(data[0] or 0) == 0:
                    continue
                typ, data = m.fetch("1:*", "(BODY.PEEK[])")
                for item in data:
                    if isinstance(item, tuple):
                        body = item[1]
                        t = TOKEN.search(body)
                        if t is None:
                            problems.append(f"IMAP serves a partial message in {folder}")
            m.logout()
        except Exception as exc:
            problems.append(f"IMAP on the recovered state: {type(exc).__name__}: {exc}")
        finally:
            d.stop()
        return problems


def mounted_ok() -> str | None:
    """Why FUSE cannot be used here, or None."""
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not installed (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401
    except ImportError:
        return "mfusepy not installed"
    except OSError as exc:
        return f"libfuse3 not loadable: {exc}"
    return None
