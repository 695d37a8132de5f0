"""Outbound queue benchmark: durable enqueue latency/throughput and end-to-end turnover.

    python bench/queue_enqueue.py                 # in a temp dir on the state disk
    python bench/queue_enqueue.py --dir /var/lib/pymaild/bench --count 500

Rows:
  enqueue c=N       N tasks enqueueing at once (every enqueue fsyncs data, state, dir):
                    msgs/s and per-enqueue latency p50/p99/max
  turnover c=N      enqueue + a deliver that answers "sent" at once + removal of the files:
                    msgs/s until the queue is empty again
  load              Queue.open() of the directory left by the enqueue rows
  loop stall        the longest gap a 1 ms ticker saw on the event loop during the run

Real fsyncs on the disk holding --dir. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from mailserver.delivery.queue import Queue, QueuedMessage
from mailserver.delivery.results import DeliveryResult, from_reply

SENT = from_reply(250, "ok", "mx.bench", module="remote")


def message(size: int) -> bytes:
    head = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def ticker(stop: asyncio.Event, worst: list[float]) -> None:
    loop = asyncio.get_running_loop()
    last = loop.time()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = loop.time()
        worst[0] = max(worst[0], now - last)
        last = now


def make(directory: Path, deliver) -> Queue:
    async def bounce(sender: str, dsn: bytes) -> None:
        pass

    return Queue(directory, deliver=deliver, bounce=bounce, hostname="bench.example",
                 is_local_sender=lambda a: True, control_interval=0.05)


async def enqueue_row(directory: Path, count: int, conc: int, data: bytes) -> None:
    hang = asyncio.Event()

    async def deliver(msg: QueuedMessage) -> dict[str, DeliveryResult]:
        await hang.wait()  # keep everything queued: this row measures enqueue only
        return {}

    q = make(directory, deliver)
    q.concurrency = 1
    await q.open()
    latencies: list[float] = []
    counter = iter(range(count))
    stop, worst = asyncio.Event(), [0.0]
    tick = asyncio.create_task(ticker(stop, worst))

    async def worker() -> None:
        for _ in counter:
            t = time.perf_counter()
            await q.enqueue("a@example.org", ["b@example.net"], data)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    elapsed = time.perf_counter() - t0
    stop.set()
    await tick
    await q.stop()
    lat = sorted(latencies)
    print(f"enqueue c={conc:<3} {len(data):>7} B  {count / elapsed:7.0f} msgs/s  "
          f"p50 {statistics.median(lat) * 1000:6.2f} ms  p99 {lat[int(len(lat) * 0.99) - 1] * 1000:6.2f} ms  "
          f"max {lat[-1] * 1000:6.2f} ms  loop stall {worst[0] * 1000:5.1f} ms")


async def turnover_row(directory: Path, count: int, conc: int, data: bytes) -> None:
    async def deliver(msg: QueuedMessage) -> dict[str, DeliveryResult]:
        return {r: SENT for r in msg.recipients}

    q = make(directory, deliver)
    task = asyncio.create_task(q.start())
    await q.open()
    counter = iter(range(count))

    async def worker() -> None:
        for _ in counter:
            await q.enqueue("a@example.org", ["b@example.net"], data)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    while q.list():
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    await q.stop()
    await task
    print(f"turnover c={conc:<3} {len(data):>6} B  {count / elapsed:7.0f} msgs/s "
          "(enqueue, deliver, remove files)")


async def load_row(directory: Path) -> None:
    async def deliver(msg: QueuedMessage) -> dict[str, DeliveryResult]:
        return {}

    q = make(directory, deliver)
    t0 = time.perf_counter()
    await q.open()
    elapsed = time.perf_counter() - t0
    n = len(q.list())
    q._stopping = True
    await q.stop()
    print(f"load {n} entries: {elapsed * 1000:.0f} ms")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, help="queue directory (default: a temp dir)")
    ap.add_argument("--count", type=int, default=400)
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="pymaild-bench-", dir="/var/tmp"))
    for size in (2_000, 100_000):
        for conc in (1, 20):
            await enqueue_row(base / f"q-{size}-{conc}", args.count, conc, message(size))
    await load_row(base / "q-2000-20")
    for conc in (1, 20):
        await turnover_row(base / f"t-{conc}", args.count, conc, message(2_000))
    print(f"(files in {base})")


if __name__ == "__main__":
    asyncio.run(main())
