"""Login benchmark: N concurrent IMAP logins (implicit TLS, 993-style) per second.

Starts a pymaild on loopback with N accounts whose passwords are hashed with the
production argon2id parameters, then measures, each with N clients at once (TLS
handshake, LOGIN, LOGOUT):

1. cold: every account logs in for the first time (one argon2 verification each);
2. warm: the same again (the cache of good logins answers, no hash);
3. wrong: N wrong passwords from N addresses (always a full check, never cached);
4. webmail: what Roundcube does on every click (issue #16 point 5), N clients at once,
   each making REQUESTS requests in a row, each request its own connection: TLS,
   LOGIN, SELECT INBOX, UID SORT (REVERSE DATE), LOGOUT. Requests per second and the
   median request time.

With ``--dovecot`` (Debian package dovecot-imapd) the same runs against a Dovecot on
loopback with its own config in a temporary directory (tests/support/dovecot.py, as
bench/imap_sync.py uses it): passwd-file with ARGON2ID hashes made with Dovecot's own
default parameters (``doveadm pw -s ARGON2ID``: m=64 MiB, t=3, p=1), auth cache on, and
the ratio is printed.

    python bench/login.py                 # N = 50
    python bench/login.py -n 20 --dovecot
    python bench/login.py --host 127.0.0.1 --port 993 --user a@example.org --password ...
                                          # against a running server, one account

Loopback only. It prints figures; nothing here is a test.

Measured December 2026 on the 2-core VM, shared with other jobs (load average ~8), N=20,
logins/s: pymaild cold 31, warm 345, wrong 32; Dovecot 2.3.19 cold 3.5, warm 3.9, wrong
3.1 (9x, 89x, 10x). N=50, pymaild alone: cold 20, warm 320, wrong 22.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mailserver.auth.store import AccountStore  # noqa: E402
from tests.support import dovecot as dovecot_anchor  # noqa: E402
from tests.support.ca import TestCA  # noqa: E402
from tests.support.daemon import PymaildProcess, free_port  # noqa: E402

PASSWORD = "bench-password-123"


async def one_login(host: str, port: int, ctx: ssl.SSLContext, user: str, password: str,
                    source: str | None = None) -> tuple[bool, float]:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ctx, server_hostname="mx.example.test",
        local_addr=(source, 0) if source else None)
    try:
        await reader.readline()  # greeting
        writer.write(f"a LOGIN {user} {password}\r\n".encode())
        ok = False
        while line := await reader.readline():
            if line.startswith(b"a "):
                ok = line.startswith(b"a OK")
                break
        elapsed = time.perf_counter() - started
        if ok:
            writer.write(b"b LOGOUT\r\n")
            await writer.drain()
        return ok, elapsed
    finally:
        writer.close()


async def one_request(host: str, port: int, ctx: ssl.SSLContext, user: str,
                      password: str) -> tuple[bool, float]:
    """A webmail click: a connection of its own, login, select, list order, logout."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="mx.example.test")
    ok = True
    try:
        await reader.readline()  # greeting
        for tag, command in ((b"a", f"LOGIN {user} {password}".encode()), (b"b", b"SELECT INBOX"),
                             (b"c", b"UID SORT (REVERSE DATE) UTF-8 ALL"), (b"d", b"LOGOUT")):
            writer.write(tag + b" " + command + b"\r\n")
            while line := await reader.readline():
                if line.startswith(tag + b" "):
                    ok = ok and line.startswith(tag + b" OK")
                    break
        return ok, time.perf_counter() - started
    finally:
        writer.close()


REQUESTS = 10  # in a row per webmail client


async def webmail(host: str, port: int, ctx: ssl.SSLContext, users: list[str],
                  password: str) -> tuple[int, float, list[float]]:
    async def client(user: str) -> list[tuple[bool, float]]:
        return [await one_request(host, port, ctx, user, password) for _ in range(REQUESTS)]

    started = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(client(u) for u in users)) for r in rs]
    wall = time.perf_counter() - started
    return sum(ok for ok, _ in results), wall, sorted(t for _, t in results)


async def burst(host: str, port: int, ctx: ssl.SSLContext, users: list[str], password: str,
                sources: list[str] | None = None) -> tuple[int, float, list[float]]:
    started = time.perf_counter()
    results = await asyncio.gather(*(
        one_login(host, port, ctx, u, password, sources[i] if sources else None)
        for i, u in enumerate(users)))
    wall = time.perf_counter() - started
    return sum(ok for ok, _ in results), wall, sorted(t for _, t in results)


def report(name: str, n: int, ok: int, wall: float, times: list[float], what: str = "logins") -> float:
    rate = n / wall
    p50 = times[len(times) // 2] * 1000
    print(f"  {name:<8} {n:4d} {what} ({ok:4d} OK) in {wall:6.2f} s: {rate:7.1f} {what}/s,"
          f" median {p50:7.1f} ms, slowest {times[-1] * 1000:7.1f} ms")
    return rate


async def measure(label: str, host: str, port: int, ctx: ssl.SSLContext, users: list[str],
                  password: str) -> dict[str, float]:
    print(label)
    n = len(users)
    rates = {}
    for phase in ("cold", "warm"):
        ok, wall, times = await burst(host, port, ctx, users, password)
        rates[phase] = report(phase, n, ok, wall, times)
    sources = [f"127.0.{100 + i // 250}.{i % 250 + 1}" for i in range(n)]
    ok, wall, times = await burst(host, port, ctx, users, "wrong-password", sources)
    rates["wrong"] = report("wrong", n, ok, wall, times)
    ok, wall, times = await webmail(host, port, ctx, users, password)
    rates["webmail"] = report("webmail", n * REQUESTS, ok, wall, times, "requests")
    return rates


# ---------------------------------------------------------------------------- pymaild


def start_pymaild(directory: Path, ca: TestCA, users: list[str]) -> tuple[PymaildProcess, int]:
    cert, key = ca.issue("mx.example.test")
    port = free_port()
    d = PymaildProcess(directory, {
        "hostname": "mx.example.test", "primary_domain": "example.test",
        "local_domains": ["example.test"], "state_dir": str(directory / "state"),
        "tls": {"cert": str(cert), "key": str(key)},
        "listen": {"smtp": [f"127.0.0.1:{free_port()}"], "imaps": [f"127.0.0.1:{port}"]},
        "checks": {"spf": False, "dkim": False, "dmarc": False},
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": "3s"},
        "imap": {"max_connections_per_ip": 10_000},
        "submission": {"auth_failure_delay": "0s", "max_auth_failures_per_ip": 10_000},
    })
    store = AccountStore.in_state_dir(directory / "state")  # production argon2id parameters
    for user in users:
        store.create_account(user, PASSWORD)
    store.close()
    d.start()
    return d, port


# ---------------------------------------------------------------------------- dovecot


def start_dovecot(directory: Path, ca: TestCA, users: list[str]) -> dovecot_anchor.DovecotServer:
    """dovecot_anchor's private Dovecot, auth cache on, no failure delay, users without mail.

    The hash is ``doveadm pw -s ARGON2ID``'s, Dovecot's own default: m=64 MiB, t=3, p=1 (one
    hash for all users, salt shared: fine for timing).
    """
    cert, key = ca.issue("mx.example.test", stem="dovecot")
    # Process and client limits sized to the burst, as bench/imap_sync.py does (10,000 would
    # pass the machine's ulimit -n and Dovecot warns of it).
    server = dovecot_anchor.DovecotServer(directory, cert, key, max_connections=max(1000, len(users) + 100),
                                          auth_cache="10M", auth_failure_delay="0")
    for user in users:
        server.add_user(user, PASSWORD)
    server.start()
    return server


# ---------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> None:
    if args.port:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        await measure(f"server {args.host}:{args.port}, {args.n} logins of {args.user}",
                      args.host, args.port, ctx, [args.user] * args.n, args.password)
        return
    users = [f"user{i}@example.test" for i in range(args.n)]
    with tempfile.TemporaryDirectory(prefix="bench-login-") as tmp:
        root = Path(tmp)
        ca = TestCA(root / "ca")
        ctx = ca.client_context()
        d, port = start_pymaild(root / "pymaild", ca, users)
        try:
            ours = await measure(f"pymaild (argon2id m=19 MiB t=2 p=1), {args.n} clients at once:",
                                 "127.0.0.1", port, ctx, users, PASSWORD)
        finally:
            d.stop()
        if not args.dovecot:
            return
        if not dovecot_anchor.available():
            print("dovecot not installed (apt-get install -y dovecot-imapd): skipped")
            return
        dovecot = start_dovecot(root / "dovecot", ca, users)
        try:
            theirs = await measure(f"Dovecot {dovecot_anchor.version()} (argon2id m=64 MiB t=3 p=1,"
                                   f" auth cache on), {args.n} clients at once:",
                                   "127.0.0.1", dovecot.imaps_port, ctx, users, PASSWORD)
        finally:
            dovecot.stop()
        print("pymaild / Dovecot logins per second: " + ", ".join(
            f"{k} {ours[k] / theirs[k]:.2f}x" for k in ours))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=50, help="concurrent logins per phase (default 50)")
    parser.add_argument("--dovecot", action="store_true", help="also measure a Dovecot on loopback")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="a running server's IMAPS port")
    parser.add_argument("--user", default="")
    parser.add_argument("--password", default="")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
