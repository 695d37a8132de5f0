"""Quota (RFC 9208) against a real pymaild: SMTP at RCPT and after DATA, IMAP APPEND/COPY,
EXPUNGE making room, GETQUOTAROOT/GETQUOTA numbers, the CLI, concurrent deliveries."""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailserver.storage import quota
from tests.support.ca import TestCA
from tests.support.daemon import PymaildProcess
from tests.support.imap import RawIMAP, client_ctx, imap_daemon, login, new_account

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[PymaildProcess]:
    d = imap_daemon(tmp_path_factory.mktemp("quotad"), ca)
    try:
        yield d
    finally:
        d.stop()


def cli(d: PymaildProcess, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mailserver.cli", *args, "-c", str(d.config_path)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def account_with_quota(d: PymaildProcess, size: str, *extra: str) -> tuple[str, Path]:
    address = new_account(d, "q")
    cli(d, "creds", "quota", address, size, *extra)
    root = d.state_dir / "mail" / "example.test" / address.split("@")[0]
    return address, root


def files(root: Path) -> list[Path]:
    return sorted(p for folder in quota.folder_dirs(root) for sub in ("new", "cur", "tmp")
                  for p in (folder / sub).glob("*") if (folder / sub).is_dir())


def message(size: int) -> bytes:
    """A message of exactly ``size`` bytes, lines of at most 78 octets."""
    head = b"From: a@elsewhere.example\r\nSubject: q\r\n\r\n"
    body = bytearray()
    left = size - len(head)
    while left > 0:
        n = min(78, left)
        body += b"x" * (n - 2) + b"\r\n" if n >= 2 else b"x" * n
        left -= n
    return head + bytes(body)


def send(d: PymaildProcess, rcpts: list[str], data: bytes) -> tuple[int, bytes]:
    """One SMTP transaction: the first refusal (RCPT or DATA) or the DATA reply."""
    with smtplib.SMTP(d.host, d.port, timeout=15) as s:
        s.ehlo("client.example")
        s.mail("a@elsewhere.example")
        for rcpt in rcpts:
            code, text = s.rcpt(rcpt)
            if code != 250:
                return code, text
        return s.data(data)


def append(d: PymaildProcess, ca: TestCA, address: str, *sizes: int) -> None:
    """APPEND messages of exactly these sizes to INBOX (stored as sent)."""
    m = login(d, ca, address)
    try:
        for size in sizes:
            assert m.append("INBOX", None, None, message(size))[0] == "OK"
    finally:
        m.logout()


def quota_lines(m: RawIMAP, tag: bytes, text: bytes) -> list[bytes]:
    lines = m.cmd(tag, text)
    assert lines[-1].startswith(tag + b" OK"), lines
    return lines


# ---------------------------------------------------------------------------- SMTP


def test_rcpt_to_full_account_gets_452_422(daemon: PymaildProcess) -> None:
    address, root = account_with_quota(daemon, "1M")
    assert send(daemon, [address], message(3000))[0] == 250
    used = quota.measure(root).storage  # with the headers pymaild adds
    cli(daemon, "creds", "quota", address, str(used + 100))
    # Not full: RCPT passes, but 200 bytes do not fit: refused after DATA.
    code, text = send(daemon, [address], message(200))
    assert (code, text[:5]) == (452, b"4.2.2"), text
    cli(daemon, "creds", "quota", address, str(used))
    with smtplib.SMTP(daemon.host, daemon.port, timeout=15) as s:
        s.ehlo("client.example")
        s.mail("a@elsewhere.example")
        code, text = s.rcpt(address)
    assert (code, text[:5]) == (452, b"4.2.2"), text  # full: refused at RCPT already
    assert b"Mailbox full" in text
    assert quota.measure(root) == quota.Usage(used, 1)
    daemon.wait_log("mailbox full")


def test_message_that_does_not_fit_gets_452_after_data_and_nothing_written(
        daemon: PymaildProcess) -> None:
    address, root = account_with_quota(daemon, "1M")
    other = new_account(daemon, "roomy")
    assert send(daemon, [address], message(6000))[0] == 250
    used = quota.measure(root).storage
    cli(daemon, "creds", "quota", address, str(used + 2000))
    before = files(root)
    other_root = daemon.state_dir / "mail" / "example.test" / other.split("@")[0]
    # Two recipients, one of them without room: the whole message is refused (452),
    # so the sender retries both and nobody's copy is stored twice.
    code, text = send(daemon, [other, address], message(3000))
    assert (code, text[:5]) == (452, b"4.2.2"), text
    assert files(root) == before
    assert files(other_root) == []
    assert quota.usage(root, quota.Limits(used + 2000)) == quota.Usage(used, 1)
    daemon.wait_log("reason=over-quota")
    # What fits is taken (and counted).
    assert send(daemon, [other, address], message(1000))[0] == 250
    assert quota.usage(root, quota.Limits(used + 2000)) == quota.measure(root)


def test_message_count_limit(daemon: PymaildProcess) -> None:
    address, root = account_with_quota(daemon, "none", "--messages", "2")
    assert send(daemon, [address], message(100))[0] == 250
    assert send(daemon, [address], message(100))[0] == 250
    code, text = send(daemon, [address], message(100))
    assert (code, text[:5]) == (452, b"4.2.2")
    assert quota.measure(root).messages == 2


def test_concurrent_deliveries_never_exceed_the_limit(daemon: PymaildProcess) -> None:
    """12 clients race, each with 3 messages of 1000 bytes, into room for 10: at most 10
    fit, and pymaild's per-account quota lock makes it exactly what fits: the bound is 0
    bytes over for pymaild's own writers."""
    address, root = account_with_quota(daemon, "1M")
    assert send(daemon, [address], message(1000))[0] == 250
    one = quota.measure(root).storage  # every copy has this size (same headers)
    cli(daemon, "creds", "quota", address, str(one * 11))  # room for 10 more
    codes: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    errors: list[BaseException] = []

    def client() -> None:
        start.wait()
        try:
            for _ in range(3):
                code, _text = send(daemon, [address], message(1000))
                with lock:
                    codes.append(code)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(set(codes)) == [250, 452]
    # Exactly what fits was taken: within the limit, and no room left for one more
    # (the 90 % notice, which fit too, is one of the files).
    used = quota.measure(root)
    assert used.storage <= one * 11
    assert one * 11 - used.storage < one
    assert codes.count(250) + 1 + warnings_in(root) == used.messages
    assert quota.usage(root, quota.Limits(one * 11)) == used


# ---------------------------------------------------------------------------- IMAP


def test_capabilities_and_getquotaroot_match_the_files(daemon: PymaildProcess, ca: TestCA) -> None:
    address, root = account_with_quota(daemon, "1M", "--messages", "100")
    append(daemon, ca, address, 3000, 2000)
    m = login(daemon, ca, address)
    try:
        caps = m.capability()[1][0].decode().split()  # after login: the full list
        assert {"QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"} <= set(caps)
        typ, data = m.getquotaroot("INBOX")
        assert typ == "OK"
        assert data == [[b'INBOX ""'], [b'"" (STORAGE 5 1024 MESSAGE 2 100)']]
        typ, data = m.getquota('""')
        assert (typ, data) == ("OK", [b'"" (STORAGE 5 1024 MESSAGE 2 100)'])
        # The numbers are the maildirsize file's, and the file matches the Maildir.
        assert quota.parse_maildirsize((root / "maildirsize").read_text()) == (
            quota.Limits(1024**2, 100), quota.Usage(5000, 2))
        assert quota.measure(root) == quota.Usage(5000, 2)
        typ, data = m.getquota('"other"')
        assert typ == "NO"
        typ, data = m.setquota('""', "(STORAGE 10)")
        assert typ == "NO"
    finally:
        m.logout()


def test_raw_quota_responses_and_status(daemon: PymaildProcess, ca: TestCA) -> None:
    address, _root = account_with_quota(daemon, "2K")
    append(daemon, ca, address, 1500)
    m = RawIMAP(daemon.imaps_port, tls=client_ctx(ca))  # type: ignore[attr-defined]
    try:
        quota_lines(m, b"a1", f"LOGIN {address} password-123456".encode())
        lines = quota_lines(m, b"a2", b"GETQUOTAROOT Sent")
        assert lines[:2] == [b'* QUOTAROOT Sent ""\r\n', b'* QUOTA "" (STORAGE 2 2)\r\n']
        lines = m.cmd(b"a3", b"GETQUOTAROOT Nope")
        assert lines[-1].startswith(b"a3 NO [NONEXISTENT]")
        lines = m.cmd(b"a4", b"SETQUOTA \"\" (STORAGE 100)")
        assert lines[-1].startswith(b"a4 NO [NOPERM]")
        lines = m.cmd(b"a5", b"SETQUOTA \"\" (STORAGE x)")
        assert lines[-1].startswith(b"a5 BAD")
        lines = quota_lines(m, b"a6", b"STATUS INBOX (SIZE DELETED DELETED-STORAGE)")
        assert lines[0] == b"* STATUS INBOX (SIZE 1500 DELETED 0 DELETED-STORAGE 0)\r\n"
    finally:
        m.close()


def test_account_without_limits_has_no_quota_root(daemon: PymaildProcess, ca: TestCA) -> None:
    address = new_account(daemon, "free")
    m = RawIMAP(daemon.imaps_port, tls=client_ctx(ca))  # type: ignore[attr-defined]
    try:
        quota_lines(m, b"a1", f"LOGIN {address} password-123456".encode())
        lines = quota_lines(m, b"a2", b"GETQUOTAROOT INBOX")
        assert lines[0] == b"* QUOTAROOT INBOX\r\n"
        assert m.cmd(b"a3", b'GETQUOTA ""')[-1].startswith(b"a3 NO [NONEXISTENT]")
    finally:
        m.close()


def test_append_copy_over_quota_then_expunge_makes_room(daemon: PymaildProcess, ca: TestCA) -> None:
    address, root = account_with_quota(daemon, "8K")
    m = login(daemon, ca, address)
    try:
        assert m.append("INBOX", None, None, message(5000))[0] == "OK"
        before = files(root)
        typ, data = m.append("INBOX", None, None, message(4000))
        assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]"), data
        assert files(root) == before  # nothing in tmp/, new/ or cur/
        m.select("INBOX")
        typ, data = m.copy("1", "Sent")
        assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]"), data
        assert files(root) == before
        # MOVE within the account does not change usage: allowed while nearly full.
        typ, _ = m._simple_command("MOVE", "1", "Archive")  # type: ignore[attr-defined]
        assert typ == "OK"
        assert quota.measure(root) == quota.Usage(5000, 1)
        # A full user can always expunge to make room, then APPEND works again.
        m.select("Archive")
        m.store("1", "+FLAGS", "\\Deleted")
        typ, data = m.status("Archive", "(DELETED-STORAGE)")
        assert b"DELETED-STORAGE 4" in data[0], data
        assert m.expunge()[0] == "OK"
        assert quota.usage(root, quota.Limits(8 * 1024)) == quota.Usage(0, 0)
        assert m.append("INBOX", None, None, message(4000))[0] == "OK"
        typ, data = m.getquotaroot("INBOX")
        assert data[1] == [b'"" (STORAGE 4 8)']
    finally:
        m.logout()


def test_file_dropped_by_another_program_is_counted(daemon: PymaildProcess, ca: TestCA) -> None:
    address, root = account_with_quota(daemon, "1M")
    append(daemon, ca, address, 1000)
    (root / "cur" / "1700000000.M1P1.other,S=2048:2,S").write_bytes(b"y" * 2048)
    (root / "maildirsize").unlink()  # how Maildir++ asks for a recount (or wait 15 min)
    m = login(daemon, ca, address)
    try:
        typ, data = m.getquotaroot("INBOX")
        assert typ == "OK"
        assert data[1] == [b'"" (STORAGE 3 1024)']  # 3048 bytes, rounded up
    finally:
        m.logout()


def test_cli_show_set_default_and_list(daemon: PymaildProcess, ca: TestCA) -> None:
    address, _root = account_with_quota(daemon, "500M", "--messages", "1000")
    append(daemon, ca, address, 1000)
    shown = cli(daemon, "creds", "quota", address)
    assert re.search(r"quota 500M, 1000 messages \(its own\); in use 1000 bytes, 1 messages", shown)
    assert f"{address}  (quota 500M, 1000 messages)" in cli(daemon, "creds", "list")
    cli(daemon, "creds", "quota", address, "default")
    assert "the [quota] default" in cli(daemon, "creds", "quota", address)
    bad = subprocess.run([sys.executable, "-m", "mailserver.cli", "creds", "quota", address, "lots",
                          "-c", str(daemon.config_path)], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "lots" in bad.stderr


def test_config_default_applies(tmp_path: Path, ca: TestCA) -> None:
    d = imap_daemon(tmp_path, ca, quota={"default_storage": "2K"})
    try:
        address = new_account(d, "dflt")
        assert send(d, [address], message(1500))[0] == 250
        assert send(d, [address], message(1500))[0] == 452
    finally:
        d.stop()


def test_submission_local_copies_respect_quota(daemon: PymaildProcess, ca: TestCA) -> None:
    sender = new_account(daemon, "author")
    address, root = account_with_quota(daemon, "1M")
    append(daemon, ca, address, 2000)
    cli(daemon, "creds", "quota", address, "2500")
    data = (f"From: {sender}\r\nTo: {address}\r\nSubject: s\r\n\r\n".encode()
            + b"y" * 76 + b"\r\n") * 1
    data = data + (b"z" * 76 + b"\r\n") * 10  # ~1 KB: does not fit the 500 bytes left
    with smtplib.SMTP(daemon.host, daemon.sub_port, timeout=15) as s:  # type: ignore[attr-defined]
        s.starttls(context=client_ctx(ca))
        s.login(sender, "password-123456")
        s.mail(sender)
        assert s.rcpt(address)[0] == 250  # not full yet
        code, text = s.data(data)
        assert (code, text[:5]) == (452, b"4.2.2"), text
        assert quota.measure(root) == quota.Usage(2000, 1)
        cli(daemon, "creds", "quota", address, "2000")  # now full: refused at RCPT
        s.rset()
        s.mail(sender)
        code, text = s.rcpt(address)
        assert (code, text[:5]) == (452, b"4.2.2"), text
    assert quota.measure(root) == quota.Usage(2000, 1)


def warnings_in(root: Path) -> int:
    return sum(1 for p in files(root) if b"Subject: Your mailbox is almost full" in p.read_bytes())


def test_warning_at_90_percent_arrives_once_per_crossing(daemon: PymaildProcess, ca: TestCA) -> None:
    address, root = account_with_quota(daemon, "20000")
    append(daemon, ca, address, 17000)  # 85 %; APPEND itself sends no notice
    sent = 0
    while warnings_in(root) == 0:
        assert send(daemon, [address], message(200))[0] == 250
        sent += 1
        assert sent <= 5
    assert quota.measure(root).storage >= 18000  # the delivery that reached 90 %
    warning = next(p for p in files(root) if b"almost full" in p.read_bytes()).read_bytes()
    assert b"Auto-Submitted: auto-generated\r\n" in warning
    assert b"From: Mail System <postmaster@example.test>" in warning
    # Over the mark, further deliveries do not repeat it (there is room for them).
    codes = [send(daemon, [address], message(200))[0] for _ in range(3)]
    assert codes[0] == 250, codes
    assert warnings_in(root) == 1
    # Below the mark again (EXPUNGE), then over it: warned a second time.
    m = login(daemon, ca, address)
    try:
        m.select("INBOX")
        m.store("1", "+FLAGS", "\\Deleted")
        m.expunge()
        assert m.append("INBOX", None, None, message(14500))[0] == "OK"
    finally:
        m.logout()
    assert send(daemon, [address], message(200))[0] == 250  # usage still under 90 %: re-armed
    for _ in range(5):
        assert send(daemon, [address], message(200))[0] == 250
        if warnings_in(root) == 2:
            break
    assert warnings_in(root) == 2
    assert quota.measure(root).storage <= 20000
    assert quota.usage(root, quota.Limits(20000)) == quota.measure(root)


def test_deleting_a_folder_frees_its_mail(daemon: PymaildProcess, ca: TestCA) -> None:
    address, root = account_with_quota(daemon, "1M")
    m = login(daemon, ca, address)
    try:
        assert m.create("Old")[0] == "OK"
        for size in (3000, 4000):
            assert m.append("Old", None, None, message(size))[0] == "OK"
        assert m.append("INBOX", None, None, message(1000))[0] == "OK"
        assert quota.usage(root, quota.Limits(1024**2)) == quota.Usage(8000, 3)
        assert m.delete("Old")[0] == "OK"
        assert quota.usage(root, quota.Limits(1024**2)) == quota.Usage(1000, 1)  # no recount
        assert quota.measure(root) == quota.Usage(1000, 1)
    finally:
        m.logout()
