"""The shared connection table's policy (eviction, stress timeouts), the DATA pace and the
flow-control helper, with an injected clock: no sleeping."""

from __future__ import annotations

import asyncio

import pytest

from mailserver.net.listener import (
    ConnectionTable,
    Entry,
    FlowControl,
    PacePolicy,
    TablePolicy,
    TransferPace,
    http_request_line,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Member:
    def __init__(self, table: ConnectionTable, name: str) -> None:
        self.table, self.name = table, name
        self.evicted = False
        self.woken = 0
        self.entry: Entry | None = None

    def evict(self) -> None:
        self.evicted = True

    def wake(self) -> None:
        self.woken += 1


def admit(table: ConnectionTable, ip: str, name: str = "") -> Member:
    m = Member(table, name or ip)
    entry = table.admit(ip, m)
    assert isinstance(entry, Entry), entry
    m.entry = entry
    return m


def test_per_ip_limit_then_total_refuses_when_nothing_is_evictable() -> None:
    table = ConnectionTable(TablePolicy(max_total=4, max_per_ip=2), clock=Clock())
    a1, _a2 = admit(table, "10.0.0.1"), admit(table, "10.0.0.1")
    assert table.admit("10.0.0.1", Member(table, "x")) == "too many connections from your address"
    b = [admit(table, "10.0.0.2"), admit(table, "10.0.0.2")]
    for m in [a1, _a2, *b]:
        assert m.entry is not None
        m.entry.idle = False  # all in a transaction or logged in
    assert table.admit("10.0.0.3", Member(table, "y")) == "too many connections"
    assert not any(m.evicted for m in [a1, _a2, *b])


def test_full_table_evicts_idlest_of_the_busiest_address_for_a_newcomer() -> None:
    clock = Clock()
    table = ConnectionTable(TablePolicy(max_total=6, max_per_ip=4), clock=clock)
    flood = []
    for i in range(4):
        flood.append(admit(table, "10.0.0.1", f"f{i}"))
        clock.now += 1
    small = [admit(table, "10.0.0.2", "s0"), admit(table, "10.0.0.2", "s1")]
    clock.now += 1
    table.touch(flood[0].entry)  # f0 talked lately: f1 is now the idlest of 10.0.0.1
    fresh = admit(table, "10.0.0.9")
    assert [m.name for m in flood + small if m.evicted] == ["f1"]
    assert table.total == 6 and table.count("10.0.0.1") == 3 and table.evictions == 1
    assert fresh.entry is not None and not fresh.entry.released
    table.release(flood[1].entry)  # the evicted connection's connection_lost: idempotent
    assert table.total == 6


def test_an_address_never_evicts_one_with_fewer_connections() -> None:
    clock = Clock()
    table = ConnectionTable(TablePolicy(max_total=4, max_per_ip=3), clock=clock)
    a = [admit(table, "10.0.0.1") for _ in range(2)]
    clock.now += 1
    b = [admit(table, "10.0.0.2") for _ in range(2)]
    # 10.0.0.1 would hold 3 after admission, more than anyone: refused, nobody evicted.
    assert table.admit("10.0.0.1", Member(table, "x")) == "too many connections"
    assert not any(m.evicted for m in a + b)
    # A fresh address may take the idlest connection of a busiest address (a tie: 2 and 2).
    admit(table, "10.0.0.3")
    assert [m.evicted for m in a + b] == [True, False, False, False] or \
        [m.evicted for m in a + b] == [False, True, False, False]


def test_flood_from_one_address_cannot_push_out_others() -> None:
    table = ConnectionTable(TablePolicy(max_total=3, max_per_ip=3), clock=Clock())
    others = [admit(table, "10.0.0.2"), admit(table, "10.0.0.3"), admit(table, "10.0.0.4")]
    admit(table, "10.0.0.1")  # 1 after admission, like each of the others: may take one slot
    assert sum(m.evicted for m in others) == 1
    # Its second connection would make 2, more than anyone else holds: refused.
    assert table.admit("10.0.0.1", Member(table, "y")) == "too many connections"
    assert sum(m.evicted for m in others) == 1


def test_logged_in_and_busy_connections_are_never_evicted() -> None:
    table = ConnectionTable(TablePolicy(max_total=2, max_per_ip=5), clock=Clock())
    idle_user = admit(table, "10.0.0.1")
    assert idle_user.entry is not None
    idle_user.entry.idle = False  # an IMAP IDLE session
    flooder = admit(table, "10.0.0.1")
    admit(table, "10.0.0.2")
    assert flooder.evicted and not idle_user.evicted


def test_stress_shortens_idle_timeouts_and_wakes_idle_connections() -> None:
    clock = Clock()
    table = ConnectionTable(TablePolicy(max_total=10, max_per_ip=10, stress_at=0.5, stress_timeout=5.0),
                            clock=clock)
    members = [admit(table, f"10.0.1.{i}") for i in range(4)]
    busy = members[0]
    assert busy.entry is not None
    busy.entry.idle = False
    assert not table.stressed
    assert table.timeout(members[1].entry, 300.0) == 300.0
    clock.now += 3
    fifth = admit(table, "10.0.1.9")  # 5 of 10: stress begins
    assert table.stressed
    assert [m.woken for m in members] == [0, 1, 1, 1] and fifth.woken == 0
    assert table.timeout(members[1].entry, 300.0) == pytest.approx(2.0)  # 5s - 3s idle
    assert table.timeout(fifth.entry, 300.0) == pytest.approx(5.0)
    assert table.timeout(busy.entry, 300.0) == 300.0
    clock.now += 10
    assert table.timeout(members[2].entry, 300.0) == 0.0
    table.touch(members[2].entry)
    assert table.timeout(members[2].entry, 300.0) == pytest.approx(5.0)
    table.release(fifth.entry)
    assert not table.stressed and table.timeout(members[1].entry, 300.0) == 300.0
    admit(table, "10.0.1.10")  # stress again: woken again
    assert members[1].woken == 2


def test_pace_total_deadline_and_minimum_rate() -> None:
    pace = TransferPace(PacePolicy(deadline=100.0, min_rate=10.0, grace=5.0), now=0.0)
    assert pace.expires() == 5.0  # nothing sent: the grace only
    pace.feed(1)  # a drip: one byte buys 0.1 s
    assert pace.expires() == pytest.approx(5.1) and pace.why(5.2) == "too slow"
    pace.feed(10_000)  # a fast start earns credit, up to the total deadline
    assert pace.expires() == 100.0 and pace.why(100.0) == "deadline"
    assert pace.left(40.0) == 60.0 and pace.left(200.0) == 0.0
    no_rate = TransferPace(PacePolicy(deadline=50.0, min_rate=0.0, grace=0.0), now=10.0)
    assert no_rate.expires() == 60.0


def test_http_request_lines() -> None:
    assert http_request_line(b"GET / HTTP/1.1\r\n")
    assert http_request_line(b"CONNECT mail.example.org:443 HTTP/1.1\r\n")
    assert http_request_line(b"POST /x HTTP/1.0")
    assert not http_request_line(b"a1 LOGIN user pass\r\n")
    assert not http_request_line(b"GET LOGIN HTTP x\r\n")


def test_flow_control_waits_only_while_paused_and_wakes_on_loss() -> None:
    async def main() -> None:
        flow = FlowControl()
        await asyncio.wait_for(flow.drain(), 0.5)  # never paused: no wait, whatever is buffered
        flow.pause_writing()
        waiter = asyncio.ensure_future(flow.drain())
        await asyncio.sleep(0)  # one turn of the loop: the waiter runs up to its wait, no time passes
        assert not waiter.done()
        flow.resume_writing()
        await asyncio.wait_for(waiter, 0.5)
        flow.pause_writing()
        waiter = asyncio.ensure_future(flow.drain())
        await asyncio.sleep(0)  # one turn: the waiter is waiting when the connection goes
        flow.connection_lost()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(waiter, 0.5)
        with pytest.raises(ConnectionResetError):
            await flow.drain()

    asyncio.run(main())
