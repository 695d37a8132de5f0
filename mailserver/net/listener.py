"""The connection table every listener shares, and the rules that keep doors open under load.

Neither SMTP nor IMAP owns this module: both transports register their connections here.
Time is injected (``clock``), so the policy (who is evicted, which timeout applies under
stress, when a slow DATA phase is cut off) is tested without sleeping.

The policy, after Postfix's stress mode:

- A connection is *idle* while it waits for a command outside any transaction and before
  authentication (SMTP: before MAIL FROM, not logged in; IMAP: not logged in). Only idle
  connections can be evicted or get the short stress timeout. A connection processing a
  command, in a transaction, or authenticated (an IMAP IDLE session) is never evicted.
- *Stress*: the table holds at least ``stress_at`` x ``max_total`` connections. Idle
  connections then get ``stress_timeout`` of silence instead of the normal timeout; at the
  moment stress begins every idle connection is woken so it re-arms its timer.
- *Full*: a newcomer does not get 421 while an idle connection can make room. The victim
  is taken from the address holding the most connections (the idlest of that address's
  idle connections), and only if that address holds at least as many connections as the
  newcomer's address will after admission: an address never evicts one with fewer
  connections, so a flood from a few addresses cannot push out anyone else.
- The per-address limit is checked first and always applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

S = typing.TypeVar("S")
log = logging.getLogger("pymaild.net")


class Member(Protocol):
    """What the table asks of a transport's connection."""

    def evict(self) -> None:
        """Say goodbye (421 / * BYE) and close: the table needs the slot."""

    def wake(self) -> None:
        """Re-evaluate the timeout now (stress began)."""


@dataclass(frozen=True)
class TablePolicy:
    max_total: int = 1000
    max_per_ip: int = 20
    stress_at: float = 0.8  # fraction of max_total from which the table is under stress
    stress_timeout: float = 10.0  # silence allowed to idle connections under stress


class Entry:
    """One admitted connection."""

    __slots__ = ("admitted", "idle", "ip", "last_active", "member", "released")

    def __init__(self, ip: str, member: Member, now: float) -> None:
        self.ip = ip
        self.member = member
        self.idle = True  # evictable: waiting for a command, no transaction, not logged in
        self.last_active = now
        self.admitted = now
        self.released = False


class ConnectionTable:
    """Open connections of one service (e.g. "smtp", "submission", "imap"), in total and
    per client address; see the module docstring for the policy."""

    def __init__(self, policy: TablePolicy, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self.by_ip: dict[str, set[Entry]] = {}
        self.total = 0
        self.evictions = 0
        self._stressed = False

    # ------------------------------------------------------------------ admission

    @property
    def stress_level(self) -> int:
        return max(1, int(self.policy.max_total * self.policy.stress_at))

    @property
    def stressed(self) -> bool:
        return self.total >= self.stress_level

    def count(self, ip: str) -> int:
        return len(self.by_ip.get(ip, ()))

    def admit(self, ip: str, member: Member) -> Entry | str:
        """The new connection's entry, or the reason to refuse it."""
        if self.count(ip) >= self.policy.max_per_ip:
            return "too many connections from your address"
        if self.total >= self.policy.max_total:
            victim = self.victim(ip)
            if victim is None:
                return "too many connections"
            self.release(victim)
            self.evictions += 1
            try:
                victim.member.evict()
            except Exception:  # the slot is free anyway; the transport's bug must not refuse this one
                log.exception("evicting a connection from %s failed", victim.ip)
        entry = Entry(ip, member, self.clock())
        self.by_ip.setdefault(ip, set()).add(entry)
        self.total += 1
        if not self._stressed and self.stressed:
            self._stressed = True
            for other in self.entries():
                if other.idle and other is not entry:
                    with contextlib.suppress(Exception):
                        other.member.wake()
        return entry

    def admit_unless(self, draining: bool, ip: str, member: Member) -> tuple[Entry | None, str | None]:
        """For a listener's connection_made: ``(entry, None)``, or ``(None, reason)`` when
        the listener is shutting down or :meth:`admit` refuses."""
        if draining:
            return None, "Service shutting down"
        admitted = self.admit(ip, member)
        return (None, admitted) if isinstance(admitted, str) else (admitted, None)

    def victim(self, newcomer_ip: str) -> Entry | None:
        """The idle connection to evict for a newcomer from ``newcomer_ip``, if any."""
        floor = self.count(newcomer_ip) + 1  # the newcomer's address after admission
        best: Entry | None = None
        best_count = 0
        for entries in self.by_ip.values():
            n = len(entries)
            if n < floor or n < best_count:
                continue
            idlest = min((e for e in entries if e.idle), key=lambda e: e.last_active, default=None)
            if idlest is None:
                continue
            if n > best_count or (best is not None and idlest.last_active < best.last_active):
                best, best_count = idlest, n
        return best

    def release(self, entry: Entry) -> None:
        """Forget a connection (idempotent: an evicted one was released at eviction)."""
        if entry.released:
            return
        entry.released = True
        self.total -= 1
        entries = self.by_ip.get(entry.ip)
        if entries is not None:
            entries.discard(entry)
            if not entries:
                del self.by_ip[entry.ip]
        if self._stressed and not self.stressed:
            self._stressed = False

    def entries(self) -> list[Entry]:
        return [e for entries in self.by_ip.values() for e in entries]

    # ------------------------------------------------------------------ activity and timeouts

    def touch(self, entry: Entry) -> None:
        entry.last_active = self.clock()

    def set_idle(self, entry: Entry, idle: bool) -> None:
        entry.idle = idle

    def timeout(self, entry: Entry, normal: float) -> float:
        """Seconds of silence left for ``entry`` before it is closed, ``normal`` being the
        service's usual timeout. Under stress an idle connection gets what is left of
        ``stress_timeout`` since its last activity (0: close now)."""
        if entry.idle and self.stressed:
            left = self.policy.stress_timeout - (self.clock() - entry.last_active)
            return max(0.0, min(normal, left))
        return normal


# ---------------------------------------------------------------------------- DATA pace


@dataclass(frozen=True)
class PacePolicy:
    deadline: float = 1800.0  # the whole transfer, whatever the rate
    min_rate: float = 500.0  # bytes per second on average, after the grace period
    grace: float = 30.0  # seconds before the minimum rate applies


class TransferPace:
    """Deadline of one bulk transfer (SMTP DATA): a total deadline, and a minimum average
    rate: after ``grace`` seconds the client must have sent ``min_rate`` bytes for every
    second past the grace. Like Postfix's smtpd_min_data_rate, a fast start earns credit;
    unlike a per-read timeout, a drip of one byte every few seconds does not keep the
    transfer open."""

    def __init__(self, policy: PacePolicy, now: float) -> None:
        self.policy = policy
        self.started = now
        self.received = 0

    def feed(self, nbytes: int) -> None:
        self.received += nbytes

    def expires(self) -> float:
        """The time at which the transfer is too slow or too long."""
        p = self.policy
        by_rate = self.started + p.grace + (self.received / p.min_rate if p.min_rate > 0 else float("inf"))
        return min(self.started + p.deadline, by_rate)

    def left(self, now: float) -> float:
        return max(0.0, self.expires() - now)

    def why(self, now: float) -> str:
        if now >= self.started + self.policy.deadline:
            return "deadline"
        return "too slow"


# ---------------------------------------------------------------------------- wrong protocol

_HTTP_REQUEST_LINE = re.compile(rb"^[A-Z]{3,10} \S+ HTTP/\d(\.\d)?\r?$")


def http_request_line(line: bytes) -> bool:
    """``GET / HTTP/1.1`` and the like (``CONNECT host:443 HTTP/1.1``), terminator stripped or not."""
    return bool(_HTTP_REQUEST_LINE.match(line.rstrip(b"\n")))


# ---------------------------------------------------------------------------- writing


class FlowControl:
    """asyncio's write flow control for a hand-written protocol, as
    ``asyncio.streams.FlowControlMixin`` does it: ``drain()`` waits only while the
    transport said ``pause_writing()`` and has not said ``resume_writing()`` yet; a lost
    connection wakes the waiter with ConnectionResetError."""

    def __init__(self) -> None:
        self.paused = False
        self.lost = False
        self._waiter: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self) -> None:
        self.lost = True
        self.paused = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # drain() raises: no exception left unretrieved on a future

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("connection lost")
        if not self.paused:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter
        if self.lost:
            raise ConnectionResetError("connection lost")


# ---------------------------------------------------------------------------- shutdown


async def drain_listeners(servers: list[asyncio.base_events.Server], sessions: set[S], timeout: float, *,
                          notify: Callable[[S], None], abort: Callable[[S], None]) -> None:
    """The shutdown of one service (SMTP or IMAP): stop accepting, ``notify`` every session
    (they finish what they are doing and say goodbye), wait up to ``timeout`` for them to
    go, ``abort`` the rest."""
    for server in servers:
        server.close()
    for session in list(sessions):
        notify(session)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sessions and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for session in list(sessions):
        abort(session)
    for server in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)
