"""Byte-level entry points for the coverage-guided fuzzer (atheris), one per target.

Each ``TARGETS[name](data)`` decodes raw bytes into the structured input of a checker in
``checks.py`` (a leading byte or two pick limits and the split of the stream), so the
invariants are the same as in the property tests. ``seeds(name)`` gives a starting corpus
drawn from the grammars in ``grammar.py``: the fuzzer mutates valid sessions, not noise.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

from mailserver.imap.framing import Limits
from mailserver.smtp.protocol import ServerParams
from tests.fuzz import checks

_SMTP_PARAMS = [
    ServerParams("mx.example"),
    ServerParams(
        "mx.example",
        max_message_size=64,
        max_recipients=2,
        max_line_length=24,
        max_errors=5,
        tls_available=True,
        auth_mechanisms=("PLAIN", "LOGIN"),
    ),
    ServerParams(
        "mx.example",
        max_line_length=80,
        tls_active=True,
        auth_mechanisms=("PLAIN", "LOGIN"),
        reject_bare_newlines=False,
        max_errors=3,
    ),
    ServerParams(
        "mx.example",
        max_message_size=1000,
        max_recipients=1,
        auth_mechanisms=("PLAIN",),
        auth_requires_tls=False,
        tls_available=True,
    ),
]
_IMAP_LIMITS = [
    Limits(),
    Limits(max_line_length=64, max_literal=200, max_small_literal=40, max_command_size=400, max_discard=300),
    Limits(max_line_length=32, max_literal=20, max_small_literal=10, max_command_size=100, max_discard=50),
]


def _smtp(data: bytes) -> None:
    if len(data) < 2:
        return
    params = _SMTP_PARAMS[data[0] % len(_SMTP_PARAMS)]
    checks.check_smtp(params, data[2:], [1 + data[1] % 64], bytewise=len(data) <= 512)


def _imap_framer(data: bytes) -> None:
    if len(data) < 2:
        return
    checks.check_imap_framer(
        _IMAP_LIMITS[data[0] % len(_IMAP_LIMITS)], data[2:], [1 + data[1] % 64], bytewise=len(data) <= 512
    )


def _imap_parser(data: bytes) -> None:
    checks.check_imap_parser(data if data.endswith(b"\r\n") else data + b"\r\n")


def _mime(data: bytes) -> None:
    checks.check_mime(data, [(1,), (2,), (1, 1), (1, 2, 1)], ["From", "Subject"])


def _address(data: bytes) -> None:
    if not data:
        return
    text = data[1:].decode("utf-8", "replace")
    checks.check_address(text, utf8=bool(data[0] & 1), allow_empty=bool(data[0] & 2))


@functools.cache
def _rsa_key() -> bytes:
    from tests.fuzz import keys

    return keys.public_keys()["rsa"]


def _dkim(data: bytes) -> None:
    sig, _, key = data.partition(b"\0")
    checks.check_dkim_tags(sig, key)
    # The whole verification, with the fuzzed bytes as a signature and as header lines.
    record = {"sel._domainkey.example.org": b"v=DKIM1; k=rsa; p=" + _rsa_key()}
    checks.check_dkim_message(b"DKIM-Signature: " + sig + b"\r\n" + key + b"\r\n\r\nbody\r\n", record)
    if data:
        limit = None if data[0] & 2 else data[0] >> 2
        checks.check_dkim_body_hash(data[1:], "relaxed" if data[0] & 1 else "simple", limit)


def _dmarc(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    checks.check_dmarc_record(text)
    checks.check_from_header(data)


def _spf(data: bytes) -> None:
    record, _, included = data.partition(b"\0")
    extra = {
        ("inc.example.org", "TXT"): [included],
        ("mx.example.org", "A"): ["192.0.2.1"],
        ("example.org", "MX"): ["10 mx.example.org."],
    }
    checks.check_spf(record, extra, "192.0.2.1", "a@example.org", "mx.example.org")


def _utf7(data: bytes) -> None:
    checks.check_utf7_decode(data)
    checks.check_utf7_roundtrip(data.decode("utf-8", "replace"))


def _seqset_dates(data: bytes) -> None:
    largest = data[0] * 7 if data else 0
    checks.check_seqset(data[1:], largest)
    checks.check_dates(data.decode("latin-1"))
    checks.check_txt_rendering(data.decode("utf-8", "replace"))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "smtp": _smtp,
    "imap-framer": _imap_framer,
    "imap-parser": _imap_parser,
    "mime": _mime,
    "address": _address,
    "dkim": _dkim,
    "dmarc": _dmarc,
    "spf": _spf,
    "utf7": _utf7,
    "seqset-dates": _seqset_dates,
}


def seeds(name: str, n: int = 40) -> list[bytes]:
    """A starting corpus in the target's byte format, drawn from the grammars."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.fuzz import grammar, keys

    strategies: dict[str, st.SearchStrategy[bytes]] = {
        "smtp": st.tuples(st.integers(0, 255), st.integers(0, 255), grammar.smtp_session()).map(
            lambda t: bytes([t[0], t[1]]) + t[2]
        ),
        "imap-framer": st.tuples(st.integers(0, 255), st.integers(0, 255), grammar.imap_stream()).map(
            lambda t: bytes([t[0], t[1]]) + t[2]
        ),
        "imap-parser": grammar.imap_command(),
        "mime": grammar.mime_message(),
        "address": st.tuples(st.integers(0, 3), grammar.paths()).map(lambda t: bytes([t[0]]) + t[1].encode()),
        "dkim": st.tuples(grammar.dkim_signature(), grammar.dkim_key_record(keys.public_keys())).map(
            lambda t: t[0] + b"\0" + t[1]
        ),
        "dmarc": st.one_of(grammar.dmarc_record().map(str.encode), grammar.from_value()),
        "spf": st.tuples(grammar.spf_record(), grammar.spf_record()).map(lambda t: t[0] + b"\0" + t[1]),
        "utf7": st.one_of(
            st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")),
            st.text(max_size=10).map(lambda s: s.encode("utf-7")),
        ),
        "seqset-dates": st.one_of(
            grammar.seqsets.map(lambda s: b"\x05" + s.encode()),
            st.just(b"17-Jul-1996 02:44:25 -0700"),
            st.just(b"1-Feb-1994"),
        ),
    }
    out: list[bytes] = []

    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategies[name])
    def collect(value: bytes) -> None:
        out.append(value)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collect()
    return out
