"""``pymaild queue``: the handlers on a real queue directory, with and without a daemon.

The "daemon" is a real separate process that owns the queue (holds ``.lock``) and runs
the scheduler, as ``pymaild run`` does: the CLI cannot call it, only drop requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mailserver.commands import CommandError
from mailserver.commands import queue as queue_command
from mailserver.config import Config, load_config
from mailserver.delivery import queue_store as store
from mailserver.delivery.queue import Queue, QueuedMessage
from mailserver.delivery.results import DeliveryResult, from_reply
from tests.support.wait import async_wait_until, wait_until

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """\
hostname = "mx1.example.org"
primary_domain = "example.org"
local_domains = ["example.org"]
state_dir = "state"

[tls]
self_signed = true

[listen]
smtp = ["127.0.0.2:2525"]
"""
MESSAGE = (b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: queued one\r\n"
           b"Message-ID: <q1@example.org>\r\n\r\nbody\r\n")
TEMP = from_reply(451, "4.7.1 greylisted, come back later", "mx.example.net", module="remote")


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    path = tmp_path / "pymaild.toml"
    path.write_text(CONFIG)
    return load_config(path)


def run(cfg: Config, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    parser = argparse.ArgumentParser(prog="pymaild")
    queue_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["queue", *argv])
    assert args.func(args, cfg) == 0
    return capsys.readouterr().out


async def _fill(directory: Path, messages: list[tuple[str, list[str]]]) -> list[str]:
    """Queue messages with a daemon-like Queue whose first attempt fails temporarily."""

    async def deliver(msg: QueuedMessage) -> dict[str, DeliveryResult]:
        return {r: TEMP for r in msg.recipients}

    async def bounce(sender: str, dsn: bytes) -> None:
        raise AssertionError("no bounce expected")

    q = Queue(directory, deliver=deliver, bounce=bounce, hostname="mx1.example.org",
              is_local_sender=lambda a: True, jitter=0.0, control_interval=0.02)
    task = asyncio.create_task(q.start())
    ids = [await q.enqueue(sender, rcpts, MESSAGE) for sender, rcpts in messages]
    await async_wait_until(lambda: all(store.read_entry(directory, i).attempts == 1  # type: ignore[union-attr]
                                       for i in ids), interval=0.01, what="the first attempts")
    await q.stop()
    await task
    return ids


def fill(directory: Path, messages: list[tuple[str, list[str]]]) -> list[str]:
    return asyncio.run(_fill(directory, messages))


# ---------------------------------------------------------------------------- offline


def test_list_empty_queue_creates_nothing(cfg, capsys):
    assert run(cfg, capsys, "list") == "queue is empty\n"
    assert not cfg.queue_dir.exists()


def test_list_and_show(cfg, capsys):
    ids = fill(cfg.queue_dir, [("alice@example.org", ["bob@example.net", "carol@example.net"]),
                               ("", ["dave@example.net"])])
    out = run(cfg, capsys, "list").splitlines()
    assert out[0].split()[:4] == ["ID", "AGE", "SIZE", "SENDER"]
    assert len(out) == 4
    first, second = out[1], out[2]
    assert first.startswith(ids[0]) and second.startswith(ids[1])
    assert "<alice@example.org>" in first and "2 pending" in first
    assert "<>" in second and "1 pending" in second
    assert re.search(r"in 7m\s", first)  # next attempt after 450 s
    assert first.endswith("451 4.7.1 greylisted, come back later")
    assert out[3] == f"-- 2 message(s), {2 * len(MESSAGE)}B, 3 recipient(s) pending"

    data = json.loads(run(cfg, capsys, "list", "--json"))
    assert [e["id"] for e in data] == ids
    assert data[0]["recipients"][1]["address"] == "carol@example.net"

    show = run(cfg, capsys, "show", ids[0].lower())  # IDs are case-insensitive
    assert f"id:          {ids[0]}" in show
    assert "message-id:  <q1@example.org>" in show
    assert "sender:      <alice@example.org>" in show
    assert f"size:        {len(MESSAGE)} bytes" in show
    assert "<bob@example.net>  pending  attempts=1" in show
    assert "mx=mx.example.net status=4.7.1: 451 4.7.1 greylisted" in show
    assert "  Subject: queued one" in show
    assert "body" not in show.split("headers:")[1]


def test_flush_offline_rewrites_next_attempt(cfg, capsys):
    ids = fill(cfg.queue_dir, [("alice@example.org", ["bob@example.net"]),
                               ("alice@example.org", ["carol@example.net"])])
    before = store.read_entry(cfg.queue_dir, ids[1])
    out = run(cfg, capsys, "flush", ids[0])
    assert out.startswith(f"flushed {ids[0]}: due now (no daemon running")
    now = time.time()
    assert store.read_entry(cfg.queue_dir, ids[0]).next_attempt <= now  # type: ignore[union-attr]
    assert store.read_entry(cfg.queue_dir, ids[1]) == before  # the other one untouched
    run(cfg, capsys, "flush")
    assert all(e.next_attempt <= time.time() for e in store.list_entries(cfg.queue_dir))
    assert list((cfg.queue_dir / store.REQUESTS_DIR).iterdir()) == []  # all applied


def test_remove_offline(cfg, capsys):
    ids = fill(cfg.queue_dir, [("alice@example.org", ["bob@example.net"]),
                               ("alice@example.org", ["carol@example.net"])])
    out = run(cfg, capsys, "remove", ids[0])
    assert out == (f"removed {ids[0]}: from <alice@example.org> to "
                   f"<bob@example.net>(pending), {len(MESSAGE)} bytes\n")
    assert not store.state_path(cfg.queue_dir, ids[0]).exists()
    assert not store.data_path(cfg.queue_dir, ids[0]).exists()
    assert [e.id for e in store.list_entries(cfg.queue_dir)] == [ids[1]]


def test_errors_are_one_line(cfg, capsys):
    fill(cfg.queue_dir, [("alice@example.org", ["bob@example.net"])])
    for argv, message in ((["show", "../../etc/passwd"], "not a queue id"),
                          (["show", "0" * 18], "no such message"),
                          (["remove", "0" * 18], "no such message"),
                          (["flush", "nonsense"], "not a queue id")):
        with pytest.raises(CommandError, match=message):
            run(cfg, capsys, *argv)


# ---------------------------------------------------------------------------- with a daemon

DAEMON = textwrap.dedent("""
    import asyncio, signal, sys
    from pathlib import Path
    from mailserver.delivery.queue import Queue
    from mailserver.delivery.results import from_reply

    log = open(sys.argv[2], "a", buffering=1)
    TEMP = from_reply(451, "4.7.1 greylisted", "mx.example.net", module="remote")

    async def deliver(msg):
        log.write(f"{msg.id} {msg.attempts}\\n")
        return {r: TEMP for r in msg.recipients}

    async def bounce(sender, dsn):
        pass

    async def main():
        q = Queue(Path(sys.argv[1]), deliver=deliver, bounce=bounce, hostname="h.example",
                  is_local_sender=lambda a: True, jitter=0.0, control_interval=0.05)
        task = asyncio.create_task(q.start())
        await q.open()
        for i in range(3):
            qid = await q.enqueue("alice@example.org", [f"r{i}@example.net"],
                                  b"Subject: daemon test\\r\\n\\r\\nbody\\r\\n")
            print(qid, flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await q.stop()
        await task

    asyncio.run(main())
""")


def attempts(log: Path, qid: str) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.split()[0] == qid)


def test_flush_and_remove_while_the_daemon_runs(cfg, capsys, tmp_path):
    log = tmp_path / "deliveries.log"
    log.touch()
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON, str(cfg.queue_dir), str(log)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert daemon.stdout is not None
        ids = [daemon.stdout.readline().strip() for _ in range(3)]
        assert daemon.stdout.readline().strip() == "ready"
        wait_until(lambda: all(attempts(log, i) == 1 for i in ids), what="a first attempt of each")
        wait_until(lambda: all(store.read_entry(cfg.queue_dir, i).attempts == 1  # type: ignore[union-attr]
                               for i in ids), what="the first attempts in the state files")

        out = run(cfg, capsys, "list")
        assert all(i in out for i in ids) and "451 4.7.1 greylisted" in out

        out = run(cfg, capsys, "flush", ids[0])
        assert out == f"flushed {ids[0]}: daemon (pid {daemon.pid}) is delivering now\n"
        wait_until(lambda: attempts(log, ids[0]) == 2, what="the flushed message's second attempt")
        assert attempts(log, ids[1]) == 1  # only the flushed one

        out = run(cfg, capsys, "remove", ids[1])
        assert out.startswith(f"removed {ids[1]}: from <alice@example.org> to <r1@example.net>")
        assert not store.data_path(cfg.queue_dir, ids[1]).exists()

        run(cfg, capsys, "flush")
        wait_until(lambda: attempts(log, ids[2]) == 2, what="the flush-all's second attempt")
        assert attempts(log, ids[1]) == 1  # removed: never tried again
        assert list((cfg.queue_dir / store.REQUESTS_DIR).iterdir()) == []
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert daemon.returncode == 0
    assert sorted(e.id for e in store.list_entries(cfg.queue_dir)) == sorted([ids[0], ids[2]])


def test_real_command_line(cfg, tmp_path):
    """Through the command line, as ``pymaild queue`` runs it (cli.py's main)."""
    ids = fill(cfg.queue_dir, [("alice@example.org", ["bob@example.net"])])
    res = subprocess.run([sys.executable, "-m", "mailserver.cli", "queue", "list", "-c", cfg.path],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert ids[0] in res.stdout
    res = subprocess.run([sys.executable, "-m", "mailserver.cli", "queue", "show", "-c", cfg.path,
                          "F" * 18], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 1
    assert res.stderr == f"pymaild: {'F' * 18}: no such message in the queue\n"
