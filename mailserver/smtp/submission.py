"""The submission endpoint's policy (587 STARTTLS, 465 implicit TLS), RFC 6409 / 8314.

    AUTH  -> throttle, cache of good logins, argon2 off the loop             535 5.7.8 / 421
             (auth/login.py); 3 failures on one connection: 535 then 421
    MAIL  -> authenticated? owns the address?                               530 5.7.0 / 553 5.7.1
    RCPT  -> local: must exist (550 5.1.1); remote: allowed (authenticated)
    DATA  -> no NUL, no line over 998 octets (what the next hop gets)       554 5.6.0
          -> one From: owned by the account -> Message-ID/Date added if missing
          -> Received (client IP hidden by default) -> DKIM signature
          -> remote recipients queued (fsync), local ones delivered (fsync)  250 after both
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..address import Address
from ..auth.cache import VerifiedCache
from ..auth.login import AuthResult, LoginChecker, LoginPolicy
from ..auth.passwords import PasswordChecker
from ..auth.ratelimit import AuthThrottle
from ..auth.store import AccountStore
from ..fsutil import describe_error, storage_failure_reply
from ..message import FromHeaderError, field_values, parse_mailbox_list, transport_problem
from ..metrics import Metrics
from ..pipeline import trace
from ..smtpreply import SMTPReply
from ..storage import quota
from ..storage.maildir import MaildirWriter
from . import protocol as p
from . import quotacheck
from .recipients import RecipientTable
from .server import Answer, AuthOK, Clock, Session, ThreadRunner

log = logging.getLogger("pymaild.submission")

# (mail_from, recipients, data, message id for logs) -> queue id; fsync'd when it returns.
Enqueue = Callable[[str, list[str], bytes, str], Awaitable[str]]
Unqueue = Callable[[str], Awaitable[None]]
# (data, signing domain) -> DKIM-Signature header block(s) to prepend.
Sign = Callable[[bytes, str], Awaitable[bytes]]


@dataclass
class _Tx:
    mail_from: str = ""
    local: dict[str, list[str]] = field(default_factory=dict)  # rcpt -> accounts
    remote: list[str] = field(default_factory=list)


@dataclass
class _Auth:
    mechanism: str = ""
    username: str = ""


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')  # an RFC 5322 quoted-string


class SubmissionHandler:
    """SessionHandler for authenticated clients sending mail."""

    def __init__(
        self,
        *,
        hostname: str,
        local_domains: tuple[str, ...],
        primary_domain: str,
        store: AccountStore,
        passwords: PasswordChecker,
        throttle: AuthThrottle,
        writer: MaildirWriter,
        login_cache: VerifiedCache | None = None,
        login_policy: LoginPolicy | None = None,
        enqueue: Enqueue | None,
        unqueue: Unqueue | None = None,
        release: Callable[[str], None] | None = None,
        sign: Sign | None = None,
        plus_separator: str = "+",
        postmaster: str = "",
        hide_client_ip: bool = True,
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
        self.passwords = passwords
        self.throttle = throttle
        self.logins = LoginChecker(store, passwords, throttle, self.metrics, log, cache=login_cache,
                                   policy=login_policy)
        self.writer = writer
        self.enqueue = enqueue
        self.unqueue = unqueue
        # With ``enqueue`` holding what it queues: lets it go once the local copies are
        # on disk, so a failed local copy takes the message back before it can leave.
        self.release = release
        self.sign = sign
        self.plus_separator = plus_separator
        self.hide_client_ip = hide_client_ip
        self.max_received_headers = max_received_headers
        # Injected so a test can run a transaction in-process, in order, on a fake clock:
        # the clock times a message for its log line; the runner takes the blocking calls
        # (sender addresses, recipient lookup, Maildir write and fsyncs) off the event loop.
        # (The login check runs its own: LoginChecker is shared with IMAP.)
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.rcpt_quota = quotacheck.RcptQuota(store, run_in_thread, clock)
        self.recipients = recipients or RecipientTable(
            store, local_domains=local_domains, primary_domain=primary_domain,
            plus_separator=plus_separator, postmaster=postmaster, run_in_thread=run_in_thread)
        self._tx: dict[str, _Tx] = {}
        self._auth: dict[str, _Auth] = {}
        self._senders: dict[str, set[str]] = {}

    # ---------------------------------------------------------------- connection

    async def on_connect(self, session: Session) -> Answer | None:
        if self.throttle.ip_blocked(session.client_ip):
            log.warning("auth throttled client=%s (too many failed logins)", session.client_ip)
            return SMTPReply(421, "4.7.0", f"{self.hostname} Too many failed logins, try again later")
        return None

    def on_disconnect(self, session: Session) -> None:
        self._tx.pop(session.id, None)
        self._auth.pop(session.id, None)
        self._senders.pop(session.id, None)

    async def on_helo(self, session: Session, event: p.Helo) -> Answer:
        self._tx.pop(session.id, None)
        return SMTPReply(250, "", f"{self.hostname} Hello {event.hostname}")

    # ---------------------------------------------------------------- AUTH

    async def on_auth(self, session: Session, event: p.AuthStart | p.AuthResponse) -> Answer | str | AuthOK:
        state = self._auth.setdefault(session.id, _Auth())
        if isinstance(event, p.AuthStart):
            state.mechanism, state.username = event.mechanism, ""
            if event.mechanism == "PLAIN":
                if event.initial_response is None:
                    return ""  # "334 " then the client sends the response
                return await self._plain(session, event.initial_response)
            # LOGIN (draft-murchison-sasl-login): username, then password.
            if event.initial_response is not None:
                state.username = _utf8(event.initial_response)
                return "UGFzc3dvcmQ6"  # "Password:"
            return "VXNlcm5hbWU6"  # "Username:"
        if state.mechanism == "PLAIN":
            return await self._plain(session, event.response)
        if not state.username:
            state.username = _utf8(event.response)
            if not state.username:
                return SMTPReply(501, "5.5.2", "Empty user name")
            return "UGFzc3dvcmQ6"
        return await self._check(session, state.username, _utf8(event.response))

    async def _plain(self, session: Session, response: bytes) -> Answer | AuthOK:
        try:
            authzid, user, password = p.decode_auth_plain(response)
        except (ValueError, UnicodeDecodeError):
            return SMTPReply(501, "5.5.2", "Malformed PLAIN response")
        if authzid and authzid.lower() != user.lower():
            # Acting as someone else is not something an account can be allowed here.
            self.throttle.failure(session.client_ip, user)
            return SMTPReply(535, "5.7.8", "Authorization identity must be the login name")
        return await self._check(session, user, password)

    async def _check(self, session: Session, user: str, password: str) -> Answer | AuthOK:
        user = user.strip().lower()
        ip = session.client_ip
        result = await self.logins.check(ip, user, password, session.listener)
        if result is AuthResult.INVALID and not self.throttle.ip_blocked(ip):
            return SMTPReply(535, "5.7.8", "Authentication credentials invalid")
        if result is not AuthResult.OK:  # throttled, now or by this very failure
            return SMTPReply(421, "4.7.0", f"{self.hostname} Too many failed logins, try again later")
        self._senders[session.id] = await self.run_in_thread(self.store.sender_addresses, user)
        return AuthOK(user)

    # ---------------------------------------------------------------- envelope

    def _owns(self, session: Session, address: str) -> bool:
        owned = self._senders.get(session.id, set())
        address = address.lower()
        if address in owned:
            return True
        local, _, domain = address.rpartition("@")
        if f"@{domain}" in owned:  # pymaild sender allow ACCOUNT @domain
            return True
        if self.plus_separator and self.plus_separator in local:
            return f"{local.split(self.plus_separator, 1)[0]}@{domain}" in owned
        return False

    async def on_mail(self, session: Session, event: p.MailFrom) -> Answer:
        if session.conn.authenticated_as is None:
            return SMTPReply(530, "5.7.0", "Authentication required")
        if event.address is None:
            return SMTPReply(553, "5.7.1", "Null sender not allowed for submission")
        sender = str(event.address)
        if not self._owns(session, sender):
            log.warning("sender refused session=%s user=%s from=<%s>", session.id,
                        session.conn.authenticated_as, sender)
            return SMTPReply(553, "5.7.1", f"<{sender}>: Sender address not owned by user "
                    f"{session.conn.authenticated_as}")
        self._tx[session.id] = _Tx(mail_from=sender)
        return SMTPReply(250, "2.1.0", "Sender OK")

    async def on_rcpt(self, session: Session, event: p.RcptTo) -> Answer:
        tx = self._tx.setdefault(session.id, _Tx())
        address = event.address
        rcpt = str(address)
        if address.domain in self.local_domains:
            try:
                accounts = await self.recipients.accounts_for(rcpt)
            except (OSError, sqlite3.Error) as exc:
                # The accounts database cannot be read (disk full, I/O error): try later.
                log.error("recipient lookup failed session=%s rcpt=%s %s", session.id, rcpt,
                          describe_error(exc))
                return storage_failure_reply(exc, "Recipient lookup")
            if not accounts:
                return SMTPReply(550, "5.1.1", f"<{rcpt}>: Recipient address rejected: no such user")
            try:
                full = await self.rcpt_quota.full_account(accounts)
            except (OSError, sqlite3.Error) as exc:
                log.error("quota check failed session=%s rcpt=%s %s", session.id, rcpt,
                          describe_error(exc))
                return storage_failure_reply(exc, "Quota check")
            if full is not None:
                return SMTPReply(452, "4.2.2", f"<{rcpt}>: {quotacheck.REPLY_TEXT}")  # RFC 3463
            tx.local[rcpt] = accounts
            return SMTPReply(250, "2.1.5", "Recipient OK")
        if self.enqueue is None:
            return SMTPReply(451, "4.3.2", "Outbound delivery is not available")
        if rcpt not in tx.remote:
            tx.remote.append(rcpt)
        return SMTPReply(250, "2.1.5", "Recipient OK")

    # ---------------------------------------------------------------- DATA

    async def on_message(self, session: Session, event: p.MessageReceived) -> Answer:
        started = self.clock()
        tx = self._tx.pop(session.id, _Tx())
        user = session.conn.authenticated_as or ""
        msg_id = f"{session.id}.{session.messages}"
        data = event.data
        base = (f"submission id={msg_id} user={user} client={session.client_ip} from=<{tx.mail_from}>"
                f" to={','.join([*tx.local, *tx.remote])} size={len(data)}")
        if not (tx.local or tx.remote):
            return SMTPReply(554, "5.5.1", "No valid recipients")
        unsendable = transport_problem(data)
        if unsendable is not None:
            # Refused rather than re-encoded: the client can encode (every MUA does), while
            # changing the body here would change what the user signed or encrypted.
            log.info("%s outcome=rejected reason=%r", base, unsendable)
            return SMTPReply(554, "5.6.0", f"Message {unsendable}; encode it (quoted-printable or base64)"
                    " before sending (RFC 5322 2.1.1)")
        hops = trace.count_received(data)
        if hops >= self.max_received_headers:
            log.info("%s outcome=rejected reason=loop hops=%d", base, hops)
            return SMTPReply(554, "5.4.6", f"Too many Received headers ({hops}): mail loop?")
        head = trace.header_section(data)
        problem = self._check_from(session, head)
        if problem is not None:
            log.warning("%s outcome=rejected reason=%r", base, problem.text)
            return problem
        data = self._add_missing(head, data, tx.mail_from)
        received = trace.received_header(
            helo=session.conn.helo_name, client_ip=session.client_ip, hostname=self.hostname,
            message_id=msg_id, protocol="ESMTPSA" if session.tls else "ESMTPA",
            tls_version=session.tls_version, tls_cipher=session.tls_cipher,
            recipient=None, hide_client=self.hide_client_ip,
        )
        data = received + data
        if self.sign is not None:
            from_domain = _from_domain(trace.header_section(data))
            if from_domain in self.local_domains:
                data = await self.sign(data, from_domain) + data
        queue_id = ""
        if tx.remote:
            assert self.enqueue is not None
            try:
                queue_id = await self.enqueue(tx.mail_from, tx.remote, data, msg_id)
            except OSError as exc:
                log.error("%s outcome=deferred reason=queue %s", base, describe_error(exc))
                return storage_failure_reply(exc, "Queueing the message")
        if tx.local:
            per_account: dict[str, str] = {}
            for rcpt, accounts in tx.local.items():
                for account in accounts:
                    per_account.setdefault(account, rcpt)
            return_path = trace.return_path_header(Address(*tx.mail_from.rsplit("@", 1)))
            try:
                paths = await self.run_in_thread(
                    quotacheck.deliver_within_quota, self.store, self.writer, [
                        (account, [return_path, trace.delivered_to_header(rcpt), data])
                        for account, rcpt in per_account.items()
                    ], None, f"postmaster@{self.primary_domain}")
                self.writer.announce(paths)  # IDLEing IMAP clients hear of it now
            except quota.OverQuota as exc:
                # A local copy does not fit: the whole message is refused (one reply after
                # DATA), the queued remote copy taken back, and the client may retry.
                if queue_id and self.unqueue is not None:
                    await self.unqueue(queue_id)
                log.info("%s outcome=deferred reason=over-quota resource=%s", base, exc.resource)
                return SMTPReply(452, "4.2.2", "Mailbox full: the message does not fit a local"
                                 " recipient's quota, try again later")
            except OSError as exc:
                # All or nothing: take the queued copy back so the client's retry
                # does not send the remote part twice.
                if queue_id and self.unqueue is not None:
                    await self.unqueue(queue_id)
                log.error("%s outcome=deferred reason=local-delivery %s", base, describe_error(exc))
                return storage_failure_reply(exc, "Local delivery")
            except BaseException:
                # Cancelled (or a bug) with the local copies in an unknown state: the
                # client retries and may get a duplicate, never a loss; send it.
                if queue_id and self.release is not None:
                    self.release(queue_id)
                raise
        if queue_id and self.release is not None:
            self.release(queue_id)
        ms = (self.clock() - started) * 1000
        log.info("%s outcome=accepted local=%d queued=%s ms=%.1f", base, len(tx.local),
                 queue_id or "-", ms)
        return SMTPReply(250, "2.0.0", f"Ok: queued as {queue_id or msg_id}")

    def _check_from(self, session: Session, head: bytes) -> Answer | None:
        """Exactly one From with exactly one address, owned by the account (RFC 6409 8.1)."""
        values = _header_values(head, b"from")
        if len(values) != 1:
            return SMTPReply(553, "5.7.1", "Message must have exactly one From header")
        raw = values[0]
        if "=?" in raw.split("<")[-1]:
            return SMTPReply(553, "5.7.1", "Encoded words are not allowed in the From address")
        try:  # the parser DMARC uses: what is checked here is what receivers check
            addresses = parse_mailbox_list(raw)
        except FromHeaderError:  # a shape a reader and a parser could disagree about
            addresses = []
        display = _QUOTED.sub("", raw.split("<")[0]) if "<" in raw else ""
        # An unquoted "@" before "<" ("ceo@bank.example <me@here>") is a second address
        # to a reader's eye, though the parser takes the one in brackets: refused.
        if len(addresses) != 1 or ":" in raw.split("<")[0].replace('"', "") or "@" in display:
            return SMTPReply(553, "5.7.1", "From must name exactly one address")
        address = addresses[0]
        if not self._owns(session, address):
            return SMTPReply(553, "5.7.1", f"From address <{address}> not owned by user "
                    f"{session.conn.authenticated_as}")
        return None

    def _add_missing(self, head: bytes, data: bytes, mail_from: str) -> bytes:
        """Message-ID and Date when the client left them out (RFC 6409 8.2, 8.3)."""
        extra = b""
        if not _header_values(head, b"date"):
            extra += f"Date: {email.utils.formatdate(localtime=True)}\r\n".encode()
        if not _header_values(head, b"message-id"):
            domain = mail_from.rpartition("@")[2] or self.hostname
            extra += f"Message-ID: {email.utils.make_msgid(domain=domain)}\r\n".encode()
        return extra + data



def _utf8(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _header_values(head: bytes, name: bytes) -> list[str]:
    """Unfolded, stripped values of every header field called ``name`` in ``head`` (all
    of it: the caller has already cut the header section)."""
    return [v.strip() for v in field_values(head, name.decode("ascii"), len(head))]


def _from_domain(head: bytes) -> str:
    values = _header_values(head, b"from")
    try:
        addresses = parse_mailbox_list(values[0]) if values else []
    except FromHeaderError:
        return ""
    return addresses[0].rpartition("@")[2].lower() if addresses else ""
