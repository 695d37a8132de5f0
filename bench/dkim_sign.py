"""DKIM signing/verification benchmark: signatures/s and verifications/s, 2 KB and 100 KB.

    python bench/dkim_sign.py                  # ~1 s per figure
    python bench/dkim_sign.py --seconds 3 --sizes 2048

Rows:
  rsa-2048 dkimpy pure   dkim.sign() with dkimpy's own pure-Python RSA (pow)
  rsa-2048 dkimpy+ossl   dkim.sign() with dkim_crypto's OpenSSL RSA swapped in
  rsa-2048 ours          DKIMSigner, rsa key only
  ed25519 ours           DKIMSigner, ed25519 key only
  rsa+ed25519 ours       DKIMSigner as deployed: both signatures per message (msgs/s)
  verify rsa / ed25519   dkimpy DKIM.verify(idx) per signature (OpenSSL RSA), keys in memory
  verify_dkim both       our async verifier, both signatures, keys from a loopback DNS server
  async inline/thread c=N  N concurrent tasks calling sign_async() (each yielding between
                         messages, as a connection does) with the inline threshold forced
                         either way: msgs/s and the longest event-loop stall a 1 ms ticker saw

In-process, single core per figure except the thread rows. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dkim  # noqa: E402
import dkim.crypto  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: E402

from mailserver import dkim_crypto  # noqa: E402
from mailserver.dkim_keys import DKIMKey, algorithm_for, dkimpy_privkey_for, dns_txt_for  # noqa: E402
from mailserver.dns.resolver import Resolver  # noqa: E402
from mailserver.pipeline import dkim_sign  # noqa: E402
from mailserver.pipeline.dkim_sign import DKIMSigner, headers_to_sign  # noqa: E402
from mailserver.pipeline.dkim_verify import verify_dkim  # noqa: E402
from tests.support.dnsserver import DNSServer  # noqa: E402

DOMAIN = "bench.example"


def make_key(selector: str, private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> DKIMKey:
    return DKIMKey(DOMAIN, selector, algorithm_for(private), Path(f"/nonexistent/{selector}.key"),
                   dns_txt_for(private), private, dkimpy_privkey_for(private))


def make_message(size: int) -> bytes:
    head = (f"From: Bench <bench@{DOMAIN}>\r\nTo: alice@example.test\r\nSubject: benchmark\r\n"
            f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <b@{DOMAIN}>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()  # warm caches (key objects, imports)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


async def async_rate(
    signer: DKIMSigner, msg: bytes, seconds: float, inline: bool, concurrency: int
) -> tuple[float, float]:
    """msgs/s for ``concurrency`` signing tasks, and the longest gap a 1 ms ticker saw."""
    dkim_sign.INLINE_MAX = 1 << 62 if inline else -1
    stall, stop = 0.0, False

    async def ticker() -> None:
        nonlocal stall
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stall = max(stall, now - last - 0.001)
            last = now

    done = 0

    async def worker(deadline: float) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await signer.sign_async(msg, DOMAIN)
            done += 1
            await asyncio.sleep(0)  # a real connection awaits its next read here

    tick = asyncio.create_task(ticker())
    start = time.perf_counter()
    await asyncio.gather(*(worker(start + seconds) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    stop = True
    await tick
    return done / elapsed, stall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per figure")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 100 * 1024])
    args = parser.parse_args()

    rsa_key = make_key("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ed_key = make_key("ed", ed25519.Ed25519PrivateKey.generate())
    both = DKIMSigner([rsa_key, ed_key])
    rsa_only = DKIMSigner([rsa_key])
    ed_only = DKIMSigner([ed_key])
    records = {f"{k.dns_name}.".encode(): k.dns_txt.encode() for k in (rsa_key, ed_key)}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    server = DNSServer().start()
    for key in (rsa_key, ed_key):
        server.add(key.dns_name + ".", "TXT", key.dns_txt)
    resolver = Resolver([server.nameserver])
    pure, ossl = dkim.crypto.RSASSA_PKCS1_v1_5_sign, dkim_crypto.rsassa_pkcs1_v1_5_sign

    print(f"{'':28}" + "".join(f"{size // 1024:>8} KB" for size in args.sizes))
    rows: dict[str, list[str]] = {}

    def add(name: str, value: str) -> None:
        rows.setdefault(name, []).append(value)

    for size in args.sizes:
        msg = make_message(size)
        include = headers_to_sign(dkim.DKIM(msg).headers)

        def dkimpy_rsa(msg: bytes = msg, include: list[bytes] = include) -> bytes:
            return dkim.sign(msg, b"rsa", DOMAIN.encode(), rsa_key.dkimpy_privkey,
                             canonicalize=(b"relaxed", b"relaxed"), include_headers=include)

        dkim.RSASSA_PKCS1_v1_5_sign = pure  # type: ignore[attr-defined]
        add("rsa-2048 dkimpy pure  sig/s", f"{rate(dkimpy_rsa, args.seconds):11,.0f}")
        dkim.RSASSA_PKCS1_v1_5_sign = ossl  # type: ignore[attr-defined]
        add("rsa-2048 dkimpy+ossl  sig/s", f"{rate(dkimpy_rsa, args.seconds):11,.0f}")
        for name, signer in (("rsa-2048 ours         sig/s", rsa_only),
                             ("ed25519 ours          sig/s", ed_only),
                             ("rsa+ed25519 ours     msgs/s", both)):
            add(name, f"{rate(lambda m=msg, s=signer: s.sign(m, DOMAIN), args.seconds):11,.0f}")

        signed = both.sign(msg, DOMAIN) + msg
        add("verify rsa        verify/s", f"{rate(lambda s=signed: dkim.DKIM(s).verify(idx=0, dnsfunc=dnsfunc), args.seconds):11,.0f}")  # noqa: E501
        add("verify ed25519    verify/s", f"{rate(lambda s=signed: dkim.DKIM(s).verify(idx=1, dnsfunc=dnsfunc), args.seconds):11,.0f}")  # noqa: E501
        assert all(r.result == "pass" for r in asyncio.run(verify_dkim(resolver, signed)))

        async def verify_loop(signed: bytes = signed) -> float:
            await verify_dkim(resolver, signed)  # fills the resolver cache
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                await verify_dkim(resolver, signed)
                n += 1
            return n / (time.perf_counter() - start)

        add("verify_dkim both    msgs/s", f"{asyncio.run(verify_loop()):11,.0f}")
        for concurrency in (1, 32):
            for label, inline in (("inline", True), ("thread", False)):
                per_s, stall = asyncio.run(async_rate(both, msg, args.seconds, inline, concurrency))
                add(f"async {label} c={concurrency:<2}   msgs/s", f"{per_s:11,.0f}")
                add(f"async {label} c={concurrency:<2} stall ms", f"{stall * 1000:11.2f}")

    for name, values in rows.items():
        print(f"{name:28}" + "".join(values))
    server.stop()


if __name__ == "__main__":
    main()
