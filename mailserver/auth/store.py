"""Accounts, aliases and catch-alls in SQLite, and the recipient lookup built on them.

The database lives at ``state_dir/accounts.db`` and mailboxes under ``state_dir/mail``
as ``mail/<domain>/<local>/`` (Maildir++, see :mod:`mailserver.storage.maildirpp`).

Threading: every method is synchronous and uses a SQLite connection of the calling
thread (opened on first use), so one ``AccountStore`` may be shared by any number of
threads (the daemon calls it through ``asyncio.to_thread``) and by other processes (the
``pymaild creds`` CLI writes while the daemon reads); each call is one transaction.
WAL mode lets readers go on while a writer commits; writers take the lock up front
(``BEGIN IMMEDIATE``) and wait up to ``busy_timeout`` for each other.

Addresses are stored normalised (:func:`normalize_address`): local part and domain
lowercased (we treat local parts case-insensitively), trailing dot removed, IDN
domains as A-labels. Every method accepts un-normalised input.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
import time
import unicodedata
import weakref
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher

from mailserver.auth.passwords import hash_password
from mailserver.storage.maildirpp import create_maildirpp, make_dirs
from mailserver.storage.quota import Limits

SCHEMA_VERSION = 3
MAX_ALIAS_DEPTH = 10
MAX_PASSWORD_LENGTH = 1024

# Mailbox names RFC 5321 4.5.1 / RFC 2142 require every domain to accept.
ROLE_MAILBOXES = ("postmaster", "abuse")


class AccountError(Exception):
    """Base of all account store errors; ``str(err)`` is one line fit for a user."""


class AccountExists(AccountError):
    """The address is already taken (by an account, or by an alias for create_account)."""


class NoSuchAccount(AccountError):
    """No account with that address."""


class NoSuchAlias(AccountError):
    """No alias (or alias -> target pair) with that address."""


class InvalidAddress(AccountError, ValueError):
    """The text is not an address we accept as local@domain."""


class InvalidPassword(AccountError, ValueError):
    """The password cannot be used (empty, too long, or contains NUL/CR/LF)."""


@dataclass(frozen=True, slots=True)
class Account:
    address: str  # normalised local@domain
    created_at: int  # unix time, seconds
    disabled: bool  # disabled accounts cannot log in but still receive mail

    @property
    def local(self) -> str:
        return self.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


# ---------------------------------------------------------------------------- addresses

# RFC 5322 atext without "/", which would be a path separator in mail/<domain>/<local>/.
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-=?^_`{|}~")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def normalize_domain(domain: str) -> str:
    """Lowercase, strip one trailing dot, IDN to A-labels; raise InvalidAddress if bad."""
    if not isinstance(domain, str):
        raise InvalidAddress(f"invalid domain {domain!r}: not a string")
    d = domain[:-1] if domain.endswith(".") else domain
    d = d.lower()
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidAddress(f"invalid domain {domain!r}: not a valid IDN") from None
    if not d:
        raise InvalidAddress(f"invalid domain {domain!r}: empty")
    if len(d) > 253:
        raise InvalidAddress(f"invalid domain {domain!r}: longer than 253 characters")
    for label in d.split("."):
        if not label:
            raise InvalidAddress(f"invalid domain {domain!r}: empty label")
        if len(label) > 63:
            raise InvalidAddress(f"invalid domain {domain!r}: label longer than 63 characters")
        if not set(label) <= _LDH or label[0] == "-" or label[-1] == "-":
            raise InvalidAddress(
                f"invalid domain {domain!r}: only letters, digits and inner hyphens allowed"
            )
    return d


def _normalize_sender(address: str) -> str:
    if address.startswith("@"):
        return "@" + normalize_domain(address[1:])
    return normalize_address(address)


def normalize_address(address: str) -> str:
    """``Local@Domain.`` -> ``local@domain``; raise InvalidAddress if not acceptable.

    Accepted: a dot-atom local part (RFC 5322 atext except ``/``, or non-ASCII
    printable characters for SMTPUTF8, NFC-normalised) of at most 64 octets, ``@``, and
    a DNS domain; 254 octets at most in all. Rejected: quotes, whitespace, CR/LF, NUL,
    control characters, source routes, domain literals, empty parts.
    """
    if not isinstance(address, str):
        raise InvalidAddress(f"invalid address {address!r}: not a string")
    local, at, domain = address.rpartition("@")
    if not at:
        raise InvalidAddress(f"invalid address {address!r}: no @")
    if not local:
        raise InvalidAddress(f"invalid address {address!r}: empty local part")
    local = unicodedata.normalize("NFC", local).lower()
    for ch in local:
        if ch == ".":
            continue
        if ch.isascii():
            if ch not in _ATEXT:
                raise InvalidAddress(f"invalid address {address!r}: character {ch!r} not allowed")
        elif not ch.isprintable() or ch.isspace():
            raise InvalidAddress(f"invalid address {address!r}: character {ch!r} not allowed")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidAddress(f"invalid address {address!r}: misplaced dot in local part")
    if len(local.encode("utf-8")) > 64:
        raise InvalidAddress(f"invalid address {address!r}: local part longer than 64 octets")
    try:
        dom = normalize_domain(domain)
    except InvalidAddress:
        raise InvalidAddress(f"invalid address {address!r}: bad domain") from None
    result = f"{local}@{dom}"
    if len(result.encode("utf-8")) > 254:
        raise InvalidAddress(f"invalid address {address!r}: longer than 254 octets")
    return result


def _check_password(password: str) -> None:
    if not isinstance(password, str) or not password:
        raise InvalidPassword("password must not be empty")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidPassword(f"password longer than {MAX_PASSWORD_LENGTH} characters")
    # SASL PLAIN separates fields with NUL; CR/LF cannot be typed at a login prompt.
    if any(c in password for c in "\x00\r\n"):
        raise InvalidPassword("password must not contain NUL, CR or LF")


# ---------------------------------------------------------------------------- schema

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE accounts (
    address TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1))
) WITHOUT ROWID;
CREATE INDEX accounts_by_domain ON accounts (domain, disabled, address);
CREATE TABLE aliases (
    alias TEXT NOT NULL,
    target TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (alias, target)
) WITHOUT ROWID;
CREATE TABLE catch_all (domain TEXT PRIMARY KEY, target TEXT NOT NULL) WITHOUT ROWID;
"""

# v2: extra addresses an account may send as (besides itself and its aliases).
# ``address`` is a full address or "@domain" for any address of that domain.
_SCHEMA_V2 = """
CREATE TABLE senders (
    account TEXT NOT NULL,
    address TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account, address)
) WITHOUT ROWID;
"""

# v3: per-account quota limits (RFC 9208 STORAGE in bytes, MESSAGE a count; 0 = none).
# An account without a row has the [quota] defaults of the config.
_SCHEMA_V3 = """
CREATE TABLE quotas (
    address TEXT PRIMARY KEY,
    storage INTEGER NOT NULL CHECK (storage >= 0),
    messages INTEGER NOT NULL CHECK (messages >= 0)
) WITHOUT ROWID;
"""

# _MIGRATIONS[n] upgrades schema version n to n+1. Append, never edit a shipped entry.
_MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
assert len(_MIGRATIONS) == SCHEMA_VERSION


class AccountStore:
    """Accounts, aliases and catch-alls; see the module docstring for threading rules."""

    def __init__(
        self,
        db_path: Path | str,
        mail_root: Path | str,
        *,
        hasher: PasswordHasher | None = None,
        busy_timeout: float = 10.0,
    ) -> None:
        """Open (creating and migrating if needed) the database at ``db_path``.

        ``hasher`` sets the argon2 parameters for new hashes (default: production
        argon2id); ``busy_timeout`` is how long a call waits for another writer.
        Raises AccountError if the database was made by a newer pymaild.
        """
        self.db_path = Path(db_path)
        self.mail_root = Path(mail_root)
        self.hasher = hasher
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        # Weak: a connection dies with its thread (thread-local storage is freed then).
        self._conns: weakref.WeakSet[_Held] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        #: Limits of accounts without their own (the config's [quota] defaults).
        self.default_quota = Limits()
        self._init_db()

    @classmethod
    def in_state_dir(
        cls,
        state_dir: Path | str,
        *,
        hasher: PasswordHasher | None = None,
        busy_timeout: float = 10.0,
    ) -> AccountStore:
        """The store at ``state_dir/accounts.db`` with mail under ``state_dir/mail``."""
        state = Path(state_dir)
        return cls(
            state / "accounts.db", state / "mail", hasher=hasher, busy_timeout=busy_timeout
        )

    # ------------------------------------------------------------------ accounts

    def create_account(self, address: str, password: str) -> Account:
        """Create an account and its Maildir++ mailbox; return it.

        Raises InvalidAddress, InvalidPassword, or AccountExists (also when an alias
        has that address: an account would silently shadow it). An existing mailbox on
        disk (from a removed account) is kept and reused.
        """
        addr = normalize_address(address)
        _check_password(password)
        with self._reading() as c:
            self._check_free(c, addr)
        pw_hash = hash_password(password, self.hasher)  # slow: outside any transaction
        # Mailbox first: a crash in between leaves an empty mailbox, never an account
        # whose mail has nowhere to go.
        create_maildirpp(self.maildir_path(addr))
        now = int(time.time())
        with self._writing() as c:
            self._check_free(c, addr)
            c.execute(
                "INSERT INTO accounts (address, domain, password_hash, created_at)"
                " VALUES (?, ?, ?, ?)",
                (addr, addr.rpartition("@")[2], pw_hash, now),
            )
        return Account(addr, now, False)

    def set_password(self, address: str, password: str) -> None:
        """Replace the password hash. Raises NoSuchAccount, InvalidPassword."""
        addr = normalize_address(address)
        _check_password(password)
        if self.get_account(addr) is None:  # fail fast, before the slow hash
            raise NoSuchAccount(f"no account {addr}")
        pw_hash = hash_password(password, self.hasher)
        self.set_password_hash(addr, pw_hash)

    def set_password_hash(self, address: str, password_hash: str) -> None:
        """Store an already computed hash (e.g. a rehash after login, or an import).

        Raises NoSuchAccount.
        """
        addr = normalize_address(address)
        with self._writing() as c:
            cur = c.execute(
                "UPDATE accounts SET password_hash = ? WHERE address = ?", (password_hash, addr)
            )
            if cur.rowcount == 0:
                raise NoSuchAccount(f"no account {addr}")

    def replace_password_hash(self, address: str, old_hash: str, new_hash: str) -> bool:
        """Store ``new_hash`` only if the stored hash is still ``old_hash`` (an upgrade
        after login must not undo a password change made meanwhile). True if replaced."""
        addr = normalize_address(address)
        with self._writing() as c:
            cur = c.execute(
                "UPDATE accounts SET password_hash = ? WHERE address = ? AND password_hash = ?",
                (new_hash, addr, old_hash),
            )
            return cur.rowcount == 1

    def set_disabled(self, address: str, disabled: bool) -> None:
        """Disable (no login; mail is still delivered) or re-enable an account."""
        addr = normalize_address(address)
        with self._writing() as c:
            cur = c.execute(
                "UPDATE accounts SET disabled = ? WHERE address = ?", (int(disabled), addr)
            )
            if cur.rowcount == 0:
                raise NoSuchAccount(f"no account {addr}")

    def remove_account(self, address: str, *, purge_mail: bool = False) -> None:
        """Remove the account. Its mailbox stays on disk unless ``purge_mail=True``.

        Aliases pointing at it are kept (they stop resolving until an account with
        that address exists again). Raises NoSuchAccount.
        """
        addr = normalize_address(address)
        with self._writing() as c:
            cur = c.execute("DELETE FROM accounts WHERE address = ?", (addr,))
            if cur.rowcount == 0:
                raise NoSuchAccount(f"no account {addr}")
            c.execute("DELETE FROM quotas WHERE address = ?", (addr,))
        if purge_mail:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.maildir_path(addr))

    def get_account(self, address: str) -> Account | None:
        """The account, or None if there is none or the address is not valid."""
        try:
            addr = normalize_address(address)
        except InvalidAddress:
            return None
        with self._reading() as c:
            row = c.execute(
                "SELECT address, created_at, disabled FROM accounts WHERE address = ?", (addr,)
            ).fetchone()
        return Account(row[0], row[1], bool(row[2])) if row else None

    def list_accounts(self, domain: str | None = None) -> list[Account]:
        """All accounts (or those of ``domain``), sorted by address."""
        with self._reading() as c:
            if domain is None:
                rows = c.execute(
                    "SELECT address, created_at, disabled FROM accounts ORDER BY address"
                ).fetchall()
            else:
                rows = c.execute(
                    "SELECT address, created_at, disabled FROM accounts WHERE domain = ?"
                    " ORDER BY address",
                    (normalize_domain(domain),),
                ).fetchall()
        return [Account(a, t, bool(d)) for a, t, d in rows]

    def password_hash(self, address: str) -> str | None:
        """The stored hash for login, or None if the account is unknown, disabled, or
        the address invalid. Feed None to PasswordChecker.verify anyway (constant time)."""
        try:
            addr = normalize_address(address)
        except InvalidAddress:
            return None
        with self._reading() as c:
            row = c.execute(
                "SELECT password_hash FROM accounts WHERE address = ? AND disabled = 0", (addr,)
            ).fetchone()
        return row[0] if row else None

    def set_quota(self, address: str, limits: Limits | None) -> None:
        """Give the account its own limits, or (None) the config's defaults again."""
        addr = normalize_address(address)
        with self._writing() as c:
            if not c.execute("SELECT 1 FROM accounts WHERE address = ?", (addr,)).fetchone():
                raise NoSuchAccount(f"no account {addr}")
            if limits is None:
                c.execute("DELETE FROM quotas WHERE address = ?", (addr,))
            else:
                c.execute(
                    "INSERT INTO quotas (address, storage, messages) VALUES (?, ?, ?)"
                    " ON CONFLICT (address) DO UPDATE SET storage = excluded.storage,"
                    " messages = excluded.messages",
                    (addr, limits.storage, limits.messages),
                )

    def own_quota(self, address: str) -> Limits | None:
        """The account's own limits, or None when it has the config's defaults."""
        try:
            addr = normalize_address(address)
        except InvalidAddress:
            return None
        with self._reading() as c:
            row = c.execute(
                "SELECT storage, messages FROM quotas WHERE address = ?", (addr,)
            ).fetchone()
        return Limits(row[0], row[1]) if row else None

    def quota_limits(self, address: str) -> Limits:
        """The limits that apply to the account: its own, else :attr:`default_quota`."""
        own = self.own_quota(address)
        return self.default_quota if own is None else own

    def maildir_path(self, address: str) -> Path:
        """``mail_root/<domain>/<local>/`` of an address (need not exist yet)."""
        local, _, domain = normalize_address(address).rpartition("@")
        return self.mail_root / domain / local

    # ------------------------------------------------------------------ aliases

    def add_alias(self, alias: str, target: str) -> None:
        """Route mail for ``alias`` to ``target`` too (an alias may have several
        targets; adding an existing pair is a no-op). The target may be an account or
        another alias, and need not exist yet. Raises AccountExists if ``alias`` is an
        account, AccountError if it points at itself."""
        a, t = normalize_address(alias), normalize_address(target)
        if a == t:
            raise AccountError(f"alias {a} cannot point at itself")
        with self._writing() as c:
            if c.execute("SELECT 1 FROM accounts WHERE address = ?", (a,)).fetchone():
                raise AccountExists(f"{a} is an account; an alias of that name would never apply")
            c.execute(
                "INSERT OR IGNORE INTO aliases (alias, target, created_at) VALUES (?, ?, ?)",
                (a, t, int(time.time())),
            )

    def remove_alias(self, alias: str, target: str | None = None) -> None:
        """Remove one ``alias -> target`` pair, or every target of ``alias`` if None.

        Raises NoSuchAlias if nothing matched.
        """
        a = normalize_address(alias)
        with self._writing() as c:
            if target is None:
                cur = c.execute("DELETE FROM aliases WHERE alias = ?", (a,))
            else:
                t = normalize_address(target)
                cur = c.execute("DELETE FROM aliases WHERE alias = ? AND target = ?", (a, t))
            if cur.rowcount == 0:
                what = a if target is None else f"{a} -> {normalize_address(target)}"
                raise NoSuchAlias(f"no alias {what}")

    def list_aliases(self) -> list[tuple[str, str]]:
        """All ``(alias, target)`` pairs, sorted."""
        with self._reading() as c:
            return [
                (a, t)
                for a, t in c.execute("SELECT alias, target FROM aliases ORDER BY alias, target")
            ]

    def allow_sender(self, account: str, address: str) -> None:
        """Let ``account`` also send as ``address`` ("user@domain", or "@domain" for all)."""
        acct = normalize_address(account)
        addr = _normalize_sender(address)
        with self._writing() as c:
            if c.execute("SELECT 1 FROM accounts WHERE address = ?", (acct,)).fetchone() is None:
                raise NoSuchAccount(f"no account {acct}")
            c.execute("INSERT OR IGNORE INTO senders (account, address, created_at) VALUES (?, ?, ?)",
                      (acct, addr, int(time.time())))

    def deny_sender(self, account: str, address: str) -> None:
        acct, addr = normalize_address(account), _normalize_sender(address)
        with self._writing() as c:
            cur = c.execute("DELETE FROM senders WHERE account = ? AND address = ?", (acct, addr))
            if cur.rowcount == 0:
                raise AccountError(f"{acct} has no extra sender {addr}")

    def list_senders(self, account: str | None = None) -> list[tuple[str, str]]:
        with self._reading() as c:
            if account is None:
                rows = c.execute("SELECT account, address FROM senders ORDER BY account, address")
            else:
                rows = c.execute("SELECT account, address FROM senders WHERE account = ? ORDER BY address",
                                 (normalize_address(account),))
            return [(a, b) for a, b in rows]

    def sender_addresses(self, account: str) -> set[str]:
        """Addresses ``account`` may send as: itself, every alias that reaches it, and the
        extra senders allowed with :meth:`allow_sender` ("@domain" entries stand for a
        whole domain; the caller matches them).

        Walks the alias table backwards (an alias of an alias counts), at most
        MAX_ALIAS_DEPTH levels. Catch-alls and the postmaster fallback do not count: they
        route mail to the account, they do not make an address the account's.
        """
        start = normalize_address(account)
        owned = {start}
        frontier = [start]
        with self._reading() as c:
            owned.update(a for (a,) in c.execute("SELECT address FROM senders WHERE account = ?", (start,)))
            for _ in range(MAX_ALIAS_DEPTH):
                if not frontier:
                    break
                marks = ",".join("?" * len(frontier))
                rows = c.execute(f"SELECT alias FROM aliases WHERE target IN ({marks})", frontier)
                frontier = [a for (a,) in rows if a not in owned]
                owned.update(frontier)
        return owned

    def set_catch_all(self, domain: str, target: str | None) -> None:
        """Route mail for unknown addresses of ``domain`` to ``target``; None removes it."""
        d = normalize_domain(domain)
        with self._writing() as c:
            if target is None:
                c.execute("DELETE FROM catch_all WHERE domain = ?", (d,))
            else:
                c.execute(
                    "INSERT INTO catch_all (domain, target) VALUES (?, ?)"
                    " ON CONFLICT (domain) DO UPDATE SET target = excluded.target",
                    (d, normalize_address(target)),
                )

    def list_catch_all(self) -> list[tuple[str, str]]:
        """All ``(domain, target)`` pairs, sorted by domain."""
        with self._reading() as c:
            rows = c.execute("SELECT domain, target FROM catch_all ORDER BY domain")
            return [(d, t) for d, t in rows]

    # ------------------------------------------------------------------ routing

    def resolve(
        self,
        address: str,
        *,
        local_domains: Collection[str],
        primary_domain: str,
        plus_separator: str = "+",
        postmaster: str = "",
    ) -> list[str] | None:
        """The account addresses whose mailboxes must receive mail for ``address``.

        None means unknown (answer 550 5.1.1); so does a domain not in
        ``local_domains``. Raises InvalidAddress for text that is no address (answer
        501 5.1.3). The bare ``postmaster`` of RFC 5321 4.5.1 counts as
        ``postmaster@<primary_domain>``. Rules, first match wins:

        1. an account with that address;
        2. an alias: its targets, recursively (at most 10 levels, loops cut), keeping
           only targets that end at accounts; several targets give several accounts;
        3. plus-addressing: ``bob+tag@d`` resolves as ``bob@d`` (rules 1-3; an empty
           ``plus_separator`` turns this off);
        4. ``postmaster@`` / ``abuse@`` of a local domain are always accepted:
           ``abuse@d`` falls back to ``postmaster@d`` (rules 1-3), then to the
           ``postmaster`` argument (config ``accounts.postmaster``), then the first
           enabled (else any) account of the domain by address, then of the primary
           domain, and finally ``postmaster@<primary_domain>`` itself, whose Maildir
           the writer creates on first delivery - so no mail is refused or lost
           before the first account exists;
        5. the domain's catch-all target (rules 1-3).

        Only SQLite reads, all in one snapshot; no filesystem access.
        """
        primary = normalize_domain(primary_domain)
        if address.lower() == "postmaster":
            address = f"postmaster@{primary}"
        addr = normalize_address(address)
        local, _, domain = addr.rpartition("@")
        if domain not in {normalize_domain(d) for d in local_domains}:
            return None
        sep = plus_separator
        with self._reading() as c:  # one snapshot for all the lookups below
            found = _expand(c, addr, sep)
            if found:
                return found
            base = local.split(sep, 1)[0] if sep else local
            if base in ROLE_MAILBOXES:
                return self._role_fallback(c, base, domain, primary, postmaster, sep)
            row = c.execute("SELECT target FROM catch_all WHERE domain = ?", (domain,)).fetchone()
            if row:
                found = _expand(c, row[0], sep)
                if found:
                    return found
        return None

    def _role_fallback(
        self, c: sqlite3.Connection, role: str, domain: str, primary: str, configured: str, sep: str
    ) -> list[str]:
        if role != "postmaster":
            found = _expand(c, f"postmaster@{domain}", sep)
            if found:
                return found
        if configured:
            with contextlib.suppress(InvalidAddress):
                found = _expand(c, normalize_address(configured), sep)
                if found:
                    return found
        for d in (domain, primary):
            row = c.execute(
                "SELECT address FROM accounts WHERE domain = ? ORDER BY disabled, address LIMIT 1",
                (d,),
            ).fetchone()
            if row:
                return [row[0]]
        return [f"postmaster@{primary}"]

    # ------------------------------------------------------------------ database

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so no implicit
        # transaction stays open between calls. check_same_thread=False only so that
        # close() may close every thread's connection; each is used by its own thread.
        return sqlite3.connect(
            self.db_path,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use.

        Connections are kept per thread because opening one costs ~0.6 ms (the last
        close of a WAL database checkpoints and deletes the -wal file), 10x a lookup.
        """
        held: _Held | None = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():  # never reuse a connection after fork
            held = _Held(self._connect())
            self._local.held = held
            with self._conns_lock:
                self._conns.add(held)
        return held.conn

    def close(self) -> None:
        """Close every thread's connection. Only at shutdown, when no call is running;
        the store stays usable (the next call opens a new connection)."""
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for held in conns:
            held.conn.close()
        self._local = threading.local()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees one consistent snapshot."""
        with self._transaction("BEGIN") as c:
            yield c

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE: take the write lock now, so a read-then-write cannot fail halfway
        # with SQLITE_BUSY after deciding on a stale view.
        with self._transaction("BEGIN IMMEDIATE") as c:
            yield c

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        c = self._conn()
        if c.in_transaction:  # left over by an interrupted call; never build on it
            c.execute("ROLLBACK")
        c.execute(begin)
        try:
            yield c
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        # Also ends read transactions: an open one would pin this thread to an old
        # snapshot forever and keep the WAL from being checkpointed.
        c.execute("COMMIT")

    def _check_free(self, c: sqlite3.Connection, addr: str) -> None:
        if c.execute("SELECT 1 FROM accounts WHERE address = ?", (addr,)).fetchone():
            raise AccountExists(f"account {addr} already exists")
        if c.execute("SELECT 1 FROM aliases WHERE alias = ? LIMIT 1", (addr,)).fetchone():
            raise AccountExists(f"{addr} is an alias; remove the alias first")

    def _init_db(self) -> None:
        make_dirs(self.db_path.parent, durable=True)
        # Password hashes inside: create the file 0600 before SQLite does it with 0644.
        # SQLite gives the -wal and -shm files the same mode.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        c = self._connect()
        try:
            # Persistent in the file; a no-op once set.
            c.execute("PRAGMA journal_mode = WAL")
            c.execute("BEGIN IMMEDIATE")
            try:
                version = _schema_version(c)
                if version > SCHEMA_VERSION:
                    raise AccountError(
                        f"{self.db_path} has schema version {version}; this pymaild knows"
                        f" only up to {SCHEMA_VERSION} (downgrade?)"
                    )
                for v in range(version, SCHEMA_VERSION):
                    # Statement by statement: executescript() would COMMIT first and
                    # break the all-or-nothing migration.
                    for statement in _MIGRATIONS[v].split(";"):
                        if statement.strip():
                            c.execute(statement)
                if version < SCHEMA_VERSION:
                    c.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (str(SCHEMA_VERSION),),
                    )
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
        finally:
            c.close()


class _Held:
    """A thread's connection (sqlite3.Connection itself cannot be weakly referenced)."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pid = os.getpid()


def _schema_version(c: sqlite3.Connection) -> int:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    if not c.execute(query).fetchone():
        return 0
    row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def _expand(c: sqlite3.Connection, addr: str, sep: str) -> list[str]:
    """Rules 1-3 of :meth:`AccountStore.resolve`: accounts reached from ``addr``."""
    out: list[str] = []
    _expand_into(c, addr, sep, 0, set(), out)
    return out


def _expand_into(
    c: sqlite3.Connection, addr: str, sep: str, depth: int, seen: set[str], out: list[str]
) -> None:
    # ``seen`` is shared by the whole walk: it cuts loops and also keeps a diamond
    # (a -> b, a -> c, b -> d, c -> d) from visiting d twice.
    if depth > MAX_ALIAS_DEPTH or addr in seen:
        return
    seen.add(addr)
    if c.execute("SELECT 1 FROM accounts WHERE address = ?", (addr,)).fetchone():
        if addr not in out:
            out.append(addr)
        return
    targets = [t for (t,) in c.execute("SELECT target FROM aliases WHERE alias = ?", (addr,))]
    if targets:
        before = len(out)
        for t in targets:
            _expand_into(c, t, sep, depth + 1, seen, out)
        if len(out) > before:
            return
    local, _, domain = addr.rpartition("@")
    if sep and sep in local:
        base = local.split(sep, 1)[0]
        if base:
            _expand_into(c, f"{base}@{domain}", sep, depth + 1, seen, out)
