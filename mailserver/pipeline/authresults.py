"""The Authentication-Results header (RFC 8601).

We add exactly one Authentication-Results field per received message and remove any
that claim to come from us (``authserv-id`` equal to our hostname), since MUAs and
filters downstream trust that header by its authserv-id (RFC 8601 §5).

Everything that reaches the header from outside (MAIL FROM, HELO, DKIM d=/s=/b=,
reason texts) goes through ``pvalue``/``_clean``: control characters (CR and LF
above all) are dropped, quotes and backslashes escaped, lengths capped. No input can
start a new header field or break the one we write.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailserver.message import field_spans, field_value, header_end

if TYPE_CHECKING:  # type-only: the result types, for the *_resinfo helpers
    from mailserver.pipeline.dkim_verify import DKIMResult
    from mailserver.pipeline.dmarc import DMARCResult
    from mailserver.pipeline.spf import SPFResult

FIELD_NAME = "Authentication-Results"
_FOLD_AT = 78  # RFC 5322 §2.1.1 SHOULD
_MAX_VALUE = 256  # longer attacker-supplied values are cut: a header is not a dump

# RFC 2045 token: printable ASCII except SPACE and tspecials ()<>@,;:\"/[]?=
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# RFC 8601 pvalue also allows [local-part] "@" domain with a dot-atom local part.
_ATEXT = r"[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]"
_MAILBOX = re.compile(rf"(?:{_ATEXT}+(?:\.{_ATEXT}+)*)?@[0-9A-Za-z\-]+(?:\.[0-9A-Za-z\-]+)*\.?")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class ResInfo:
    """One "method=result" clause with its optional reason and properties."""

    method: str
    result: str
    reason: str = ""
    props: tuple[tuple[str, str], ...] = ()
    comment: str = ""  # our own vocabulary only, e.g. "p=reject dis=reject"


# ----------------------------------------------------------------- quoting


def _clean(text: str) -> str:
    """Drop control characters (CR/LF included) and cap the length."""
    return _CONTROLS.sub(" ", text).strip()[:_MAX_VALUE]


def pvalue(text: str) -> str:
    """A property or reason value: bare if it is a token or mailbox, else quoted."""
    clean = _clean(text)
    if _TOKEN.fullmatch(clean) or _MAILBOX.fullmatch(clean):
        return clean
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    # Parentheses and backslashes would end or escape the comment: replace them.
    return "(" + re.sub(r"[()\\]", " ", _clean(text)) + ")"


# ----------------------------------------------------------------- building


def _render(info: ResInfo) -> list[str]:
    """The clause as unbreakable pieces; folding happens only between pieces."""
    parts = [f"{info.method}={info.result}"]
    if info.comment:
        parts.append(_comment(info.comment))
    if info.reason:
        parts.append(f"reason={pvalue(info.reason)}")
    parts.extend(f"{name}={pvalue(value)}" for name, value in info.props)
    return parts


def format_header(authserv_id: str, results: Sequence[ResInfo]) -> bytes:
    """``Authentication-Results: id;\\r\\n\\tclause;\\r\\n\\tclause\\r\\n``, folded.

    No results means no authentication was done: RFC 8601 §2.2 "none".
    """
    head = f"{FIELD_NAME}: {pvalue(authserv_id)};"
    if not results:
        return f"{head} none\r\n".encode()
    lines = [head]
    for n, info in enumerate(results):
        line = "\t"
        for part in _render(info):
            if line.strip() and len(line.expandtabs(8)) + 1 + len(part) > _FOLD_AT:
                lines.append(line)
                line = "\t  "  # deeper indent: a continuation of the same clause
            line += part if not line.strip() else " " + part
        lines.append(line + (";" if n < len(results) - 1 else ""))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def spf_resinfo(spf: SPFResult) -> ResInfo:
    prop, value = spf.ar_property
    reason = "" if spf.result in ("pass", "none") else spf.explanation
    return ResInfo("spf", spf.result, reason, ((prop, value),) if value else ())


def dkim_resinfo(dkim: DKIMResult) -> ResInfo:
    props = [
        ("header.d", dkim.domain),
        ("header.s", dkim.selector),
        ("header.a", dkim.algorithm),
        ("header.b", dkim.header_b),
    ]
    return ResInfo("dkim", dkim.result, dkim.reason, tuple((k, v) for k, v in props if v))


def dmarc_resinfo(dmarc: DMARCResult) -> ResInfo:
    comment = ""
    if dmarc.record is not None:
        comment = f"p={dmarc.policy} dis={dmarc.disposition}"
    reason = "" if dmarc.result == "pass" else dmarc.reason
    props = (("header.from", dmarc.from_domain),) if dmarc.from_domain else ()
    return ResInfo("dmarc", dmarc.result, reason, props, comment)


def build_authentication_results(
    hostname: str,
    *,
    spf: SPFResult | None,
    dkim: Sequence[DKIMResult] | None,
    dmarc: DMARCResult | None,
) -> bytes:
    """The whole header. None means "not checked": that method is left out entirely
    (RFC 8601 reports what was evaluated); an empty DKIM list means unsigned: dkim=none."""
    results: list[ResInfo] = []
    if spf is not None:
        results.append(spf_resinfo(spf))
    if dkim is not None:
        results.extend(dkim_resinfo(d) for d in dkim)
        if not dkim:
            results.append(ResInfo("dkim", "none"))
    if dmarc is not None:
        results.append(dmarc_resinfo(dmarc))
    return format_header(hostname, results)


# ----------------------------------------------------------------- stripping


def authserv_id(value: str) -> str | None:
    """The authserv-id at the start of an Authentication-Results value, or None."""
    pos = _skip_cfws(value, 0)
    if pos is None:
        return None
    if pos < len(value) and value[pos] == '"':
        out, pos = [], pos + 1
        while pos < len(value) and value[pos] != '"':
            if value[pos] == "\\":
                pos += 1
            out.append(value[pos : pos + 1])
            pos += 1
        return "".join(out) if pos < len(value) else None
    m = re.compile(r"[^\s;()\"]+").match(value, pos)
    return m.group(0) if m else None


def _skip_cfws(value: str, pos: int) -> int | None:
    """Skip whitespace and (nested) comments; None if a comment never closes."""
    depth = 0
    while pos < len(value):
        ch = value[pos]
        if depth:
            if ch == "\\":
                pos += 1
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
        elif ch == "(":
            depth = 1
        elif not ch.isspace():
            return pos
        pos += 1
    return None if depth else pos


def _same_host(a: str, b: str) -> bool:
    return a.strip().rstrip(".").lower() == b.strip().rstrip(".").lower()


def strip_forged(data: bytes, hostname: str) -> bytes:
    """Remove every Authentication-Results field that claims our authserv-id.

    Only the header section is touched; a field we cannot parse is kept unless its
    text begins with our hostname anyway (a mangled forgery still goes).
    """
    end = header_end(data)
    doomed = []
    for span in field_spans(data, FIELD_NAME, end):
        value = field_value(data, span)
        ident = authserv_id(value)
        words = _CONTROLS.sub(" ", value).replace(";", " ").split()
        if (ident is not None and _same_host(ident, hostname)) or (
            ident is None and words and _same_host(words[0], hostname)
        ):
            doomed.append(span)
    if not doomed:
        return data
    pieces, pos = [], 0
    for start, stop in doomed:
        pieces.append(data[pos:start])
        pos = stop
    pieces.append(data[pos:])
    return b"".join(pieces)
