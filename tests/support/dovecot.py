"""Dovecot 2.3 (Debian's ``dovecot-imapd``) on loopback with its own config: the IMAP anchor
that the benchmarks run the same client against, in the same sitting as pymaild.

Nothing of the system's Dovecot is used: the config, the runtime and state directories, the
log and the password file all live in a directory of the benchmark's. Dovecot serves IMAPS
with the benchmark's test CA certificate and checks passwords stored as ARGON2ID (its own
``doveadm pw`` hash), so a login costs it what a login costs pymaild.

    server = DovecotServer(workdir, cert, key)
    server.add_user("bench@example.test", "secret", maildir)   # a Maildir++ root, served as is
    server.add_user("login@example.test", "secret")            # no mail: an empty Maildir of its own
    server.start()
    ... IMAPS on 127.0.0.1:server.imaps_port ...
    server.memory_kib()   # (RSS, PSS) summed over the master and all its children
    server.stop()

Options for a login benchmark: ``auth_cache="10M"`` turns Dovecot's auth cache on (off by
default, as in Dovecot), ``auth_failure_delay="0"`` answers a wrong password at once (Dovecot
waits 2 s by default); ``max_connections`` sets the process, client and per-user limits.

The Maildir is served in place: give it a copy (``copy_maildir`` makes one of hard links, which
is instant and safe, since Maildir never rewrites a message file: Dovecot only renames its
links and writes its own index files beside them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.ports import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
# Dovecot never accesses mail as root: its mail processes run as Debian's "mail" user, which
# is given the benchmark's Maildir copies (chown) and the right to traverse to them.
MAIL_USER = "mail"


def available() -> bool:
    return Path(DOVECOT).exists() and Path(DOVEADM).exists()


def version() -> str:
    """Dovecot's version, "2.3.19.1", or "?"."""
    out = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.split()[0] if out.stdout else "?"


def copy_maildir(src: Path, dst: Path) -> None:
    """A hard-link copy of a Maildir tree (``cp -al``): same bytes, independent names."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(src), str(dst)], check=True)


def _grant_traverse(path: Path) -> None:
    """Let other users pass through (o+x) every directory above ``path`` (temp dirs are 0700)."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)


class DovecotServer:
    """One Dovecot master process (``dovecot -F``) and its children, all under ``workdir``."""

    def __init__(self, workdir: Path, cert: Path, key: Path, *, max_connections: int = 5000,
                 auth_cache: str | None = None, auth_failure_delay: str | None = None,
                 extra_config: str = "") -> None:
        self.dir = workdir
        self.cert, self.key = cert, key
        self.max_connections = max_connections
        self.auth_cache = auth_cache  # auth_cache_size, e.g. "10M"; None: Dovecot's default (off)
        self.auth_failure_delay = auth_failure_delay  # e.g. "0"; None: Dovecot's default (2 s)
        self.extra_config = extra_config  # appended to dovecot.conf (e.g. the quota plugin)
        self.imaps_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.users: dict[str, tuple[str, Path]] = {}
        self._hash_cache: dict[str, str] = {}
        self._log_read = 0
        self.log_lines: list[str] = []
        for sub in ("run", "state", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

    @property
    def conf(self) -> Path:
        return self.dir / "dovecot.conf"

    def add_user(self, address: str, password: str, maildir: Path | None = None) -> None:
        """``maildir`` None: a user without mail, given an empty directory under ``workdir``."""
        if maildir is None:
            maildir = self.dir / "mail" / address
            maildir.mkdir(parents=True, exist_ok=True)
        if password not in self._hash_cache:
            out = subprocess.run([DOVEADM, "-c", str(self._bootstrap_conf()), "pw", "-s", "ARGON2ID",
                                  "-p", password], check=True, capture_output=True, text=True)
            self._hash_cache[password] = out.stdout.strip()
        self.users[address] = (self._hash_cache[password], maildir)

    def _bootstrap_conf(self) -> Path:
        """doveadm wants a config it can parse even to hash a password."""
        path = self.dir / "doveadm.conf"
        if not path.exists():
            path.write_text(f"base_dir = {self.dir / 'run'}\nstate_dir = {self.dir / 'state'}\n"
                            f"log_path = {self.dir / 'log' / 'doveadm.log'}\n")
        return path

    def _auth_settings(self) -> str:
        lines = []
        if self.auth_cache is not None:
            lines += [f"auth_cache_size = {self.auth_cache}", "auth_cache_ttl = 1 hour"]
        if self.auth_failure_delay is not None:
            lines.append(f"auth_failure_delay = {self.auth_failure_delay}")
        return "".join(line + "\n" for line in lines)

    def write_config(self) -> None:
        d = self.dir
        maildirs = [maildir for _hashed, maildir in self.users.values()]
        if maildirs:
            subprocess.run(["chown", "-R", f"{MAIL_USER}:{MAIL_USER}", *map(str, maildirs)], check=True)
        for maildir in maildirs:
            _grant_traverse(maildir)
        with open(d / "passwd", "w") as f:
            for address, (hashed, maildir) in self.users.items():
                # user:password:uid:gid:gecos:home:shell:extra (mail_uid below gives the uid)
                f.write(f"{address}:{hashed}::::{maildir}::\n")
        self.conf.write_text(f"""\
# Written by tests/support/dovecot.py: a private Dovecot for benchmarks and tests, loopback only.
base_dir = {d / 'run'}
state_dir = {d / 'state'}
log_path = {d / 'log' / 'dovecot.log'}
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{self.cert}
ssl_key = <{self.key}
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain login
{self._auth_settings()}mail_location = maildir:~
mail_uid = {MAIL_USER}
mail_gid = {MAIL_USER}
first_valid_uid = 1
first_valid_gid = 1
default_internal_user = dovecot
default_login_user = dovenull
default_process_limit = {self.max_connections}
default_client_limit = {self.max_connections * 2}
default_vsz_limit = 0
mail_max_userip_connections = {self.max_connections}
namespace inbox {{
  inbox = yes
  separator = .
}}
passdb {{
  driver = passwd-file
  args = username_format=%u {d / 'passwd'}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d / 'passwd'}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
  }}
}}
service anvil {{
  chroot =
  client_limit = {self.max_connections * 3 + 10}
}}
# The password file lives in the benchmark's private (0700) directory: let auth read it.
service auth {{
  user = root
}}
service auth-worker {{
  user = root
}}
service stats {{
  chroot =
}}
{self.extra_config}""")

    def start(self, timeout: float = 20.0) -> None:
        self.write_config()
        log = open(self.dir / "log" / "stderr.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("dovecot exited at start:\n" + self.log_text())
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.imaps_port), 0.5):
                return
            time.sleep(0.05)
        raise RuntimeError("dovecot did not listen in time:\n" + self.log_text())

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        proc.terminate()
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        self._read_log()
        return 0 if code in (0, -15) else code

    def log_text(self) -> str:
        self._read_log()
        return "\n".join(self.log_lines[-40:])

    def _read_log(self) -> None:
        for name in ("dovecot.log", "stderr.log"):
            path = self.dir / "log" / name
            with contextlib.suppress(OSError):
                self.log_lines.extend(path.read_text(errors="replace").splitlines())
                path.write_text("")

    def pids(self) -> list[int]:
        """The master and every process below it."""
        if self.proc is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(entry.path, "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def memory_kib(self) -> tuple[int, int]:
        """(RSS, PSS) in KiB summed over the whole process tree: what Dovecot costs the machine."""
        rss = pss = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        return rss, pss
