"""QUOTA (RFC 9208): GETQUOTAROOT, GETQUOTA, SETQUOTA.

Each account has one quota root, named ``""`` (as Dovecot names its default root), that
covers every folder: usage is the account's Maildir++ ``maildirsize``
(:mod:`mailserver.storage.quota`), limits come from ``pymaild creds quota`` or the
``[quota]`` defaults. Resources: STORAGE (in units of 1024 octets, RFC 9208 5.1) and
MESSAGE (5.2), each listed only when it has a limit; an account without any limit has no
quota root. SETQUOTA is refused: limits are the administrator's (no QUOTASET).
"""

from __future__ import annotations

from mailserver.storage import quota

from . import format as fmt
from .commands import Command, MailboxCommand, Quota
from .session_core import Action, Refused
from .session_updates import SessionUpdates

ROOT = ""


def _kib(nbytes: int) -> int:
    """Bytes as STORAGE units (1024 octets), rounded up: 1 byte in use is 1 unit."""
    return (nbytes + 1023) // 1024


class QuotaCommands(SessionUpdates):
    def _quota_response(self, usage: quota.Usage, limits: quota.Limits) -> bytes:
        parts: list[bytes] = []
        if limits.storage:
            parts.append(b"STORAGE %d %d" % (_kib(usage.storage), limits.storage // 1024))
        if limits.messages:
            parts.append(b"MESSAGE %d %d" % (usage.messages, limits.messages))
        return b"* QUOTA " + fmt.astring(ROOT) + b" (" + b" ".join(parts) + b")\r\n"

    def _usage_now(self) -> tuple[quota.Usage, quota.Limits]:
        """Usage and limits of the account (blocks: database and maildirsize)."""
        root, limits = self._quota_of()
        if limits.unlimited:
            return quota.Usage(0, 0), limits
        return quota.usage(root, limits), limits

    async def _getquotaroot(self, cmd: Command) -> Action:
        assert isinstance(cmd, MailboxCommand)
        tree = self._tree()
        name = "INBOX" if cmd.mailbox.upper() == "INBOX" else cmd.mailbox

        def lookup() -> tuple[bool, quota.Usage, quota.Limits]:
            if not tree.exists(name):
                return False, quota.Usage(0, 0), quota.Limits()
            return True, *self._usage_now()

        exists, usage, limits = await self.run_in_thread(lookup)
        if not exists:
            raise Refused("no such mailbox", code="NONEXISTENT")
        line = b"* QUOTAROOT " + fmt.mailbox(name)
        if limits.unlimited:
            self._untagged(line + b"\r\n")
        else:
            self._untagged(line + b" " + fmt.astring(ROOT) + b"\r\n")
            self._untagged(self._quota_response(usage, limits))
        self._ok(cmd.tag, "GETQUOTAROOT completed")
        return Action.NONE

    async def _getquota(self, cmd: Command) -> Action:
        assert isinstance(cmd, Quota)
        usage, limits = await self.run_in_thread(self._usage_now)
        if cmd.root != ROOT or limits.unlimited:
            raise Refused("no such quota root", code="NONEXISTENT")
        self._untagged(self._quota_response(usage, limits))
        self._ok(cmd.tag, "GETQUOTA completed")
        return Action.NONE

    async def _setquota(self, cmd: Command) -> Action:
        assert isinstance(cmd, Quota)
        # RFC 9208 4.1.3: without QUOTASET the server may refuse; limits are set with
        # `pymaild creds quota` by the administrator.
        raise Refused("quota limits are set by the administrator", code="NOPERM")
