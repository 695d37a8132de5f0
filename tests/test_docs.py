"""The documentation and example configs stay in step with the code.

- every config key (``schema_keys()``) is documented in docs/configuration.md, with the
  default the code really has;
- config/pymaild.toml and config/local.toml load, and pymaild.toml lists every key,
  its commented-out defaults being the real defaults;
- every CLI command, action and option is in docs/commands.md;
- config keys named anywhere in docs/ exist, and links between the docs resolve.
"""

from __future__ import annotations

import argparse
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from mailserver.cli import build_parser
from mailserver.config import Config, _build, load_config, schema_keys

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIGURATION_MD = DOCS / "configuration.md"
COMMANDS_MD = DOCS / "commands.md"
PRODUCTION = ROOT / "config" / "pymaild.toml"
LOCAL = ROOT / "config" / "local.toml"

MINIMAL: dict[str, Any] = {
    "hostname": "mx.example.org",
    "primary_domain": "example.org",
    "local_domains": ["example.org"],
    "state_dir": "/var/lib/pymaild",
}
REQUIRED = {"hostname", "primary_domain", "local_domains", "state_dir"}


# ---------------------------------------------------------------------------- configuration.md


def key_sections() -> dict[str, str]:
    """``### `key` `` heading -> the text up to the next heading."""
    text = CONFIGURATION_MD.read_text()
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.MULTILINE)
    out: dict[str, str] = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        m = re.fullmatch(r"### `([a-z_][a-z0-9_.]*)`", heading.strip())
        if m:
            out[m.group(1)] = body
    return out


def test_every_key_is_documented() -> None:
    text = CONFIGURATION_MD.read_text()
    missing = [key for key in schema_keys() if f"`{key}`" not in text]
    assert not missing, f"keys not in docs/configuration.md: {missing}"


def test_every_key_has_its_own_heading_and_no_stale_ones() -> None:
    documented = set(key_sections())
    keys = set(schema_keys())
    assert keys - documented == set(), "keys without a '### `key`' heading"
    assert documented - keys == set(), "headings for keys the config does not have"


@pytest.mark.parametrize("key", [k for k in schema_keys() if k not in REQUIRED])
def test_documented_default_is_the_real_default(key: str) -> None:
    body = key_sections()[key]
    m = re.search(r"default `([^`]+)`", body)
    assert m, f"{key}: no 'default `...`' in its section"
    documented = tomllib.loads(f"v = {m.group(1)}")["v"]
    # Compare per section, without the cross-key validation: a default-only config is
    # not valid as a whole (it has no certificate), but each default must still match.
    section, name = key.split(".")
    section_cls = typing.get_type_hints(Config)[section]
    default = getattr(section_cls(), name)
    parsed = getattr(_build(section_cls, {name: documented}, "<docs>", f"{section}."), name)
    assert parsed == default, f"{key}: docs say {m.group(1)}, code default is {default!r}"


@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_required_keys_are_documented_as_required(key: str) -> None:
    assert "required" in key_sections()[key].split("\n\n")[1]


# ---------------------------------------------------------------------------- example configs


def production_text(tmp_path: Path) -> str:
    """config/pymaild.toml with its certificate paths pointing at files that exist."""
    text = PRODUCTION.read_text()
    for name in ("fullchain.pem", "privkey.pem"):
        path = f"/etc/pymaild/tls/{name}"
        assert f'"{path}"' in text, f"expected {path} in {PRODUCTION.name}"
        (tmp_path / name).write_text("placeholder\n")
        text = text.replace(f'"{path}"', f'"{tmp_path / name}"')
    return text


def commented_keys(text: str) -> dict[str, str]:
    """``#key = value`` lines (a commented-out default) -> {"section.key": "value"}."""
    out: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        if m := re.fullmatch(r"\[([a-z_]+)\]\s*(#.*)?", line):
            section = m.group(1)
        elif m := re.fullmatch(r"#([a-z_0-9]+) = (.+)", line):
            key = f"{section}.{m.group(1)}" if section else m.group(1)
            assert key not in out, f"{key} commented out twice"
            out[key] = m.group(2)
    return out


def set_keys(raw: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in raw.items():
        if isinstance(value, dict):
            keys |= set_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_production_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "pymaild.toml"
    path.write_text(production_text(tmp_path))
    cfg = load_config(path)
    assert cfg.state_dir == "/var/lib/pymaild"
    assert cfg.listen.smtp == (("0.0.0.0", 25), ("::", 25))
    assert cfg.tls.self_signed is False
    assert cfg.checks.spf and cfg.checks.dkim and cfg.checks.dmarc


def test_production_config_lists_every_key_once() -> None:
    text = PRODUCTION.read_text()
    active = set_keys(tomllib.loads(text))
    commented = set(commented_keys(text))
    assert active & commented == set(), "keys both set and commented out"
    assert active | commented == set(schema_keys())


def test_production_config_commented_defaults_are_the_defaults(tmp_path: Path) -> None:
    commented = commented_keys(PRODUCTION.read_text())
    for key, text in commented.items():
        if key.startswith("listen."):
            continue  # examples of services to come, not defaults
        value = tomllib.loads(f"v = {text}")["v"]
        section, name = key.split(".")
        section_cls = typing.get_type_hints(Config)[section]
        parsed = getattr(_build(section_cls, {name: value}, "<docs>", f"{section}."), name)
        assert parsed == getattr(section_cls(), name), f"#{key} = {text} is not the default"


def test_production_config_with_everything_uncommented_loads(tmp_path: Path) -> None:
    text = re.sub(r"^#([a-z_0-9]+ = )", r"\1", production_text(tmp_path), flags=re.MULTILINE)
    path = tmp_path / "uncommented.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.listen.imaps == (("0.0.0.0", 993), ("::", 993))


def test_local_config_loads_as_is(tmp_path: Path) -> None:
    copy = tmp_path / "local.toml"
    copy.write_text(LOCAL.read_text())
    cfg = load_config(copy)
    assert cfg.hostname == "mx.example.test"
    assert cfg.local_domains == ("example.test",)
    assert cfg.state_dir == str(tmp_path / "state")  # relative to the config file
    assert cfg.tls.self_signed and not cfg.tls.cert
    assert cfg.listen.smtp == (("127.0.0.1", 2525),)
    # No DNS on loopback: with the checks on, every message would be deferred (451).
    assert not (cfg.checks.spf or cfg.checks.dkim or cfg.checks.dmarc)


def test_local_config_keys_are_valid() -> None:
    raw = tomllib.loads(LOCAL.read_text())
    assert set_keys(raw) <= set(schema_keys())
    load_config(LOCAL)


# ---------------------------------------------------------------------------- commands.md


Command = tuple[tuple[str, ...], argparse.ArgumentParser]


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Command]:
    out: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.append(((*path, name), child))
                out.extend(walk(child, (*path, name)))
    return out


COMMANDS = walk(build_parser())


def test_cli_has_commands() -> None:
    top = {path[0] for path, _ in COMMANDS}
    assert {"run", "creds", "dns"} <= top


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_every_command_is_documented(path: tuple[str, ...]) -> None:
    text = COMMANDS_MD.read_text()
    if len(path) == 1:
        assert re.search(rf"^## `pymaild {re.escape(path[0])}[` ]", text, re.MULTILINE), (
            f"no '## `pymaild {path[0]}`' section in docs/commands.md"
        )
    else:
        assert f"pymaild {' '.join(path)}" in text, f"'pymaild {' '.join(path)}' not in docs/commands.md"


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_is_documented(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    text = COMMANDS_MD.read_text()
    for action in parser._actions:
        for option in action.option_strings:
            if option in ("-h", "--help"):
                continue
            assert f"`{option}" in text or f"{option} " in text, f"{' '.join(path)} {option} undocumented"


def test_exit_codes_documented() -> None:
    text = COMMANDS_MD.read_text()
    for code in ("| 0 |", "| 1 |", "| 2 |"):
        assert code in text


# ---------------------------------------------------------------------------- all docs


SECTIONS = ("tls", "listen", "smtp", "accounts", "checks", "dkim", "dns", "delivery", "log")
KEY_REF = re.compile(rf"`((?:{'|'.join(SECTIONS)})\.[a-z_0-9]+)[`\[ ]")
NOT_KEYS = {"accounts.db"}  # file names that look like keys


def doc_files() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.name)
def test_config_keys_named_in_docs_exist(doc: Path) -> None:
    keys = set(schema_keys())
    unknown = sorted({m for m in KEY_REF.findall(doc.read_text()) if m not in keys | NOT_KEYS})
    assert not unknown, f"{doc.name} names keys that do not exist: {unknown}"


def github_anchor(heading: str) -> str:
    text = heading.strip().lstrip("#").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.name)
def test_links_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # external
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        assert dest.exists(), f"{doc.name}: broken link {target}"
        if anchor and dest.suffix == ".md":
            headings = re.findall(r"^#{1,6} .*$", dest.read_text(), re.MULTILINE)
            anchors = {github_anchor(h) for h in headings}
            assert anchor in anchors, f"{doc.name}: no heading for #{anchor} in {dest.name}"
