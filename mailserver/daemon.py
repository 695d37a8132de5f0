"""Builds the components the config names, starts the listeners, handles signals.

Start-up order matters for the operator: everything that can fail because of the config
or the files (TLS, DKIM keys, accounts DB, binding ports) fails before READY=1, with one
clear line; afterwards errors are per connection and never take the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import sdnotify
from .auth.cache import VerifiedCache
from .auth.login import LoginPolicy
from .auth.passwords import PasswordChecker
from .auth.ratelimit import AuthThrottle
from .auth.store import AccountStore
from .config import Config, load_config
from .delivery.mtasts import MTASTS
from .delivery.queue import Queue, QueuedMessage
from .delivery.remote import RemoteDelivery
from .delivery.results import DeliveryResult
from .dkim_keys import DKIMKey, ensure_keys
from .dns.records import first_start_banner
from .dns.resolver import Resolver
from .fsutil import mkdir_durable
from .imap import textfold
from .imap.backend import IMAPBackend, IMAPLimits
from .imap.hub import MailboxHub
from .imap.mailboxes import MailboxTree
from .imap.server import IMAPEndpoint
from .imap.sortcache import KEYS
from .metrics import Metrics, MetricsServer
from .pipeline import trace
from .smtp import protocol as p
from .smtp.mx_policy import Checker, MXHandler
from .smtp.recipients import RecipientTable
from .smtp.server import Limits, Session, SMTPEndpoint
from .smtp.submission import SubmissionHandler
from .storage.index import MailboxIndex
from .storage.maildir import MaildirWriter
from .storage.quota import Limits as QuotaLimits
from .tls import TLSManager
from .web import WebServer, required_names, uncovered_names

log = logging.getLogger("pymaild")


class StartupError(Exception):
    """Start-up failed for a reason the operator must fix; the text is one line."""


@dataclass
class Components:
    tls: TLSManager
    store: AccountStore
    resolver: Resolver
    writer: MaildirWriter
    passwords: PasswordChecker
    mx: SMTPEndpoint
    submission: SMTPEndpoint
    queue: Queue
    dkim_keys: list[DKIMKey]
    submission_handler: SubmissionHandler
    metrics: Metrics
    imap: IMAPEndpoint

    def listeners(self, cfg: Config) -> list[tuple[str, SMTPEndpoint | IMAPEndpoint, tuple[str, int], bool]]:
        """(config key, endpoint, address, implicit TLS) for every mail listener."""
        out: list[tuple[str, SMTPEndpoint | IMAPEndpoint, tuple[str, int], bool]]
        out = [("smtp", self.mx, addr, False) for addr in cfg.listen.smtp]
        out += [("submission", self.submission, addr, False) for addr in cfg.listen.submission]
        out += [("submissions", self.submission, addr, True) for addr in cfg.listen.submissions]
        out += [("imap", self.imap, addr, False) for addr in cfg.listen.imap]
        out += [("imaps", self.imap, addr, True) for addr in cfg.listen.imaps]
        return out

    @property
    def endpoints(self) -> list[SMTPEndpoint | IMAPEndpoint]:
        return [self.mx, self.submission, self.imap]


def make_checker(cfg: Config, resolver: Resolver) -> Checker | None:
    """The inbound check stage from [checks]; None when every check is off."""
    if not (cfg.checks.spf or cfg.checks.dkim or cfg.checks.dmarc):
        return None
    from .pipeline.inbound import InboundPolicy, InboundVerdict, run_inbound_checks

    c = cfg.checks
    policy = InboundPolicy(
        spf=c.spf, dkim=c.dkim, dmarc=c.dmarc,
        dmarc_reject_action=c.dmarc_reject_action,
        dmarc_quarantine_action=c.dmarc_quarantine_action,
        spf_fail_action=c.spf_fail_action,
        dns_temperror_action=c.dns_temperror_action,
        max_dkim_signatures=c.max_dkim_signatures,
        timeout=c.timeout,
    )

    async def check(data: bytes, session: Session, mail_from: str) -> InboundVerdict:
        return await run_inbound_checks(
            resolver, data=data, client_ip=session.client_ip, helo=session.conn.helo_name,
            mail_from=mail_from, hostname=cfg.hostname, policy=policy,
        )

    return check


def build(cfg: Config) -> Components:
    tls = TLSManager(cfg.hostname, cfg.cert_path, cfg.key_path,
                     self_signed=cfg.tls.self_signed, min_version=cfg.tls.min_version)
    try:
        mkdir_durable(cfg.state_path, 0o750)  # a power cut must not take a new state_dir
        tls.load()
    except OSError as exc:
        raise StartupError(f"{exc.filename or cfg.state_dir}: {exc.strerror or exc}") from None
    except Exception as exc:  # TLSError and friends already name the file
        raise StartupError(str(exc)) from None
    try:
        store = AccountStore.in_state_dir(cfg.state_path)
    except Exception as exc:  # sqlite3 errors, a DB from a newer version, permissions
        raise StartupError(f"{cfg.accounts_db}: cannot open the accounts database: {exc}") from None
    store.default_quota = QuotaLimits(cfg.quota.default_storage, cfg.quota.default_messages)
    try:
        keys = ensure_keys(cfg)  # before anything signs: the first start creates them
    except Exception as exc:
        raise StartupError(str(exc)) from None  # DKIMKeyError names the file
    resolver = Resolver(list(cfg.dns.nameservers) or None, lifetime=cfg.dns.timeout)
    writer = MaildirWriter(hostname=cfg.hostname)
    metrics = Metrics()  # always there, so no call site needs an "if"
    recipients = RecipientTable(store, local_domains=cfg.local_domains, primary_domain=cfg.primary_domain,
                                plus_separator=cfg.accounts.plus_separator,
                                postmaster=cfg.accounts.postmaster)
    handler = MXHandler(
        hostname=cfg.hostname,
        local_domains=cfg.local_domains,
        primary_domain=cfg.primary_domain,
        store=store,
        writer=writer,
        checker=make_checker(cfg, resolver),
        plus_separator=cfg.accounts.plus_separator,
        postmaster=cfg.accounts.postmaster,
        max_received_headers=cfg.smtp.max_received_headers,
        metrics=metrics,
        recipients=recipients,
    )
    s = cfg.smtp
    params = p.ServerParams(
        hostname=cfg.hostname,
        max_message_size=s.max_message_size,
        max_recipients=s.max_recipients,
        max_line_length=s.max_line_length,
        max_errors=s.max_errors,
        tls_available=True,
        reject_bare_newlines=s.reject_bare_newlines,
    )
    limits = Limits(
        command_timeout=s.command_timeout,
        data_timeout=s.data_timeout,
        max_connections=s.max_connections,
        max_connections_per_ip=s.max_connections_per_ip,
        stress_at=cfg.stress.threshold,
        stress_timeout=cfg.stress.idle_timeout,
        greeting_delay=s.greeting_delay,
        data_deadline=s.data_deadline,
        data_min_rate=float(s.data_min_rate),
        data_rate_grace=s.data_rate_grace,
    )
    mx = SMTPEndpoint("smtp", params, handler, limits, tls_context=tls.listener_context,
                      metrics=metrics)

    queue = build_queue(cfg, store, resolver, writer, metrics)

    passwords = PasswordChecker()
    sub = cfg.submission
    throttle, login_cache, login_policy = build_login_limits(cfg)
    submission_handler = SubmissionHandler(
        hostname=cfg.hostname,
        local_domains=cfg.local_domains,
        primary_domain=cfg.primary_domain,
        store=store,
        passwords=passwords,
        throttle=throttle,
        login_cache=login_cache,
        login_policy=login_policy,
        writer=writer,
        enqueue=lambda sender, rcpts, data, msg_id: queue.enqueue(sender, rcpts, data, message_id=msg_id,
                                                                  hold=True),
        unqueue=lambda queue_id: _drop(queue.remove(queue_id)),
        release=queue.release,
        sign=make_signer(keys),
        plus_separator=cfg.accounts.plus_separator,
        postmaster=cfg.accounts.postmaster,
        hide_client_ip=sub.hide_client_ip,
        max_received_headers=s.max_received_headers,
        metrics=metrics,
        recipients=recipients,
    )
    submission_params = dataclasses.replace(params, auth_mechanisms=("PLAIN", "LOGIN"),
                                            auth_requires_tls=True,
                                            max_auth_failures=sub.max_auth_failures_per_connection)
    submission = SMTPEndpoint("submission", submission_params, submission_handler, limits,
                              tls_context=tls.listener_context, metrics=metrics)
    metrics.gauge("queue_messages", lambda: len(queue.list()))
    metrics.gauge("queue_oldest_age_seconds", lambda: _oldest_age(queue))
    imap = build_imap(cfg, store, passwords, throttle, tls, metrics, login_cache, login_policy)
    # New mail reaches IDLEing clients at once, not at the next poll.
    writer.listeners.append(lambda folders: imap.backend.hub.changed(folders))
    return Components(tls, store, resolver, writer, passwords, mx, submission, queue, keys,
                      submission_handler, metrics, imap)


def build_login_limits(cfg: Config) -> tuple[AuthThrottle, VerifiedCache, LoginPolicy]:
    """The failed-login throttle and the cache of good logins, shared by submission and IMAP."""
    sub = cfg.submission
    throttle = AuthThrottle(
        max_failures_per_ip=sub.max_auth_failures_per_ip,
        max_failures_per_pair=sub.max_auth_failures_per_ip_account,
        account_delay_after=sub.max_auth_failures_per_account,
        window=sub.auth_failure_window,
        account_delay=sub.auth_account_delay,
        account_delay_growth=sub.auth_account_delay_growth,
        account_delay_max=sub.auth_account_delay_max,
        max_wait=sub.auth_max_wait,
        max_entries=sub.auth_throttle_max_entries,
    )
    cache = VerifiedCache(ttl=sub.auth_cache_ttl, max_entries=sub.auth_cache_max_entries)
    policy = LoginPolicy(failure_delay=sub.auth_failure_delay,
                         max_failures_per_connection=sub.max_auth_failures_per_connection)
    return throttle, cache, policy


def build_imap(cfg: Config, store: AccountStore, passwords: PasswordChecker, throttle: AuthThrottle,
               tls: TLSManager, metrics: Metrics, login_cache: VerifiedCache | None = None,
               login_policy: LoginPolicy | None = None) -> IMAPEndpoint:
    c = cfg.imap
    limits = IMAPLimits(
        max_line_length=c.max_line_length, max_append_size=c.max_append_size,
        login_timeout=c.login_timeout, idle_timeout=c.idle_timeout, idle_keepalive=c.idle_keepalive,
        max_connections=c.max_connections, max_connections_per_ip=c.max_connections_per_ip,
        max_sessions_per_user=c.max_sessions_per_user, max_errors=c.max_errors,
        max_command_size=c.max_command_size, max_literals=c.max_literals_per_command,
    )
    # Per process, like the rest of the config: every folder index of this daemon.
    MailboxIndex.max_keywords_per_message = c.max_keywords_per_message
    MailboxIndex.max_keywords_per_folder = c.max_keywords_per_folder
    MailboxTree.max_folders = c.max_folders
    KEYS.max_bytes = c.sort_cache_size
    backend = IMAPBackend(hostname=cfg.hostname, store=store, passwords=passwords, throttle=throttle,
                          limits=limits, hub=MailboxHub(c.poll_interval), metrics=metrics,
                          login_cache=login_cache, login_policy=login_policy)
    metrics.gauge("imap_sessions", lambda: sum(backend.sessions_per_user.values()))
    return IMAPEndpoint(backend, tls_context=tls.listener_context, stress_at=cfg.stress.threshold,
                        stress_timeout=cfg.stress.idle_timeout)


def _oldest_age(queue: Queue) -> float:
    entries = queue.list()
    return max(0.0, time.time() - min(e.created for e in entries)) if entries else 0.0


async def _drop(awaitable: Awaitable[object]) -> None:
    await awaitable


def make_signer(keys: list[DKIMKey]) -> Callable[[bytes, str], Awaitable[bytes]] | None:
    """DKIM signing of submitted mail with every key of the From domain (rsa + ed25519)."""
    from .pipeline.dkim_sign import DKIMSigner

    if not keys:
        return None
    signer = DKIMSigner(keys)
    return signer.sign_async


def build_queue(cfg: Config, store: AccountStore, resolver: Resolver, writer: MaildirWriter,
                metrics: Metrics) -> Queue:
    """The outbound queue, delivering through MX lookup (or the relay) with MTA-STS."""
    d = cfg.delivery
    password = ""
    if d.relay_password_file:
        try:
            password = Path(d.relay_password_file).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise StartupError(f"{d.relay_password_file}: cannot read the relay password: {exc}") from None
    mta_sts = None
    if d.mta_sts:
        mta_sts = MTASTS(resolver, cache_dir=cfg.state_path / "mta-sts", ca_file=d.ca_file or None,
                         https_port=d.mta_sts_port)
    remote = RemoteDelivery(
        resolver, hostname=cfg.hostname, mx_port=d.mx_port, relay=d.relay,
        relay_tls=d.relay_tls,  # type: ignore[arg-type]  # the config loader checked the value
        relay_username=d.relay_username, relay_password=password, mta_sts=mta_sts,
        ca_file=d.ca_file or None, connect_timeout=d.connect_timeout,
        command_timeout=d.command_timeout, data_timeout=d.data_timeout,
        source_address=d.source_address or None,
    )

    async def deliver(message: QueuedMessage) -> dict[str, DeliveryResult]:
        results = await remote.deliver(message.mail_from, message.recipients, message.data)
        for result in results.values():
            metrics.inc("delivery_attempts_total", result=result.kind)
            if result.kind != "temp":
                metrics.inc("messages_total", direction="out",
                            result="sent" if result.kind == "sent" else "bounced")
        return results

    async def bounce(sender: str, dsn: bytes) -> None:
        # Bounces go only to local senders (the queue checks): deliver straight to their
        # Maildir, with the null reverse-path a DSN must have (RFC 5321 4.5.5).
        accounts = await asyncio.to_thread(
            store.resolve, sender, local_domains=cfg.local_domains, primary_domain=cfg.primary_domain,
            plus_separator=cfg.accounts.plus_separator, postmaster=cfg.accounts.postmaster,
        )
        if not accounts:
            log.warning("bounce for <%s> dropped: no such local account any more", sender)
            return
        await writer.deliver_batch_async([
            (store.maildir_path(account), None,
             [trace.return_path_header(None), trace.delivered_to_header(sender), dsn])
            for account in accounts
        ])

    q = cfg.queue
    return Queue(
        cfg.queue_dir, deliver=deliver, bounce=bounce, hostname=cfg.hostname,
        is_local_sender=lambda address: cfg.is_local_domain(address.rpartition("@")[2]),
        schedule=q.retry_schedule, max_age=q.max_age, delay_notice_after=q.delay_notice_after or None,
        concurrency=q.concurrency,
    )


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.parts: Components | None = None
        self.web: WebServer | None = None
        self.metrics_server: MetricsServer | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        cfg = self.cfg
        self.parts = await asyncio.to_thread(build, cfg)
        keys = self.parts.dkim_keys
        if any(key.created for key in keys):
            # First start: tell the operator what to publish (seed guide 002's UX).
            # Address detection may resolve the host name: not on the event loop.
            banner = await asyncio.to_thread(first_start_banner, cfg, keys)
            sys.stderr.write(banner + "\n")
            sys.stderr.flush()
        try:
            await self.parts.queue.open()
        except Exception as exc:  # another daemon holds the queue lock, unreadable directory
            raise StartupError(f"{cfg.queue_dir}: {exc}") from None
        for kind, endpoint, (host, port), implicit_tls in self.parts.listeners(cfg):
            try:
                await endpoint.listen(host, port, implicit_tls=implicit_tls)
            except OSError as exc:
                reason = exc.strerror or exc
                raise StartupError(f"cannot listen on {host}:{port} (listen.{kind}): {reason}") from None
        if cfg.listen.imap or cfg.listen.imaps:
            # SEARCH BODY/TEXT tables, built once off the loop instead of in the first search.
            await asyncio.to_thread(textfold.prepare)
        await self._start_http(cfg)
        self._tasks.append(asyncio.create_task(self._watch_certificates()))
        self._tasks.append(asyncio.create_task(self.parts.queue.start()))

    async def _start_http(self, cfg: Config) -> None:
        """The optional HTTPS (MTA-STS policy, autoconfig) and metrics listeners."""
        assert self.parts is not None
        if cfg.listen.https:
            self.web = WebServer(cfg, self.parts.tls.listener_context)
            pem = await asyncio.to_thread(cfg.cert_path.read_bytes)
            missing = uncovered_names(required_names(cfg), pem)
            if missing:
                log.warning("listen.https: the certificate does not cover %s (senders ignore an "
                            "MTA-STS policy served without a valid certificate; see docs/web.md)",
                            ", ".join(missing))
        if cfg.listen.metrics:
            self.metrics_server = MetricsServer(self.parts.metrics)
        for kind, server, addresses in (("https", self.web, cfg.listen.https),
                                        ("metrics", self.metrics_server, cfg.listen.metrics)):
            for host, port in addresses:
                assert server is not None
                try:
                    await server.listen(host, port)
                except OSError as exc:
                    reason = exc.strerror or exc
                    raise StartupError(f"cannot listen on {host}:{port} (listen.{kind}): {reason}") from None

    async def _watch_certificates(self) -> None:
        # Like maddy: notice renewed certificate files without a SIGHUP.
        assert self.parts is not None
        while True:
            await asyncio.sleep(self.cfg.tls.reload_interval)
            self.parts.tls.reload(only_if_changed=True)

    def reload(self) -> None:
        log.info("SIGHUP: reloading TLS certificates and DKIM keys, rescanning the queue")
        if self.parts is not None:
            self.parts.tls.reload()
            self.parts.queue.wake()
            task = asyncio.get_running_loop().create_task(self._reload_config())
            self._tasks.append(task)
            task.add_done_callback(lambda done: self._tasks.remove(done) if done in self._tasks else None)

    async def _reload_config(self) -> None:
        """Re-read the config: DKIM selectors apply at once, the rest needs a restart.

        Key rotation without downtime: add the new selector to [dkim] (its key is made
        now), publish the DNS record `pymaild dns` prints, then SIGHUP; signing switches
        without dropping a connection.
        """
        assert self.parts is not None
        try:
            new = await asyncio.to_thread(load_config, self.cfg.path)
            keys = await asyncio.to_thread(ensure_keys, new)
            signer = make_signer(keys)
        except Exception as exc:  # ConfigError names file and key; keep running as before
            log.error("SIGHUP: config not reloaded, keeping the running one: %s", exc)
            return
        self.parts.submission_handler.sign = signer
        self.parts.dkim_keys = keys
        for key in keys:
            if key.created:
                log.warning("SIGHUP: created DKIM key %s for %s: publish %s TXT before mail signed "
                            "with it goes out (pymaild dns)", key.selector, key.domain, key.dns_name)
        signing = ", ".join(f"{k.domain}/{k.selector}" for k in keys
                            if k.selector in (new.dkim.selector, new.ed25519_selector))
        log.info("SIGHUP: DKIM signing with %s", signing or "no key")
        changed = [f.name for f in dataclasses.fields(new)
                   if f.name not in ("dkim", "path") and getattr(new, f.name) != getattr(self.cfg, f.name)]
        if changed:
            log.warning("SIGHUP: changes to %s take effect at the next restart", ", ".join(changed))
        self.cfg = dataclasses.replace(self.cfg, dkim=new.dkim)

    async def stop(self) -> None:
        sdnotify.notify("STOPPING=1")
        log.info("shutting down: draining SMTP and IMAP sessions")
        if self.parts is not None:
            # Stop taking mail first, then stop the queue: nothing accepted is left behind
            # half-done (queued messages are on disk and resume at the next start).
            await asyncio.gather(*(endpoint.drain() for endpoint in self.parts.endpoints))
            await self.parts.queue.stop()
        for server in (self.web, self.metrics_server):
            if server is not None:
                await server.close()
        for task in self._tasks:
            task.cancel()
        if self.parts is not None:
            self.parts.passwords.close()
            self.parts.store.close()
        log.info("stopped")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        sdnotify.notify("READY=1")
        log.info("pymaild ready hostname=%s domains=%s", self.cfg.hostname, ",".join(self.cfg.local_domains))
        await self._stop.wait()
        await self.stop()


# The cyclic collector's first threshold (default 700 new container objects): a folder's
# index holds ~100k rows and a SEARCH or STORE over it makes ~100k short-lived tuples, so
# with the default the collector ran ~140 times per command and re-walked the survivors;
# at 100k messages SEARCH UNSEEN took 89 ms instead of 24, a cold SELECT 7 % longer.
# Refcounting still frees almost all garbage at once; only cycles wait a little longer.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Fewer cyclic collections (see GC_THRESHOLDS); the objects made while starting
    (modules, config, TLS contexts) are frozen, so no collection walks them again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(cfg: Config) -> int:
    tune_gc()
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop  # optional [fast] extra

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(Daemon(cfg).run())
    except StartupError as exc:
        for handler in logging.getLogger().handlers:
            handler.flush()  # what was logged before comes first; the reason is the last line
        print(f"pymaild: {exc}", file=sys.stderr)
        return 1
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    return 0
