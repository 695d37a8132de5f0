"""Test-only fault injector for a pymaild subprocess: not production code.

A daemon started with ``PYMAILD_TEST_FAULTS=<control file>`` and
``tests/support/faultsite`` first on ``PYTHONPATH`` loads this module at interpreter
start (through that directory's ``sitecustomize``) and :func:`install` wraps the ``os``
functions every durable write goes through::

    write writev pwrite  fsync fdatasync ftruncate  rename replace link  open(O_CREAT)

Each call first looks at the control file (a stat per call; re-read when it changed).
It holds a JSON list of rules ``{"op": "fsync", "path": "<regex>", "errno": 28}``: a call
whose operation is ``op`` and whose path matches ``path`` (``re.search``) raises
``OSError(errno)`` instead of running (after ``"after": N`` matching calls let through,
if the rule says so). For the descriptor calls the path is the one the
descriptor was opened on (``/proc/self/fd``), so a directory fsync matches the directory;
``rename``/``replace``/``link`` match on either name (a name relative to a
``src_dir_fd``/``dst_dir_fd`` is taken within that directory). An empty list, or no file, turns
every fault off: the test switches faults on and off while the daemon runs.

Every injected failure is appended to ``<control file>.hits`` (one line: op, errno,
path), so a test can tell the fault was really met.

SQLite does its I/O in C, below these wrappers: the tests give it a real full file system
instead (a small tmpfs), which fails everything else honestly with ENOSPC too.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

ENV = "PYMAILD_TEST_FAULTS"

_FD_OPS = ("write", "writev", "pwrite", "fsync", "fdatasync", "ftruncate")
_PATH_OPS = ("rename", "replace", "link")


class _Rules:
    def __init__(self, control: str) -> None:
        self.control = control
        self.hits = control + ".hits"
        self._stamp: tuple[int, int, int] | None = None
        self._rules: list[tuple[str, re.Pattern[str], int]] = []
        self._after: list[int] = []
        self._lock = threading.Lock()

    def current(self, stat: Any) -> list[tuple[str, re.Pattern[str], int]]:
        try:
            st = stat(self.control)
        except OSError:
            return []
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                try:
                    with open(self.control, encoding="utf-8") as fh:
                        raw = json.load(fh)
                except (OSError, ValueError):
                    raw = []
                self._rules = [(r["op"], re.compile(r["path"]), int(r["errno"])) for r in raw]
                self._after = [int(r.get("after", 0)) for r in raw]
                self._stamp = stamp
            return self._rules

    def let_pass(self, index: int) -> bool:
        """True while the rule's ``after`` count of matching calls has not run out."""
        with self._lock:
            if index < len(self._after) and self._after[index] > 0:
                self._after[index] -= 1
                return True
            return False


def install(control: str) -> None:
    """Wrap the ``os`` functions (idempotent per process)."""
    if getattr(os, "_pymaild_faults", None):
        return
    real = {name: getattr(os, name) for name in (*_FD_OPS, *_PATH_OPS, "open", "stat", "readlink")}
    rules = _Rules(control)

    def check(op: str, *paths: str, named: bool = True) -> None:
        # Like the real calls: path-taking ones name their paths in the error, the
        # descriptor ones (write, fsync) name none.
        names = list(paths[:2]) if named else []
        active = rules.current(real["stat"])
        if not active:
            return
        for i, (rule_op, pattern, err) in enumerate(active):
            if rule_op != op:
                continue
            for p in paths:
                if p and pattern.search(p):
                    if rules.let_pass(i):
                        return
                    line = f"{op} {err} {p}\n".encode()
                    fd = real["open"](rules.hits, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    try:
                        real["write"](fd, line)
                    finally:
                        os.close(fd)
                    raise OSError(err, os.strerror(err), *names)

    def fd_path(fd: int) -> str:
        try:
            return str(real["readlink"](f"/proc/self/fd/{fd}"))
        except OSError:
            return ""

    def wrap_fd(name: str) -> Any:
        fn = real[name]
        op = "write" if name in ("writev", "pwrite") else "fsync" if name == "fdatasync" else name

        def wrapper(fd: int, *args: Any, **kw: Any) -> Any:
            if rules.current(real["stat"]):
                check(op, fd_path(fd), named=False)
            return fn(fd, *args, **kw)

        wrapper.__name__ = name
        return wrapper

    def at(dir_fd: int | None, path: Any) -> str:
        """The absolute name of ``path`` as an ``*at()`` call resolves it."""
        if dir_fd is None or os.path.isabs(os.fsdecode(path)):
            return _abs(path)
        return os.path.join(fd_path(dir_fd), os.fsdecode(path))

    def wrap_path(name: str) -> Any:
        fn = real[name]
        op = "rename" if name == "replace" else name

        def wrapper(src: Any, dst: Any, *args: Any, **kw: Any) -> Any:
            if rules.current(real["stat"]):
                check(op, at(kw.get("src_dir_fd"), src), at(kw.get("dst_dir_fd"), dst))
            return fn(src, dst, *args, **kw)

        wrapper.__name__ = name
        return wrapper

    def open_wrapper(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & os.O_CREAT and rules.current(real["stat"]):
            check("open", _abs(path))
        return int(real["open"](path, flags, *args, **kw))

    for name in _FD_OPS:
        setattr(os, name, wrap_fd(name))
    for name in _PATH_OPS:
        setattr(os, name, wrap_path(name))
    os.open = open_wrapper
    os._pymaild_faults = True  # type: ignore[attr-defined]


def _abs(p: Any) -> str:
    try:
        return os.path.abspath(os.fsdecode(p))
    except (TypeError, ValueError):
        return ""


# ---------------------------------------------------------------- test side


class FaultControl:
    """The test's handle on one daemon's control file."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "faults.json"
        self.set([])

    @property
    def hits_path(self) -> Path:
        return Path(str(self.path) + ".hits")

    def set(self, rules: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rules))
        os.replace(tmp, self.path)  # atomic: the daemon never reads half a file

    def fail(self, op: str, path: str, err: int, *, after: int = 0) -> None:
        self.set([{"op": op, "path": path, "errno": err, "after": after}])

    def clear(self) -> None:
        self.set([])

    def hits(self) -> list[str]:
        try:
            return self.hits_path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def reset_hits(self) -> None:
        self.hits_path.unlink(missing_ok=True)

    def environment(self) -> dict[str, str]:
        site = str(Path(__file__).resolve().parent / "faultsite")
        repo = str(Path(__file__).resolve().parents[2])
        paths = [site, repo, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        return {ENV: str(self.path), "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
