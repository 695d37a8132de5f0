"""MTA-STS (RFC 8461): discover, fetch, validate and cache a recipient domain's policy.

``MTASTS.policy_for(domain)`` answers "which MX hosts may receive mail for this domain and
must TLS be verified?". Enforcement lives elsewhere: ``delivery.routes`` keeps only the
MX hosts the policy names and asks for verified TLS, ``delivery.remote`` verifies it.

Choices:

- The policy host ``mta-sts.<domain>`` is resolved through *our* resolver and we connect
  to that address ourselves, with SNI and certificate verification for the name. So the
  same code runs against the Internet and against the loopback test DNS + HTTPS server.
- The HTTP/1.1 GET is written here over asyncio streams (about 80 lines): one request, no
  redirects, no cookies, no proxies. A general HTTP client would bring redirect following
  and connection pooling we must switch off, for no gain.
- Policies are cached on disk (one JSON file per domain, written atomically) so they
  survive restarts, as RFC 8461 §5.1 expects: an attacker who blocks the TXT lookup or
  the HTTPS fetch must not be able to downgrade a domain whose policy we already know.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, cast

from mailserver.dns.resolver import DNSTempError, Resolver
from mailserver.fsutil import write_file_atomic

log = logging.getLogger(__name__)

PolicyMode = Literal["enforce", "testing", "none"]
MAX_MAX_AGE = 31557600  # RFC 8461 §3.2: one year
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
_MAX_HEADER_BYTES = 16384
_WELL_KNOWN = "/.well-known/mta-sts.txt"


class PolicyError(Exception):
    """The policy could not be fetched or is invalid (the reason is the message)."""


@dataclass(frozen=True, slots=True)
class Policy:
    mode: PolicyMode
    mx_patterns: list[str] = field(default_factory=list)
    max_age: int = 0
    id: str = ""

    def matches(self, mx_host: str) -> bool:
        """True if ``mx_host`` is allowed by one of the policy's ``mx`` patterns.

        RFC 8461 §4.1: case-insensitive; ``*.example.com`` matches exactly one extra
        leftmost label (``mx1.example.com``, not ``example.com`` nor ``a.b.example.com``).
        """
        host = mx_host.rstrip(".").lower()
        if not host:
            return False
        for pattern in self.mx_patterns:
            pat = pattern.rstrip(".").lower()
            if pat.startswith("*."):
                first, _, rest = host.partition(".")
                if first and rest == pat[2:]:
                    return True
            elif host == pat:
                return True
        return False


@dataclass(slots=True)
class _Cached:
    policy: Policy
    fetched_at: float  # time.time() of the successful fetch

    def fresh(self, now: float) -> bool:
        return now < self.fetched_at + self.policy.max_age


def parse_txt(records: list[str]) -> str | None:
    """The policy id from the ``_mta-sts`` TXT records, or None (no usable record).

    RFC 8461 §3.1: records not starting with ``v=STSv1;`` are ignored; more than one
    STSv1 record, or an invalid one, means "no policy".
    """
    candidates = [r for r in records if re.match(r"v=STSv1\s*(;|$)", r)]
    if len(candidates) != 1:
        return None
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        part = part.strip(" \t")
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq:
            return None
        fields.setdefault(key.strip(), value.strip())
    policy_id = fields.get("id", "")
    return policy_id if _ID.fullmatch(policy_id) else None


def parse_policy(text: str, policy_id: str = "") -> Policy:
    """Parse a policy file strictly (RFC 8461 §3.2); raises PolicyError."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for raw in re.split(r"\r?\n", text):
        line = raw.strip(" \t")
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"malformed policy line {line[:60]!r}")
        key, value = key.strip(), value.strip(" \t")
        if key == "mx":
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\.?", value):
                raise PolicyError(f"invalid mx pattern {value[:60]!r}")
            mx.append(value.lower())
        else:
            # Duplicates: the first one counts; unknown keys are ignored (§3.2).
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError("version is not STSv1")
    mode = fields.get("mode")
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"invalid mode {mode!r}")
    age = fields.get("max_age", "")
    if not _MAX_AGE.fullmatch(age):
        raise PolicyError(f"invalid max_age {age[:20]!r}")
    if int(age) > MAX_MAX_AGE:
        raise PolicyError(f"max_age {age} exceeds {MAX_MAX_AGE}")
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} without mx lines")
    # cast: mode was checked against PolicyMode's values above.
    return Policy(mode=cast(PolicyMode, mode), mx_patterns=mx, max_age=int(age), id=policy_id)


class MTASTS:
    """Policy discovery with an on-disk cache; one instance per daemon."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        cache_dir: Path,
        ca_file: str | None,
        https_port: int = 443,
        fetch_timeout: float = 30,
        max_policy_bytes: int = 65536,
    ) -> None:
        self.resolver = resolver
        self.cache_dir = Path(cache_dir)
        self.ca_file = ca_file
        self.https_port = https_port
        self.fetch_timeout = fetch_timeout
        self.max_policy_bytes = max_policy_bytes
        self._memory: dict[str, _Cached | None] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ssl: ssl.SSLContext | None = None
        self._refreshing: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- public

    async def policy_for(self, domain: str) -> Policy | None:
        """The policy to apply to mail for ``domain`` now; None: no policy (opportunistic)."""
        domain = domain.rstrip(".").lower()
        # One discovery per domain at a time: twenty queued messages for one domain
        # must not fetch the same policy twenty times.
        lock = self._locks.setdefault(domain, asyncio.Lock())
        try:
            async with lock:
                return await self._policy_for(domain)
        finally:
            if not lock.locked():
                self._locks.pop(domain, None)  # at worst a racing caller fetches once more

    # ----------------------------------------------------------------- discovery

    async def _policy_for(self, domain: str) -> Policy | None:
        cached = await self._load(domain)
        now = time.time()
        usable = cached.policy if cached is not None and cached.fresh(now) else None
        try:
            records = await self.resolver.txt(f"_mta-sts.{domain}")
        except DNSTempError as exc:
            log.info("MTA-STS %s: TXT lookup failed (%s); %s", domain, exc, _using(usable))
            return usable
        policy_id = parse_txt(records)
        if policy_id is None:
            # §5.1: a vanished TXT record does not remove a cached policy (that would
            # let an attacker who can spoof DNS downgrade us); only expiry does.
            return usable
        if usable is not None and usable.id == policy_id:
            assert cached is not None
            if now - cached.fetched_at > usable.max_age / 2:
                self._refresh_in_background(domain, policy_id)
            return usable
        try:
            policy = await self.fetch(domain, policy_id)
        except PolicyError as exc:
            log.warning("MTA-STS %s: policy fetch failed: %s; %s", domain, exc, _using(usable))
            return usable
        await self._store(domain, _Cached(policy, time.time()))
        log.info("MTA-STS %s: policy id %s mode %s fetched", domain, policy.id, policy.mode)
        return policy

    def _refresh_in_background(self, domain: str, policy_id: str) -> None:
        """RFC 8461 §10.2: refresh cached policies before they expire, off the delivery path.

        Called when a policy in use is past half its max_age: a destination we keep
        sending to never loses its policy (and with it the downgrade protection) to
        expiry, and delivery never waits for the fetch.
        """
        if domain in self._refreshing:
            return
        self._refreshing.add(domain)

        async def refresh() -> None:
            try:
                policy = await self.fetch(domain, policy_id)
                await self._store(domain, _Cached(policy, time.time()))
                log.info("MTA-STS %s: policy id %s refreshed ahead of expiry", domain, policy.id)
            except PolicyError as exc:
                log.warning("MTA-STS %s: background refresh failed: %s", domain, exc)
            finally:
                self._refreshing.discard(domain)

        task = asyncio.get_running_loop().create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def fetch(self, domain: str, policy_id: str = "") -> Policy:
        """Fetch and parse ``https://mta-sts.<domain>/.well-known/mta-sts.txt``."""
        host = f"mta-sts.{domain}"
        try:
            async with asyncio.timeout(self.fetch_timeout):
                addresses = await self._addresses(host)
                last: Exception | None = None
                for address in addresses:
                    try:
                        body = await self._get(address, host)
                        break
                    except (OSError, ssl.SSLError) as exc:
                        last = exc  # unreachable address: try the next one
                else:
                    raise PolicyError(f"cannot connect to {host}: {last}")
        except TimeoutError:
            raise PolicyError(f"timed out after {self.fetch_timeout:g}s") from None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError("policy is not UTF-8") from None
        return parse_policy(text, policy_id)

    async def _addresses(self, host: str) -> list[str]:
        try:
            v6, v4 = await asyncio.gather(self.resolver.aaaa(host), self.resolver.a(host))
        except DNSTempError as exc:
            raise PolicyError(f"{host}: {exc}") from exc
        if not v6 and not v4:
            raise PolicyError(f"{host} has no address")
        return v6 + v4

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._ssl = ctx
        return self._ssl

    # ----------------------------------------------------------------- HTTP/1.1 GET

    async def _get(self, address: str, host: str) -> bytes:
        reader, writer = await asyncio.open_connection(
            address, self.https_port, ssl=self._context(), server_hostname=host, limit=_MAX_HEADER_BYTES
        )
        try:
            authority = host if self.https_port == 443 else f"{host}:{self.https_port}"
            writer.write(
                f"GET {_WELL_KNOWN} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: pymaild\r\n"
                "Accept: text/plain\r\nConnection: close\r\n\r\n".encode("ascii")
            )
            await writer.drain()
            status, headers = await _read_head(reader)
            if 300 <= status < 400:
                # §3.3: "HTTP 3xx redirects MUST NOT be followed".
                raise PolicyError(f"HTTP {status} redirect (not followed)")
            if status != 200:
                raise PolicyError(f"HTTP status {status}")
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "text/plain":
                raise PolicyError(f"Content-Type {ctype or 'missing'!r} is not text/plain")
            return await _read_body(reader, headers, self.max_policy_bytes)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise PolicyError(f"malformed HTTP response: {exc}") from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # ----------------------------------------------------------------- cache

    def _path(self, domain: str) -> Path:
        # Domains are lowercase LDH here; anything else cannot be a file name component.
        safe = re.sub(r"[^a-z0-9.-]", "_", domain)
        return self.cache_dir / f"{safe}.json"

    async def _load(self, domain: str) -> _Cached | None:
        if domain not in self._memory:
            self._memory[domain] = await asyncio.to_thread(self._read_file, domain)
        return self._memory[domain]

    def _read_file(self, domain: str) -> _Cached | None:
        path = self._path(domain)
        try:
            data = json.loads(path.read_text("utf-8"))
            policy = Policy(
                mode=data["mode"], mx_patterns=list(data["mx_patterns"]),
                max_age=int(data["max_age"]), id=str(data["id"]),
            )
            if policy.mode not in ("enforce", "testing", "none") or data.get("domain") != domain:
                raise ValueError("bad cache entry")
            return _Cached(policy, float(data["fetched_at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("MTA-STS cache %s unreadable, ignored: %s", path, exc)
            return None

    async def _store(self, domain: str, entry: _Cached) -> None:
        self._memory[domain] = entry
        record = {"domain": domain, "fetched_at": entry.fetched_at, **asdict(entry.policy)}
        try:
            await asyncio.to_thread(_write_json, self._path(domain), json.dumps(record, indent=1))
        except OSError as exc:
            # The in-memory copy still protects this process; say why restarts won't.
            log.error("MTA-STS cache %s not written: %s", self._path(domain), exc)


def _using(policy: Policy | None) -> str:
    return f"using cached policy id {policy.id}" if policy else "no cached policy"


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await reader.readuntil(b"\n")
    m = re.fullmatch(rb"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n]*)?\r?\n", line)
    if not m:
        raise PolicyError(f"bad HTTP status line {line[:60]!r}")
    headers: dict[str, str] = {}
    total = len(line)
    while True:
        line = await reader.readuntil(b"\n")
        total += len(line)
        if total > _MAX_HEADER_BYTES:
            raise PolicyError("HTTP headers too large")
        if line in (b"\r\n", b"\n"):
            return int(m.group(1)), headers
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise PolicyError(f"bad HTTP header line {line[:60]!r}")
        key = name.lower()
        if key in headers and key in ("content-length", "transfer-encoding", "content-type"):
            raise PolicyError(f"duplicate {name} header")
        headers[key] = value.strip()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], cap: int) -> bytes:
    encoding = headers.get("transfer-encoding", "").lower()
    if encoding:
        if encoding != "chunked":
            raise PolicyError(f"unsupported Transfer-Encoding {encoding!r}")
        return await _read_chunked(reader, cap)
    if "content-length" in headers:
        text = headers["content-length"]
        if not text.isdigit():
            raise PolicyError(f"bad Content-Length {text[:20]!r}")
        length = int(text)
        if length > cap:
            raise PolicyError(f"policy of {length} bytes exceeds the {cap}-byte limit")
        return await reader.readexactly(length)
    body = await reader.read(cap + 1)
    while len(body) <= cap:
        more = await reader.read(cap + 1 - len(body))
        if not more:
            return body
        body += more
    raise PolicyError(f"policy exceeds the {cap}-byte limit")


async def _read_chunked(reader: asyncio.StreamReader, cap: int) -> bytes:
    body = bytearray()
    while True:
        size_line = (await reader.readuntil(b"\n")).split(b";")[0].strip()
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,8}", size_line):
            raise PolicyError(f"bad chunk size {size_line[:20]!r}")
        size = int(size_line, 16)
        if size == 0:
            return bytes(body)  # trailers, if any, are left unread: we close anyway
        if len(body) + size > cap:
            raise PolicyError(f"policy exceeds the {cap}-byte limit")
        body += await reader.readexactly(size)
        if await reader.readuntil(b"\n") not in (b"\r\n", b"\n"):
            raise PolicyError("chunk not followed by CRLF")


def _write_json(path: Path, text: str) -> None:
    write_file_atomic(path, text.encode("utf-8"), mode=0o600)
