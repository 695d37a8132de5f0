"""Every invalid config stops `pymaild run` with one line naming file, key and problem, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailserver.config import ConfigError, config_from_dict, parse_duration, parse_size

GOOD = """
hostname = "mx.example.test"
primary_domain = "example.test"
local_domains = ["example.test"]
state_dir = "state"
[tls]
self_signed = true
[listen]
smtp = ["127.0.0.1:2525"]
"""


def run_pymaild(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailserver.cli", *args], capture_output=True,
                          text=True, timeout=60, input=stdin)


CASES = [
    # (what to change, expected key, expected words)
    ('hostnme = "x"\n', "hostnme", "unknown key (did you mean 'hostname'?)"),
    ('[listen]\nsmtp = ["127.0.0.1:2525"]\nimpas = ["127.0.0.1:993"]\n', "listen.impas", "unknown key"),
    ('[smtp]\nmax_message_size = "lots"\n', "smtp.max_message_size", "cannot parse size"),
    ('[smtp]\nmax_recipients = "100"\n', "smtp.max_recipients", "expected a positive whole number"),
    ('[smtp]\ncommand_timeout = "5 minutes"\n', "smtp.command_timeout", "cannot parse duration"),
    ('[smtp]\nreject_bare_newlines = "yes"\n', "smtp.reject_bare_newlines", "expected true or false"),
    ('[listen]\nsmtp = ["localhost"]\n', "listen.smtp[0]", "expected host:port"),
    ('[listen]\nsmtp = ["::1:25"]\n', "listen.smtp[0]", "IPv6 is written [::1]:25"),
    ('[listen]\nsmtp = ["127.0.0.1:99999"]\n', "listen.smtp[0]", "port must be 1-65535"),
    ('[tls]\ncert = "/nonexistent/fullchain.pem"\nkey = "/nonexistent/privkey.pem"\n', "tls.cert",
     "file not found: /nonexistent/fullchain.pem"),
    ('[checks]\ndmarc_reject_action = "bounce"\n', "checks.dmarc_reject_action", "expected one of"),
    ('[dns]\nnameservers = ["not an ip"]\n', "dns.nameservers[0]", ""),
    ('[dkim]\nselector = "bad selector!"\n', "dkim.selector", "not a valid DKIM selector"),
    ("dns = 5\n", "dns", "expected a [dns] table"),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pymaild.toml"
    path.write_text(text)
    return path


def replace_sections(base: str, extra: str) -> str:
    """Append ``extra``; sections it names replace the same sections of ``base``."""
    sections = {line.strip() for line in extra.splitlines() if line.startswith("[")}
    out, skip = [], False
    for line in base.splitlines():
        if line.startswith("["):
            skip = line.strip() in sections
        if not skip:
            out.append(line)
    if extra.startswith(("hostnme", "dns =")):  # top-level keys must precede every table
        return extra + "\n".join(out)
    return "\n".join(out) + "\n" + extra


@pytest.mark.parametrize(("extra", "key", "words"), CASES)
def test_run_refuses_bad_config_with_one_line_and_exit_2(tmp_path, extra, key, words):
    path = write(tmp_path, replace_sections(GOOD, extra))
    result = run_pymaild("run", "-c", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pymaild: config error: {path}: {key}: "), lines[0]
    assert words in lines[0]


@pytest.mark.parametrize(("text", "key", "words"), [
    ("this is not toml", "", "not valid TOML"),
    (GOOD.replace('primary_domain = "example.test"', 'primary_domain = "other.test"'),
     "primary_domain", "'other.test' is not in local_domains"),
    (GOOD.replace('state_dir = "state"\n', ""), "state_dir", "missing required key"),
    (GOOD.replace('local_domains = ["example.test"]', 'local_domains = ["not a domain"]'),
     "local_domains", "not a valid domain name"),
    (GOOD.replace("self_signed = true", "self_signed = false").replace(
        'smtp = ["127.0.0.1:2525"]', 'smtps = ["127.0.0.1:2525"]'), "listen.smtps", "unknown key"),
])
def test_whole_file_problems(tmp_path, text, key, words):
    path = write(tmp_path, text)
    result = run_pymaild("run", "-c", str(path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(path) in result.stderr and key in result.stderr and words in result.stderr


def test_missing_config_file(tmp_path):
    result = run_pymaild("run", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    expected = f"pymaild: config error: {tmp_path / 'nope.toml'}: config file not found"
    assert result.stderr.strip() == expected + " (use -c FILE or PYMAILD_CONFIG)"


def test_port_in_use_is_one_line_exit_1(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write(tmp_path, GOOD.replace("127.0.0.1:2525", f"127.0.0.1:{port}"))
        result = run_pymaild("run", "-c", str(path))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pymaild: cannot listen on 127.0.0.1:{port} (listen.smtp):"), last


def test_cli_usage_errors_are_one_line(tmp_path):
    result = run_pymaild("frobnicate")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    path = write(tmp_path, GOOD)
    result = run_pymaild("creds", "create", "bob@elsewhere.test", "--password-stdin", "-c", str(path),
                         stdin="pw-123456789\n")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("pymaild: elsewhere.test is not in local_domains")


def test_creds_lifecycle(tmp_path):
    path = write(tmp_path, GOOD)
    created = run_pymaild("creds", "create", "bob@example.test", "--password-stdin", "-c", str(path),
                          stdin="correct horse battery\n")
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "state/mail/example.test/bob/.Junk/new").is_dir()
    again = run_pymaild("creds", "create", "bob@example.test", "--password-stdin", "-c", str(path),
                        stdin="x-123456789\n")
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert run_pymaild("creds", "list", "-c", str(path)).stdout == "bob@example.test\n"
    assert run_pymaild("creds", "password", "bob@example.test", "--password-stdin", "-c", str(path),
                       stdin="new password here\n").returncode == 0
    from mailserver.auth.passwords import verify_password
    from mailserver.auth.store import AccountStore

    store = AccountStore.in_state_dir(tmp_path / "state")
    stored_hash = store.password_hash("bob@example.test")
    assert stored_hash is not None and stored_hash.startswith("$argon2id$")
    assert verify_password(stored_hash, "new password here")
    assert "new password here" not in (tmp_path / "state/accounts.db").read_bytes().decode("latin-1")
    assert run_pymaild("imap-acct", "list", "-c", str(path)).stdout == "bob@example.test\n"
    cfg = ("-c", str(path))
    assert run_pymaild("alias", "add", "info@example.test", "bob@example.test", *cfg).returncode == 0
    assert "info@example.test -> bob@example.test" in run_pymaild("alias", "list", "-c", str(path)).stdout
    assert run_pymaild("catch-all", "set", "example.test", "bob@example.test", *cfg).returncode == 0
    assert run_pymaild("creds", "remove", "bob@example.test", "-c", str(path)).returncode == 0
    assert run_pymaild("creds", "list", "-c", str(path)).stdout == ""
    assert (tmp_path / "state/mail/example.test/bob").is_dir()  # mail is kept


def test_sizes_and_durations():
    assert parse_size("25M") == 25 * 1024 * 1024
    assert parse_size("100K") == 102400
    assert parse_size("1.5G") == int(1.5 * 1024**3)
    assert parse_size(4096) == 4096
    assert parse_size("10MiB") == 10 * 1024 * 1024
    assert parse_duration("1h30m") == 5400
    assert parse_duration("5d") == 432000
    assert parse_duration(30) == 30.0
    for bad in ("", "5 parsecs", "-1s", "m5"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ConfigError):
        config_from_dict({"hostname": "mx.example.test", "primary_domain": "example.test",
                          "local_domains": ["example.test"], "state_dir": "/tmp/x",
                          "smtp": {"max_message_size": True}})
