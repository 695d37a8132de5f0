"""The recipient table as the SMTP endpoints use it: local address -> accounts.

One object shared by the MX and submission endpoints, so both see the same rules
(aliases, plus-addressing, catch-all, postmaster) and the same short cache.
"""

from __future__ import annotations

import asyncio
import time

from ..auth.store import AccountStore, InvalidAddress
from .server import Clock, ThreadRunner

CACHE_SECONDS = 5.0
_CACHE_MAX = 10_000


class RecipientTable:
    def __init__(
        self,
        store: AccountStore,
        *,
        local_domains: tuple[str, ...] | frozenset[str],
        primary_domain: str,
        plus_separator: str = "+",
        postmaster: str = "",
        run_in_thread: ThreadRunner = asyncio.to_thread,
        clock: Clock = time.monotonic,
    ) -> None:
        self.store = store
        self.local_domains = frozenset(local_domains)
        self.primary_domain = primary_domain
        self.plus_separator = plus_separator
        self.postmaster = postmaster
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self.run_in_thread = run_in_thread  # the SQLite lookup blocks
        self.clock = clock  # when cached entries expire

    def is_local(self, domain: str) -> bool:
        return domain in self.local_domains

    async def accounts_for(self, address: str) -> list[str] | None:
        """The accounts whose Maildirs receive mail for ``address``; None: unknown.

        The SQLite lookup runs through ``run_in_thread``. Known recipients are cached for
        ``CACHE_SECONDS`` (a thread hop and a query saved per RCPT); unknown ones never
        are, so a new account receives mail at once instead of a cached 550. A removed
        account may still receive for those seconds; its Maildir is kept anyway.
        """
        now = self.clock()
        hit = self._cache.get(address)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            accounts = await self.run_in_thread(
                self.store.resolve, address, local_domains=self.local_domains,
                primary_domain=self.primary_domain, plus_separator=self.plus_separator,
                postmaster=self.postmaster,
            )
        except InvalidAddress:
            return None
        if accounts:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[address] = (now + CACHE_SECONDS, accounts)
        return accounts
