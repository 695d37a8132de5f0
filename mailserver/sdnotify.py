"""systemd's sd_notify protocol: one datagram to $NOTIFY_SOCKET (no dependency needed)."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send e.g. ``READY=1`` or ``STOPPING=1``; False when not run by systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract socket namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True
