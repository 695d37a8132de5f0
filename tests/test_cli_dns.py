"""``pymaild dns``: the handler through an argparse parser, and the real console script.

Configs listen on explicit loopback addresses, so address detection never resolves a
name: nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dns.zone
import pytest

from mailserver.commands import CommandError
from mailserver.commands import dns as dns_command
from mailserver.config import Config, load_config

CONFIG = """\
hostname = "mx1.example.org"
primary_domain = "example.org"
local_domains = ["example.org", "example.net"]
state_dir = "state"

[tls]
self_signed = true

[listen]
smtp = ["127.0.0.2:2525"]
submissions = ["127.0.0.2:4465"]
imaps = ["127.0.0.2:9993"]
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "pymaild.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def cfg(config_file: Path) -> Config:
    return load_config(config_file)


def run_handler(cfg: Config, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="pymaild")
    dns_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dns", *argv])
    return args.func(args, cfg)


def zone_groups(text: str) -> dict[str, str]:
    groups: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"; ---- zone (\S+) ----", line)
        if m:
            current = m.group(1)
            groups[current] = ""
        elif line.startswith("; ---- "):
            current = None
        elif current:
            groups[current] += line + "\n"
    return groups


def check_zone_text(text: str, cfg: Config, domains: list[str]) -> None:
    groups = zone_groups(text)
    assert list(groups) == [d + "." for d in domains]
    for origin, block in groups.items():
        zone = dns.zone.from_text(block, origin=origin, relativize=False, check_origin=False)
        assert zone.get_rdataset(origin, "MX") is not None
        for path in sorted(cfg.dkim_dir.glob(f"{origin}*.dns")):
            selector = path.name[len(origin) : -len(".dns")]
            rds = zone.get_rdataset(f"{selector}._domainkey.{origin}", "TXT")
            assert rds is not None
            assert b"".join(next(iter(rds)).strings).decode() + "\n" == path.read_text()


# ---------------------------------------------------------------------------- handler


def test_prints_every_domain_and_creates_keys_once(cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_handler(cfg) == 0
    out, err = capsys.readouterr()
    assert err.count("created DKIM key") == 4
    assert len(list(cfg.dkim_dir.glob("*.key"))) == 4
    assert out.startswith("; DNS records for example.org, example.net, mail server mx1.example.org")
    check_zone_text(out, cfg, ["example.org", "example.net"])
    assert "mx1.example.org. 3600 IN A     127.0.0.2" in re.sub(r" +3600", " 3600", out)
    assert "0 1 4465 mx1.example.org." in out
    assert run_handler(cfg) == 0
    out2, err2 = capsys.readouterr()
    assert err2 == "" and out2 == out  # stable: same keys, same text


def test_one_domain(cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_handler(cfg, "EXAMPLE.NET.") == 0
    out, _ = capsys.readouterr()
    check_zone_text(out, cfg, ["example.net"])
    assert "example.org." not in out.replace("mx1.example.org.", "")


def test_json(cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_handler(cfg, "--json") == 0
    items = json.loads(capsys.readouterr().out)
    assert {i["zone"] for i in items if i["type"] != "PTR"} == {"example.org.", "example.net."}
    dkim_items = [i for i in items if "._domainkey." in i["name"]]
    assert len(dkim_items) == 4
    for item in dkim_items:
        selector, _, domain = item["name"].rstrip(".").partition("._domainkey.")
        assert item["value"] + "\n" == (cfg.dkim_dir / f"{domain}.{selector}.dns").read_text()
    ptr = [i for i in items if i["type"] == "PTR"]
    assert [(i["name"], i["value"]) for i in ptr] == [("2.0.0.127.in-addr.arpa.", "mx1.example.org.")]


def test_ip_option_overrides_detection(cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_handler(cfg, "example.org", "--json", "--ip", "93.184.216.34", "--ip", "2a01:4f8::1") == 0
    items = json.loads(capsys.readouterr().out)
    addresses = {(i["type"], i["value"]) for i in items if i["type"] in ("A", "AAAA")}
    assert addresses == {("A", "93.184.216.34"), ("AAAA", "2a01:4f8::1")}


def test_bad_ip_option(cfg: Config) -> None:
    with pytest.raises(CommandError, match=r"^--ip 300\.1\.1\.1: not an IP address$"):
        run_handler(cfg, "--ip", "300.1.1.1")


@pytest.mark.parametrize("domain", ["example.com", "not a domain"])
def test_unknown_domain_names_config_and_local_domains(cfg: Config, domain: str) -> None:
    with pytest.raises(CommandError) as err:
        run_handler(cfg, domain)
    assert str(err.value) == (
        f"{domain} is not in local_domains ({cfg.path}: example.org, example.net)"
    )
    assert not cfg.dkim_dir.exists()  # refused before creating anything


def test_key_problem_is_a_command_error(cfg: Config) -> None:
    cfg.dkim_dir.mkdir(parents=True)
    (cfg.dkim_dir / "example.org.default.key").write_text("not a key")
    with pytest.raises(CommandError, match=r"example\.org\.default\.key: not a PEM private key"):
        run_handler(cfg)


# ---------------------------------------------------------------------------- console script


def _has_cli_main() -> bool:
    if importlib.util.find_spec("mailserver.cli") is None:
        return False
    from mailserver import cli

    return callable(getattr(cli, "main", None))


needs_cli = pytest.mark.skipif(not _has_cli_main(), reason="mailserver/cli.py has no main yet")


def pymaild(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("pymaild")
    cmd = [exe] if exe else [sys.executable, "-m", "mailserver.cli"]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=120, env=full_env)


@needs_cli
def test_console_script_prints_zone(config_file: Path, cfg: Config) -> None:
    result = pymaild("dns", "-c", str(config_file))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("created DKIM key") == 4
    check_zone_text(result.stdout, cfg, ["example.org", "example.net"])
    again = pymaild("dns", "-c", str(config_file))
    assert again.returncode == 0 and again.stdout == result.stdout
    assert "created" not in again.stderr


@needs_cli
def test_console_script_json_with_config_from_env(config_file: Path) -> None:
    result = pymaild("dns", "example.org", "--json", env={"PYMAILD_CONFIG": str(config_file)})
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)
    assert {i["type"] for i in items} >= {"MX", "A", "TXT", "CNAME", "SRV", "PTR"}


@needs_cli
def test_console_script_unknown_domain_is_one_line(config_file: Path) -> None:
    result = pymaild("dns", "example.com", "-c", str(config_file))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"pymaild: example.com is not in local_domains ({config_file}: example.org, example.net)\n"
    )
