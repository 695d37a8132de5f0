"""Outbound mail end to end: two pymaild instances (a.test on 127.0.0.2, b.test on 127.0.0.3)
find each other through MX records on a loopback DNS server; scripted fake MXes on other
127.0.0.x addresses play the misbehaving internet; an HTTPS server serves MTA-STS policies.
"""

from __future__ import annotations

import asyncio
import email
import smtplib
from pathlib import Path
from typing import Any

import pytest

from tests.support.ca import TestCA
from tests.support.daemon import PymaildProcess, free_port
from tests.support.dnsserver import DNSServer
from tests.support.smtpsink import PolicyServer, SMTPSink
from tests.support.wait import async_wait_until

PASSWORD = "password-123456"
A_IP, B_IP, SINK_IP, POLICY_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.6"


def common_port(*hosts: str) -> int:
    """A port free on every one of ``hosts`` (MX delivery uses one port for all MXes)."""
    import socket

    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no common free port")


class World:
    """DNS, CA and the two daemons, built per test."""

    def __init__(self, tmp: Path, ca: TestCA, dns: DNSServer) -> None:
        self.tmp, self.ca, self.dns = tmp, ca, dns
        self.mx_port = common_port(A_IP, B_IP, SINK_IP, "127.0.0.5")
        self.policy: PolicyServer | None = None
        self.daemons: dict[str, PymaildProcess] = {}

    def publish_domain(self, domain: str, ip: str, *, dmarc: str = "reject") -> None:
        self.dns.add(f"{domain}.", "MX", f"10 mx.{domain}.")
        self.dns.add(f"mx.{domain}.", "A", ip)
        self.dns.add(f"{domain}.", "TXT", f"v=spf1 ip4:{ip} -all")
        self.dns.add(f"_dmarc.{domain}.", "TXT", f"v=DMARC1; p={dmarc}")

    def daemon(self, name: str, ip: str, *, queue: dict[str, Any] | None = None,
               delivery: dict[str, Any] | None = None, accounts: tuple[str, ...] = ()) -> PymaildProcess:
        domain = f"{name}.test"
        cert, key = self.ca.issue(f"mx.{domain}")
        submission = free_port(ip)
        config: dict[str, Any] = {
            "hostname": f"mx.{domain}", "primary_domain": domain, "local_domains": [domain],
            "state_dir": str(self.tmp / name / "state"),
            "tls": {"cert": str(cert), "key": str(key)},
            "listen": {"smtp": [f"{ip}:{self.mx_port}"], "submission": [f"{ip}:{submission}"]},
            "dns": {"nameservers": [self.dns.nameserver], "timeout": "3s"},
            "delivery": {"mx_port": self.mx_port, "source_address": ip, "ca_file": str(self.ca.cert_path),
                         "connect_timeout": "2s", "command_timeout": "3s", "data_timeout": "3s",
                         **(delivery or {})},
            "queue": {"retry_schedule": ["0s", "1s"], **(queue or {})},
        }
        d = PymaildProcess(self.tmp / name, config)
        d.host, d.port = ip, self.mx_port
        d.submission_port = submission  # type: ignore[attr-defined]
        for address in accounts:
            d.add_account(address)
        d.start()
        self.publish_domain(domain, ip)
        for dns_file in (d.state_dir / "dkim").glob("*.dns"):
            dom, selector = _split(dns_file)
            self.dns.add(f"{selector}._domainkey.{dom}.", "TXT", dns_file.read_text().strip())
        self.daemons[name] = d
        return d

    def stop(self) -> None:
        for d in self.daemons.values():
            d.stop()


def _split(dns_file: Path) -> tuple[str, str]:
    """``a.test.default-ed25519.dns`` -> ("a.test", "default-ed25519")."""
    stem = dns_file.name[: -len(".dns")]
    domain, _, selector = stem.rpartition(".")
    return domain, selector


@pytest.fixture
def world(tmp_path, ca, dns_server, request):
    w = World(tmp_path, ca, dns_server)
    yield w
    w.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:  # the daemons' logs explain most failures
        for name, d in w.daemons.items():
            print(f"----- log of {name} -----\n{d.log_text()[-6000:]}")


def submit(d: PymaildProcess, ca: TestCA, sender: str, rcpts: list[str], body: bytes) -> str:
    with smtplib.SMTP(d.host, d.submission_port, local_hostname="laptop", timeout=20) as client:  # type: ignore[attr-defined]
        client._host = d.config["hostname"]  # type: ignore[attr-defined]
        client.starttls(context=ca.client_context())
        client.login(sender, PASSWORD)
        code, reply = client.mail(sender)
        assert code == 250, reply
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        code, reply = client.data(body)
        assert code == 250, reply
        return reply.decode()


ENFORCE_B = "version: STSv1\nmode: enforce\nmx: mx.b.test\nmax_age: 86400\n"
ENFORCE_OTHER = "version: STSv1\nmode: enforce\nmx: other.b.test\nmax_age: 86400\n"
ENFORCE_C = "version: STSv1\nmode: enforce\nmx: mx.c.test\nmax_age: 86400\n"


async def send(d: PymaildProcess, ca: TestCA, rcpts: list[str]) -> str:
    """alice@a.test submits a small message to ``rcpts`` through ``d``."""
    body = mail("alice@a.test", ", ".join(rcpts))
    return await asyncio.to_thread(submit, d, ca, "alice@a.test", rcpts, body)


def mail(sender: str, to: str, subject: str = "hello") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHi there.\r\n").encode()


def inbox(d: PymaildProcess, user: str, folder: str = "") -> list[bytes]:
    base = d.state_dir / "mail" / d.config["primary_domain"] / user / folder / "new"
    return [p.read_bytes() for p in sorted(base.iterdir())] if base.exists() else []


def ar(data: bytes) -> str:
    head = data.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n\t", " ").replace("\r\n ", " ")
    return next(line for line in head.split("\r\n") if line.startswith("Authentication-Results:"))


def queue_files(d: PymaildProcess) -> list[Path]:
    return sorted(d.state_dir.joinpath("queue").glob("*.json"))


# ---------------------------------------------------------------------------- federation


async def test_submission_signs_and_delivers_to_the_other_instance(world, ca):
    a = world.daemon("a", A_IP, accounts=("alice@a.test", "carol@a.test"))
    b = world.daemon("b", B_IP, accounts=("bob@b.test",))
    reply = await asyncio.to_thread(submit, a, ca, "alice@a.test", ["bob@b.test", "carol@a.test"],
                                    mail("Alice <alice@a.test>", "bob@b.test, carol@a.test"))
    assert "queued as" in reply
    await async_wait_until(lambda: inbox(b, "bob"), what="delivery to b.test")
    (received,) = inbox(b, "bob")
    result = ar(received)
    assert "spf=pass" in result and "smtp.mailfrom=alice@a.test" in result
    assert result.count("dkim=pass") == 2, result  # rsa-sha256 and ed25519-sha256
    assert "header.d=a.test" in result and "dmarc=pass" in result
    assert b"with ESMTPS" in received  # A used STARTTLS to B
    (local,) = inbox(a, "carol")  # the local recipient got it directly, signed too
    assert local.count(b"DKIM-Signature:") == 2
    await async_wait_until(lambda: not queue_files(a), what="queue to empty")
    log = a.wait_log("outcome=accepted")
    assert "queued=" in log


# ---------------------------------------------------------------------------- MTA-STS


async def start_policy(world: World, domain: str, text: str) -> PolicyServer:
    cert = world.ca.issue(f"mta-sts.{domain}")
    server = await PolicyServer(POLICY_IP, cert).start()
    server.serve_policy(text)
    world.dns.add(f"mta-sts.{domain}.", "A", POLICY_IP)
    world.dns.add(f"_mta-sts.{domain}.", "TXT", "v=STSv1; id=1")
    return server


async def test_mta_sts_enforce_with_matching_mx_delivers(world, ca):
    server = await start_policy(world, "b.test", ENFORCE_B)
    try:
        b = world.daemon("b", B_IP, accounts=("bob@b.test",))
        a = world.daemon("a", A_IP, accounts=("alice@a.test",),
                         delivery={"mta_sts_port": server.port})
        await send(a, ca, ["bob@b.test"])
        await async_wait_until(lambda: inbox(b, "bob"), what="delivery under an enforce policy")
        assert server.requests, "the policy was never fetched"
    finally:
        await server.stop()


async def test_mta_sts_enforce_mx_not_in_policy_defers_then_bounces(world, ca):
    server = await start_policy(world, "b.test", ENFORCE_OTHER)
    try:
        b = world.daemon("b", B_IP, accounts=("bob@b.test",))
        a = world.daemon("a", A_IP, accounts=("alice@a.test",), delivery={"mta_sts_port": server.port},
                         queue={"retry_schedule": ["0s", "1s"], "max_age": "4s"})
        await send(a, ca, ["bob@b.test"])
        await async_wait_until(lambda: inbox(a, "alice"), timeout=30, what="the bounce")
        (dsn,) = inbox(a, "alice")
        assert inbox(b, "bob") == []  # never delivered without a policy-matching MX
        assert dsn.startswith(b"Return-Path: <>\r\n")
        parsed = email.message_from_bytes(dsn)
        assert parsed.get_content_type() == "multipart/report"
        status = next(part for part in parsed.walk() if part.get_content_type() == "message/delivery-status")
        text = status.as_string()
        assert "Final-Recipient: rfc822; bob@b.test" in text or "Final-Recipient: rfc822;bob@b.test" in text
        assert "Action: failed" in text
    finally:
        await server.stop()


async def test_mta_sts_enforce_wrong_certificate_defers(world, ca):
    # c.test's MX presents a certificate for another name: with enforce, no delivery.
    world.publish_domain("c.test", SINK_IP)
    sink = await SMTPSink(SINK_IP, world.mx_port, tls=ca.issue("wrong.example", stem="wrong")).start()
    server = await start_policy(world, "c.test", ENFORCE_C)
    try:
        a = world.daemon("a", A_IP, accounts=("alice@a.test",), delivery={"mta_sts_port": server.port},
                         queue={"retry_schedule": ["0s", "30s"]})
        await send(a, ca, ["dave@c.test"])
        await async_wait_until(lambda: ("dave@c.test" in a.log_text() and "temp" in a.log_text())
                               or _pending_with_error(a), what="a deferred attempt")
        assert sink.transactions == []  # nothing was sent, not even in plaintext
        assert queue_files(a), "the message must stay queued"
    finally:
        await server.stop()
        await sink.stop()


def _pending_with_error(d: PymaildProcess) -> bool:
    import json

    for path in queue_files(d):
        state = json.loads(path.read_text())
        if any(r.get("text") for r in state.get("recipients", [])):
            return True
    return False


# ---------------------------------------------------------------------------- misbehaving MXes


@pytest.fixture
async def sink(world, ca):
    world.publish_domain("c.test", SINK_IP)
    s = await SMTPSink(SINK_IP, world.mx_port, tls=ca.issue("mx.c.test")).start()
    yield s
    await s.stop()


async def test_451_then_250_is_delivered_once(world, ca, sink):
    sink.script("MAIL", "451 4.7.1 greylisted, come back later")
    a = world.daemon("a", A_IP, accounts=("alice@a.test",))
    await send(a, ca, ["dave@c.test"])
    await async_wait_until(lambda: sink.transactions, what="the retry to succeed")
    await async_wait_until(lambda: not queue_files(a), what="queue to empty")
    # A real pause, for something that must NOT happen: a second delivery would come within
    # one retry interval (1s), so watch a little longer than that.
    await asyncio.sleep(1.5)
    assert len(sink.transactions) == 1
    assert inbox(a, "alice") == []  # no bounce


async def test_550_for_one_recipient_bounces_exactly_that_one(world, ca, sink):
    sink.rcpt_replies["nobody@c.test"] = "550 5.1.1 no such user"
    a = world.daemon("a", A_IP, accounts=("alice@a.test",))
    await asyncio.to_thread(submit, a, ca, "alice@a.test", ["dave@c.test", "nobody@c.test"],
                            mail("alice@a.test", "dave@c.test, nobody@c.test"))
    await async_wait_until(lambda: inbox(a, "alice"), what="the bounce")
    (dsn,) = inbox(a, "alice")
    assert [t.rcpts for t in sink.transactions] == [["dave@c.test"]]
    text = dsn.decode()
    assert "nobody@c.test" in text and "550 5.1.1" in text
    assert "Final-Recipient: rfc822; dave@c.test" not in text and "rfc822;dave@c.test" not in text
    # A real pause, for something that must NOT happen: a second DSN would come with a
    # second attempt, within one retry interval (1s).
    await asyncio.sleep(1.5)
    assert len(inbox(a, "alice")) == 1  # one DSN, not one per attempt


async def test_hang_mid_data_is_retried(world, ca, sink):
    sink.hang.add("DOT")
    a = world.daemon("a", A_IP, accounts=("alice@a.test",), queue={"retry_schedule": ["0s", "1s"]})
    await send(a, ca, ["dave@c.test"])
    await async_wait_until(lambda: sink.hung, what="the first attempt to hang after the dot")
    # After data_timeout (3s) the attempt gives up and the queue records why.
    await async_wait_until(lambda: _pending_with_error(a), what="the hung attempt to time out")
    sink.hang.discard("DOT")
    await async_wait_until(lambda: sink.transactions, what="a retry after the hang")
    await async_wait_until(lambda: not queue_files(a), what="queue to empty")


async def test_starttls_response_injection_aborts(world, ca, sink):
    sink.inject_after_starttls = b"250 injected\r\n"
    a = world.daemon("a", A_IP, accounts=("alice@a.test",), queue={"retry_schedule": ["0s", "30s"]})
    await send(a, ca, ["dave@c.test"])
    await async_wait_until(lambda: _pending_with_error(a), what="a deferred attempt")
    assert sink.transactions == []
    assert queue_files(a)


async def test_sigkill_during_delivery_loses_nothing(world, ca, sink):
    sink.hang.add("DOT")
    a = world.daemon("a", A_IP, accounts=("alice@a.test",))
    await send(a, ca, ["dave@c.test"])
    # The whole message is sent and the sink never answers the dot: kill the sender now.
    await async_wait_until(lambda: sink.hung, what="delivery to reach the final dot")
    a.kill()
    sink.hang.discard("DOT")
    assert queue_files(a), "the queued message must survive SIGKILL"
    await asyncio.to_thread(a.start)
    await async_wait_until(lambda: sink.transactions, what="delivery after restart")
    await async_wait_until(lambda: not queue_files(a), what="queue to empty")
    assert 1 <= len(sink.transactions) <= 2  # at most one duplicate, never lost
