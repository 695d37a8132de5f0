"""Remove one fsync from pymaild, for tests only: ``python -m tests.support.fsyncskip SITE ARGS...``.

Runs ``pymaild ARGS...`` (``mailserver.cli``) with one durability site switched off, so a
test can show that its crash checker notices the missing fsync. Nothing in ``mailserver/``
knows about this: the hook replaces ``os.fsync``/``os.fdatasync`` in this process only.

A *site* is one call in the source, named ``path:function:line`` (for example
``mailserver/storage/maildir.py:_write_tmp:227``); :func:`fsync_sites` lists every call
of ``os.fsync``, ``os.fdatasync`` and ``fsync_dir`` under ``mailserver/``. An fsync is
skipped when that call is anywhere on the stack, so a site that calls a helper
(``fsync_dir``, ``_write_fd``) removes the helper's fsync for that call only.

Two more sites are SQLite's own: ``sqlite:index`` and ``sqlite:accounts`` open that
database with ``PRAGMA synchronous=OFF`` (SQLite then syncs nothing: no journal, WAL,
database or directory fsync).
"""

from __future__ import annotations

import ast
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SQLITE_SITES = {"sqlite:index": "pymaild-index.sqlite", "sqlite:accounts": "accounts.db"}
_FSYNC_NAMES = {"fsync", "fdatasync", "fsync_dir"}


def fsync_sites(root: Path = REPO) -> list[str]:
    """Every fsync call site under ``mailserver/``, except the one inside ``fsync_dir``
    itself (that one is every directory fsync at once)."""
    sites: list[str] = []
    for path in sorted((root / "mailserver").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), rel)

        def visit(node: ast.AST, func: str, rel: str = rel) -> None:
            for child in ast.iter_child_nodes(node):
                name = func
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    name = child.name
                elif isinstance(child, ast.Lambda):
                    name = "<lambda>"
                if isinstance(child, ast.Call):
                    f = child.func
                    called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                    if called in _FSYNC_NAMES and not (rel == "mailserver/fsutil.py" and func == "fsync_dir"):
                        sites.append(f"{rel}:{func}:{child.lineno}")
                visit(child, name)

        visit(tree, "<module>")
    return sites


def install(site: str) -> None:
    """Switch ``site`` off in this process."""
    if site in SQLITE_SITES:
        _install_sqlite(SQLITE_SITES[site])
        return
    rel, func, line = site.rsplit(":", 2)
    filename = str(REPO / rel)
    lineno = int(line)
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def wanted() -> bool:
        f = sys._getframe(2)
        while f is not None:
            if f.f_lineno == lineno and f.f_code.co_filename == filename and f.f_code.co_name == func:
                return True
            f = f.f_back
        return False

    def fsync(fd: Any) -> None:
        if not wanted():
            real_fsync(fd)

    def fdatasync(fd: Any) -> None:
        if not wanted():
            real_fdatasync(fd)

    os.fsync = fsync
    os.fdatasync = fdatasync


def _install_sqlite(filename: str) -> None:
    real_connect = sqlite3.connect

    class Unsynced(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql.replace(" ", "").upper().startswith("PRAGMASYNCHRONOUS="):
                sql = "PRAGMA synchronous=OFF"
            return super().execute(sql, *args)

    def connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if str(database).endswith(filename):
            kwargs["factory"] = Unsynced
            conn = real_connect(database, *args, **kwargs)
            conn.execute("PRAGMA synchronous=OFF")
            return conn
        return real_connect(database, *args, **kwargs)

    sqlite3.connect = connect  # type: ignore[assignment]


def main() -> None:
    site, *args = sys.argv[1:]
    if site:
        install(site)
    from mailserver.cli import main as pymaild_main

    sys.argv = ["pymaild", *args]
    sys.exit(pymaild_main())


if __name__ == "__main__":
    main()
