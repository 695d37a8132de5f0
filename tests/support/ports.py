"""Race-free port numbers for servers a test starts in another process (pymaild, sinks).

The old way, bind to port 0, read the number, close, hand it on, raced twice over: the
kernel is free to hand the same ephemeral port to the next ``bind(0)`` (two daemons of
one test got the same port) or to any outgoing connection, and other test processes on
the machine draw from the same pool.

Here ports come from a range *below* the kernel's ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``), which the kernel never picks by itself, so
nothing on the machine lands there by accident. Among test processes, each port is
claimed with an ``flock`` on ``$TMPDIR/pymaild-test-ports/PORT.lock`` held until the
process exits (the kernel drops the lock then, even after SIGKILL); within a process a
port is never handed out twice. A last ``bind`` check skips a port some unrelated
program listens on.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path

LOCK_DIR = Path(tempfile.gettempdir()) / "pymaild-test-ports"
_claimed: dict[int, int] = {}  # port -> fd holding its lock, for the life of the process
_mutex = threading.Lock()


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def port_range() -> tuple[int, int]:
    """[low, high) outside the ephemeral range: below it if there is room, else above."""
    eph_low, eph_high = ephemeral_range()
    if eph_low - 10000 >= 10000:
        return eph_low - 10000, eph_low
    if 65536 - (eph_high + 1) >= 2000:
        return eph_high + 1, 65536
    return 10000, max(eph_low, 12000)


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As asyncio's create_server does: a port in TIME_WAIT is usable.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _try_claim(port: int) -> int | None:
    fd = os.open(LOCK_DIR / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def free_port(host: str = "127.0.0.1") -> int:
    """A port no other caller (in this process or another test process) gets."""
    low, high = port_range()
    LOCK_DIR.mkdir(mode=0o777, exist_ok=True)
    with _mutex:
        start = random.randrange(low, high)
        for i in range(high - low):
            port = low + (start - low + i) % (high - low)
            if port in _claimed:
                continue
            fd = _try_claim(port)
            if fd is None:
                continue
            if not _bindable(host, port):
                os.close(fd)  # someone else's server: leave the port alone
                continue
            _claimed[port] = fd
            return port
    raise OSError(f"no free port left in {low}-{high - 1}")
