"""Every import inside ``mailserver/`` points down the layer table below (issue 11).

``LAYERS`` is the one place the layers are written down, lowest first; each layer names
*units*: a package (``imap`` = ``mailserver/imap/``) or a top-level module
(``fsutil`` = ``mailserver/fsutil.py``); ``mailserver`` is the package's own
``__init__``. A module may import

* anything in its own unit (the modules of one package import each other freely), and
* any unit on a lower layer.

Anything else is a violation: a unit on a higher layer, and also a *different* unit on
the same layer (``imap`` must not import ``smtp``: what both need goes down, e.g. into
``net``). Every ``import`` and ``from ... import`` counts, at module level or inside a
function or ``if TYPE_CHECKING:``, absolute or relative. docs/how-it-works.md shows the
same table ("Package map"); a test below keeps the two equal.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "how-it-works.md"

LAYERS: list[list[str]] = [
    # 0. the package's own __init__ (the version) and the one SMTP reply type
    ["mailserver", "smtpreply"],
    # 1. utilities (fsutil's storage-failure reply is an SMTPReply)
    ["address", "config", "dkim_crypto", "fsutil", "logs", "message", "net", "sdnotify"],
    # 2. services built on the utilities
    ["dkim_keys", "metrics", "tls"],
    # 3. on-disk mail store; DNS resolver and the records pymaild publishes
    ["storage", "dns"],
    # 4. message checks: SPF, DKIM, DMARC, trace headers
    ["pipeline"],
    # 5. outbound queue and remote delivery; accounts and logins
    ["delivery", "auth"],
    # 6. the protocol servers
    ["smtp", "imap", "web"],
    # 7. what assembles them
    ["daemon", "commands"],
    # 8. the entry point
    ["cli"],
]

LAYER_OF = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def module_name(path: Path, repo: Path) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """``mailserver.imap.format`` -> ``imap``; ``mailserver.fsutil`` -> ``fsutil``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mailserver"


def _is_module(name: str, repo: Path = REPO) -> bool:
    rel = Path(*name.split("."))
    return (repo / rel).with_suffix(".py").is_file() or (repo / rel / "__init__.py").is_file()


def imports_of(path: Path, repo: Path) -> list[tuple[int, str]]:
    """(line, imported mailserver module) for every import in the file, at any depth."""
    module = module_name(path, repo)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from pkg import name": name may be a submodule (from . import format)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub, repo) else target))
    ours = {(line, name) for line, name in found if name == "mailserver" or name.startswith("mailserver.")}
    return sorted(ours)


def violations(repo: Path = REPO) -> list[str]:
    bad: list[str] = []
    for path in sorted((repo / "mailserver").rglob("*.py")):
        rel = path.relative_to(repo)
        src = unit_of(module_name(path, repo))
        if src not in LAYER_OF:
            bad.append(f"{rel}: unit {src!r} is in no layer of LAYERS")
            continue
        for line, target in imports_of(path, repo):
            dst = unit_of(target)
            if dst == src:
                continue
            if dst not in LAYER_OF:
                bad.append(f"{rel}:{line}: imports {target} (unit {dst!r} is in no layer)")
            elif LAYER_OF[dst] >= LAYER_OF[src]:
                how = "same layer" if LAYER_OF[dst] == LAYER_OF[src] else "upward"
                bad.append(f"{rel}:{line}: {src} (layer {LAYER_OF[src]}) imports "
                           f"{target} ({dst}, layer {LAYER_OF[dst]}): {how}")
    return bad


def test_imports_point_down() -> None:
    bad = violations()
    assert not bad, "imports against the layer table in tests/test_layers.py:\n" + "\n".join(bad)


def test_every_unit_exists() -> None:
    """A stale name in LAYERS would hide a new package from the check."""
    units = [u for layer in LAYERS for u in layer if u != "mailserver"]
    assert len(units) + 1 == len(LAYER_OF), "a unit is named twice"
    missing = [u for u in units if not _is_module(f"mailserver.{u}")]
    assert not missing


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(("file", "source", "expected"), [
    ("storage/x.py", "from mailserver.imap import format\n", "upward"),
    ("storage/x.py", "def f():\n    from ..delivery import queue\n", "upward"),
    ("imap/x.py", "import mailserver.smtp.server\n", "same layer"),
    ("metrics.py", "from .web import HTTPListener\n", "upward"),
    ("pipeline/x.py", "import typing\nif typing.TYPE_CHECKING:\n    from ..smtp import mx\n", "upward"),
    ("newpkg/x.py", "import os\n", "no layer"),
])
def test_the_check_catches(tmp_path: Path, file: str, source: str, expected: str) -> None:
    """The checker itself: a fake tree with one bad import yields exactly that violation."""
    fake = tmp_path / "mailserver"
    for unit in ("imap", "smtp", "storage", "delivery", "pipeline"):
        _write(fake / unit / "__init__.py", "")
        _write(fake / unit / "format.py", "")
        _write(fake / unit / "queue.py", "")
        _write(fake / unit / "server.py", "")
        _write(fake / unit / "mx.py", "")
    _write(fake / "__init__.py", "")
    _write(fake / "web.py", "")
    _write(fake / "metrics.py", "")
    _write(fake / file, source)
    bad = violations(tmp_path)
    assert len(bad) == 1 and expected in bad[0], bad


def test_the_check_allows(tmp_path: Path) -> None:
    fake = tmp_path / "mailserver"
    _write(fake / "__init__.py", "")
    _write(fake / "fsutil.py", "")
    _write(fake / "imap" / "__init__.py", "")
    _write(fake / "imap" / "errors.py", "")
    _write(fake / "imap" / "format.py",
           "from . import errors\nfrom .errors import X\nfrom mailserver.fsutil import f\n")
    _write(fake / "cli.py", "from . import __version__\nfrom mailserver import imap\n")
    assert violations(tmp_path) == []


def doc_layers() -> list[list[str]]:
    """The layer lines of the ``Package map`` block in docs/how-it-works.md, lowest first."""
    text = DOC.read_text()
    section = text.split("## Package map", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None, "no ``` block under ## Package map"
    layers = []
    for line in block.group(1).splitlines():
        m = re.match(r"\s*(\d+)\s+(.*?)\s*$", line)
        if m:
            layers.append((int(m.group(1)), m.group(2).split()))
    return [units for _, units in sorted(layers)]


def test_the_docs_show_the_same_layers() -> None:
    assert doc_layers() == LAYERS
