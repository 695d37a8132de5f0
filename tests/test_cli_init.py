"""``pymaild init`` as an operator runs it: the real command in a subprocess, real files,
then a real daemon started from the config it wrote, logged in to with the password it
printed."""

from __future__ import annotations

import base64
import os
import re
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mailserver.auth.passwords import verify_password
from mailserver.auth.store import AccountStore
from mailserver.commands import init
from mailserver.config import load_config
from tests.support.daemon import REPO, PymaildProcess, free_port

DOMAIN, HOST, ACCOUNT = "example.test", "mx.example.test", "admin@example.test"
PASSWORD_RE = re.compile(r"^  password: (\S+)$", re.MULTILINE)


def run_init(tmp: Path, *extra: str, ports: tuple[int, int, int] | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    smtp, sub, subs = ports or (free_port(), free_port(), free_port())
    args = ["-c", str(tmp / "pymaild.toml"), "--domain", DOMAIN, "--hostname", HOST,
            "--account", ACCOUNT, "--self-signed", "--state-dir", str(tmp / "state"),
            "--listen-ip", "127.0.0.1", "--smtp-port", str(smtp), "--submission-port", str(sub),
            "--submissions-port", str(subs), "--yes", *extra]
    out = subprocess.run([sys.executable, "-m", "mailserver.cli", "init", *args], cwd=REPO,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def key_bytes(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((state / "dkim").glob("*.key"))}


def test_init_writes_a_commented_config_keys_account_and_prints_dns(tmp_path: Path) -> None:
    out = run_init(tmp_path)
    path = tmp_path / "pymaild.toml"
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    # The production example's comments are kept, values filled in.
    assert "# The name of this machine" in text and "#max_message_size = " in text
    assert f'hostname = "{HOST}"' in text and "self_signed = true" in text
    cfg = load_config(path)
    assert (cfg.hostname, cfg.primary_domain, cfg.local_domains) == (HOST, DOMAIN, (DOMAIN,))
    assert cfg.state_dir == str(tmp_path / "state") and cfg.tls.self_signed and not cfg.tls.cert
    assert cfg.accounts.postmaster == ACCOUNT
    assert cfg.listen.smtp[0][0] == "127.0.0.1" and cfg.listen.submission and cfg.listen.submissions
    assert set(key_bytes(cfg.state_path)) == {f"{DOMAIN}.default.key", f"{DOMAIN}.default-ed25519.key"}
    assert cfg.cert_path.exists() and cfg.key_path.exists()
    # The printed password is the account's.
    (password,) = PASSWORD_RE.findall(out.stdout)
    store = AccountStore.in_state_dir(cfg.state_path)
    stored = store.password_hash(ACCOUNT)
    store.close()
    assert stored and verify_password(stored, password)
    assert not verify_password(stored, password + "x")
    assert (cfg.state_path / "mail" / DOMAIN / "admin").is_dir()
    # DNS records and next steps.
    assert re.search(rf"^{DOMAIN}\.\s+3600 IN MX\s+10 {HOST}\.$", out.stdout, re.MULTILINE)
    assert f"default._domainkey.{DOMAIN}." in out.stdout and '"v=DKIM1; k=ed25519; p=' in out.stdout
    assert "systemctl enable --now pymaild" in out.stdout and "pymaild dns check" in out.stdout
    assert "PTR" in out.stdout


def test_rerun_keeps_config_keys_and_account(tmp_path: Path) -> None:
    ports = (free_port(), free_port(), free_port())
    run_init(tmp_path, ports=ports)
    config = (tmp_path / "pymaild.toml").read_bytes()
    keys = key_bytes(tmp_path / "state")
    cert = (tmp_path / "state" / "tls" / "fullchain.pem").read_bytes()
    store = AccountStore.in_state_dir(tmp_path / "state")
    stored = store.password_hash(ACCOUNT)
    # Mail in the mailbox survives too.
    new = tmp_path / "state" / "mail" / DOMAIN / "admin" / "new"
    (new / "1.test").write_bytes(b"Subject: keep me\r\n\r\nx\r\n")

    # Different flags must not change anything either: the existing file wins.
    again = run_init(tmp_path, "--hostname", "other.example.test", ports=ports)
    assert "Keeping the existing config" in again.stdout
    assert f"Account {ACCOUNT} exists: kept" in again.stdout
    assert not PASSWORD_RE.search(again.stdout)
    assert (tmp_path / "pymaild.toml").read_bytes() == config
    assert key_bytes(tmp_path / "state") == keys
    assert (tmp_path / "state" / "tls" / "fullchain.pem").read_bytes() == cert
    assert store.password_hash(ACCOUNT) == stored
    store.close()
    assert (new / "1.test").exists()
    assert f"IN MX    10 {HOST}." in again.stdout  # the records are printed again


def test_force_config_rewrites_the_file_and_keeps_a_copy(tmp_path: Path) -> None:
    run_init(tmp_path)
    old = (tmp_path / "pymaild.toml").read_text()
    keys = key_bytes(tmp_path / "state")
    out = run_init(tmp_path, "--hostname", "mail.example.test", "--force-config")
    assert "the previous one is" in out.stdout
    (backup,) = tmp_path.glob("pymaild.toml.bak-*")
    assert backup.read_text() == old
    assert load_config(tmp_path / "pymaild.toml").hostname == "mail.example.test"
    assert key_bytes(tmp_path / "state") == keys


def test_the_written_config_runs_a_daemon_and_the_password_logs_in(tmp_path: Path) -> None:
    smtp, sub, subs = free_port(), free_port(), free_port()
    out = run_init(tmp_path, ports=(smtp, sub, subs))
    (password,) = PASSWORD_RE.findall(out.stdout)
    # PymaildProcess writes its own config into a directory of its own; point it at ours.
    daemon = PymaildProcess(tmp_path / "unused", {"state_dir": str(tmp_path / "state")})
    daemon.config_path = tmp_path / "pymaild.toml"
    daemon.start()
    try:
        assert f"listening submission on 127.0.0.1 port {sub}" in daemon.log_text()
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # self-signed, on purpose
        with smtplib.SMTP("127.0.0.1", sub, local_hostname="laptop.example.net", timeout=10) as client:
            client.starttls(context=ctx)
            client.ehlo("laptop.example.net")
            token = base64.b64encode(f"\0{ACCOUNT}\0wrong".encode()).decode()
            assert client.docmd("AUTH", "PLAIN " + token)[0] == 535
            assert client.login(ACCOUNT, password)[0] == 235
        with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as mx:
            assert mx.ehlo()[0] == 250 and mx.has_extn("starttls")
    finally:
        assert daemon.stop() == 0
    # The daemon made no keys of its own: init's were there (no first-start banner).
    assert "Publish these DNS records" not in daemon.log_text()


def test_missing_answers_without_a_terminal_fail_and_write_nothing(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mailserver.cli", "init", "-c", str(tmp_path / "pymaild.toml"),
         "--account", ACCOUNT, "--state-dir", str(tmp_path / "state")],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == "pymaild: --domain is required (no terminal to ask on, or --yes)"
    assert not (tmp_path / "pymaild.toml").exists() and not (tmp_path / "state").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--cert", "/nonexistent/fullchain.pem", "--key", "/nonexistent/privkey.pem"],
     "--self-signed and --cert/--key exclude each other"),
    (["--account", "bob@elsewhere.test"], "--account: bob@elsewhere.test is not an address of example.test"),
    (["--listen-ip", "localhost"], "--listen-ip: 'localhost' is not an IP address"),
])
def test_bad_flags_are_one_line_errors(tmp_path: Path, extra: list[str], message: str) -> None:
    out = run_init(tmp_path, *extra, check=False)
    assert out.returncode == 1 and out.stderr.strip() == f"pymaild: {message}", out.stderr
    assert not (tmp_path / "pymaild.toml").exists()


def test_given_certificate_is_used_and_checked(tmp_path: Path, ca) -> None:  # type: ignore[no-untyped-def]
    cert, key = ca.issue(HOST)
    out = subprocess.run(
        [sys.executable, "-m", "mailserver.cli", "init", "-c", str(tmp_path / "p.toml"), "--yes",
         "--domain", DOMAIN, "--account", ACCOUNT, "--cert", str(cert), "--key", str(key),
         "--state-dir", str(tmp_path / "state"), "--listen-ip", "127.0.0.1",
         "--smtp-port", str(free_port()), "--submission-port", "0", "--submissions-port", "0"],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    cfg = load_config(tmp_path / "p.toml")
    assert (cfg.tls.cert, cfg.tls.key, cfg.tls.self_signed) == (str(cert), str(key), False)
    assert cfg.hostname == HOST  # default: mx.DOMAIN (this machine's name is not under it)
    assert cfg.listen.submission == () and cfg.listen.submissions == ()
    assert not (tmp_path / "state" / "tls").exists()
    assert f"TLS: {cert} loads." in out.stdout


def test_port_in_use_is_a_warning(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run_init(tmp_path, ports=(port, free_port(), free_port()))
    assert f"pymaild: warning: cannot listen on 127.0.0.1:{port} (listen.smtp): in use" in out.stderr
    assert PASSWORD_RE.search(out.stdout)  # everything else was done


# ---------------------------------------------------------------------------- in-process


def _answers(**changes: object) -> init.Answers:
    values: dict[str, object] = {"domain": DOMAIN, "hostname": HOST, "account": ACCOUNT,
                                 "state_dir": "/var/lib/pymaild", "listen_ips": ["0.0.0.0", "::"],
                                 "ports": {"smtp": 25, "submission": 587, "submissions": 0}}
    values.update(changes)
    return init.Answers(**values)  # type: ignore[arg-type]


def test_fallback_template_when_the_example_is_not_installed(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A wheel install has no config/pymaild.toml: the built-in template must do.
    monkeypatch.setattr(init, "TEMPLATE", tmp_path / "missing.toml")
    text = init.build_config_text(_answers(), str(tmp_path / "p.toml"))
    raw = tomllib.loads(text)
    assert raw["listen"] == {"smtp": ["0.0.0.0:25", "[::]:25"], "submission": ["0.0.0.0:587", "[::]:587"],
                             "submissions": []}
    assert raw["tls"] == {"self_signed": True} and raw["accounts"] == {"postmaster": ACCOUNT}
    assert "# Certificate chain and key" in text


def test_render_config_adds_keys_the_template_lacks() -> None:
    template = "# old header\n# more\n\nhostname = \"x.example\"\n\n[tls]\n#cert = \"\"\n"
    text = init.render_config(template, {"hostname": '"mx.example.test"', "state_dir": '"/s"',
                                         "tls.cert": None, "tls.self_signed": "true",
                                         "listen.smtp": '["127.0.0.1:25"]'}, "# new header\n")
    assert text.startswith("# new header\n\nhostname")
    assert tomllib.loads(text) == {"hostname": "mx.example.test", "state_dir": "/s",
                                   "tls": {"self_signed": True}, "listen": {"smtp": ["127.0.0.1:25"]}}
    assert '#cert = ""' in text


def test_cli_loads_no_config_for_init_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailserver import cli

    monkeypatch.setenv("PYMAILD_CONFIG", str(tmp_path / "absent.toml"))
    assert cli.main(["creds", "list"]) == 2  # every other command still needs the file
    assert not os.path.exists(tmp_path / "absent.toml")


# ---------------------------------------------------------------------------- terminal, root


def test_asks_on_a_terminal(tmp_path: Path) -> None:
    import pty

    master, slave = pty.openpty()
    # Domain, then Enter for each default: host name mx.DOMAIN, postmaster@DOMAIN,
    # no certificate (self-signed), and "Write FILE? [Y/n]".
    os.write(master, f"{DOMAIN}\n\n\n\n\n".encode())
    out = subprocess.run(
        [sys.executable, "-m", "mailserver.cli", "init", "-c", str(tmp_path / "p.toml"),
         "--state-dir", str(tmp_path / "state"), "--listen-ip", "127.0.0.1",
         "--smtp-port", str(free_port()), "--submission-port", "0", "--submissions-port", "0"],
        cwd=REPO, stdin=slave, capture_output=True, text=True, timeout=120,
    )
    os.close(slave)
    os.close(master)
    assert out.returncode == 0, out.stderr
    assert "Mail domain (the part after @): " in out.stdout
    cfg = load_config(tmp_path / "p.toml")
    assert cfg.hostname == HOST and cfg.tls.self_signed
    assert cfg.accounts.postmaster == f"postmaster@{DOMAIN}"
    assert PASSWORD_RE.search(out.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="hands files over to another user: needs root")
def test_as_root_files_go_to_the_daemon_user(tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    run_init(tmp_path, "--user", "nobody")
    config = (tmp_path / "pymaild.toml").stat()
    assert (config.st_uid, config.st_gid) == (0, nobody.pw_gid)
    state = tmp_path / "state"
    owned = [state, state / "accounts.db", state / "dkim" / f"{DOMAIN}.default.key",
             state / "tls" / "privkey.pem", state / "mail" / DOMAIN / "admin" / "new"]
    assert {p.stat().st_uid for p in owned} == {nobody.pw_uid}
    assert tmp_path.stat().st_uid == 0  # only what init made is handed over
