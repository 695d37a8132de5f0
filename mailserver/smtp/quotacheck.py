"""Quota at the SMTP doors (MX and submission's local copies): RFC 3463 4.2.2.

``full_account`` and ``deliver_within_quota`` block; the handlers call them through their
``run_in_thread``. ``RcptQuota`` is the RCPT check both handlers use: it remembers each
account's limits for a few seconds, so an account without limits (the default) costs a
RCPT no thread hand-off and no query.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from ..auth.store import AccountStore
from ..fsutil import describe_error
from ..storage import quota
from ..storage.maildir import Chunk, MaildirWriter
from .recipients import CACHE_SECONDS
from .server import Clock, ThreadRunner

log = logging.getLogger("pymaild.quota")


def full_account(store: AccountStore, accounts: Sequence[str],
                 seen: dict[str, quota.Limits] | None = None) -> str | None:
    """The first of ``accounts`` with no room for any more mail: RCPT answers 452 4.2.2.
    ``seen`` (when given) receives each account's limits as read."""
    for account in accounts:
        limits = store.quota_limits(account)
        if seen is not None:
            seen[account] = limits
        if quota.full(store.maildir_path(account), limits):
            return account
    return None


_LIMITS_MAX = 10_000  # accounts remembered at once (cleared when reached, as recipients)


class RcptQuota:
    """The RCPT quota check with a short memory of each account's limits.

    Limits are remembered for ``CACHE_SECONDS`` (the recipient table's time): a limit set
    with ``pymaild creds quota`` is refused at RCPT within that time, and at end of DATA
    at once (``deliver_within_quota`` always reads the store). Usage is never remembered:
    an account with limits is checked in a thread every time.
    """

    def __init__(self, store: AccountStore, run_in_thread: ThreadRunner, clock: Clock) -> None:
        self.store = store
        self.run_in_thread = run_in_thread
        self.clock = clock
        self._limits: dict[str, tuple[float, quota.Limits]] = {}

    async def full_account(self, accounts: Sequence[str]) -> str | None:
        now = self.clock()
        known = [self._limits.get(a) for a in accounts]
        if all(k is not None and k[0] > now and k[1].unlimited for k in known):
            return None
        seen: dict[str, quota.Limits] = {}
        full = await self.run_in_thread(full_account, self.store, accounts, seen)
        if len(self._limits) + len(seen) > _LIMITS_MAX:
            self._limits.clear()
        expires = self.clock() + CACHE_SECONDS
        for account, limits in seen.items():
            self._limits[account] = (expires, limits)
        return full


def deliver_within_quota(
    store: AccountStore,
    writer: MaildirWriter,
    items: Sequence[tuple[str, Sequence[Chunk]]],
    folder: str | None,
    warn_from: str = "",
) -> list[Path]:
    """Deliver ``(account, chunks)`` each, all or none, once every copy fits its account's
    quota; :class:`~mailserver.storage.quota.OverQuota` otherwise, with nothing written.

    The quota locks are held until the copies are durable, so two deliveries racing for
    an account's last bytes decide one after the other: pymaild never passes a limit.
    """
    roots = [store.maildir_path(account) for account, _chunks in items]
    checks = [
        (root, store.quota_limits(account), sum(memoryview(c).nbytes for c in chunks), 1)
        for root, (account, chunks) in zip(roots, items, strict=True)
    ]
    with quota.reserve(checks):
        paths = writer.deliver_batch(
            [(root, folder, chunks) for root, (_a, chunks) in zip(roots, items, strict=True)])
        if warn_from:
            # Still under the quota locks: the notice is checked against the limit like
            # any message (it is never what pushes an account over).
            for root, (account, _c), (_r, limits, _n, _k) in zip(roots, items, checks, strict=True):
                try:
                    notice = quota.warning_due(
                        root, limits, functools.partial(warning, account, warn_from, limits=limits))
                    if notice is not None:
                        paths.append(writer.deliver(root, None, [notice]))
                except OSError as exc:  # the delivered mail is safe; the notice is a courtesy
                    log.warning("quota warning for %s not delivered: %s", account, describe_error(exc))
    return paths


def warning(account: str, sender: str, used: quota.Usage, *, limits: quota.Limits) -> bytes:
    """The notice a user gets when the mailbox reaches 90 % of a limit (RFC 3834
    auto-generated, so no autoresponder answers it)."""
    lines = []
    if limits.storage:
        lines.append(f"Storage: {used.storage // 1024} KiB of {limits.storage // 1024} KiB"
                     f" ({100 * used.storage // limits.storage}%)")
    if limits.messages:
        lines.append(f"Messages: {used.messages} of {limits.messages}"
                     f" ({100 * used.messages // limits.messages}%)")
    host = sender.rpartition("@")[2]
    text = (
        f"From: Mail System <{sender}>\r\n"
        f"To: <{account}>\r\n"
        f"Subject: Your mailbox is almost full\r\n"
        f"Date: {email.utils.formatdate(localtime=False)}\r\n"
        f"Message-ID: <{time.time_ns()}.{secrets.token_hex(6)}.quota@{host}>\r\n"
        "Auto-Submitted: auto-generated\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "Your mailbox has reached 90% of its quota:\r\n\r\n"
        + "".join(f"  {line}\r\n" for line in lines)
        + "\r\nWhen it is full, new mail is refused (the senders' servers retry for a few\r\n"
        "days). Delete messages you no longer need and empty the Trash to make room.\r\n"
    )
    return text.encode("ascii")


REPLY_TEXT = "Mailbox full, try again later"
