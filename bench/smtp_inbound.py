"""Inbound SMTP benchmark: N messages over C concurrent connections to a real pymaild.

Starts its own daemon (and, with --checks, a DNS server on loopback publishing the
sender's SPF, DKIM key and DMARC record), sends with a lean pipelined asyncio client so
the client costs little CPU on a 2-core machine, waits until every message is in the
Maildir and prints accepted/delivered msgs/s and p50/p99 latency (MAIL to 250 after DATA).

    python bench/smtp_inbound.py                       # the full matrix, checks off and on
    python bench/smtp_inbound.py --sizes 2048 --concurrency 10 --count 2000 --checks on

Loopback only. Nothing here is a test; it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.daemon import PymaildProcess, free_port  # noqa: E402
from tests.support.dnsserver import DNSServer  # noqa: E402

SENDER_DOMAIN = "bench-sender.example"


def make_message(size: int, sign_keys: tuple[bytes, bytes] | None) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * max(1, size // len(line))
    head = (f"From: Bench <bench@{SENDER_DOMAIN}>\r\nTo: alice@example.test\r\n"
            f"Subject: benchmark message\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <bench@{SENDER_DOMAIN}>\r\n\r\n").encode()
    msg = head + body
    if sign_keys:
        import dkim

        headers = [b"from", b"to", b"subject", b"date", b"message-id"]
        msg = (dkim.sign(msg, b"ed1", SENDER_DOMAIN.encode(), sign_keys[1], include_headers=headers,
                         signature_algorithm=b"ed25519-sha256", linesep=b"\r\n")
               + dkim.sign(msg, b"rsa1", SENDER_DOMAIN.encode(), sign_keys[0], include_headers=headers,
                           linesep=b"\r\n")
               + msg)
    return msg


def publish(dns: DNSServer) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    rsa_pub = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    ed_pub = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    dns.add(f"{SENDER_DOMAIN}.", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    b64 = base64.b64encode
    dns.add(f"rsa1._domainkey.{SENDER_DOMAIN}.", "TXT", f"v=DKIM1; k=rsa; p={b64(rsa_pub).decode()}")
    dns.add(f"ed1._domainkey.{SENDER_DOMAIN}.", "TXT", f"v=DKIM1; k=ed25519; p={b64(ed_pub).decode()}")
    dns.add(f"_dmarc.{SENDER_DOMAIN}.", "TXT", "v=DMARC1; p=reject")
    rsa_pem = rsa_key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    seed = ed_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    return rsa_pem, base64.b64encode(seed)


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


async def client(host: str, port: int, payload: bytes, jobs: asyncio.Queue[int],
                 latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    await read_reply(reader)
    writer.write(b"EHLO bench.example\r\n")
    await read_reply(reader)
    envelope = f"MAIL FROM:<bench@{SENDER_DOMAIN}>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n".encode()
    body = payload.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    while True:
        try:
            jobs.get_nowait()
        except asyncio.QueueEmpty:
            break
        t0 = time.perf_counter()
        writer.write(envelope)  # PIPELINING: one round trip for MAIL, RCPT and DATA
        for _ in range(3):
            reply = await read_reply(reader)
        if not reply.startswith(b"354"):
            raise RuntimeError(f"unexpected {reply!r}")
        writer.write(body)
        reply = await read_reply(reader)
        if not reply.startswith(b"250"):
            raise RuntimeError(f"refused: {reply!r}")
        latencies.append(time.perf_counter() - t0)
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


async def run_load(host: str, port: int, payload: bytes, count: int,
                   concurrency: int) -> tuple[float, list[float]]:
    jobs: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        jobs.put_nowait(i)
    latencies: list[float] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(client(host, port, payload, jobs, latencies) for _ in range(concurrency)))
    return time.perf_counter() - t0, latencies


def count_delivered(inbox: Path) -> int:
    return sum(1 for _ in (inbox / "new").iterdir())


def bench(args: argparse.Namespace, checks: bool, only: str = "") -> None:
    """One daemon; ``only`` ("spf", "dkim", "spf+dkim") turns on just those checks.

    DMARC cannot run alone (it judges SPF and DKIM results: alone it rejects), so its cost
    is the difference between all checks and "spf+dkim".
    """
    with tempfile.TemporaryDirectory(prefix="pymaild-bench-") as tmp, DNSServer() as dns:
        keys = publish(dns) if checks else None
        port = free_port()
        config = {
            "hostname": "mx.example.test", "primary_domain": "example.test",
            "local_domains": ["example.test"], "state_dir": f"{tmp}/state",
            "tls": {"self_signed": True}, "listen": {"smtp": [f"127.0.0.1:{port}"]},
            "smtp": {"max_connections_per_ip": 1000},
            "checks": {name: checks and (not only or name in only.split("+"))
                       for name in ("spf", "dkim", "dmarc")},
            "dns": {"nameservers": [dns.nameserver]},
        }
        daemon = PymaildProcess(Path(tmp) / "d", config)
        daemon.add_account("alice@example.test")
        daemon.start()
        inbox = daemon.state_dir / "mail/example.test/alice"
        try:
            for size in args.sizes:
                payload = make_message(size, keys)
                asyncio.run(run_load("127.0.0.1", port, payload, 20, 2))  # warm up (DNS cache, JIT-free)
                for concurrency in args.concurrency:
                    before = count_delivered(inbox)
                    elapsed, lat = asyncio.run(run_load("127.0.0.1", port, payload, args.count, concurrency))
                    t_accept = elapsed
                    while count_delivered(inbox) < before + args.count:
                        time.sleep(0.01)
                    t_deliver = max(elapsed, t_accept)
                    lat.sort()
                    p50 = statistics.median(lat) * 1000
                    p99 = lat[int(len(lat) * 0.99) - 1] * 1000
                    label = only or ("on" if checks else "off")
                    print(f"checks={label:<8} size={size // 1024:>3} KB C={concurrency:<3}"
                          f" n={args.count:<5} accepted={args.count / t_accept:7.0f} msg/s"
                          f" delivered={args.count / t_deliver:7.0f} msg/s"
                          f" p50={p50:6.1f} ms p99={p99:6.1f} ms", flush=True)
        finally:
            daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 100 * 1024])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--checks", choices=["off", "on", "both", "each"], default="both",
                        help="'each': one run per check alone (what each costs)")
    args = parser.parse_args()
    if args.checks in ("off", "both", "each"):
        bench(args, checks=False)
    if args.checks in ("on", "both", "each"):
        bench(args, checks=True)
    if args.checks == "each":
        for only in ("spf", "dkim", "spf+dkim"):
            bench(args, checks=True, only=only)


if __name__ == "__main__":
    main()
