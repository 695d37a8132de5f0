"""The inbound MX endpoint's policy: who may deliver to whom, checks, then durable delivery.

Data flow for one message (each stage its own module):

    RCPT  -> recipient table (auth/store.resolve)        550 5.1.1 unknown / 554 5.7.1 relay
    DATA  -> loop check (pipeline/trace)                  554 5.4.6
          -> inbound checks (pipeline/inbound)            550 5.7.1 / 451 4.7.x / Junk
          -> trace headers + Authentication-Results
          -> Maildir delivery, fsync'd (storage/maildir) 250 only after this returns
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..address import Address
from ..auth.store import AccountStore
from ..fsutil import describe_error, storage_failure_reply
from ..metrics import Metrics
from ..pipeline import trace
from ..pipeline.authresults import strip_forged
from ..smtpreply import SMTPReply
from ..storage import quota
from ..storage.maildir import MaildirWriter
from . import protocol as p
from . import quotacheck
from .recipients import RecipientTable
from .server import Answer, Clock, Session, ThreadRunner

if TYPE_CHECKING:
    from ..pipeline.inbound import InboundVerdict

log = logging.getLogger("pymaild.mx")


# (data, session, mail_from) -> the checks' verdict; None when every check is off.
# (A string: pipeline.inbound is imported only when checks are configured.)
Checker = Callable[[bytes, Session, str], Awaitable["InboundVerdict"]]


@dataclass
class _Transaction:
    mail_from: Address | None = None
    recipients: dict[str, list[str]] = field(default_factory=dict)  # rcpt as given -> accounts


class MXHandler:
    """SessionHandler for port 25: local recipients only, never a relay."""

    def __init__(
        self,
        *,
        hostname: str,
        local_domains: tuple[str, ...],
        primary_domain: str,
        store: AccountStore,
        writer: MaildirWriter,
        checker: Checker | None,
        plus_separator: str = "+",
        postmaster: str = "",
        max_received_headers: int = 50,
        metrics: Metrics | None = None,
        recipients: RecipientTable | None = None,
        clock: Clock = time.perf_counter,
        run_in_thread: ThreadRunner = asyncio.to_thread,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.hostname = hostname
        self.local_domains = frozenset(local_domains)
        self.primary_domain = primary_domain
        self.store = store
        self.writer = writer
        self.checker = checker
        self.max_received_headers = max_received_headers
        self._tx: dict[str, _Transaction] = {}
        # Injected so a test can run a transaction in-process, in order, on a fake clock:
        # the clock times a message for its log line; the runner takes every blocking
        # call (recipient lookup, Maildir write and fsyncs) off the event loop.
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.rcpt_quota = quotacheck.RcptQuota(store, run_in_thread, clock)
        self.recipients = recipients or RecipientTable(
            store, local_domains=local_domains, primary_domain=primary_domain,
            plus_separator=plus_separator, postmaster=postmaster, run_in_thread=run_in_thread)
        self.accepted = 0
        self.rejected = 0

    async def on_connect(self, session: Session) -> Answer | None:
        return None

    async def on_helo(self, session: Session, event: p.Helo) -> Answer:
        self._tx.pop(session.id, None)
        return SMTPReply(250, "", f"{self.hostname} Hello {event.hostname}")

    async def on_mail(self, session: Session, event: p.MailFrom) -> Answer:
        self._tx[session.id] = _Transaction(mail_from=event.address)
        return SMTPReply(250, "2.1.0", "Sender OK")

    async def on_rcpt(self, session: Session, event: p.RcptTo) -> Answer:
        tx = self._tx.setdefault(session.id, _Transaction())
        address = event.address
        if event.raw.lower() == "<postmaster>":
            # RFC 5321 4.5.1: the bare <Postmaster> must be accepted, whatever the domain.
            address = Address("postmaster", self.primary_domain)
        if address.is_literal or address.domain not in self.local_domains:
            # The relay decision uses the domain the parser resolved (routes stripped,
            # quotes undone): there is no way to make a non-local domain look local.
            log.info("relay denied session=%s client=%s rcpt=%s", session.id, session.client_ip, event.raw)
            return SMTPReply(554, "5.7.1", f"<{address}>: Relay access denied")
        try:
            accounts = await self.recipients.accounts_for(str(address))
        except (OSError, sqlite3.Error) as exc:
            # The accounts database cannot be read (disk full, I/O error): try later.
            log.error("recipient lookup failed session=%s rcpt=%s %s", session.id, event.raw,
                      describe_error(exc))
            return storage_failure_reply(exc, "Recipient lookup")
        if not accounts:
            log.info("unknown recipient session=%s client=%s rcpt=%s", session.id, session.client_ip,
                     event.raw)
            return SMTPReply(550, "5.1.1", f"<{address}>: Recipient address rejected: no such user")
        try:
            full = await self.rcpt_quota.full_account(accounts)
        except (OSError, sqlite3.Error) as exc:
            log.error("quota check failed session=%s rcpt=%s %s", session.id, event.raw,
                      describe_error(exc))
            return storage_failure_reply(exc, "Quota check")
        if full is not None:
            # RFC 3463 4.2.2: mailbox full, temporary: the sender retries, the user may
            # make room meanwhile. Refused here, so no bounce is ever ours to send.
            log.info("mailbox full session=%s client=%s rcpt=%s account=%s", session.id,
                     session.client_ip, event.raw, full)
            return SMTPReply(452, "4.2.2", f"<{address}>: {quotacheck.REPLY_TEXT}")
        tx.recipients[str(address)] = accounts
        return SMTPReply(250, "2.1.5", "Recipient OK")

    def _count_checks(self, verdict: InboundVerdict) -> None:
        # One result per check that ran and per DKIM signature; an unsigned message
        # counts as dkim "none". A check that is off (None) counts nothing.
        if verdict.spf is not None:
            self.metrics.inc("check_results_total", check="spf", result=verdict.spf.result)
        if verdict.dkim is not None:
            dkim: list[str] = [d.result for d in verdict.dkim] or ["none"]
            for result in dkim:
                self.metrics.inc("check_results_total", check="dkim", result=result)
        if verdict.dmarc is not None:
            self.metrics.inc("check_results_total", check="dmarc", result=verdict.dmarc.result)

    async def on_auth(self, session: Session, event: p.AuthStart | p.AuthResponse) -> Answer | str:
        return SMTPReply(502, "5.5.1", "AUTH not available")  # the core never offers it on MX

    def on_disconnect(self, session: Session) -> None:
        self._tx.pop(session.id, None)

    async def on_message(self, session: Session, event: p.MessageReceived) -> Answer:
        started = self.clock()
        tx = self._tx.pop(session.id, _Transaction())
        msg_id = f"{session.id}.{session.messages}"
        sender = "" if tx.mail_from is None else str(tx.mail_from)
        data = event.data
        rcpts = ",".join(tx.recipients)
        base = (f"message id={msg_id} client={session.client_ip} helo={session.conn.helo_name}"
                f" from=<{sender}> to={rcpts} size={len(data)}")
        # One line per message; verdicts are appended only when checks ran.
        if not tx.recipients:
            return SMTPReply(554, "5.5.1", "No valid recipients")
        hops = trace.count_received(data)
        if hops >= self.max_received_headers:
            self.rejected += 1
            log.info("%s outcome=rejected reason=loop hops=%d", base, hops)
            return SMTPReply(554, "5.4.6", f"Too many Received headers ({hops}): mail loop?")

        verdict: InboundVerdict | None = None
        if self.checker is not None:
            # Verify the bytes as sent: a DKIM signature may cover headers we strip below.
            verdict = await self.checker(data, session, sender)
            self._count_checks(verdict)
        if verdict is not None and verdict.action == "reject":
            self.rejected += 1
            self.metrics.inc("messages_total", direction="in", result="rejected")
            log.info("%s%s outcome=rejected code=%d", base, _verdicts(verdict), verdict.reply.code)
            return verdict.reply
        if verdict is not None and verdict.action == "tempfail":
            self.metrics.inc("messages_total", direction="in", result="deferred")
            log.info("%s%s outcome=deferred code=%d", base, _verdicts(verdict), verdict.reply.code)
            return verdict.reply

        # A forged Authentication-Results claiming to be ours must never reach the user.
        data = strip_forged(data, self.hostname)
        folder = "Junk" if verdict is not None and verdict.action == "junk" else None
        auth_results = verdict.header if verdict is not None else b""
        single = next(iter(tx.recipients)) if len(tx.recipients) == 1 else None
        received = trace.received_header(
            helo=session.conn.helo_name,
            client_ip=session.client_ip,
            hostname=self.hostname,
            message_id=msg_id,
            protocol="ESMTPS" if session.tls else "ESMTP",
            tls_version=session.tls_version,
            tls_cipher=session.tls_cipher,
            recipient=single,
        )
        return_path = trace.return_path_header(tx.mail_from)
        # One copy per account: an account reached through several recipient addresses
        # (alias + direct) gets the message once, Delivered-To naming the first address.
        per_account: dict[str, str] = {}
        for rcpt, accounts in tx.recipients.items():
            for account in accounts:
                per_account.setdefault(account, rcpt)
        try:
            # All copies or none: a failure removes what was written and answers 4xx, so
            # the sender's retry never duplicates a copy for one recipient.
            paths = await self.run_in_thread(quotacheck.deliver_within_quota, self.store, self.writer, [
                (account, [return_path, trace.delivered_to_header(rcpt), auth_results, received, data])
                for account, rcpt in per_account.items()
            ], folder, f"postmaster@{self.primary_domain}")
            self.writer.announce(paths)  # IDLEing IMAP clients hear of it now
        except quota.OverQuota as exc:
            # One reply for all recipients (SMTP has no per-recipient answer after DATA,
            # RFC 5321 3.3): refuse the whole message with a temporary error, so nothing
            # is stored twice and nobody's copy is lost; the sender retries them all.
            log.info("%s outcome=deferred reason=over-quota resource=%s", base, exc.resource)
            self.metrics.inc("messages_total", direction="in", result="deferred")
            return SMTPReply(452, "4.2.2", "Mailbox full: the message does not fit a recipient's"
                             " quota, try again later")
        except (OSError, sqlite3.Error) as exc:
            # Disk full, I/O error...: nothing was promised, the sender retries.
            log.error("%s outcome=deferred reason=local-delivery %s", base, describe_error(exc))
            self.metrics.inc("messages_total", direction="in", result="deferred")
            return storage_failure_reply(exc, "Local delivery")
        self.accepted += 1
        self.metrics.inc("messages_total", direction="in",
                         result="junk" if folder else "delivered")
        ms = (self.clock() - started) * 1000
        log.info("%s%s outcome=delivered folder=%s accounts=%d ms=%.1f", base, _verdicts(verdict),
                 folder or "INBOX", len(per_account), ms)
        return SMTPReply(250, "2.0.0", f"Ok: delivered as {msg_id}")


def _verdicts(verdict: InboundVerdict | None) -> str:
    return f" {verdict.summary}" if verdict is not None and verdict.summary else ""

