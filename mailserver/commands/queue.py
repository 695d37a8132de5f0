"""``pymaild queue list|show|flush|remove``: inspect and steer the outbound queue.

Works whether or not the daemon runs. ``list`` and ``show`` only read the queue's JSON
files, which are always whole (atomic renames). ``flush`` and ``remove`` drop a request
file into ``queue/requests/``: if a daemon holds the queue lock it applies the request
within about a second and deletes the file (that is the acknowledgement we wait for);
if none does, this command takes the lock and applies it itself. See
``mailserver/delivery/queue.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..delivery import queue_store as store
from ..delivery.dsn import format_reply
from ..delivery.queue import apply_requests_offline
from ..delivery.queue_store import QueueEntry, QueueError, QueueLock
from . import CommandError


def _directory(cfg: Config) -> Path:
    return cfg.queue_dir


def _entries(directory: Path) -> list[QueueEntry]:
    try:
        return store.list_entries(directory)
    except OSError as exc:
        raise CommandError(f"{directory}: {exc.strerror or exc}") from None


def _entry(directory: Path, raw_id: str) -> QueueEntry:
    try:
        qid = store.check_id(raw_id)
        entry = store.read_entry(directory, qid)
    except (QueueError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"{directory}: {exc.strerror or exc}") from None
    if entry is None:
        raise CommandError(f"{qid}: no such message in the queue")
    return entry


# ---------------------------------------------------------------------------- formatting


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n}B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f}K"
    return f"{n / (1024 * 1024):.1f}M"


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    if ts <= now:
        return "now"
    return f"in {_age(ts - now)}"


def _stamp(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(ts))


def _sender(entry: QueueEntry) -> str:
    return f"<{entry.mail_from}>"


def _counts(entry: QueueEntry) -> str:
    parts = [f"{len(entry.pending)} pending"]
    if entry.failed:
        parts.append(f"{len(entry.failed)} failed")
    sent = len(entry.recipients) - len(entry.pending) - len(entry.failed)
    if sent:
        parts.append(f"{sent} sent")
    return ", ".join(parts)


def _one_line(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------- handlers


def _list(args: argparse.Namespace, cfg: Config) -> int:
    entries = _entries(_directory(cfg))
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=1))
        return 0
    if not entries:
        print("queue is empty")
        return 0
    now = time.time()
    rows = [("ID", "AGE", "SIZE", "SENDER", "RECIPIENTS", "NEXT", "LAST ERROR")]
    for e in entries:
        rows.append((e.id, _age(now - e.created), _size(e.size), _sender(e), _counts(e),
                     _when(e.next_attempt, now), _one_line(e.last_error) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    pending = sum(len(e.pending) for e in entries)
    total = sum(e.size for e in entries)
    print(f"-- {len(entries)} message(s), {_size(total)}, {pending} recipient(s) pending")
    return 0


def _show(args: argparse.Namespace, cfg: Config) -> int:
    directory = _directory(cfg)
    e = _entry(directory, args.id)
    now = time.time()
    print(f"id:          {e.id}")
    print(f"message-id:  {e.message_id or '-'}")
    print(f"sender:      {_sender(e)}")
    print(f"created:     {_stamp(e.created)} ({_age(now - e.created)} ago)")
    print(f"size:        {e.size} bytes")
    print(f"data file:   {store.data_path(directory, e.id)}")
    print(f"delay notice sent: {'yes' if e.delay_notice_sent else 'no'}")
    print("recipients:")
    for r in e.recipients:
        print(f"  <{r.address}>  {r.state}  attempts={r.attempts}")
        if r.state == "pending":
            print(f"      next attempt: {_stamp(r.next_attempt)} ({_when(r.next_attempt, now)})")
        if r.last_attempt is not None:
            reply = format_reply(r.code, r.text)
            print(f"      last attempt: {_stamp(r.last_attempt)} mx={r.mx or '-'} "
                  f"status={r.status or '-'}: {' '.join(reply.split())}")
        if r.state == "failed":
            print(f"      sender notified: {'yes' if r.notified else 'not yet'}")
    print("headers:")
    try:
        header = store.read_header(directory, e.id)
    except OSError as exc:
        print(f"  (cannot read {store.data_path(directory, e.id)}: {exc.strerror or exc})")
        return 0
    for line in header.decode("utf-8", errors="replace").splitlines():
        print(f"  {line}")
    return 0


def _submit(directory: Path, action: store.RequestAction, qid: str | None,
            wait: float) -> tuple[str, list[str]]:
    """Hand a request to the queue owner. Returns (mode, lines) with mode
    "offline" (applied here), "daemon" (acknowledged) or "pending" (not yet)."""
    try:
        request = store.write_request(directory, action, qid)
        lock = QueueLock(directory)
        with lock.held_if_free() as offline:
            if offline:
                return "offline", apply_requests_offline(directory)
            pid = lock.holder()
    except (OSError, QueueError) as exc:
        raise CommandError(f"{directory}: {getattr(exc, 'strerror', None) or exc}") from None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not request.exists():
            return "daemon", [f"daemon (pid {pid or '?'})"]
        time.sleep(0.05)
    return ("daemon" if not request.exists() else "pending"), [f"daemon (pid {pid or '?'})"]


def _flush(args: argparse.Namespace, cfg: Config) -> int:
    directory = _directory(cfg)
    qid = _entry(directory, args.id).id if args.id else None
    mode, lines = _submit(directory, "flush", qid, args.wait)
    target = qid or "all messages"
    if mode == "offline":
        print(f"flushed {target}: due now (no daemon running; delivery starts when it does)")
    elif mode == "daemon":
        print(f"flushed {target}: {lines[0]} is delivering now")
    else:
        print(f"flush of {target} requested; {lines[0]} has not picked it up yet "
              f"(it checks {directory / store.REQUESTS_DIR} every second)")
    return 0


def _remove(args: argparse.Namespace, cfg: Config) -> int:
    directory = _directory(cfg)
    entries = [_entry(directory, raw) for raw in args.ids]
    failures = 0
    for e in entries:
        mode, lines = _submit(directory, "remove", e.id, args.wait)
        gone = not store.state_path(directory, e.id).exists()
        rcpts = ", ".join(f"<{r.address}>({r.state})" for r in e.recipients)
        if gone:
            print(f"removed {e.id}: from {_sender(e)} to {rcpts}, {e.size} bytes")
        else:
            failures += 1
            who = lines[0] if lines and mode != "offline" else "this command"
            print(f"{e.id}: removal requested but not done yet by {who}; the request stays "
                  f"in {directory / store.REQUESTS_DIR}")
    if failures:
        raise CommandError(f"{failures} message(s) not removed yet")
    return 0


def _wait_seconds(text: str) -> float:
    """--wait: a finite number of seconds, 0 to one hour (argparse turns the error into one line)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:  # also false for nan
        raise argparse.ArgumentTypeError(f"must be 0 to 3600 seconds, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction[Any]) -> None:  # Any: the parser class is cli._Parser
    queue = sub.add_parser("queue", help="inspect and manage the outbound queue")
    actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    lst = actions.add_parser("list", help="one line per queued message")
    lst.add_argument("--json", action="store_true", help="the full state as JSON")
    lst.set_defaults(func=_list)
    show = actions.add_parser("show", help="envelope, per-recipient state and headers")
    show.add_argument("id")
    show.set_defaults(func=_show)
    flush = actions.add_parser("flush", help="retry one message (or all) now")
    flush.add_argument("id", nargs="?")
    flush.add_argument("--wait", type=_wait_seconds, default=10.0, metavar="SECONDS",
                       help="how long to wait for a running daemon to confirm (default 10)")
    flush.set_defaults(func=_flush)
    remove = actions.add_parser("remove", help="delete messages from the queue (no bounce)")
    remove.add_argument("ids", nargs="+", metavar="ID")
    remove.add_argument("--wait", type=_wait_seconds, default=10.0, metavar="SECONDS",
                        help="how long to wait for a running daemon to confirm (default 10)")
    remove.set_defaults(func=_remove)
