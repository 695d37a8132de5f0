"""The test helper's ports are unique within a process and across concurrent test processes.

The old ``free_port`` (bind to 0, close, return) handed the same number out twice: two
daemons of one IMAP end-to-end test were given the same port.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import free_port
from tests.support.ports import ephemeral_range
from tests.support.smtpsink import free_port as sink_free_port

REPO = Path(__file__).resolve().parents[1]


def test_many_ports_in_one_process_are_all_different_and_outside_the_kernels_range() -> None:
    ports = [free_port() for _ in range(1500)] + [sink_free_port("127.0.0.2") for _ in range(500)]
    assert len(set(ports)) == len(ports)
    low, high = ephemeral_range()
    assert not [p for p in ports if low <= p <= high]


def test_a_port_handed_out_is_bindable_and_one_in_use_is_skipped() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # the helper left it free for the daemon
        s.listen()
        assert free_port() != port


def test_concurrent_test_processes_never_get_the_same_port() -> None:
    code = ("from tests.support.daemon import free_port\n"
            "import sys\n"
            "sys.stdin.readline()\n"  # start together
            "print(' '.join(str(free_port()) for _ in range(400)), flush=True)\n"
            "sys.stdin.readline()\n")  # keep the claims until every process has drawn
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    drawn = []
    for p in procs:
        assert p.stdout is not None
        drawn.append([int(x) for x in p.stdout.readline().split()])
    for p in procs:
        p.communicate("done\n", timeout=30)
    every = [port for ports in drawn for port in ports]
    assert len(every) == 1200
    assert len(set(every)) == len(every)
