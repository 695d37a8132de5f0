"""Quota at the SMTP doors (MX and submission's local copies): RFC 3463 4.2.2.

Both blocking; the handlers call them through their ``run_in_thread``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..auth.store import AccountStore
from ..storage import quota
from ..storage.maildir import Chunk, MaildirWriter


def full_account(store: AccountStore, accounts: Sequence[str]) -> str | None:
    """The first of ``accounts`` with no room for any more mail: RCPT answers 452 4.2.2."""
    for account in accounts:
        if quota.full(store.maildir_path(account), store.quota_limits(account)):
            return account
    return None


def deliver_within_quota(
    store: AccountStore,
    writer: MaildirWriter,
    items: Sequence[tuple[str, Sequence[Chunk]]],
    folder: str | None,
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
        return writer.deliver_batch(
            [(root, folder, chunks) for root, (_a, chunks) in zip(roots, items, strict=True)])


REPLY_TEXT = "Mailbox full, try again later"
