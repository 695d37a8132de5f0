"""IMAPSession driven in-process: no socket, no server task, no sleeping.

The session is built as the server builds it, over a real backend (a real account store,
a real Maildir++ in tmp_path, the real change hub), with an ``Output`` that collects what
it writes. Commands come from the real parser, as the framer hands them over. The clock
and the thread runner are the session's injected ones: a clock the test advances, and in
some tests a runner that does the disk work inline, in this thread.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailserver.auth.passwords import PasswordChecker, make_hasher
from mailserver.auth.ratelimit import AuthThrottle
from mailserver.auth.store import AccountStore
from mailserver.imap.backend import IMAPBackend, IMAPLimits
from mailserver.imap.commands import parse_command
from mailserver.imap.session import Action, IMAPSession, Output
from mailserver.imap.session_core import ThreadRunner

PASSWORD = "password-123456"
USER = "alice@example.test"
KEEPALIVE = 120.0
IDLE_TIMEOUT = 300.0

T = TypeVar("T")


class Collected(Output):
    """What the session wrote, as the client would read it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def take(self) -> list[bytes]:
        """The responses written since the last take, one per item (a literal stays inside
        the response that announced it with ``{n}``)."""
        text, self.data = bytes(self.data), bytearray()
        lines: list[bytes] = []
        start = pos = 0
        while pos < len(text):
            end = text.index(b"\r\n", pos) + 2
            literal = re.search(rb"\{(\d+)\}\r\n$", text[pos:end])
            if literal:
                pos = end + int(literal.group(1))  # the line goes on after the literal
                continue
            lines.append(text[start:end])
            start = pos = end
        return lines


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class InlineRunner:
    """Runs the session's disk work at once in the calling thread, and records it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.threads: set[int] = set()

    async def __call__(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        self.calls.append(getattr(func, "__name__", repr(func)))
        self.threads.add(threading.get_ident())
        return func(*args, **kwargs)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[IMAPBackend]:
    hasher = make_hasher(time_cost=1, memory_cost_kib=8, parallelism=1)
    store = AccountStore.in_state_dir(tmp_path / "state", hasher=hasher)
    store.create_account(USER, PASSWORD)
    yield IMAPBackend(hostname="mx.example.test", store=store, passwords=PasswordChecker(hasher=hasher),
                      throttle=AuthThrottle(), limits=IMAPLimits(idle_keepalive=KEEPALIVE,
                                                                 idle_timeout=IDLE_TIMEOUT))
    store.close()


class Client:
    """One session and its output, with the server's order of calls per command."""

    def __init__(self, backend: IMAPBackend, *, now: Callable[[], float] | None = None,
                 run_in_thread: ThreadRunner | None = None) -> None:
        self.out = Collected()
        extra: dict[str, Any] = {}
        if now is not None:
            extra["now"] = now
        if run_in_thread is not None:
            extra["run_in_thread"] = run_in_thread
        self.session = IMAPSession(backend, self.out, client_ip="127.0.0.1", listener="imaps", tls=True,
                                   starttls_available=False, session_id="t", **extra)
        self.out.take()

    async def run(self, line: bytes) -> tuple[Action, list[bytes]]:
        cmd = parse_command(line + b"\r\n")
        action = await self.session.execute(cmd)
        if action in (Action.NONE, Action.RESUME):
            await self.session.after_command(cmd)
        return action, self.out.take()

    async def ok(self, line: bytes) -> list[bytes]:
        _action, lines = await self.run(line)
        tag = line.split(b" ", 1)[0]
        assert lines and lines[-1].startswith(tag + b" OK"), lines
        # The tagged response is the last thing written: nothing may follow it.
        assert not [x for x in lines[:-1] if x.startswith(tag + b" ")], lines
        return lines

    async def login_and_select(self) -> list[bytes]:
        await self.ok(f"l LOGIN {USER} {PASSWORD}".encode())
        return await self.ok(b"s SELECT INBOX")


async def append(client: Client, subject: str) -> None:
    body = f"Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode()
    await client.ok(b"a APPEND INBOX {%d+}\r\n" % len(body) + body)


async def test_login_select_fetch_store_with_inline_disk_work(backend: IMAPBackend) -> None:
    runner = InlineRunner()
    c = Client(backend, run_in_thread=runner)
    _action, lines = await c.run(f"l LOGIN {USER} wrong-password".encode())
    assert lines[-1].startswith(b"l NO [AUTHENTICATIONFAILED]")
    lines = await c.ok(f"l LOGIN {USER} {PASSWORD}".encode())
    assert b"[CAPABILITY " in lines[-1] and b"IDLE" in lines[-1]
    assert c.session.user == USER
    await append(c, "one")
    await append(c, "two")
    lines = await c.ok(b"s SELECT INBOX")
    assert b"* 2 EXISTS\r\n" in lines and lines[-1].startswith(b"s OK [READ-WRITE]")
    lines = await c.ok(b"f FETCH 1:2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert lines[0].startswith(b"* 1 FETCH (FLAGS (\\Recent) BODY[HEADER.FIELDS (SUBJECT)] {")
    assert b"Subject: one" in lines[0] and b"Subject: two" in lines[1]
    lines = await c.ok(b"t STORE 2 +FLAGS (\\Flagged)")
    assert lines[0] == b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))\r\n", lines
    lines = await c.ok(b"u UID FETCH 2 (FLAGS)")
    assert lines[0] == b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))\r\n"
    # Every bit of disk work went through the injected runner, here, in this thread.
    assert {"store_flags", "open_index", "render", "mailbox_store"} <= set(runner.calls), runner.calls
    assert runner.threads == {threading.get_ident()}
    c.session.close()


async def test_expunge_by_another_session_waits_for_noop(backend: IMAPBackend) -> None:
    """RFC 3501 7.4.1: the second session hears of the EXPUNGE inside a command that may
    carry it (NOOP), before its tagged OK; not during a FETCH by sequence number, and
    never after a tagged OK (no command in progress then)."""
    a, b = Client(backend), Client(backend)  # the daemon's runner: asyncio.to_thread
    await a.login_and_select()
    for subject in ("one", "two", "three"):
        await append(a, subject)
    await a.ok(b"n NOOP")
    lines = await b.login_and_select()
    assert b"* 3 EXISTS\r\n" in lines
    await a.ok(b"d STORE 2 +FLAGS.SILENT (\\Deleted)")
    lines = await a.ok(b"x EXPUNGE")
    assert lines == [b"* 2 EXPUNGE\r\n", b"x OK EXPUNGE completed\r\n"]
    lines = await b.ok(b"f FETCH 1:3 (FLAGS)")
    assert not [x for x in lines if x.endswith(b" EXPUNGE\r\n")], lines
    assert lines[-1] == b"f OK FETCH completed\r\n"
    assert len(b.session._sel().index) == 3  # the expunged message is still in b's view
    lines = await b.ok(b"n NOOP")
    assert lines == [b"* 2 EXPUNGE\r\n", b"n OK NOOP completed\r\n"]
    lines = await b.ok(b"f FETCH 1:* (UID)")
    assert lines == [b"* 1 FETCH (UID 1)\r\n", b"* 2 FETCH (UID 3)\r\n", b"f OK FETCH completed\r\n"]
    a.session.close()
    b.session.close()


async def test_idle_keepalive_and_autologout_by_the_clock(backend: IMAPBackend) -> None:
    clock = Clock()
    c = Client(backend, now=clock, run_in_thread=InlineRunner())
    await c.login_and_select()
    action, lines = await c.run(b"i IDLE")
    assert action is Action.IDLE and lines == [b"+ idling\r\n"]
    idle_since = clock.t
    assert c.session.next_deadline() is None  # the transport is not waiting yet
    c.session.begin_idle_wait()
    assert c.session.next_deadline() == idle_since + KEEPALIVE
    clock.t = idle_since + KEEPALIVE
    assert c.session.on_deadline()
    assert c.out.take() == [b"* OK Still here\r\n"]
    assert c.session.next_deadline() == idle_since + 2 * KEEPALIVE
    clock.t = idle_since + 2 * KEEPALIVE
    assert c.session.on_deadline()
    assert c.out.take() == [b"* OK Still here\r\n"]
    # The next keepalive comes after IDLE_TIMEOUT of silence: the session says autologout.
    clock.t = c.session.next_deadline() or 0.0
    assert clock.t - idle_since > IDLE_TIMEOUT
    assert not c.session.on_deadline()
    assert c.out.take() == []
    c.session.end_idle_wait()
    assert c.session.next_deadline() is None
    c.session.close()


async def test_done_restarts_the_autologout_clock(backend: IMAPBackend) -> None:
    clock = Clock()
    c = Client(backend, now=clock)
    await c.login_and_select()
    await c.run(b"i IDLE")
    c.session.begin_idle_wait()
    clock.t += IDLE_TIMEOUT - 1
    c.session.end_idle_wait()
    c.session.idle_done("i")  # DONE, just before the timeout
    await c.session.report_if_dirty()
    assert c.out.take() == [b"i OK IDLE terminated\r\n"]
    await c.run(b"j IDLE")
    c.session.begin_idle_wait()
    clock.t += IDLE_TIMEOUT - 1  # long past the first IDLE's timeout, not this one's
    assert c.session.on_deadline()
    clock.t += 2
    assert not c.session.on_deadline()
    c.session.close()


async def test_a_change_wakes_the_idle_wait_and_restarts_the_keepalive(backend: IMAPBackend) -> None:
    clock = Clock()
    idler, writer = Client(backend, now=clock), Client(backend)
    await idler.login_and_select()
    await writer.ok(f"l LOGIN {USER} {PASSWORD}".encode())
    await idler.run(b"i IDLE")
    wake = idler.session.begin_idle_wait()
    assert not wake.is_set()
    clock.t += 100
    await append(writer, "news")  # the hub tells the idler's session
    assert wake.is_set()
    await idler.session.push_changes()
    assert idler.out.take() == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert idler.session.next_deadline() == clock.t + KEEPALIVE
    idler.session.end_idle_wait()
    idler.session.close()
    writer.session.close()
