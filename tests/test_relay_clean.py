"""What we relay is clean for the next hop: no NUL octet, no line over 998 octets.

Submission refuses such a message (554 5.6.0); remote delivery refuses to send one that
got into the queue anyway (a permanent failure, so the sender gets a bounce); DSNs are
7-bit with short lines whatever the original header held. Real sinks show what arrives.
"""

from __future__ import annotations

import asyncio
import random
import smtplib

from mailserver.delivery.dsn import RecipientFailure, build_dsn
from mailserver.message import has_long_line, transport_problem
from tests.support.smtpsink import SMTPSink
from tests.support.wait import async_wait_until
from tests.test_federation_e2e import (  # noqa: F401  (fixtures)
    A_IP,
    PASSWORD,
    SINK_IP,
    queue_files,
    sink,
    world,
)
from tests.test_remote_delivery import delivery, mx, resolver, sinks  # noqa: F401  (fixtures)

HEAD = b"From: alice@a.test\r\nTo: dave@c.test\r\nSubject: t\r\n\r\n"


def naive_long(data: bytes, limit: int = 998) -> bool:
    return any(len(line.removesuffix(b"\r")) > limit for line in data.split(b"\n"))


def test_has_long_line_agrees_with_a_line_by_line_count() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        lines = [b"x" * rng.choice([0, 1, 80, 996, 997, 998, 999, 1000, 1500, 3000])
                 for _ in range(rng.randrange(1, 8))]
        data = b"\r\n".join(lines) + rng.choice([b"", b"\r\n", b"\r"])
        assert has_long_line(data) == naive_long(data), [len(x) for x in lines]
    assert transport_problem(HEAD + b"a" * 998 + b"\r\n") is None
    assert transport_problem(HEAD + b"a\0b\r\n") == "contains a NUL octet"
    assert "longer than 998" in str(transport_problem(HEAD + b"a" * 999 + b"\r\n"))


def test_dsn_of_a_dirty_original_is_clean() -> None:
    for original in (b"From: a@b.test\r\nX-Nul: a\0b\r\nSubject: \x01\x7f\r\n\r\nbody\0\r\n",
                     b"From: a@b.test\r\nX-Nul: a\0b\r\nX-Long: " + b"y" * 5000 + b"\r\n\r\nbody\r\n"):
        dsn = build_dsn(reporting_mta="mx.a.test", original_sender="a@b.test", kind="failure",
                        failures=[RecipientFailure(recipient="x@c.test", status="5.6.0", text="no")],
                        original=original, arrival_date=0.0, message_id_domain="a.test", now=1.0)
        assert transport_problem(dsn) is None
        assert dsn.isascii()
        assert b"X-Nul: a=00b" in dsn  # quoted-printable, not dropped


def submit_raw(d, ca, body: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP(d.host, d.submission_port, local_hostname="laptop", timeout=20) as client:
        client._host = d.config["hostname"]  # type: ignore[attr-defined]
        client.starttls(context=ca.client_context())
        client.login("alice@a.test", PASSWORD)
        assert client.mail("alice@a.test")[0] == 250
        assert client.rcpt("dave@c.test")[0] == 250
        client.putcmd("data")
        code, _ = client.getreply()
        assert code == 354
        client.send(body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        return client.getreply()


async def test_submission_refuses_nul_and_long_lines_and_relays_998(world, ca, sink: SMTPSink) -> None:  # noqa: F811
    a = world.daemon("a", A_IP, accounts=("alice@a.test",))
    code, text = await asyncio.to_thread(submit_raw, a, ca, HEAD + b"one\0two\r\n")
    assert (code, text[:5]) == (554, b"5.6.0") and b"NUL" in text
    code, text = await asyncio.to_thread(submit_raw, a, ca, HEAD + b"z" * 1500 + b"\r\n")
    assert (code, text[:5]) == (554, b"5.6.0") and b"998" in text
    line = b"q" * 998 + b"\r\n"
    code, text = await asyncio.to_thread(submit_raw, a, ca, HEAD + line)
    assert code == 250, text
    await async_wait_until(lambda: sink.transactions, what="the 998-octet message at the sink")
    # Once the queue is empty nothing is left to send: had the refused ones been queued
    # anyway, they would be at the sink by now.
    await async_wait_until(lambda: not queue_files(a), what="the queue to empty")
    (tx,) = sink.transactions  # the refused ones never left
    assert tx.data.endswith(HEAD + line)  # after our Received and DKIM headers
    assert transport_problem(tx.data) is None


async def test_remote_delivery_never_sends_a_long_line_or_nul(dns_server, resolver, sinks) -> None:  # noqa: F811
    (s,) = await sinks("127.0.0.2")
    mx(dns_server, "example.test", (10, "mx1.example.test", "127.0.0.2"))
    remote = delivery(resolver, s.port)
    for dirty in (HEAD + b"w" * 1500 + b"\r\n", HEAD + b"a\0b\r\n", HEAD + b"w" * 999):
        res = await remote.deliver("a@example.org", ["b@example.test", "c@example.test"], dirty)
        for r in res.values():
            assert (r.kind, r.reply.code, r.status) == ("perm", 554, "5.6.0"), r
    assert s.transactions == []
    res = await remote.deliver("a@example.org", ["b@example.test"], HEAD + b"w" * 998 + b"\r\n")
    assert res["b@example.test"].kind == "sent"
    assert len(s.transactions) == 1
