"""DKIM key rotation without downtime: new selector in the config, SIGHUP, new signatures."""

from __future__ import annotations

import re
import smtplib

from tests.support.daemon import free_port, write_config
from tests.support.wait import wait_until
from tests.test_mx_e2e import maildir_files

PASSWORD = "password-123456"


def send(d, ca) -> bytes:
    with smtplib.SMTP(d.host, d.sub_port, local_hostname="laptop", timeout=10) as client:
        client._host = "mx.example.test"  # type: ignore[attr-defined]
        client.starttls(context=ca.client_context())
        client.login("alice@example.test", PASSWORD)
        client.sendmail("alice@example.test", ["bob@example.test"],
                        b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: s\r\n\r\nx\r\n")
    inbox = d.state_dir / "mail/example.test/bob"
    wait_until(lambda: maildir_files(inbox), what="delivery to bob")
    files = maildir_files(inbox)
    data = files[-1].read_bytes()
    for f in files:
        f.unlink()
    return data


def selectors(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n\t", " ").replace("\r\n ", " ")
    return [m.group(1) for line in head.split("\r\n") if line.startswith("DKIM-Signature:")
            for m in [re.search(r"\bs=([^;\s]+)", line)] if m]


def test_new_selector_signs_after_sighup(make_daemon, ca):
    d = make_daemon(accounts=("alice@example.test", "bob@example.test"),
                    extra={"listen": {"submission": [f"127.0.0.1:{free_port()}"]}})
    d.sub_port = int(d.config["listen"]["submission"][0].rsplit(":", 1)[1])
    assert sorted(selectors(send(d, ca))) == ["default", "default-ed25519"]

    d.config["dkim"] = {"selector": "2026b", "ed25519_selector": "2026b-ed"}
    write_config(d.config_path, d.config)
    d.signal(1)  # SIGHUP
    log = d.wait_log("SIGHUP: DKIM signing with")
    assert "example.test/2026b" in log and "created DKIM key 2026b" in log
    assert (d.state_dir / "dkim/example.test.2026b.key").exists()
    assert sorted(selectors(send(d, ca))) == ["2026b", "2026b-ed"]
    # The old keys are kept (mail signed with them still verifies while DNS has them).
    assert (d.state_dir / "dkim/example.test.default.key").exists()


def test_broken_config_on_sighup_keeps_running(make_daemon, ca):
    d = make_daemon(accounts=("alice@example.test", "bob@example.test"),
                    extra={"listen": {"submission": [f"127.0.0.1:{free_port()}"]}})
    d.sub_port = int(d.config["listen"]["submission"][0].rsplit(":", 1)[1])
    d.config_path.write_text(d.config_path.read_text() + "\nbogus_key = 1\n")
    d.signal(1)
    log = d.wait_log("config not reloaded")
    assert "bogus_key: unknown key" in log
    assert sorted(selectors(send(d, ca))) == ["default", "default-ed25519"]
