"""The durable outbound queue: real files, real asyncio, a controllable clock.

The scheduler compares due times with the injected clock but sleeps in real time
(at most ``control_interval``, 20 ms here), so advancing the fake clock and calling
``wake()`` makes due work happen within a few milliseconds.
"""

from __future__ import annotations

import asyncio
import email
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from mailserver.delivery import queue_store as store
from mailserver.delivery.queue import Queue, QueuedMessage, QueueError
from mailserver.delivery.results import DeliveryResult, from_reply, perm
from tests.support.wait import async_wait_until

T0 = 1_700_000_000.0
# What the next hop said, as remote delivery reports it.
SENT = from_reply(250, "2.0.0 ok", "mx.example.net", module="remote")
TEMP = from_reply(451, "4.7.1 greylisted", "mx.example.net", module="remote")
PERM = from_reply(550, "5.1.1 no such user", "mx.example.net", module="remote")

MESSAGE = (b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hello\r\n"
           b"Message-ID: <hello-1@example.org>\r\n\r\nbody line\r\n")


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Harness:
    """Scripted deliver/bounce functions that record every call."""

    def __init__(self) -> None:
        self.deliveries: list[QueuedMessage] = []
        self.bounces: list[tuple[str, bytes]] = []
        self.results: dict[str, list[DeliveryResult | Exception]] = {}
        self.default: DeliveryResult = SENT
        self.gate: asyncio.Event | None = None
        self.active = 0
        self.max_active = 0
        self.active_ids: set[str] = set()
        self.overlap = False
        self.bounce_errors = 0

    async def deliver(self, msg: QueuedMessage) -> dict[str, DeliveryResult]:
        if msg.id in self.active_ids:
            self.overlap = True
        self.active_ids.add(msg.id)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.deliveries.append(msg)
        try:
            if self.gate is not None:
                await self.gate.wait()
            out: dict[str, DeliveryResult] = {}
            for rcpt in msg.recipients:
                script = self.results.get(rcpt)
                res = script.pop(0) if script else self.default
                if isinstance(res, Exception):
                    raise res
                out[rcpt] = res
            return out
        finally:
            self.active -= 1
            self.active_ids.discard(msg.id)

    async def bounce(self, sender: str, dsn: bytes) -> None:
        if self.bounce_errors:
            self.bounce_errors -= 1
            raise ConnectionError("local delivery of the bounce failed")
        self.bounces.append((sender, dsn))


def make_queue(directory: Path, h: Harness, clock: Clock, **kw: Any) -> Queue:
    args: dict[str, Any] = dict(
        deliver=h.deliver, bounce=h.bounce, hostname="mx1.example.org",
        is_local_sender=lambda a: a.endswith("@example.org"), clock=clock, jitter=0.0,
        control_interval=0.02, stop_timeout=2.0,
    )
    args.update(kw)
    return Queue(directory, **args)


@asynccontextmanager
async def running(q: Queue) -> AsyncIterator[Queue]:
    task = asyncio.create_task(q.start())
    await q.open()
    try:
        yield q
    finally:
        await q.stop()
        await task


async def until(pred: Callable[[], bool]) -> None:
    """async_wait_until, polling every 5 ms: these tests wait on the scheduler many times
    each, and the default 20 ms poll would add up (the failing line names the condition)."""
    await async_wait_until(pred, interval=0.005, what="the queue condition on the calling line")


async def settle() -> None:
    """Let the scheduler run a few rounds (for asserting that nothing happens): a real
    pause, five control intervals of 20 ms, since there is no event to wait for."""
    await asyncio.sleep(0.1)


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != ".lock")


def rcpt_state(directory: Path, qid: str) -> dict[str, Any]:
    return json.loads(store.state_path(directory, qid).read_bytes())


# ---------------------------------------------------------------------------- durability


async def test_enqueue_commits_data_then_state_with_fsyncs_before_returning(tmp_path, monkeypatch):
    """Spy (not mock) on the real syscalls: the order is the commit protocol."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        real_fsync(fd)
        with lock:
            events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))

    def rename(src: Any, dst: Any) -> None:
        real_rename(src, dst)
        with lock:
            events.append(("rename", os.path.basename(dst)))

    h = Harness()
    q = make_queue(tmp_path / "queue", h, Clock())
    await q.open()
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
    events_at_return = list(events)
    monkeypatch.undo()
    await q.stop()

    assert events_at_return == [
        ("fsync", f"{qid}.eml"),  # the message bytes are durable first
        ("fsync", events_at_return[1][1]),  # then the state's tmp file
        ("rename", f"{qid}.json"),  # the commit point
        ("fsync", "queue"),  # and the directory holding both names
    ]
    assert events_at_return[1][1].startswith(f".{qid}.json.")
    directory = tmp_path / "queue"
    assert files(directory) == [f"{qid}.eml", f"{qid}.json"]
    assert store.read_data(directory, qid) == MESSAGE
    state = rcpt_state(directory, qid)
    assert state["mail_from"] == "alice@example.org"
    assert state["size"] == len(MESSAGE)
    assert state["message_id"] == "<hello-1@example.org>"
    assert state["recipients"][0]["address"] == "bob@example.net"
    assert state["recipients"][0]["state"] == "pending"
    assert oct(store.state_path(directory, qid).stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
async def test_message_id_and_header_come_from_the_header_section(tmp_path, eol):
    # Read with the message module's rule: the first empty line ends the header, CRLF
    # or bare LF; a field folded over two lines is one value (RFC 5322 2.2.3).
    lines = [b"From: alice@example.org", b"Message-ID:", b" <folded-1@example.org>",
             b"Subject: hi", b"", b"Message-ID: <in-the-body@example.org>", b"body"]
    data = eol.join(lines) + eol
    h = Harness()
    h.gate = asyncio.Event()  # no attempt finishes: the entry stays
    directory = tmp_path / "queue"
    async with running(make_queue(directory, h, Clock())) as q:
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], data)
        assert rcpt_state(directory, qid)["message_id"] == "<folded-1@example.org>"
        assert store.read_header(directory, qid) == eol.join(lines[:4]) + eol
        h.gate.set()


async def test_state_rewrites_are_atomic_renames(tmp_path):
    h = Harness()
    h.default = TEMP
    clock = Clock()
    directory = tmp_path / "queue"
    async with running(make_queue(directory, h, clock)) as q:
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
        await until(lambda: (e := q.get(qid)) is not None and e.attempts == 1)
        await until(lambda: rcpt_state(directory, qid)["recipients"][0]["attempts"] == 1)
        inode_before = store.state_path(directory, qid).stat().st_ino
        clock.advance(451)
        q.wake()
        await until(lambda: rcpt_state(directory, qid)["recipients"][0]["attempts"] == 2)
    # A new inode: the state was renamed over, never rewritten in place.
    assert store.state_path(directory, qid).stat().st_ino != inode_before
    assert files(directory) == [f"{qid}.eml", f"{qid}.json"]  # no tmp file left
    r = rcpt_state(directory, qid)["recipients"][0]
    assert (r["code"], r["status"], r["mx"]) == (451, "4.7.1", "mx.example.net")


async def test_restart_resumes_from_disk(tmp_path):
    directory = tmp_path / "queue"
    clock = Clock()
    h1 = Harness()
    h1.default = TEMP
    async with running(make_queue(directory, h1, clock)) as q:
        qid = await q.enqueue("alice@example.org", ["bob@example.net", "carol@example.net"],
                              MESSAGE)
        await until(lambda: q.get(qid).attempts == 1)  # type: ignore[union-attr]
    assert len(h1.deliveries) == 1

    h2 = Harness()  # a new daemon: only what is on disk counts
    q2 = make_queue(directory, h2, clock)
    async with running(q2):
        entry = q2.get(qid)
        assert entry is not None and entry.attempts == 1
        assert [r.address for r in entry.pending] == ["bob@example.net", "carol@example.net"]
        await settle()
        assert h2.deliveries == []  # not due yet
        clock.advance(450)
        q2.wake()
        await until(lambda: q2.get(qid) is None)
    assert len(h2.deliveries) == 1
    msg = h2.deliveries[0]
    assert msg.recipients == ("bob@example.net", "carol@example.net")
    assert msg.data == MESSAGE and msg.attempts == 1 and msg.mail_from == "alice@example.org"
    assert files(directory) == []


async def test_second_owner_is_refused(tmp_path):
    h = Harness()
    q1 = make_queue(tmp_path / "queue", h, Clock())
    await q1.open()
    q2 = make_queue(tmp_path / "queue", h, Clock(), lock_timeout=0.2)
    with pytest.raises(QueueError, match="in use by another process"):
        await q2.open()
    await q1.stop()
    await q2.open()  # free again
    await q2.stop()


# ---------------------------------------------------------------------------- schedule


async def test_schedule_without_jitter_and_expiry_clamp(tmp_path):
    h = Harness()
    h.default = TEMP
    clock = Clock()
    q = make_queue(tmp_path / "queue", h, clock, schedule=(0, 450, 900), max_age=3000,
                   delay_notice_after=None)
    async with running(q):
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
        expected = [T0 + 450, T0 + 450 + 900, T0 + 450 + 900 + 900, T0 + 3000]
        for n, want in enumerate(expected, start=1):
            await until(lambda n=n: q.get(qid).attempts == n)  # type: ignore[union-attr]
            assert q.get(qid).pending[0].next_attempt == want  # type: ignore[union-attr]
            await settle()
            assert len(h.deliveries) == n  # nothing before it is due
            clock.t = want
            q.wake()
        # The attempt at max_age fails temporarily: now it expires.
        await until(lambda: q.get(qid) is None)
    assert len(h.deliveries) == 5
    assert [m.attempts for m in h.deliveries] == [0, 1, 2, 3, 4]


async def test_jitter_spreads_retries_within_bounds(tmp_path):
    import random

    h = Harness()
    h.default = TEMP
    q = make_queue(tmp_path / "queue", h, Clock(), jitter=0.1, rng=random.Random(7))
    async with running(q):
        ids = [await q.enqueue("alice@example.org", [f"r{i}@example.net"], MESSAGE)
               for i in range(30)]
        await until(lambda: all(q.get(i).attempts == 1 for i in ids))  # type: ignore[union-attr]
        delays = [q.get(i).pending[0].next_attempt - T0 for i in ids]  # type: ignore[union-attr]
    assert all(405 <= d <= 495 for d in delays), delays
    assert len({round(d, 3) for d in delays}) > 20  # really spread, not one value
    assert min(delays) < 440 and max(delays) > 460


# ---------------------------------------------------------------------------- outcomes


async def test_temp_then_sent_delivers_once_and_removes(tmp_path):
    h = Harness()
    h.results["bob@example.net"] = [TEMP, SENT]
    clock = Clock()
    directory = tmp_path / "queue"
    async with running(make_queue(directory, h, clock)) as q:
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
        await until(lambda: len(h.deliveries) == 1)
        await until(lambda: q.get(qid).attempts == 1)  # type: ignore[union-attr]
        clock.advance(450)
        q.wake()
        await until(lambda: q.get(qid) is None)
        await settle()
    assert len(h.deliveries) == 2
    assert h.bounces == []
    assert files(directory) == []


async def test_perm_failure_bounces_exact_recipients_once(tmp_path):
    h = Harness()
    h.results = {"bob@example.net": [SENT], "carol@example.net": [PERM],
                 "dave@example.net": [TEMP, PERM]}
    clock = Clock()
    directory = tmp_path / "queue"
    async with running(make_queue(directory, h, clock)) as q:
        qid = await q.enqueue("alice@example.org",
                              ["bob@example.net", "carol@example.net", "dave@example.net"],
                              MESSAGE)
        await until(lambda: len(h.bounces) == 1)
        await settle()
        entry = q.get(qid)
        assert entry is not None
        assert {r.address: r.state for r in entry.recipients} == {
            "bob@example.net": "sent", "carol@example.net": "failed",
            "dave@example.net": "pending"}
        assert entry.failed[0].notified
        # On disk as well: a restart would neither resend to bob nor bounce carol again.
        def on_disk() -> dict[str, tuple[str, bool]]:
            return {r["address"]: (r["state"], r["notified"])
                    for r in rcpt_state(directory, qid)["recipients"]}

        await until(lambda: on_disk()["carol@example.net"] == ("failed", True))
        assert on_disk()["bob@example.net"] == ("sent", False)
        clock.advance(450)
        q.wake()
        await until(lambda: q.get(qid) is None)
    assert [m.recipients for m in h.deliveries] == [
        ("bob@example.net", "carol@example.net", "dave@example.net"), ("dave@example.net",)]
    assert len(h.bounces) == 2
    for (sender, dsn), rcpt in zip(h.bounces, ["carol@example.net", "dave@example.net"],
                                   strict=True):
        assert sender == "alice@example.org"
        msg = email.message_from_bytes(dsn)
        assert msg["To"] == "<alice@example.org>"
        assert msg["Subject"] == "Undelivered Mail Returned to Sender"
        groups = msg.get_payload()[1].get_payload()
        assert [g["Final-Recipient"] for g in groups[1:]] == [f"rfc822; {rcpt}"]
        assert groups[1]["Action"] == "failed"
        assert groups[1]["Status"] == "5.1.1"
        assert groups[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
        assert groups[1]["Remote-MTA"] == "dns; mx.example.net"
        assert b"Subject: hello" in msg.get_payload()[2].get_payload(decode=True)
    assert files(directory) == []


async def test_records_and_bounce_of_our_decision_and_of_a_bare_reply(tmp_path):
    # The record keeps code, status and text as queue files always had them: our own
    # decision without its code in the text, the host's reply as it worded it (here
    # with no enhanced code, so Status is derived and the diagnostic has none).
    h = Harness()
    h.results = {
        "bob@example.net": [perm(556, "5.1.10", "domain example.net does not accept mail (null MX)",
                                 module="routes")],
        "carol@example.net": [from_reply(550, "no such user", "mx.example.net", module="remote")],
    }
    clock = Clock()
    directory = tmp_path / "queue"
    async with running(make_queue(directory, h, clock)) as q:
        h.bounce_errors = 1  # keeps the entry (and its record) until the bounce is retried
        qid = await q.enqueue("alice@example.org", ["bob@example.net", "carol@example.net"], MESSAGE)
        await until(lambda: h.bounce_errors == 0)
        await until(lambda: all(r["state"] == "failed"
                                for r in rcpt_state(directory, qid)["recipients"]))
        assert [(r["code"], r["status"], r["text"], r["mx"])
                for r in rcpt_state(directory, qid)["recipients"]] == [
            (556, "5.1.10", "domain example.net does not accept mail (null MX)", ""),
            (550, "5.0.0", "550 no such user", "mx.example.net"),
        ]
        clock.advance(60)
        q.wake()
        await until(lambda: len(h.bounces) == 1)
    report = email.message_from_bytes(h.bounces[0][1]).get_payload()[1].get_payload()
    assert [(g["Status"], g["Diagnostic-Code"]) for g in report[1:]] == [
        ("5.1.10", "smtp; 556 domain example.net does not accept mail (null MX)"),
        ("5.0.0", "smtp; 550 no such user"),
    ]


async def test_expiry_bounces_with_4_4_7(tmp_path):
    h = Harness()
    h.default = TEMP
    clock = Clock()
    q = make_queue(tmp_path / "queue", h, clock, max_age=1000, delay_notice_after=None)
    async with running(q):
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
        await until(lambda: q.get(qid).attempts == 1)  # type: ignore[union-attr]
        clock.advance(2000)  # e.g. the daemon was down: the next attempt is the last
        q.wake()
        await until(lambda: q.get(qid) is None)
    assert len(h.deliveries) == 2
    assert len(h.bounces) == 1
    msg = email.message_from_bytes(h.bounces[0][1])
    rcpt = msg.get_payload()[1].get_payload()[1]
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "4.4.7"
    assert "expired" in rcpt["Diagnostic-Code"] and "451 4.7.1 greylisted" in rcpt["Diagnostic-Code"]


async def test_delay_notice_sent_once(tmp_path):
    h = Harness()
    h.default = TEMP
    clock = Clock()
    directory = tmp_path / "queue"
    q = make_queue(directory, h, clock, delay_notice_after=3600, schedule=(0, 1000))
    async with running(q):
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
        for _ in range(3):  # attempts at 0, 1000, 2000, 3000: no notice yet
            await until(lambda: q.get(qid).pending[0].next_attempt > clock.t)  # type: ignore[union-attr]
            clock.advance(1000)
            q.wake()
        await until(lambda: len(h.deliveries) == 4)
        await settle()
        assert h.bounces == []
        clock.t = T0 + 3600  # the notice is due before the next attempt (4000)
        q.wake()
        await until(lambda: len(h.bounces) == 1)
        assert len(h.deliveries) == 4
        await until(lambda: rcpt_state(directory, qid)["delay_notice_sent"] is True)
        for _ in range(3):
            clock.advance(1000)
            q.wake()
            await until(lambda: q.get(qid).pending[0].next_attempt > clock.t)  # type: ignore[union-attr]
        await settle()
        h.default = SENT
        clock.advance(1000)
        q.wake()
        await until(lambda: q.get(qid) is None)
    assert len(h.bounces) == 1
    msg = email.message_from_bytes(h.bounces[0][1])
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    rcpt = msg.get_payload()[1].get_payload()[1]
    assert rcpt["Action"] == "delayed" and rcpt["Status"] == "4.7.1"
    assert rcpt["Will-Retry-Until"] is not None


@pytest.mark.parametrize("sender", ["", "stranger@elsewhere.example"])
async def test_no_bounce_for_null_or_foreign_sender(tmp_path, sender, caplog):
    caplog.set_level(logging.INFO, logger="pymaild.queue")
    h = Harness()
    h.default = PERM
    directory = tmp_path / "queue"
    async with running(make_queue(directory, h, Clock(), delay_notice_after=1)) as q:
        qid = await q.enqueue(sender, ["bob@example.net"], MESSAGE)
        await until(lambda: q.get(qid) is None)
        await settle()
    assert len(h.deliveries) == 1
    assert h.bounces == []
    assert files(directory) == []
    assert "no bounce" in caplog.text


async def test_no_delay_notice_for_null_sender(tmp_path):
    h = Harness()
    h.default = TEMP
    clock = Clock()
    directory = tmp_path / "queue"
    async with running(make_queue(directory, h, clock, delay_notice_after=10)) as q:
        qid = await q.enqueue("", ["bob@example.net"], MESSAGE)
        await until(lambda: q.get(qid).attempts == 1)  # type: ignore[union-attr]
        clock.advance(100)
        q.wake()
        await until(lambda: rcpt_state(directory, qid)["delay_notice_sent"])
    assert h.bounces == []


async def test_deliver_raising_is_a_temporary_failure(tmp_path, caplog):
    h = Harness()
    h.results["bob@example.net"] = [RuntimeError("resolver exploded"), SENT]
    clock = Clock()
    async with running(make_queue(tmp_path / "queue", h, clock)) as q:
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
        await until(lambda: (e := q.get(qid)) is not None and e.attempts == 1)
        r = q.get(qid).pending[0]  # type: ignore[union-attr]
        assert (r.code, r.status) == (451, "4.3.0")
        assert "resolver exploded" in r.text
        assert r.next_attempt == T0 + 450
        clock.advance(450)
        q.wake()
        await until(lambda: q.get(qid) is None)
    assert h.bounces == []
    assert "delivery raised" in caplog.text


async def test_bounce_failure_is_retried_and_entry_kept(tmp_path):
    h = Harness()
    h.default = PERM
    h.bounce_errors = 1
    clock = Clock()
    directory = tmp_path / "queue"
    async with running(make_queue(directory, h, clock, bounce_retry=60)) as q:
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
        await until(lambda: (e := q.get(qid)) is not None and e.failed != [])
        await settle()
        assert h.bounces == []
        r = rcpt_state(directory, qid)["recipients"][0]
        assert (r["state"], r["notified"]) == ("failed", False)  # durable: owed a DSN
        clock.advance(60)
        q.wake()
        await until(lambda: q.get(qid) is None)
    assert len(h.bounces) == 1
    assert len(h.deliveries) == 1  # the recipient is not tried again
    assert files(directory) == []


async def test_bounce_owed_at_crash_is_sent_after_restart(tmp_path):
    h = Harness()
    h.default = PERM
    h.bounce_errors = 1
    clock = Clock()
    directory = tmp_path / "queue"
    async with running(make_queue(directory, h, clock)) as q:
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
        await until(lambda: (e := q.get(qid)) is not None and e.failed != [])
    h2 = Harness()
    async with running(make_queue(directory, h2, clock)) as q2:
        await until(lambda: q2.get(qid) is None)
    assert h2.deliveries == [] and len(h2.bounces) == 1


# ---------------------------------------------------------------------------- concurrency


async def test_concurrency_limit(tmp_path):
    h = Harness()
    h.gate = asyncio.Event()
    async with running(make_queue(tmp_path / "queue", h, Clock(), concurrency=3)) as q:
        for i in range(10):
            await q.enqueue("alice@example.org", [f"r{i}@example.net"], MESSAGE)
        await until(lambda: h.active == 3)
        await settle()
        assert h.active == 3 and len(h.deliveries) == 3
        h.gate.set()
        await until(lambda: q.list() == [])
    assert h.max_active == 3
    assert len(h.deliveries) == 10


async def test_never_two_attempts_of_one_message_at_once(tmp_path):
    h = Harness()
    h.gate = asyncio.Event()
    h.default = TEMP
    clock = Clock()
    async with running(make_queue(tmp_path / "queue", h, clock)) as q:
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
        await until(lambda: h.active == 1)
        for _ in range(5):  # flushes and time passing while it runs
            await q.flush(qid)
            await q.flush()
            clock.advance(10_000)
            q.wake()
            # A real pause: a control interval (20 ms) in which a second attempt could wrongly start.
            await asyncio.sleep(0.03)
        assert len(h.deliveries) == 1 and not h.overlap
        h.gate.set()
        await until(lambda: q.get(qid).attempts == 1)  # type: ignore[union-attr]
    assert not h.overlap


async def test_flush_makes_due_now(tmp_path):
    h = Harness()
    h.results["bob@example.net"] = [TEMP, SENT]
    async with running(make_queue(tmp_path / "queue", h, Clock())) as q:
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
        await until(lambda: (e := q.get(qid)) is not None and e.attempts == 1)
        await settle()
        assert len(h.deliveries) == 1
        assert await q.flush(qid) == 1
        await until(lambda: q.get(qid) is None)
    assert len(h.deliveries) == 2


async def test_remove_while_running_waits_for_the_attempt(tmp_path):
    h = Harness()
    h.gate = asyncio.Event()
    h.default = TEMP
    directory = tmp_path / "queue"
    async with running(make_queue(directory, h, Clock())) as q:
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
        await until(lambda: h.active == 1)
        removed = await q.remove(qid)
        assert removed is not None and removed.id == qid
        assert store.state_path(directory, qid).exists()  # the attempt still runs
        h.gate.set()
        await until(lambda: q.get(qid) is None)
    assert files(directory) == []
    assert h.bounces == []


async def test_stop_cancels_hung_attempts_and_keeps_them_queued(tmp_path):
    h = Harness()
    h.gate = asyncio.Event()  # never set: the attempt hangs
    directory = tmp_path / "queue"
    q = make_queue(directory, h, Clock(), stop_timeout=0.1)
    async with running(q):
        qid = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
        await until(lambda: h.active == 1)
    assert store.read_entry(directory, qid).pending  # type: ignore[union-attr]
    with pytest.raises(QueueError):
        await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)


# ---------------------------------------------------------------------------- crashes


async def test_crash_leftovers_are_cleaned_at_start(tmp_path, caplog):
    directory = tmp_path / "queue"
    h = Harness()
    h.gate = asyncio.Event()
    async with running(make_queue(directory, h, Clock())) as q:
        good = await q.enqueue("alice@example.org", ["bob@example.net"], MESSAGE)
    # 1. Killed between the data write and the state commit: an orphan data file.
    orphan = store.new_queue_id()
    store.data_path(directory, orphan).write_bytes(MESSAGE)
    # 2. Killed while rewriting a state file: a tmp next to the intact old state.
    (directory / f".{good}.json.deadbeef").write_bytes(b'{"half')
    # 3. A state file without its data (never acknowledged, or removed by hand).
    lost = store.new_queue_id()
    store.state_path(directory, lost).write_bytes(store.state_path(directory, good).read_bytes()
                                                  .replace(good.encode(), lost.encode()))
    h2 = Harness()
    h2.gate = asyncio.Event()
    q2 = make_queue(directory, h2, Clock())
    await q2.open()
    assert [e.id for e in q2.list()] == [good]
    assert files(directory) == [f"{good}.eml", f"{good}.json"]
    assert sorted(p.name for p in (directory / "corrupt").iterdir()) == [f"{lost}.json"]
    assert "data file missing" in caplog.text
    await q2.stop()


CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from mailserver.delivery.queue import Queue

    def message(token):
        body = (b"x" * 70 + b"\\r\\n") * (1 + (int(token.split("-")[1]) % 7) * 300)
        return (f"Subject: {token}\\r\\nX-Token: {token}\\r\\n\\r\\n").encode() + body

    async def hang(msg):
        await asyncio.Event().wait()

    async def bounce(sender, dsn):
        pass

    async def main():
        q = Queue(Path(sys.argv[1]), deliver=hang, bounce=bounce, hostname="h.example",
                  is_local_sender=lambda a: True)
        asyncio.create_task(q.start())
        await q.open()
        counter = iter(range(10**9))

        async def worker(w):
            while True:
                token = f"t-{next(counter)}"
                qid = await q.enqueue("a@example.org", ["b@example.net"], message(token))
                sys.stdout.write(f"{qid} {token}\\n")
                sys.stdout.flush()

        await asyncio.gather(*(worker(w) for w in range(8)))

    asyncio.run(main())
""")


def child_message(token: str) -> bytes:
    body = (b"x" * 70 + b"\r\n") * (1 + (int(token.split("-")[1]) % 7) * 300)
    return f"Subject: {token}\r\nX-Token: {token}\r\n\r\n".encode() + body


async def test_sigkill_during_enqueues_loses_no_returned_id(tmp_path):
    directory = tmp_path / "queue"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(directory), stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout is not None
    acked: dict[str, str] = {}
    try:
        while len(acked) < 150:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line, "child died"
            qid, token = line.decode().split()
            acked[qid] = token
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, _ = await proc.communicate()
    for line in rest.decode().splitlines():  # acknowledged before the kill, read after
        qid, token = line.split()
        acked[qid] = token

    h = Harness()
    h.gate = asyncio.Event()
    q = make_queue(directory, h, Clock())
    await q.open()  # cleans what the kill left half done
    entries = {e.id: e for e in q.list()}
    await q.stop()
    missing = set(acked) - set(entries)
    assert not missing, f"{len(missing)} acknowledged message(s) lost"
    for qid, token in acked.items():
        assert store.read_data(directory, qid) == child_message(token)
        assert entries[qid].size == len(child_message(token))
    # Nothing half: every data file has its state and vice versa, no tmp files.
    names = files(directory)
    assert names == sorted([f"{i}.eml" for i in entries] + [f"{i}.json" for i in entries])
    # At most the few enqueues in flight at the kill are committed but unreported.
    assert len(entries) - len(acked) <= 8
