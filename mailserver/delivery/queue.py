"""The durable outbound queue and its scheduler.

``enqueue()`` returns a queue ID only once the message and its state are fsync'd (see
:mod:`mailserver.delivery.queue_store` for the files and the commit protocol). The
scheduler then calls ``deliver`` with the message's pending recipients, at once for the
first attempt and on an exponential schedule with jitter after temporary failures, and
turns permanent failures, expiry and long delays into DSNs for local senders.

Guarantees, and why they hold:

- *Never lost*: a state change is written (tmp, fsync, rename, dir fsync) before anything
  that depends on it; files are removed only when every recipient is sent, or failed
  and notified.
- *At most one extra delivery after a crash*: results are persisted right after each
  attempt, so only an attempt in flight at the crash is repeated.
- *One delivery of a message at a time*: a message is in ``_running`` while its attempt
  runs and the scheduler skips it; the ``.lock`` flock keeps a second process off the
  queue.
- *The event loop never blocks*: every file operation runs in a thread
  (``asyncio.to_thread``); per-message writes are serialised by a lock so an older
  state can never be renamed over a newer one.

The CLI runs in another process and cannot call the daemon. It drops request files
into ``queue/requests/`` (flush, remove), which the owner applies every
``control_interval`` seconds (1 s by default) or at once on :meth:`Queue.wake` (the
daemon's SIGHUP handler may call it), deleting each request when done. When no daemon
holds the lock, the CLI takes the lock and applies its request itself with
:func:`apply_requests_offline`. Listing and showing just read the JSON files, which are
always whole.

Bounces are generated here but sent by the injected ``bounce(recipient, dsn_bytes)``
coroutine, which must send them with the null reverse path ``MAIL FROM:<>``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mailserver.message import field_values, header_end

from . import queue_store as store
from .dsn import RecipientFailure, build_dsn, format_reply
from .queue_store import QueueEntry, QueueError, QueueLock, RecipientState
from .results import DeliveryResult, temp  # shared with remote delivery; re-exported here

__all__ = [
    "BounceFn",
    "DeliverFn",
    "DeliveryResult",
    "Queue",
    "QueueEntry",
    "QueueError",
    "QueuedMessage",
    "RecipientState",
    "apply_requests_offline",
]

log = logging.getLogger("pymaild.queue")

DEFAULT_SCHEDULE: tuple[float, ...] = (0, 450, 900, 1800, 3600, 7200, 14400, 28800, 57600)


@dataclass(frozen=True)
class QueuedMessage:
    """What ``deliver`` gets: the message with only its still-pending recipients."""

    id: str
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes
    attempts: int  # attempts made before this one
    message_id: str = ""


DeliverFn = Callable[[QueuedMessage], Awaitable[dict[str, DeliveryResult]]]
BounceFn = Callable[[str, bytes], Awaitable[None]]


@dataclass
class _Slot:
    """In-memory bookkeeping around one entry (never written to disk)."""

    entry: QueueEntry
    io_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    due: float = 0.0
    running: bool = False
    removed: bool = False
    remove_requested: bool = False
    retry_at: float = 0.0  # after a failed bounce, write or delete: not before this
    held: bool = False  # enqueued with hold=True and not yet released: never attempted


class Queue:
    """The outbound queue of one daemon. See the module docstring for the guarantees."""

    def __init__(
        self,
        directory: Path,
        *,
        deliver: DeliverFn,
        bounce: BounceFn,
        hostname: str,
        is_local_sender: Callable[[str], bool],
        schedule: Sequence[float] = DEFAULT_SCHEDULE,
        max_age: float = 5 * 86400,
        delay_notice_after: float | None = 4 * 3600,
        jitter: float = 0.1,
        concurrency: int = 20,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        control_interval: float = 1.0,
        bounce_retry: float = 60.0,
        stop_timeout: float = 10.0,
        lock_timeout: float = 5.0,
    ) -> None:
        if not schedule or any(s < 0 for s in schedule):
            raise ValueError("schedule must be non-empty and non-negative")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.directory = Path(directory)
        self.deliver = deliver
        self.bounce = bounce
        self.hostname = hostname
        self.is_local_sender = is_local_sender
        self.schedule = tuple(float(s) for s in schedule)
        self.max_age = max_age
        # 0 means off, as in the config file (queue.delay_notice_after = 0).
        self.delay_notice_after = delay_notice_after or None
        self.jitter = jitter
        self.concurrency = concurrency
        self.clock = clock
        self.rng = rng or random.Random()
        self.control_interval = control_interval
        self.bounce_retry = bounce_retry
        self.stop_timeout = stop_timeout
        self.lock_timeout = lock_timeout
        self._lock = QueueLock(self.directory)
        self._slots: dict[str, _Slot] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._open_lock = asyncio.Lock()
        self._opened = False
        self._stopping = False
        self._scheduling = False
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ public API

    async def open(self) -> None:
        """Take the queue lock and load the directory (idempotent; start() calls it)."""
        async with self._open_lock:
            if self._opened:
                return
            await asyncio.to_thread(self._lock.acquire, self.lock_timeout)
            try:
                entries = await asyncio.to_thread(self._load)
            except BaseException:
                self._lock.release()
                raise
            for entry in entries:
                self._add(entry)
            self._opened = True
            log.info("queue %s: %d message(s) loaded", self.directory, len(entries))

    async def start(self) -> None:
        """Load the queue and run the scheduler until :meth:`stop`."""
        await self.open()
        self._scheduling = True
        try:
            await self._scheduler()
        finally:
            await self._drain()
            self._lock.release()
            self._opened = False
            self._scheduling = False
            self._stopped.set()

    async def stop(self) -> None:
        """Stop starting attempts; let running ones finish for ``stop_timeout`` seconds.

        Attempts still running after that are cancelled: their state on disk is the one
        before the attempt, so they are tried again after the restart (a possible second
        delivery, never a loss).
        """
        self._stopping = True
        self._wakeup.set()
        if self._scheduling:
            await self._stopped.wait()
        elif self._opened:  # opened by enqueue() but never started
            self._lock.release()
            self._opened = False

    def wake(self) -> None:
        """Look at the clock, the schedule and ``requests/`` now (e.g. on SIGHUP)."""
        self._wakeup.set()

    async def enqueue(self, mail_from: str, recipients: Sequence[str], data: bytes, *,
                      message_id: str = "", hold: bool = False) -> str:
        """Queue a message durably; the returned ID means the message is on disk for good.

        ``hold``: no attempt starts until :meth:`release` (or :meth:`remove`): for a
        caller with more to do before the transaction is committed (submission's local
        copies), so a failure there can take the message back before anything left.
        A held message found on disk after a restart is an ordinary one.
        """
        rcpts = list(dict.fromkeys(recipients))
        if not rcpts:
            raise ValueError("a message needs at least one recipient")
        if any(not r or "\r" in r or "\n" in r for r in rcpts) or "\r" in mail_from \
                or "\n" in mail_from:
            raise ValueError("envelope addresses must not be empty or contain CR/LF")
        if self._stopping:
            raise QueueError("queue is stopping")
        await self.open()
        now = self.clock()
        entry = QueueEntry(
            id=store.new_queue_id(self.clock),
            mail_from=mail_from,
            created=now,
            size=len(data),
            recipients=[RecipientState(address=r, next_attempt=now) for r in rcpts],
            message_id=message_id,
        )
        await asyncio.to_thread(self._write_new, entry, data)
        self._add(entry, held=hold)
        log.info("queue %s: enqueued from=<%s> nrcpt=%d size=%d msgid=%s",
                 entry.id, mail_from, len(rcpts), len(data), entry.message_id or "-")
        self._wakeup.set()
        return entry.id

    def release(self, queue_id: str) -> None:
        """Let a message enqueued with ``hold=True`` be attempted."""
        slot = self._slots.get(queue_id)
        if slot is not None and slot.held:
            slot.held = False
            self._reschedule(slot)
            self._wakeup.set()

    def list(self) -> list[QueueEntry]:
        """Snapshots of every queued message, oldest first."""
        return [s.entry.copy() for s in sorted(self._slots.values(),
                                               key=lambda s: (s.entry.created, s.entry.id))]

    def get(self, queue_id: str) -> QueueEntry | None:
        slot = self._slots.get(queue_id)
        return slot.entry.copy() if slot else None

    async def flush(self, queue_id: str | None = None) -> int:
        """Make one message (or all) due now, including owed bounces. Returns the count."""
        now = self.clock()
        slots = ([self._slots[queue_id]] if queue_id in self._slots else []) if queue_id \
            else list(self._slots.values())
        for slot in slots:
            for r in slot.entry.pending:
                r.next_attempt = min(r.next_attempt, now)
            slot.retry_at = min(slot.retry_at, now)
            if not slot.running:
                self._reschedule(slot)
        self._wakeup.set()
        return len(slots)

    async def remove(self, queue_id: str) -> QueueEntry | None:
        """Remove a message without bouncing it. Returns what was removed, or None.

        A message whose attempt is running is removed when the attempt ends (whatever
        it delivered stays delivered).
        """
        slot = self._slots.get(queue_id)
        if slot is None or slot.removed:
            return None
        snapshot = slot.entry.copy()
        if slot.held:
            # Never attempted: if the removal fails it is retried, not delivered.
            slot.held = False
            slot.remove_requested = True
        if slot.running:
            slot.remove_requested = True
        else:
            await self._delete(slot, "removed by operator")
        return snapshot

    # ------------------------------------------------------------------ loading

    def _load(self) -> builtins.list[QueueEntry]:  # (the method list shadows the builtin)
        store.ensure_dir(self.directory)
        store.clean_request_tmp(self.directory)
        return store.load_for_owner(self.directory)

    def _write_new(self, entry: QueueEntry, data: bytes) -> None:
        if not entry.message_id:
            entry.message_id = _message_id(data)
        for attempt in range(5):
            try:
                store.write_new(self.directory, entry, data)
                return
            except FileExistsError:
                if attempt == 4:
                    raise
                # Another process made the same ID (same microsecond, same random
                # part): take a new one. O_EXCL guarantees we never wrote over it.
                entry.id = store.new_queue_id(self.clock)

    def _add(self, entry: QueueEntry, *, held: bool = False) -> None:
        if entry.id in self._slots:
            return
        slot = _Slot(entry, held=held)
        self._slots[entry.id] = slot
        if not held:
            self._reschedule(slot)

    # ------------------------------------------------------------------ scheduling

    def _due_time(self, slot: _Slot) -> float | None:
        e = slot.entry
        if e.done or slot.remove_requested:
            return slot.retry_at  # only the files are left to remove
        times = [r.next_attempt for r in e.pending]
        if any(r.state == "failed" and not r.notified for r in e.recipients):
            times.append(slot.retry_at)
        if self._delay_notice_owed(e):
            assert self.delay_notice_after is not None
            times.append(max(e.created + self.delay_notice_after, slot.retry_at))
        return min(times, default=None)

    def _reschedule(self, slot: _Slot) -> None:
        due = self._due_time(slot)
        if due is None:
            return
        slot.due = due
        heapq.heappush(self._heap, (due, next(self._seq), slot.entry.id))

    def _next_delay(self, attempts: int) -> float:
        base = self.schedule[min(attempts, len(self.schedule) - 1)]
        return base * (1 + self.rng.uniform(-self.jitter, self.jitter))

    async def _scheduler(self) -> None:
        loop = asyncio.get_running_loop()
        next_control = 0.0
        while not self._stopping:
            self._wakeup.clear()
            if loop.time() >= next_control:
                try:
                    await self._apply_requests()
                except Exception:
                    # An operator's request must never stop deliveries.
                    log.exception("queue: applying requests failed")
                next_control = loop.time() + self.control_interval
            now = self.clock()
            while self._heap and len(self._tasks) < self.concurrency and not self._stopping:
                due, _seq, qid = self._heap[0]
                if due > now:
                    break
                heapq.heappop(self._heap)
                slot = self._slots.get(qid)
                # Stale heap items (rescheduled, running, removed) are skipped lazily.
                if slot is None or slot.running or slot.removed or slot.held or slot.due != due:
                    continue
                slot.running = True
                task = asyncio.create_task(self._process(slot), name=f"queue-{qid}")
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
            timeout = max(0.0, next_control - loop.time())
            if self._heap and len(self._tasks) < self.concurrency:
                timeout = min(timeout, max(0.0, self._heap[0][0] - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wakeup.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("queue task %s failed", task.get_name(), exc_info=task.exception())

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=self.stop_timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("queue: %d attempt(s) cancelled at stop; they will be retried",
                        len(pending))
            await asyncio.wait(pending)

    # ------------------------------------------------------------------ one message

    async def _process(self, slot: _Slot) -> None:
        try:
            if not slot.remove_requested and not slot.entry.done:
                await self._attempt(slot)
                if not slot.remove_requested:
                    await self._notify(slot)
        except Exception:
            # A state write failed (disk full, EIO...). Memory may be ahead of the disk:
            # harmless, the next successful write records everything, and a crash
            # before it repeats the attempt once. Back off instead of spinning.
            slot.retry_at = self.clock() + self.bounce_retry
            for r in slot.entry.pending:
                r.next_attempt = max(r.next_attempt, slot.retry_at)
            log.exception("queue %s: processing failed; retrying in %gs",
                          slot.entry.id, self.bounce_retry)
        finally:
            slot.running = False
        if slot.removed:
            return
        if slot.remove_requested:
            await self._delete(slot, "removed by operator")
        elif slot.entry.done:
            await self._delete(slot, "done")
        else:
            self._reschedule(slot)

    async def _attempt(self, slot: _Slot) -> None:
        entry = slot.entry
        now = self.clock()
        due = [r for r in entry.pending if r.next_attempt <= now]
        if not due:
            return  # woken for a bounce or a delay notice only
        try:
            data = await asyncio.to_thread(store.read_data, self.directory, entry.id)
        except OSError as exc:
            # The data file is written once and never changed: losing it is an operator
            # or disk problem. Keep the entry (do not bounce bytes we cannot read).
            log.error("queue %s: cannot read message data: %s; retrying later", entry.id, exc)
            results: dict[str, DeliveryResult] = {}
            error = temp(451, "4.3.0", f"queue file unreadable: {exc}", module="queue")
        else:
            msg = QueuedMessage(entry.id, entry.mail_from, tuple(r.address for r in due), data,
                                max(r.attempts for r in due), entry.message_id)
            try:
                results = await self.deliver(msg)
                if not isinstance(results, dict):
                    raise TypeError(f"deliver returned {type(results).__name__}, not dict")
                error = temp(451, "4.3.0", "no result from delivery", module="queue")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("queue %s: delivery raised", entry.id)
                results = {}
                error = temp(451, "4.3.0", f"delivery error: {exc!r}"[:300], module="queue")
        finished = self.clock()
        expired = finished >= entry.created + self.max_age
        next_at = finished + self._next_delay(max(r.attempts for r in due) + 1)
        for r in due:
            res = results.get(r.address, error)
            r.attempts += 1
            r.last_attempt = finished
            # The record keeps its format (code, status, text): older queue files load as is.
            r.code, r.status, r.text, r.mx = res.reply.code, res.status, res.diagnostic, res.mx
            if res.kind == "sent":
                r.state = "sent"
            elif res.kind == "perm":
                r.state = "failed"
            elif expired:
                r.state = "failed"
                r.status = "4.4.7"
                r.text = (f"message expired after {self.max_age / 86400:g} days in the queue; "
                          f"last error: {format_reply(res.reply.code, res.diagnostic)}")
            else:
                # Clamped so that expiry gets its own last attempt right on time.
                r.next_attempt = min(next_at, entry.created + self.max_age)
            log.info("queue %s: to=<%s> mx=%s attempt=%d status=%s (%s %s %s)",
                     entry.id, r.address, res.mx or "-", r.attempts,
                     {"sent": "sent", "failed": "bounced", "pending": "deferred"}[r.state],
                     res.reply.code, res.status, res.diagnostic)
        if not entry.done:
            # Sent-only outcomes skip this write: the files are about to be removed.
            await self._persist(slot)

    async def _notify(self, slot: _Slot) -> None:
        """Send the DSNs owed: failures not yet notified, and the delay notice once."""
        entry = slot.entry
        now = self.clock()
        failed = [r for r in entry.failed if not r.notified]
        delayed = self._delay_notice_owed(entry) and now >= entry.created + (
            self.delay_notice_after or 0)
        if not failed and not delayed:
            return
        if now < slot.retry_at:
            return
        reason = self._no_bounce_reason(entry.mail_from)
        changed = False
        if failed and (reason or await self._send_dsn(slot, "failure", failed)):
            if reason:
                log.info("queue %s: no bounce for %s: %s", entry.id,
                         ", ".join(r.address for r in failed), reason)
            for r in failed:
                r.notified = True
            changed = True
        if delayed and self._delay_notice_owed(entry) and (
                reason or await self._send_dsn(slot, "delayed", entry.pending)):
            entry.delay_notice_sent = True
            changed = True
        if changed and not entry.done:
            await self._persist(slot)

    def _delay_notice_owed(self, entry: QueueEntry) -> bool:
        return (self.delay_notice_after is not None and not entry.delay_notice_sent
                and bool(entry.pending))

    def _no_bounce_reason(self, mail_from: str) -> str:
        if not mail_from:
            return "null sender"
        try:
            local = self.is_local_sender(mail_from)
        except Exception:
            log.exception("queue: is_local_sender(%r) raised", mail_from)
            local = False
        return "" if local else "sender is not local (no backscatter)"

    async def _send_dsn(self, slot: _Slot, kind: Literal["failure", "delayed"],
                        rcpts: Sequence[RecipientState]) -> bool:
        entry = slot.entry
        until = entry.created + self.max_age
        failures = [
            RecipientFailure(
                recipient=r.address,
                status=r.status if _is_status(r.status) else ("5.0.0" if kind == "failure"
                                                              else "4.0.0"),
                text=r.text or "no reply",
                code=r.code,
                remote_mta=r.mx,
                last_attempt=r.last_attempt,
                will_retry_until=until if kind == "delayed" else None,
            )
            for r in rcpts
        ]
        try:
            header = await asyncio.to_thread(store.read_header, self.directory, entry.id)
        except OSError as exc:
            header = f"X-Pymaild-Note: original message unreadable: {exc}\r\n".encode()
        try:
            dsn = build_dsn(reporting_mta=self.hostname, original_sender=entry.mail_from,
                            failures=failures, original=header, kind=kind,
                            arrival_date=entry.created, message_id_domain=self.hostname,
                            now=self.clock())
            await self.bounce(entry.mail_from, dsn)
        except asyncio.CancelledError:
            raise
        except Exception:
            slot.retry_at = self.clock() + self.bounce_retry
            log.exception("queue %s: sending the %s notice to <%s> failed; retrying in %gs",
                          entry.id, kind, entry.mail_from, self.bounce_retry)
            return False
        slot.retry_at = 0.0
        log.info("queue %s: %s notice sent to <%s> for %s", entry.id, kind, entry.mail_from,
                 ", ".join(r.address for r in rcpts))
        return True

    # ------------------------------------------------------------------ disk

    async def _persist(self, slot: _Slot) -> None:
        async with slot.io_lock:
            if slot.removed:
                return
            # Serialised on the loop, so the bytes written are this moment's state.
            snapshot = slot.entry.copy()
            await asyncio.to_thread(store.write_state, self.directory, snapshot)

    async def _delete(self, slot: _Slot, why: str) -> None:
        async with slot.io_lock:
            if slot.removed:
                return
            slot.removed = True  # first, so the scheduler never starts it meanwhile
            try:
                await asyncio.to_thread(store.delete_entry, self.directory, slot.entry.id,
                                        durable=why != "done")
            except OSError as exc:
                slot.removed = False
                slot.retry_at = self.clock() + self.bounce_retry
                self._reschedule(slot)
                log.error("queue %s: cannot remove files (%s); retrying in %gs",
                          slot.entry.id, exc, self.bounce_retry)
                return
            self._slots.pop(slot.entry.id, None)
        log.info("queue %s: removed (%s)", slot.entry.id, why)

    async def _apply_requests(self) -> None:
        try:
            requests = await asyncio.to_thread(store.read_requests, self.directory)
        except OSError as exc:
            log.error("queue: cannot read requests: %s", exc)
            return
        for req in requests:
            if req.action == "flush":
                n = await self.flush(req.queue_id)
                log.info("queue: flush %s requested (%d message(s))", req.queue_id or "all", n)
            elif req.queue_id is not None:
                removed = await self.remove(req.queue_id)
                if removed is None:
                    log.info("queue %s: remove requested, not in the queue", req.queue_id)
                elif req.queue_id in self._slots:
                    # Running: removed when its attempt ends. Keep the request until then,
                    # so the CLI's wait for the acknowledgement means "gone".
                    continue
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(req.path.unlink)


def apply_requests_offline(directory: Path, clock: Callable[[], float] = time.time) -> list[str]:
    """Apply pending requests directly on the files. Caller must hold the queue lock.

    Used by the CLI when no daemon owns the queue. Returns one line per action taken.
    """
    done: list[str] = []
    for req in store.read_requests(directory):
        ids = [req.queue_id] if req.queue_id else [e.id for e in store.list_entries(directory)]
        for qid in ids:
            try:
                entry = store.read_entry(directory, qid)
            except ValueError:
                entry = None
            if entry is None:
                done.append(f"{qid}: no such message")
            elif req.action == "remove":
                store.delete_entry(directory, qid)
                done.append(f"{qid}: removed")
            else:
                now = clock()
                for r in entry.pending:
                    r.next_attempt = min(r.next_attempt, now)
                store.write_state(directory, entry)
                done.append(f"{qid}: due now")
        req.path.unlink(missing_ok=True)
    return done


def _is_status(status: str) -> bool:
    parts = status.split(".")
    return len(parts) == 3 and parts[0] in ("2", "4", "5") and all(p.isdigit() for p in parts)


def _message_id(data: bytes) -> str:
    """The first Message-ID field of ``data`` (for log lines and ``pymaild queue``), or ""."""
    end = header_end(data)
    if end == len(data):  # no empty line: not all of a big message is taken for header
        end = min(end, 65536)
    values = field_values(data, "Message-ID", end)
    return " ".join(values[0].split())[:300] if values else ""
