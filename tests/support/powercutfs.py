"""A FUSE file system for tests that forgets what was not fsync'd, as a power cut does.

Everything lives in memory, in two layers (the approach of LazyFS, which Jepsen uses):

* the *live* layer is what every process on the mount sees: inodes with their bytes and
  directories with their entries;
* the *durable* layer is what a power cut would leave: a file's bytes (and mode and
  mtime) as they were at its last ``fsync``/``fdatasync``, a directory's entries as they
  were at its last ``fsync`` of the directory (``fsyncdir``).

The model is deliberately strict, stricter than ext4 (whose single journal makes any
fsync commit every earlier metadata change): the rules are those of the fsync(2) page
and POSIX, with directory operations atomic as every journaling file system makes them:

* ``fsync(file)`` makes the file's contents durable, not its name;
* ``fsync(dir)`` makes the directory's current entries durable (creations, unlinks,
  renames, links in it), not the directory's own name in its parent;
* a ``rename`` between two directories is atomic: once either directory is fsync'd,
  both sides of it are durable (never "in neither" nor, because of this rename, "in both");
* nothing else is ever durable: a file written and renamed into a directory that is
  fsync'd, but never fsync'd itself, comes back empty.

A *cut* (:meth:`Model.cut`) is taken at any moment without stopping anything: under the
lock every operation takes, it collects the durable tree (immutable ``bytes``, so this is
cheap), then writes it into a fresh directory outside the mount, where the test checks
its invariants and may run pymaild on it. ``mode="names"`` is the other classic crash
outcome: every directory operation survived but unsynced file data did not (ext4
``data=writeback``).

Run as ``python -m tests.support.powercutfs MOUNTPOINT CONTROL_SOCKET``; the test process
drives it through :class:`PowerCutFS` (JSON lines on a unix socket: ``cut``,
``sync_all``, ``stats``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

FILE, DIR, LINK = "f", "d", "l"
_DEBUG = bool(os.environ.get("POWERCUTFS_DEBUG"))


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Inode:
    __slots__ = ("atime", "ctime", "data", "entries", "ino", "kind", "mode", "mtime", "nlink", "target")

    def __init__(self, ino: int, kind: str, mode: int) -> None:
        now = time.time_ns()
        self.ino = ino
        self.kind = kind
        self.mode = mode
        self.nlink = 2 if kind == DIR else 1
        self.atime = self.mtime = self.ctime = now
        self.data = bytearray() if kind == FILE else None
        self.entries: dict[str, Inode] | None = {} if kind == DIR else None
        self.target = b""


class Model:
    """Live and durable layers, and every operation on them (paths are '/'-rooted)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._next_ino = 2
        self.root = Inode(1, DIR, stat.S_IFDIR | 0o755)
        self.inodes: dict[int, Inode] = {1: self.root}
        # Durable layer: dir ino -> {name: ino}; file ino -> (bytes, mode, mtime).
        self.dur_entries: dict[int, dict[str, int]] = {1: {}}
        self.dur_files: dict[int, tuple[bytes, int, int]] = {}
        # Cross-directory renames not yet durable on either side:
        # (src dir ino, name, dst dir ino, name, ino).
        self.pending_renames: list[tuple[int, str, int, str, int]] = []
        self.handles: dict[int, Inode] = {}
        self._next_fh = 1
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------------ helpers

    def _new(self, kind: str, mode: int) -> Inode:
        node = Inode(self._next_ino, kind, mode)
        self.inodes[node.ino] = node
        self._next_ino += 1
        return node

    def lookup(self, path: str) -> Inode:
        node = self.root
        for part in path.split("/"):
            if not part:
                continue
            if node.entries is None:
                raise _err(errno.ENOTDIR)
            child = node.entries.get(part)
            if child is None:
                raise _err(errno.ENOENT)
            node = child
        return node

    def parent_of(self, path: str) -> tuple[Inode, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self.lookup(head or "/")
        if parent.entries is None:
            raise _err(errno.ENOTDIR)
        if not name or len(name.encode()) > 255:
            raise _err(errno.EINVAL if not name else errno.ENAMETOOLONG)
        return parent, name

    def node(self, path: str | None, fh: int | None) -> Inode:
        if fh:
            node = self.handles.get(fh)
            if node is not None:
                return node
        if path is None:
            raise _err(errno.EBADF)
        return self.lookup(path)

    def _handle(self, node: Inode) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = node
        return fh

    @staticmethod
    def _touch(node: Inode) -> None:
        node.mtime = node.ctime = time.time_ns()

    # ------------------------------------------------------------------ operations

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        node = self.node(path, fh)
        size = len(node.data) if node.data is not None else (len(node.target) if node.kind == LINK else 4096)
        return {
            "st_mode": node.mode, "st_ino": node.ino, "st_nlink": node.nlink, "st_size": size,
            "st_uid": os.getuid(), "st_gid": os.getgid(), "st_atime": node.atime,
            "st_mtime": node.mtime, "st_ctime": node.ctime, "st_blksize": 4096,
            "st_blocks": (size + 511) // 512,
        }

    def readdir(self, path: str | None, fh: int | None) -> list[tuple[str, dict[str, int], int]]:
        # With use_ino, an entry without its inode number would have d_ino 0, which
        # readdir(3) skips: give mode and inode of each.
        node = self.node(path, fh)
        if node.entries is None:
            raise _err(errno.ENOTDIR)
        me = {"st_mode": node.mode, "st_ino": node.ino}
        return [(".", me, 0), ("..", me, 0), *(
            (name, {"st_mode": child.mode, "st_ino": child.ino}, 0) for name, child in node.entries.items()
        )]

    def opendir(self, path: str) -> int:
        node = self.lookup(path)
        if node.kind != DIR:
            raise _err(errno.ENOTDIR)
        return self._handle(node)

    def open(self, path: str, flags: int) -> int:
        node = self.lookup(path)
        if node.kind == DIR and flags & os.O_ACCMODE != os.O_RDONLY:
            raise _err(errno.EISDIR)
        if flags & os.O_TRUNC and node.data is not None:
            node.data.clear()
            self._touch(node)
        return self._handle(node)

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        parent, name = self.parent_of(path)
        assert parent.entries is not None
        existing = parent.entries.get(name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise _err(errno.EEXIST)
            return self.open(path, flags)
        node = self._new(FILE, stat.S_IFREG | (mode & 0o7777))
        parent.entries[name] = node
        self._touch(parent)
        return self._handle(node)

    def release(self, fh: int) -> None:
        self.handles.pop(fh, None)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        node = self.node(path, fh)
        if node.data is None:
            raise _err(errno.EISDIR)
        return bytes(node.data[offset : offset + size])

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        node = self.node(path, fh)
        if node.data is None:
            raise _err(errno.EISDIR)
        buf = node.data
        if offset > len(buf):
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(data)] = data
        self._touch(node)
        self.stats["write"] += 1
        return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        node = self.node(path, fh)
        if node.data is None:
            raise _err(errno.EISDIR)
        if length < len(node.data):
            del node.data[length:]
        else:
            node.data.extend(bytes(length - len(node.data)))
        self._touch(node)

    def fsync(self, path: str | None, fh: int | None) -> None:
        node = self.node(path, fh)
        if node.kind == DIR:
            self.fsyncdir(path, fh)
            return
        if node.data is not None:
            self.dur_files[node.ino] = (bytes(node.data), node.mode, node.mtime)
        self.stats["fsync"] += 1

    def fsyncdir(self, path: str | None, fh: int | None) -> None:
        node = self.node(path, fh)
        assert node.entries is not None
        ino = node.ino
        self.dur_entries[ino] = {name: child.ino for name, child in node.entries.items()}
        if _DEBUG:
            print(f"fsyncdir {path} fh={fh} ino={ino} {sorted(self.dur_entries[ino])[:6]}", file=sys.stderr)
        # Renames with a side in this directory are atomic: their other side is durable now.
        keep = []
        for rename in self.pending_renames:
            src, sname, dst, dname, moved = rename
            if src == ino:
                self.dur_entries.setdefault(dst, {})[dname] = moved
            elif dst == ino:
                if self.dur_entries.get(src, {}).get(sname) == moved:
                    del self.dur_entries[src][sname]
            else:
                keep.append(rename)
        self.pending_renames = keep
        self.stats["fsyncdir"] += 1

    def mkdir(self, path: str, mode: int) -> None:
        parent, name = self.parent_of(path)
        assert parent.entries is not None
        if name in parent.entries:
            raise _err(errno.EEXIST)
        node = self._new(DIR, stat.S_IFDIR | (mode & 0o7777))
        parent.entries[name] = node
        parent.nlink += 1
        self._touch(parent)

    def _drop(self, node: Inode) -> None:
        node.nlink -= 1
        node.ctime = time.time_ns()

    def unlink(self, path: str) -> None:
        parent, name = self.parent_of(path)
        assert parent.entries is not None
        node = parent.entries.get(name)
        if node is None:
            raise _err(errno.ENOENT)
        if node.kind == DIR:
            raise _err(errno.EISDIR)
        del parent.entries[name]
        self._drop(node)
        self._touch(parent)

    def rmdir(self, path: str) -> None:
        parent, name = self.parent_of(path)
        assert parent.entries is not None
        node = parent.entries.get(name)
        if node is None:
            raise _err(errno.ENOENT)
        if node.kind != DIR:
            raise _err(errno.ENOTDIR)
        if node.entries:
            raise _err(errno.ENOTEMPTY)
        del parent.entries[name]
        parent.nlink -= 1
        node.nlink = 0
        self._touch(parent)

    def rename(self, old: str, new: str) -> None:
        sparent, sname = self.parent_of(old)
        dparent, dname = self.parent_of(new)
        assert sparent.entries is not None and dparent.entries is not None
        node = sparent.entries.get(sname)
        if node is None:
            raise _err(errno.ENOENT)
        if node.kind == DIR:
            p = dparent  # no directory into itself
            walk = self.root
            parts = [x for x in new.split("/") if x][:-1]
            for part in parts:
                if walk is node:
                    raise _err(errno.EINVAL)
                assert walk.entries is not None
                walk = walk.entries[part]
            if p is node:
                raise _err(errno.EINVAL)
        target = dparent.entries.get(dname)
        if target is node:
            return
        if target is not None:
            if target.kind == DIR:
                if node.kind != DIR:
                    raise _err(errno.EISDIR)
                if target.entries:
                    raise _err(errno.ENOTEMPTY)
                dparent.nlink -= 1
                target.nlink = 0
            elif node.kind == DIR:
                raise _err(errno.ENOTDIR)
            else:
                self._drop(target)
        del sparent.entries[sname]
        dparent.entries[dname] = node
        if node.kind == DIR and sparent is not dparent:
            sparent.nlink -= 1
            dparent.nlink += 1
        self._touch(sparent)
        self._touch(dparent)
        node.ctime = time.time_ns()
        if sparent is not dparent:
            self.pending_renames.append((sparent.ino, sname, dparent.ino, dname, node.ino))

    def link(self, new: str, old: str) -> None:
        node = self.lookup(old)
        if node.kind == DIR:
            raise _err(errno.EPERM)
        parent, name = self.parent_of(new)
        assert parent.entries is not None
        if name in parent.entries:
            raise _err(errno.EEXIST)
        parent.entries[name] = node
        node.nlink += 1
        node.ctime = time.time_ns()
        self._touch(parent)

    def symlink(self, new: str, target: str) -> None:
        parent, name = self.parent_of(new)
        assert parent.entries is not None
        if name in parent.entries:
            raise _err(errno.EEXIST)
        node = self._new(LINK, stat.S_IFLNK | 0o777)
        node.target = target.encode()
        parent.entries[name] = node
        self._touch(parent)

    def readlink(self, path: str) -> str:
        node = self.lookup(path)
        if node.kind != LINK:
            raise _err(errno.EINVAL)
        return node.target.decode()

    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> None:
        node = self.node(path, fh)
        node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        node.ctime = time.time_ns()

    def utimens(self, path: str | None, times: tuple[int | None, int | None] | None,
                fh: int | None = None) -> None:
        node = self.node(path, fh)
        now = time.time_ns()
        atime, mtime = times if times is not None else (now, now)
        if atime is not None:
            node.atime = int(atime)
        if mtime is not None:
            node.mtime = int(mtime)
        node.ctime = time.time_ns()

    # ------------------------------------------------------------------ the cut

    def sync_all(self) -> None:
        """Make the whole live state durable (after a test's setup, like sync(1))."""
        for node in list(self._walk_live()):
            if node.kind == DIR:
                self.dur_entries[node.ino] = {n: c.ino for n, c in (node.entries or {}).items()}
            elif node.data is not None:
                self.dur_files[node.ino] = (bytes(node.data), node.mode, node.mtime)
        self.pending_renames.clear()

    def _walk_live(self) -> list[Inode]:
        seen: list[Inode] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            seen.append(node)
            if node.entries:
                stack.extend(node.entries.values())
        return seen

    def collect(self, mode: str = "strict") -> list[tuple[str, str, bytes, int, int]]:
        """The tree a power cut would leave: ``(relative path, kind, bytes, mode, mtime)``.

        Call with the lock held; the result shares only immutable objects with the model.
        """
        out: list[tuple[str, str, bytes, int, int]] = []
        stack: list[tuple[str, int, int]] = [("", 1, 0)]
        while stack:
            rel, ino, depth = stack.pop()
            if depth > 64:
                continue  # a loop made of durable entries of different ages: cut it
            if mode == "names":
                live = self.inodes[ino].entries or {}
                entries = {name: child.ino for name, child in live.items()}
            else:
                entries = self.dur_entries.get(ino, {})
            for name, child_ino in entries.items():
                child = self.inodes[child_ino]
                path = f"{rel}/{name}" if rel else name
                if child.kind == DIR:
                    out.append((path, DIR, b"", child.mode, child.mtime))
                    stack.append((path, child_ino, depth + 1))
                elif child.kind == LINK:
                    out.append((path, LINK, child.target, child.mode, child.mtime))
                else:
                    data, fmode, mtime = self.dur_files.get(child_ino, (b"", child.mode, child.ctime))
                    out.append((path, FILE, data, fmode, mtime))
        return out


def materialise(tree: list[tuple[str, str, bytes, int, int]], target: Path) -> tuple[int, int]:
    """Write a collected tree under ``target`` (a fresh directory); (files, bytes)."""
    target.mkdir(parents=True, exist_ok=False)
    files = size = 0
    dirs: list[tuple[Path, int, int]] = []
    for rel, kind, data, mode, mtime in sorted(tree):
        path = target / rel
        if kind == DIR:
            path.mkdir(exist_ok=True)
            dirs.append((path, mode, mtime))
        elif kind == LINK:
            os.symlink(data, path)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.utime(path, ns=(mtime, mtime))  # the Maildir internal date
            files += 1
            size += len(data)
    for path, mode, mtime in reversed(dirs):
        os.chmod(path, stat.S_IMODE(mode) | 0o700)
        os.utime(path, ns=(mtime, mtime))
    return files, size


# ---------------------------------------------------------------------- the FUSE side


def _operations(model: Model) -> Any:
    import mfusepy

    lock = model.lock

    def locked(fn: Any) -> Any:
        def call(*args: Any) -> Any:
            with lock:
                try:
                    return fn(*args)
                except OSError as exc:
                    raise mfusepy.FuseOSError(exc.errno or errno.EIO) from None
        call.__name__ = fn.__name__
        return call

    class Ops(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True
        flag_nopath = True
        flag_nullpath_ok = True

        @locked
        def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
            return model.getattr(path, fh)

        @locked
        def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int], int]]:
            return model.readdir(path, fh)

        @locked
        def opendir(self, path: str) -> int:
            return model.opendir(path)

        @locked
        def releasedir(self, path: str | None, fh: int) -> int:
            model.release(fh)
            return 0

        @locked
        def open(self, path: str, flags: int) -> int:
            return model.open(path, flags)

        @locked
        def create(self, path: str, mode: int, flags: int) -> int:
            return model.create(path, mode, flags)

        @locked
        def release(self, path: str | None, fh: int) -> int:
            model.release(fh)
            return 0

        def flush(self, path: str | None, fh: int) -> int:
            return 0

        @locked
        def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
            return model.read(path, size, offset, fh)

        @locked
        def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
            return model.write(path, data, offset, fh)

        @locked
        def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
            model.truncate(path, length, fh)
            return 0

        @locked
        def fsync(self, path: str | None, datasync: int, fh: int) -> int:
            model.fsync(path, fh)
            return 0

        @locked
        def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
            model.fsyncdir(path, fh)
            return 0

        @locked
        def mkdir(self, path: str, mode: int) -> int:
            model.mkdir(path, mode)
            return 0

        @locked
        def unlink(self, path: str) -> int:
            model.unlink(path)
            return 0

        @locked
        def rmdir(self, path: str) -> int:
            model.rmdir(path)
            return 0

        @locked
        def rename(self, old: str, new: str) -> int:
            model.rename(old, new)
            return 0

        @locked
        def link(self, target: str, source: str) -> int:
            model.link(target, source)
            return 0

        @locked
        def symlink(self, target: str, source: str) -> int:
            model.symlink(target, source)
            return 0

        @locked
        def readlink(self, path: str) -> str:
            return model.readlink(path)

        @locked
        def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
            model.chmod(path, mode, fh)
            return 0

        def chown(self, path: str | None, uid: int, gid: int) -> int:
            return 0

        @locked
        def utimens(self, path: str | None, times: tuple[int, int] | None = None,
                    fh: int | None = None) -> int:
            model.utimens(path, times, fh)
            return 0

        def access(self, path: str, amode: int) -> int:
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 24, "f_bfree": 1 << 23,
                    "f_bavail": 1 << 23, "f_files": 1 << 20, "f_ffree": 1 << 19,
                    "f_favail": 1 << 19, "f_namemax": 255}

    return Ops()


def _serve_control(model: Model, sock_path: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock_path)
    server.bind(sock_path)
    server.listen(8)

    def handle(conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for line in f:
                req = json.loads(line)
                try:
                    reply = _control(model, req)
                except Exception as exc:  # report, keep serving
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                f.write(json.dumps(reply).encode() + b"\n")
                f.flush()

    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _control(model: Model, req: dict[str, Any]) -> dict[str, Any]:
    op = req["op"]
    if op == "cut":
        t0 = time.perf_counter()
        with model.lock:
            tree = model.collect(req.get("mode", "strict"))
            held = time.perf_counter() - t0
        files, size = materialise(tree, Path(req["target"]))
        return {"files": files, "bytes": size, "held_ms": held * 1000}
    if op == "sync_all":
        with model.lock:
            model.sync_all()
        return {}
    if op == "stats":
        with model.lock:
            return dict(model.stats)
    if op == "ping":
        return {}
    raise ValueError(f"unknown op {op!r}")


_UTIME_NOW, _UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def _timespec_ns(t: Any) -> int | None:
    if t.tv_nsec == _UTIME_OMIT:
        return None
    if t.tv_nsec == _UTIME_NOW:
        return time.time_ns()
    return int(t.tv_sec) * 1_000_000_000 + int(t.tv_nsec)


def main(argv: list[str]) -> None:
    import mfusepy

    mountpoint, control = argv
    model = Model()
    threading.Thread(target=_serve_control, args=(model, control), daemon=True).start()
    # One thread for FUSE requests; hard_remove: unlinked open files need no hidden name;
    # use_ino: st_ino is ours (SQLite and the index compare inodes). The kernel caches
    # attributes and entries (every change goes through this mount, so they stay right).
    class FUSE(mfusepy.FUSE):  # type: ignore[misc]
        # mfusepy drops the file handle of ftruncate/fchmod/futimens under libfuse 3, and
        # with nullpath_ok the path is None then: pass the handle on.
        def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
            fh = fip.contents.fh if fip else None
            return self.operations.truncate(None if path is None else path.decode(), length, fh)

        def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
            fh = fip.contents.fh if fip else None
            return self.operations.chmod(None if path is None else path.decode(), mode, fh)

        def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
            fh = fip.contents.fh if fip else None
            times = None
            if buf:
                times = tuple(_timespec_ns(t) for t in (buf.contents.actime, buf.contents.modtime))
            return self.operations.utimens(None if path is None else path.decode(), times, fh)

    FUSE(_operations(model), mountpoint, foreground=True, nothreads=True,
                 hard_remove=True, use_ino=True, fsname="powercutfs", default_permissions=False)


# ---------------------------------------------------------------------- the test side


class PowerCutFS:
    """The file system as a child process, mounted at ``mountpoint``; cuts on request."""

    def __init__(self, mountpoint: Path, control: Path) -> None:
        self.mountpoint = mountpoint
        self.control = control
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._lock = threading.Lock()

    def start(self, timeout: float = 10.0) -> PowerCutFS:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        repo = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.powercutfs", str(self.mountpoint), str(self.control)],
            cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)), stderr=None if _DEBUG else subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while not (os.path.ismount(self.mountpoint) and self._answers_ping()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                dead = self.proc.poll() is not None and self.proc.stderr
                err = self.proc.stderr.read().decode() if dead else ""
                self.stop()
                raise RuntimeError(f"powercutfs did not mount: {err}")
            time.sleep(0.02)  # poll interval of this readiness wait
        return self

    def _answers_ping(self) -> bool:
        # The control socket's file appears at bind(), before listen(): a connect in
        # between is refused, so readiness is an answered ping, not the file existing.
        try:
            self.call("ping")
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        return True

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        with self._lock:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(str(self.control))
                except OSError:
                    sock.close()  # keep no half-open state: the next call connects afresh
                    raise
                self._sock, self._file = sock, sock.makefile("rwb")
            self._file.write(json.dumps({"op": op, **args}).encode() + b"\n")
            self._file.flush()
            reply: dict[str, Any] = json.loads(self._file.readline())
        if "error" in reply:
            raise RuntimeError(f"powercutfs {op}: {reply['error']}")
        return reply

    def cut(self, target: Path, mode: str = "strict") -> dict[str, Any]:
        """Materialise what a power cut now would leave into ``target`` (must not exist)."""
        return self.call("cut", target=str(target), mode=mode)

    def sync_all(self) -> None:
        self.call("sync_all")

    def stats(self) -> dict[str, int]:
        return self.call("stats")

    def stop(self) -> None:
        if self._sock is not None:
            self._file.close()
            self._sock.close()
            self._sock = None
        wait = 10.0
        if os.path.ismount(self.mountpoint):
            r = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
            if r.returncode:  # still in use by someone: detach it, do not wait for them
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
                wait = 1.0
        if self.proc is not None:
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None

    def __enter__(self) -> PowerCutFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
