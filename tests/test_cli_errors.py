"""Every bad input to every ``pymaild`` command ends as one line on stderr, never a traceback.

Each case runs the real CLI as a subprocess: config errors (a file that is binary, not
UTF-8, a directory, too big, nested too deeply, a NUL in a value, a non-finite number)
exit 2; bad arguments (addresses, passwords on stdin, queue ids, domains) and broken state
(a state_dir that is a file, a damaged accounts database) exit 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
hostname = "mx.example.test"
primary_domain = "example.test"
local_domains = ["example.test"]
state_dir = "state"
[tls]
self_signed = true
[listen]
smtp = ["127.0.0.1:2525"]
"""


def run_cli(cwd: Path, args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYMAILD_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "mailserver.cli", *args], cwd=cwd, input=stdin,
                          capture_output=True, timeout=60, env=env)


def config_with(tmp: Path, name: str, text: str | bytes) -> str:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return name


# (name, setup(tmp) -> args, stdin, expected exit status, words in the line)
Setup = Callable[[Path], list[str]]
CONFIG_CASES: list[tuple[str, Setup, int, str]] = [
    ("binary", lambda t: ["creds", "list", "-c", config_with(t, "b.toml", b"\x7fELF\x02\x00" * 40)],
     2, "binary file"),
    ("non-utf8 in a string", lambda t: ["creds", "list", "-c", config_with(
        t, "u.toml", GOOD.encode().replace(b"mx.example", b"mx.\xffexample"))], 2, "byte 0xff"),
    ("directory", lambda t: (t / "d.toml").mkdir() or ["run", "-c", "d.toml"], 2, "is a directory"),
    ("missing", lambda t: ["queue", "list", "-c", "nope.toml"], 2, "config file not found"),
    ("too big", lambda t: ["dns", "-c", config_with(t, "h.toml", "#" * (2 * 1024 * 1024))], 2, "larger than"),
    ("nested too deeply", lambda t: ["run", "-c", config_with(
        t, "n.toml", "x = " + "[" * 50000 + "]" * 50000)], 2, "nested too deeply"),
    ("NUL in a value", lambda t: ["creds", "list", "-c", config_with(
        t, "z.toml", GOOD.replace('"state"', '"st\\u0000ate"'))], 2, "state_dir: contains the control"),
    ("nan duration", lambda t: ["run", "-c", config_with(
        t, "nan.toml", GOOD + "[smtp]\ncommand_timeout = nan\n")], 2, "command_timeout: expected a finite"),
    ("state_dir is a file", lambda t: (t / "afile").write_text("x") and ["creds", "list", "-c", config_with(
        t, "f.toml", GOOD.replace('"state"', '"afile"'))], 2, "state_dir:"),
    ("init keeps a broken config", lambda t: ["init", "--yes", "-c", config_with(t, "i.toml", b"\x00\x01")],
     2, "binary file"),
]

ARG_CASES: list[tuple[str, list[str], bytes, str]] = [
    ("address with space and two @", ["creds", "create", "a b@@example.test", "--password-stdin"],
     b"secret-password\n", "invalid address"),
    ("address not local", ["creds", "create", "a b@@x", "--password-stdin"], b"pw\n", "not in local_domains"),
    ("overlong address", ["creds", "create", "a" * 300 + "@example.test", "--password-stdin"],
     b"secret-password\n", "longer than 64 octets"),
    ("empty password", ["creds", "create", "x@example.test", "--password-stdin"], b"", "no password"),
    ("binary password", ["creds", "create", "x@example.test", "--password-stdin"],
     bytes(range(128, 256)) * 10 + b"\n", "not UTF-8"),
    ("huge password", ["creds", "create", "x@example.test", "--password-stdin"], b"a" * 5_000_000,
     "longer than"),
    ("NUL in password", ["creds", "create", "x@example.test", "--password-stdin"], b"ab\x00cd\n", "NUL"),
    ("no terminal", ["creds", "password", "x@example.test"], b"", "no terminal"),
    ("queue id traversal", ["queue", "show", "../x"], b"", "not a queue id"),
    ("queue id traversal remove", ["queue", "remove", "../../etc/passwd"], b"", "not a queue id"),
    ("queue id huge", ["queue", "show", "A" * 5000], b"", "not a queue id"),
    ("queue flush bad wait", ["queue", "flush", "--wait", "nan"], b"", "--wait"),
    ("dns bad domain", ["dns", "bad domain"], b"", "not in local_domains"),
    ("dns check bad domain", ["dns", "check", "x..y"], b"", "not in local_domains"),
    ("dns bad ip", ["dns", "--ip", "999.1.1.1"], b"", "not an IP address"),
    ("alias bad target", ["alias", "add", "al@example.test", "no such"], b"", "invalid address"),
    ("catch-all bad domain", ["catch-all", "set", "bad dom", "x@example.test"], b"", "not in local_domains"),
    ("sender bad", ["sender", "allow", "x", "y"], b"", "invalid address"),
]


def assert_one_line(result: subprocess.CompletedProcess[bytes], status: int | None, words: str) -> str:
    err = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pymaild: "), lines[0]
    assert words in lines[0], lines[0]
    if status is None:
        assert result.returncode != 0
    else:
        assert result.returncode == status, (result.returncode, err)
    return lines[0]


@pytest.mark.parametrize(("name", "setup", "status", "words"), CONFIG_CASES,
                         ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_one_line_exit_2(tmp_path: Path, name: str, setup: Setup, status: int,
                                       words: str) -> None:
    line = assert_one_line(run_cli(tmp_path, setup(tmp_path)), status, words)
    assert line.startswith("pymaild: config error: "), line


@pytest.mark.parametrize(("name", "args", "stdin", "words"), ARG_CASES, ids=[c[0] for c in ARG_CASES])
def test_bad_argument_is_one_line(tmp_path: Path, name: str, args: list[str], stdin: bytes,
                                  words: str) -> None:
    (tmp_path / "good.toml").write_text(GOOD)
    assert_one_line(run_cli(tmp_path, [*args, "-c", "good.toml"], stdin), 1 if name != "queue flush bad wait"
                    else 2, words)


def test_damaged_state_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "good.toml").write_text(GOOD)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "accounts.db").write_bytes(b"this is not a database at all" * 10)
    assert_one_line(run_cli(tmp_path, ["creds", "list", "-c", "good.toml"]), 1, "accounts.db")
    (tmp_path / "state" / "dkim").write_text("")  # a file where a directory belongs
    assert_one_line(run_cli(tmp_path, ["dns", "check", "-c", "good.toml"]), 1, "dkim")


def test_long_error_is_clipped_to_one_short_line(tmp_path: Path) -> None:
    (tmp_path / "good.toml").write_text(GOOD)
    line = assert_one_line(run_cli(tmp_path, ["queue", "show", "A\nB" * 3000, "-c", "good.toml"]), 1,
                           "not a queue id")
    assert len(line) < 500


def test_unexpected_error_is_one_line_with_a_debug_switch(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The last line of defence: an exception nobody expected still gives one line."""
    from mailserver import cli

    def boom(argv: object) -> int:
        raise RuntimeError("surprise\nsecond line")

    monkeypatch.setattr(cli, "_main", boom)
    monkeypatch.delenv("PYMAILD_DEBUG", raising=False)
    assert cli.main(["creds", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "internal error: RuntimeError: surprise second line" in err
    monkeypatch.setenv("PYMAILD_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(["creds", "list"])
