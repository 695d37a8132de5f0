"""Never lose mail: SIGKILL the daemon while many messages are in flight, then check that
every message that got a 250 is in the Maildir, whole, exactly once."""

from __future__ import annotations

import re
import smtplib
import threading
import time
from pathlib import Path

from tests.support.daemon import PymaildProcess
from tests.support.wait import wait_until

TOKEN = re.compile(rb"X-Test-Token: (t-\d+-\d+)\r\n")


def make_message(token: str, size: int) -> bytes:
    body = b"".join(b"line %06d of the durability test message, padding padding\r\n" % i
                    for i in range(size // 60 + 1))
    return (f"From: sender@example.net\r\nTo: alice@example.test\r\nSubject: {token}\r\n"
            f"X-Test-Token: {token}\r\n\r\n").encode() + body


def sender(d: PymaildProcess, worker: int, acked: dict[str, bytes], stop: threading.Event,
           lock: threading.Lock) -> None:
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP(d.host, d.port, local_hostname="c.example.net", timeout=5) as client:
                while not stop.is_set():
                    n += 1
                    token = f"t-{worker}-{n}"
                    msg = make_message(token, 2000 if n % 3 else 60_000)
                    client.sendmail("sender@example.net", ["alice@example.test"], msg)
                    with lock:  # only reached after the server's 250
                        acked[token] = msg
        except (OSError, smtplib.SMTPException):
            if stop.is_set():
                return
            time.sleep(0.05)  # a client's pause before it reconnects, not a wait for anything


def test_sigkill_loses_no_acknowledged_message(make_daemon):
    d = make_daemon()
    inbox = d.state_dir / "mail/example.test/alice"
    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()
    threads = [threading.Thread(target=sender, args=(d, i, acked, stop, lock)) for i in range(8)]
    for t in threads:
        t.start()
    # Enough acknowledged messages to make the test meaningful.
    wait_until(lambda: len(acked) >= 150, interval=0.01, timeout=60, what="150 acknowledged messages")
    d.kill()  # SIGKILL mid-flight: several transactions are between DATA and 250; kill() reaps it
    with lock:
        acked_at_kill = dict(acked)
    stop.set()
    for t in threads:
        t.join(10)

    # Restart: it must come up cleanly on the same state.
    d.start()
    found: dict[str, list[Path]] = {}
    for path in (inbox / "new").iterdir():
        data = path.read_bytes()
        m = TOKEN.search(data)
        assert m is not None, f"{path.name}: not a whole message"
        token = m.group(1).decode()
        found.setdefault(token, []).append(path)
        # Whole: the file ends with exactly the bytes the client sent for that token.
        n = token.split("-")[2]
        expected = make_message(token, 2000 if int(n) % 3 else 60_000)
        assert data.endswith(expected), f"{path.name}: truncated or altered"
        assert path.name.endswith(f",S={len(data)}")
    for token in acked_at_kill:
        assert token in found, f"{token} got 250 but is not in the Maildir"
    duplicates = {t: p for t, p in found.items() if len(p) > 1}
    assert not duplicates
    # And the restarted daemon accepts mail.
    with smtplib.SMTP(d.host, d.port, local_hostname="c.example.net", timeout=5) as client:
        client.sendmail("sender@example.net", ["alice@example.test"], make_message("t-after-1", 100))
    assert any(b"t-after-1" in p.read_bytes() for p in (inbox / "new").iterdir())
