"""systemd/pymaild.service: the directives operators rely on, and `systemd-analyze verify`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mailserver.smtp.server import Limits
from tests.support.tools import needs_tool

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "pymaild.service"


def directives() -> dict[str, list[str]]:
    """Directive -> values, in order (a directive may repeat); comments skipped."""
    out: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {raw!r}"
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def one(name: str) -> str:
    values = directives().get(name)
    assert values, f"{name}= missing from {UNIT.name}"
    assert len(values) == 1, f"{name}= given {len(values)} times"
    return values[0]


def test_sections() -> None:
    sections = re.findall(r"^\[(\w+)\]$", UNIT.read_text(), re.MULTILINE)
    assert sections == ["Unit", "Service", "Install"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Type", "notify"),
        ("User", "pymaild"),
        ("ExecStart", "/usr/local/bin/pymaild run -c /etc/pymaild/pymaild.toml"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "true"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/pymaild"),
        ("StateDirectory", "pymaild"),
        ("PrivateTmp", "true"),
        ("ProtectHome", "true"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("WantedBy", "multi-user.target"),
    ],
)
def test_required_directive(name: str, value: str) -> None:
    assert one(name) == value


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", text)
    assert m, f"unexpected time value {text!r}"
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_stop_timeout_exceeds_drain() -> None:
    # SIGTERM drains for up to Limits.drain_timeout; systemd must not SIGKILL before.
    stop = _seconds(one("TimeoutStopSec"))
    assert Limits().drain_timeout < stop <= Limits().drain_timeout + 60


def test_exit_status_2_is_the_config_error_status() -> None:
    # The unit's RestartPreventExitStatus=2 only works if config errors exit 2.
    from mailserver.cli import main

    assert main(["run", "-c", str(UNIT.parent / "does-not-exist.toml")]) == 2


def test_state_dir_matches_example_config() -> None:
    import tomllib

    example = tomllib.loads((UNIT.parents[1] / "config" / "pymaild.toml").read_text())
    assert example["state_dir"] == one("ReadWritePaths") == "/var/lib/" + one("StateDirectory")
    assert one("ExecStart").endswith("-c /etc/pymaild/pymaild.toml")


@needs_tool("systemd-analyze", "systemd")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    pymaild = shutil.which("pymaild")
    if pymaild is None:
        pytest.skip("pymaild is not on PATH")
    # verify checks that ExecStart= is executable: point it at the installed command.
    text = UNIT.read_text().replace("ExecStart=/usr/local/bin/pymaild ", f"ExecStart={pymaild} ")
    unit = tmp_path / "pymaild.service"
    unit.write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if "pymaild.service" in line]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr
