"""The inbound check stage: SPF and DKIM concurrently, then DMARC, then a verdict.

``run_inbound_checks`` never raises for anything the sender or DNS can cause; it
returns an ``InboundVerdict``: what to do (accept / junk / reject / tempfail), the
SMTP reply for the non-accepting cases, and the Authentication-Results header.

Decision rules (``decide``, a pure function):
* From header unusable (none, several, several addresses) while DMARC is on:
  ``dmarc_reject_action`` (default reject, 550 5.7.1).
* DMARC fail: disposition reject -> ``dmarc_reject_action``; quarantine ->
  ``dmarc_quarantine_action``; none (p=none or pct-sampled out) -> no action.
* DMARC temperror (policy lookup failed, or an aligned check failed temporarily
  and nothing passed): ``dns_temperror_action`` (default 451 4.7.1), unless the
  domain's policy is p=none, where the outcome could not change anything.
* SPF, when DMARC did not pass: fail -> ``spf_fail_action`` (550 5.7.23 for reject);
  temperror -> ``dns_temperror_action`` (451 4.7.24) only if an SPF fail would
  have mattered (``spf_fail_action`` is not accept).
* The whole stage has ``timeout`` seconds; anything unfinished by then counts as a
  temporary DNS failure -> ``dns_temperror_action``.
* Several outcomes: the strongest wins, reject > tempfail > junk > accept.

Checks that are off appear in neither the decision nor the header (RFC 8601 reports
what was evaluated); with all three off the header says ``none``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Literal, TypeVar

from mailserver.dns.resolver import Resolver
from mailserver.message import FromHeaderError
from mailserver.pipeline.authresults import build_authentication_results
from mailserver.pipeline.dkim_verify import DKIMResult, verify_dkim
from mailserver.pipeline.dmarc import DMARCResult, author_domain, check_dmarc
from mailserver.pipeline.spf import SPFResult, check_spf
from mailserver.smtpreply import SMTPReply

Action = Literal["accept", "junk", "reject", "tempfail"]
_SEVERITY: dict[str, int] = {"accept": 0, "junk": 1, "tempfail": 2, "reject": 3}
T = TypeVar("T")


@dataclass(frozen=True)
class InboundPolicy:
    """The ``[checks]`` config section."""

    spf: bool = True
    dkim: bool = True
    dmarc: bool = True
    dmarc_reject_action: str = "reject"  # reject | junk | accept
    dmarc_quarantine_action: str = "junk"  # junk | accept | reject
    spf_fail_action: str = "accept"  # accept | junk | reject (DMARC normally decides)
    dns_temperror_action: str = "tempfail"  # tempfail | accept
    max_dkim_signatures: int = 5
    timeout: float = 20.0

    def __post_init__(self) -> None:
        choices = {
            "dmarc_reject_action": ("reject", "junk", "accept"),
            "dmarc_quarantine_action": ("junk", "accept", "reject"),
            "spf_fail_action": ("accept", "junk", "reject"),
            "dns_temperror_action": ("tempfail", "accept"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        if self.max_dkim_signatures < 1:
            raise ValueError("max_dkim_signatures must be at least 1")
        if not self.timeout > 0:
            raise ValueError("timeout must be positive")


@dataclass(frozen=True)
class InboundVerdict:
    """What the checks decided, and the structured results they decided it from.

    ``reply`` is the SMTP reply to send for reject/tempfail (for accept/junk the 250
    the checks would give; the endpoint answers after delivery). The results travel as
    they are: ``spf``/``dkim``/``dmarc`` for metrics, ``summary`` only for the log line.
    """

    action: Action
    reply: SMTPReply
    header: bytes  # "Authentication-Results: ...\r\n" (folded) to prepend
    spf: SPFResult | None  # None: SPF check off
    dkim: tuple[DKIMResult, ...] | None  # None: off; (): unsigned
    dmarc: DMARCResult | None  # None: off
    summary: str  # one log line: "spf=pass dkim=pass dmarc=pass"
    elapsed: float = 0.0  # seconds spent in the checks


@dataclass(frozen=True, slots=True)
class Outcome:
    """``decide``'s answer: the action and the reply that goes with it."""

    action: Action
    reply: SMTPReply


_MODULE = "inbound"  # SMTPReply.module: the replies this stage produces
_ACCEPT = Outcome("accept", SMTPReply(250, "2.6.0", "message accepted", _MODULE))


def _reply_text(text: str) -> str:
    # Domains in the text come from MAIL FROM: nothing but printable ASCII may reach
    # the SMTP reply line (a CR/LF there would forge further reply lines).
    return re.sub(r"[^\x20-\x7e]", "?", text)[:300]


def _reply(action: str, status_5xx: str, text: str) -> Outcome:
    """The SMTP reply for a configured action: 550 ``status_5xx``, or for tempfail its
    transient form (451, enhanced class 4, same subject and detail)."""
    if action == "reject":
        return Outcome("reject", SMTPReply(550, status_5xx, _reply_text(text), _MODULE))
    if action == "tempfail":
        reply = SMTPReply(550, status_5xx, _reply_text(text), _MODULE).as_temporary(451)
        return Outcome("tempfail", reply)
    if action == "junk":
        return Outcome("junk", _ACCEPT.reply)
    return _ACCEPT


def decide(
    policy: InboundPolicy,
    spf: SPFResult | None,
    dmarc: DMARCResult | None,
    *,
    from_error: str = "",
    timed_out: bool = False,
) -> Outcome:
    """The action for a set of results (rules in the module docstring)."""
    outcomes = [_ACCEPT]
    retry = "temporary failure checking the sender; try again later"
    if timed_out:
        outcomes.append(
            _reply(
                policy.dns_temperror_action,
                "5.7.1",
                "sender authentication checks timed out; try again later",
            )
        )
    if from_error and policy.dmarc:
        outcomes.append(
            _reply(
                policy.dmarc_reject_action, "5.7.1", f"{from_error}: a message needs exactly one From address"
            )
        )
    if dmarc is not None:
        domain = dmarc.from_domain
        if dmarc.result == "fail" and dmarc.disposition == "reject":
            outcomes.append(
                _reply(policy.dmarc_reject_action, "5.7.1", f"DMARC policy of {domain} rejects this message")
            )
        elif dmarc.result == "fail" and dmarc.disposition == "quarantine":
            outcomes.append(
                _reply(
                    policy.dmarc_quarantine_action,
                    "5.7.1",
                    f"DMARC policy of {domain} quarantines this message",
                )
            )
        elif dmarc.result == "temperror" and (dmarc.record is None or dmarc.policy != "none"):
            outcomes.append(_reply(policy.dns_temperror_action, "5.7.1", f"DMARC check of {domain}: {retry}"))
    dmarc_pass = dmarc is not None and dmarc.result == "pass"
    if spf is not None and not dmarc_pass:
        if spf.result == "fail":
            outcomes.append(
                _reply(
                    policy.spf_fail_action,
                    "5.7.23",
                    f"SPF of {spf.domain} does not allow this host to send its mail",
                )
            )
        elif spf.result == "temperror" and policy.spf_fail_action != "accept":
            outcomes.append(
                _reply(policy.dns_temperror_action, "5.7.24", f"SPF check of {spf.domain}: {retry}")
            )
    return max(outcomes, key=lambda o: _SEVERITY[o.action])


def _summary(spf: SPFResult | None, dkim: tuple[DKIMResult, ...] | None, dmarc: DMARCResult | None) -> str:
    parts = [
        "spf=" + (spf.result if spf else "off"),
        "dkim=" + ((",".join(d.result for d in dkim) or "none") if dkim is not None else "off"),
        "dmarc=" + (dmarc.result if dmarc else "off"),
    ]
    if dmarc and dmarc.from_domain:
        parts.append("from=" + dmarc.from_domain)
    return " ".join(parts)


async def run_inbound_checks(
    resolver: Resolver,
    *,
    data: bytes,
    client_ip: str,
    helo: str,
    mail_from: str,
    hostname: str,
    policy: InboundPolicy,
) -> InboundVerdict:
    """SPF + DKIM (concurrently), then DMARC, then the verdict. ``data`` is the message
    as received (before any header of ours is added)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + policy.timeout
    timed_out = False

    spf_task = (
        asyncio.create_task(check_spf(resolver, client_ip, mail_from, helo, timeout=policy.timeout))
        if policy.spf
        else None
    )
    dkim_task = (
        asyncio.create_task(verify_dkim(resolver, data, max_signatures=policy.max_dkim_signatures))
        if policy.dkim
        else None
    )
    tasks = [t for t in (spf_task, dkim_task) if t is not None]
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=max(deadline - loop.time(), 0))
        for task in pending:
            task.cancel()
        timed_out = bool(pending)

    spf: SPFResult | None = None
    if spf_task is not None:
        spf = _finished(spf_task) or SPFResult(
            "temperror",
            mail_from.rpartition("@")[2].lower() if mail_from else helo.lower(),
            "mailfrom" if mail_from else "helo",
            mail_from or helo,
            "SPF check timed out",
        )
    dkim: tuple[DKIMResult, ...] | None = None
    if dkim_task is not None:
        done = _finished(dkim_task)
        dkim = tuple(done) if done is not None else (DKIMResult("temperror", "", "", "", "", "timed out"),)

    dmarc: DMARCResult | None = None
    from_error = ""
    if policy.dmarc:
        dmarc, from_error, late = await _dmarc(resolver, data, spf, dkim or (), deadline - loop.time())
        timed_out = timed_out or late

    header = build_authentication_results(hostname, spf=spf, dkim=dkim, dmarc=dmarc)
    outcome = decide(policy, spf, dmarc, from_error=from_error, timed_out=timed_out)
    return InboundVerdict(
        action=outcome.action,
        reply=outcome.reply,
        header=header,
        spf=spf,
        dkim=dkim,
        dmarc=dmarc,
        summary=_summary(spf, dkim, dmarc),
        elapsed=loop.time() - started,
    )


def _finished(task: asyncio.Task[T]) -> T | None:
    if task.cancelled() or not task.done():
        return None
    exc = task.exception()
    if exc is not None:
        raise exc  # a bug in our code, not the sender's: let the caller see it
    return task.result()


async def _dmarc(
    resolver: Resolver,
    data: bytes,
    spf: SPFResult | None,
    dkim: tuple[DKIMResult, ...],
    remaining: float,
) -> tuple[DMARCResult, str, bool]:
    """(result, From-header problem or "", timed out?)."""
    try:
        domain = author_domain(data)
    except FromHeaderError as exc:
        return DMARCResult("permerror", "", reason=str(exc)), str(exc), False
    if remaining <= 0:
        return DMARCResult("temperror", domain, reason="timed out"), "", True
    try:
        result = await asyncio.wait_for(check_dmarc(resolver, domain, spf, dkim), remaining)
    except TimeoutError:
        return DMARCResult("temperror", domain, reason="timed out"), "", True
    return result, "", False

