"""systemd Type=notify: READY=1 once listening, STOPPING=1 on SIGTERM, via $NOTIFY_SOCKET."""

from __future__ import annotations

import socket


def test_ready_and_stopping_are_notified(make_daemon, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        d = make_daemon(start=False)
        d.env["NOTIFY_SOCKET"] = path
        d.start()
        assert sock.recv(64) == b"READY=1"
        # READY comes after the listeners are bound: the port answers now.
        with socket.create_connection((d.host, d.port), timeout=5) as client:
            assert client.recv(64).startswith(b"220 ")
        d.signal(15)
        assert sock.recv(64) == b"STOPPING=1"
        assert d.proc is not None and d.proc.wait(15) == 0


def test_abstract_socket_name(make_daemon):
    name = f"pymaild-test-{id(make_daemon)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        d = make_daemon(start=False)
        d.env["NOTIFY_SOCKET"] = "@" + name
        d.start()
        assert sock.recv(64) == b"READY=1"
