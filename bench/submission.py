"""Outbound benchmark: authenticated submission -> durable queue -> remote delivery.

Starts a pymaild (a.test on 127.0.0.2) whose MX for c.test is a fast SMTP sink on
127.0.0.4 (records nothing but counts), a DNS server on loopback, and measures:

1. submission to the durable queue: C concurrent clients, each logged in once over
   STARTTLS on 587, sending 2 KB messages to a remote recipient; every 250 means the
   message was DKIM-signed (rsa-2048 + ed25519) and fsync'd in the queue;
2. queue to the sink: from the first accepted message until the queue is empty.

    python bench/submission.py                      # C = 1, 10, 50
    python bench/submission.py --count 500 --concurrency 10

Loopback only. It prints figures; nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.ca import TestCA  # noqa: E402
from tests.support.daemon import PymaildProcess, free_port  # noqa: E402
from tests.support.dnsserver import DNSServer  # noqa: E402

PASSWORD = "password-123456"


class CountingSink:
    """A minimal, fast SMTP server (no TLS offered) that counts accepted messages."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.client, self.host, self.port)

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    await writer.drain()
                    while (body := await reader.readline()) and body != b".\r\n":
                        pass
                    self.accepted += 1
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 2.0.0 ok\r\n")
                await writer.drain()
        finally:
            writer.close()


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


async def submitter(port: int, ctx: ssl.SSLContext, payload: bytes, jobs: asyncio.Queue[int],
                    latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.2", port)
    await read_reply(reader)
    writer.write(b"EHLO laptop\r\n")
    await read_reply(reader)
    writer.write(b"STARTTLS\r\n")
    await read_reply(reader)
    await writer.start_tls(ctx, server_hostname="mx.a.test")
    writer.write(b"EHLO laptop\r\n")
    await read_reply(reader)
    token = base64.b64encode(b"\0alice@a.test\0" + PASSWORD.encode())
    writer.write(b"AUTH PLAIN " + token + b"\r\n")
    assert (await read_reply(reader)).startswith(b"235")
    envelope = b"MAIL FROM:<alice@a.test>\r\nRCPT TO:<dave@c.test>\r\nDATA\r\n"
    body = payload.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    while True:
        try:
            jobs.get_nowait()
        except asyncio.QueueEmpty:
            break
        t0 = time.perf_counter()
        writer.write(envelope)
        for _ in range(3):
            reply = await read_reply(reader)
        writer.write(body)
        reply = await read_reply(reader)
        if not reply.startswith(b"250"):
            raise RuntimeError(f"refused: {reply!r}")
        latencies.append(time.perf_counter() - t0)
    writer.write(b"QUIT\r\n")
    writer.close()


def message(size: int) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    return (b"From: Alice <alice@a.test>\r\nTo: dave@c.test\r\nSubject: bench\r\n\r\n"
            + line * max(1, size // len(line)))


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="pymaild-bench-") as tmp, DNSServer() as dns:
        ca = TestCA(Path(tmp) / "ca")
        cert, key = ca.issue("mx.a.test")
        mx_port, sub_port = free_port("127.0.0.4"), free_port("127.0.0.2")
        sink = CountingSink("127.0.0.4", mx_port)
        await sink.start()
        dns.add("c.test.", "MX", "10 mx.c.test.")
        dns.add("mx.c.test.", "A", "127.0.0.4")
        config = {
            "hostname": "mx.a.test", "primary_domain": "a.test", "local_domains": ["a.test"],
            "state_dir": f"{tmp}/state", "tls": {"cert": str(cert), "key": str(key)},
            "listen": {"submission": [f"127.0.0.2:{sub_port}"]},
            "smtp": {"max_connections_per_ip": 1000},
            "dns": {"nameservers": [dns.nameserver]},
            "delivery": {"mx_port": mx_port, "mta_sts": False},
            "queue": {"concurrency": args.queue_concurrency},
        }
        daemon = PymaildProcess(Path(tmp) / "d", config)
        daemon.add_account("alice@a.test")
        await asyncio.to_thread(daemon.start)
        queue_dir = daemon.state_dir / "queue"
        ctx = ca.client_context()
        payload = message(args.size)
        try:
            for concurrency in args.concurrency:
                jobs: asyncio.Queue[int] = asyncio.Queue()
                for i in range(args.count):
                    jobs.put_nowait(i)
                latencies: list[float] = []
                before = sink.accepted
                t0 = time.perf_counter()
                await asyncio.gather(*(submitter(sub_port, ctx, payload, jobs, latencies)
                                       for _ in range(concurrency)))
                t_submit = time.perf_counter() - t0
                while sink.accepted < before + args.count or any(queue_dir.glob("*.json")):
                    await asyncio.sleep(0.01)
                t_delivered = time.perf_counter() - t0
                latencies.sort()
                print(f"C={concurrency:<3} n={args.count} size={args.size // 1024} KB"
                      f"  submission->queue {args.count / t_submit:6.0f} msg/s"
                      f" (p50 {statistics.median(latencies) * 1000:5.1f} ms,"
                      f" p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:5.1f} ms)"
                      f"  queue->sink done at {args.count / t_delivered:6.0f} msg/s overall",
                      flush=True)
        finally:
            await asyncio.to_thread(daemon.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--queue-concurrency", type=int, default=20)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
