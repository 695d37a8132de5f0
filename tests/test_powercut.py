"""Power cuts, not SIGKILL: the state_dir on a file system that forgets what was not
fsync'd (tests/support/powercutfs.py), a real pymaild under load on every durable path,
hundreds of cuts checked against what the clients were told (tests/support/powercut.py).

The second test removes one fsync at a time (tests/support/fsyncskip.py) and shows the
checker notices. The long run is ``python3 bench/powercut.py`` (see its docstring).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO, write_config
from tests.support.fsyncskip import SQLITE_SITES, fsync_sites
from tests.support.powercut import PASSWORD, Harness, mounted_ok
from tests.support.powercutfs import PowerCutFS

why_not = mounted_ok()
if why_not is None and os.geteuid() != 0:
    why_not = "mounting FUSE needs root here"
pytestmark = [
    pytest.mark.skipif(why_not is not None and not os.environ.get("CI"), reason=str(why_not)),
    pytest.mark.timeout(300),
]

# Sites that no single power cut can catch, each with the reason. Every other fsync site
# under mailserver/ must be detected by the checker when it is removed.
NOT_DETECTABLE = {
    "mailserver/delivery/queue_store.py:write_state":
        "a state change lost in a cut means one more attempt (a duplicate at most), never a loss",
    "mailserver/delivery/queue_store.py:delete_entry":
        "durable removal (operator's `queue remove`): undone, the message is delivered once more",
    "mailserver/delivery/queue_store.py:load_for_owner": "only after quarantining a broken entry",
    "mailserver/delivery/queue_store.py:_quarantine": "only for broken entries",
    "mailserver/delivery/queue_store.py:write_request": "`pymaild queue flush/remove` requests",
    "mailserver/commands/init.py:_write_new": "`pymaild init` writes the config file, not state",
    "mailserver/imap/mailboxes.py:delete": "IMAP DELETE of a folder (not a message path)",
    "mailserver/imap/mailboxes.py:rename": "IMAP RENAME of a folder (not a message path)",
    "mailserver/imap/mailboxes.py:_rename_inbox": "IMAP RENAME INBOX (not in the workload)",
    "mailserver/storage/flagstore.py:_store_apply": "flag changes (STORE): not part of the invariant",
    "mailserver/storage/maildir.py:copy_durably": "COPY on file systems without hard links",
    "mailserver/fsutil.py:write_file_atomic": "subscriptions, keywords, TLS and MTA-STS files",
    "mailserver/storage/maildirpp.py:_write_new_file": "the subscriptions file of a new mailbox",
    "mailserver/storage/maildirpp.py:ensure_maildir":
        "the `maildirfolder` marker: folders are found by name, their mail is unaffected",
    "mailserver/dkim_keys.py:_create_exclusive":
        "the .dns file written next fsyncs the same directory before the daemon is ready",
    "mailserver/fsutil.py:mkdir_durable":
        "a state_dir made by pymaild itself: test_fresh_install_state_dir_survives_a_cut",
    "mailserver/storage/uidvalidity.py:next_uidvalidity":
        "the account's UIDVALIDITY counter, not a message path; a lost update cannot repeat a "
        "value, since each new one is at least the current time (tests/test_uidvalidity.py)",
    "mailserver/dkim_keys.py:_ensure_dir":
        "state_dir is fsync'd again at the same start (queue/, mail/) before it is ready",
}


def _exempt(site: str) -> str | None:
    for prefix, reason in NOT_DETECTABLE.items():
        if site.startswith(prefix + ":"):
            return reason
    return None


SITES = [s for s in fsync_sites() if _exempt(s) is None] + sorted(SQLITE_SITES)


def test_every_fsync_site_is_accounted_for() -> None:
    """A new fsync in mailserver/ must join the matrix below (or say why it cannot)."""
    sites = fsync_sites()
    assert len(sites) >= 25
    assert all(s in SITES or _exempt(s) for s in sites)
    unused = [p for p in NOT_DETECTABLE if not any(s.startswith(p + ":") for s in sites)]
    assert not unused, f"stale entries in NOT_DETECTABLE: {unused}"


def test_power_cuts_lose_no_acknowledged_message(tmp_path: Path, ca, capsys) -> None:
    h = Harness(tmp_path, ca, seed=1)
    try:
        h.start()
        h.run(float(os.environ.get("POWERCUT_SECONDS", "20")))
    finally:
        h.stop()
    with capsys.disabled():
        print(f"\npower cuts: {h.cuts} cuts ({h.opened} opened by pymaild), acknowledged: "
              f"{len(h.acks.mx)} MX, {len(h.acks.sub)} submission, {len(h.acks.imap)} IMAP, "
              f"{len(h.acks.accounts)} accounts, {len(h.acks.dkim)} DKIM files; "
              f"violations: {len(h.violations)}")
    assert not h.errors, h.errors
    assert not h.violations, "\n".join(h.violations[:20])
    # The run meant something: every path was acknowledged many times under the cuts.
    assert h.cuts >= 200
    assert h.opened >= 1
    assert len(h.acks.mx) >= 50 and len(h.acks.sub) >= 20 and len(h.acks.imap) >= 10
    assert len(h.acks.accounts) >= 4 and len(h.acks.dkim) == 4
    assert h.sink.delivered  # removal from the queue was exercised too


# The modules of MailboxIndex (storage/index.py and its parts): what IMAP writes.
_FOLDER_INDEX = tuple(f"mailserver/storage/{m}.py" for m in
                      ("index", "indexrefresh", "snapshots", "maildirscan", "flagstore", "uidvalidity"))


def _load_for(site: str) -> tuple[str, ...]:
    """The part of the load that goes through ``site`` (the whole load is slower to cut)."""
    if site == "sqlite:index" or site.startswith(_FOLDER_INDEX):
        return ("imap",)
    if site == "sqlite:accounts":
        return ("creds",)
    if site.startswith("mailserver/delivery/queue_store.py"):
        return ("sub",)
    if site.startswith("mailserver/dkim_keys.py"):
        return ()  # the first start makes the keys
    return ("mx", "creds")


@pytest.mark.parametrize("site", SITES)
def test_removed_fsync_is_detected(site: str, tmp_path: Path, ca, capsys) -> None:
    """Remove this one fsync (or make SQLite skip its own): some cut must show it."""
    h = Harness(tmp_path, ca, site=site, seed=2, paths=_load_for(site))
    try:
        h.start()
        h.run(20, until_violation=True)
    finally:
        h.stop()
    with capsys.disabled():
        print(f"\n{site} removed: {h.cuts} cuts, first violation: "
              f"{h.violations[0] if h.violations else None}")
    assert not h.errors, h.errors
    assert h.violations, f"{site} removed, yet {h.cuts} cuts found nothing"


MKDIR_SITE = next((s for s in fsync_sites() if s.startswith("mailserver/fsutil.py:mkdir_durable:")), "")


@pytest.mark.parametrize("site", ["", MKDIR_SITE], ids=["as-is", "fsync-removed"])
def test_fresh_install_state_dir_survives_a_cut(site: str, tmp_path: Path, ca) -> None:
    """`pymaild creds create` before the first start makes state_dir itself: a cut right
    after it reported success must keep the account (it was lost before mkdir_durable)."""
    cert, key = ca.issue("mx.example.test", stem="fresh")
    with PowerCutFS(tmp_path / "mnt", tmp_path / "ctl.sock") as fs:
        (fs.mountpoint / "var").mkdir()
        fs.sync_all()  # the installation: /var exists, state_dir does not
        config = write_config(tmp_path / "pymaild.toml", {
            "hostname": "mx.example.test", "primary_domain": "example.test",
            "local_domains": ["example.test"], "state_dir": str(fs.mountpoint / "var" / "pymaild"),
            "tls": {"cert": str(cert), "key": str(key)},
        })
        r = subprocess.run(
            [sys.executable, "-m", "tests.support.fsyncskip", site, "creds", "create",
             "alice@example.test", "--password-stdin", "-c", str(config)],
            input=PASSWORD + "\n", capture_output=True, text=True, cwd=REPO, timeout=60,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        assert r.returncode == 0, r.stderr
        fs.cut(tmp_path / "cut")
    from mailserver.auth.store import AccountStore

    state = tmp_path / "cut" / "var" / "pymaild"
    survived = (state / "accounts.db").exists() and AccountStore.in_state_dir(state).get_account(
        "alice@example.test") is not None
    assert survived == (site == "")
