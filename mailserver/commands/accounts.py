"""``pymaild creds|imap-acct|alias|catch-all``: manage accounts, aliases and catch-alls.

``creds`` is the main command; ``imap-acct`` exists for people coming from maddy, where
credentials and IMAP storage accounts are separate: here one account is both, so
``imap-acct create`` makes the Maildir for an existing login (or a full account).
"""

from __future__ import annotations

import argparse
import getpass
import sqlite3
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from ..auth.store import MAX_PASSWORD_LENGTH, AccountError, AccountStore
from ..config import Config, parse_size
from ..fsutil import describe_error, is_disk_full, mkdir_durable
from ..storage import quota
from . import CommandError

T = TypeVar("T")


def _store(cfg: Config) -> AccountStore:
    try:
        mkdir_durable(cfg.state_path, 0o750)  # a power cut must not take a new state_dir
        return AccountStore.in_state_dir(cfg.state_path)
    except OSError as exc:
        raise CommandError(f"{cfg.state_dir}: {exc.strerror or exc}") from None
    except sqlite3.DatabaseError as exc:  # not a database, or damaged: say which file
        raise CommandError(f"{cfg.accounts_db}: {exc} (restore it from a backup)") from None


def _do(cfg: Config, action: Callable[[AccountStore], T]) -> T:
    """Run one store operation; its AccountError becomes the command's one-line error,
    and so does a disk that refuses the write (full, I/O error): nothing was changed."""
    try:
        return action(_store(cfg))
    except AccountError as exc:
        raise CommandError(str(exc)) from None
    except (OSError, sqlite3.Error) as exc:
        what = "no space left on the disk" if is_disk_full(exc) else "cannot write"
        raise CommandError(f"{cfg.state_dir}: {what}, not done ({describe_error(exc)})") from None


def _check_domain(cfg: Config, address: str) -> None:
    domain = address.rpartition("@")[2].rstrip(".").lower()
    if "@" in address and not cfg.is_local_domain(domain):
        raise CommandError(f"{domain} is not in local_domains of {cfg.path}; add it there first")


def _password_from_stdin() -> str:
    """The first line of standard input, read as bytes and bounded: a binary file or an
    endless stream piped in by mistake gives a one-line error, not a traceback or a hang
    on megabytes of input."""
    limit = MAX_PASSWORD_LENGTH * 4 + 2  # UTF-8 octets of the longest password, plus CRLF
    too_long = f"password on standard input is longer than {MAX_PASSWORD_LENGTH} characters"
    stream = getattr(sys.stdin, "buffer", None)
    try:
        line = stream.readline(limit) if stream is not None else sys.stdin.readline(limit).encode()
    except OSError as exc:
        raise CommandError(f"cannot read the password from standard input: {exc.strerror or exc}") from None
    if len(line) >= limit and not line.endswith(b"\n"):
        raise CommandError(too_long)
    raw = line.rstrip(b"\r\n")
    if not raw:
        raise CommandError("no password on standard input")
    try:
        password = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("password on standard input is not UTF-8 text") from None
    if len(password) > MAX_PASSWORD_LENGTH:
        raise CommandError(too_long)
    return password


def read_password(args: argparse.Namespace, *, confirm: bool = True) -> str:
    if args.password_stdin:
        return _password_from_stdin()
    if not sys.stdin.isatty():
        raise CommandError("no terminal to prompt for a password: use --password-stdin")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise CommandError("passwords do not match")
    return password


def _create(args: argparse.Namespace, cfg: Config) -> int:
    _check_domain(cfg, args.address)
    if args.command == "imap-acct":
        store = _store(cfg)
        if store.get_account(args.address) is not None:
            # maddy's flow is `creds create` then `imap-acct create`: here one account is
            # both, so the second step only makes sure the mailbox exists.
            from ..storage.maildirpp import create_maildirpp

            path = store.maildir_path(args.address)
            create_maildirpp(path)
            print(f"mailbox ready for {args.address.lower()} ({path})")
            return 0
    password = read_password(args)
    account = _do(cfg, lambda store: store.create_account(args.address, password))
    print(f"created {account.address} (mailbox {_store(cfg).maildir_path(account.address)})")
    return 0


def _password(args: argparse.Namespace, cfg: Config) -> int:
    password = read_password(args)
    _do(cfg, lambda store: store.set_password(args.address, password))
    print(f"password changed for {args.address.lower()}")
    return 0


def _remove(args: argparse.Namespace, cfg: Config) -> int:
    _do(cfg, lambda store: store.remove_account(args.address, purge_mail=args.purge_mail))
    kept = "" if args.purge_mail else " (its mail stays on disk; --purge-mail deletes it)"
    print(f"removed {args.address.lower()}{kept}")
    return 0


def _list(args: argparse.Namespace, cfg: Config) -> int:
    store = _store(cfg)
    store.default_quota = _default_quota(cfg)
    for account in store.list_accounts():
        limits = store.quota_limits(account.address)
        shown = "" if limits.unlimited else f"  (quota {_limits_text(limits)})"
        print(account.address + ("  (disabled)" if account.disabled else "") + shown)
    return 0


def _default_quota(cfg: Config) -> quota.Limits:
    return quota.Limits(cfg.quota.default_storage, cfg.quota.default_messages)


def format_size(n: int) -> str:
    """Bytes the way the config writes them: ``500M``, ``2G``, ``1536K``, ``1000``."""
    for unit, factor in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _limits_text(limits: quota.Limits) -> str:
    storage = format_size(limits.storage) if limits.storage else "unlimited"
    messages = f"{limits.messages} messages" if limits.messages else "unlimited messages"
    return f"{storage}, {messages}"


def _parse_quota_size(text: str) -> int:
    if text.lower() in ("none", "unlimited", "0"):
        return 0
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise CommandError(f"{text}: {exc} (or 'none', or 'default')") from None
    if size < 1024:
        raise CommandError(f"{text}: a quota under 1K cannot hold a message (RFC 9208 counts KiB)")
    return size


def _quota(args: argparse.Namespace, cfg: Config) -> int:
    """Set (SIZE [--messages N]), reset (``default``) or show (no SIZE) an account's quota."""
    store = _store(cfg)
    store.default_quota = _default_quota(cfg)
    address = args.address.lower()
    if args.size is None:
        if args.messages is not None:
            raise CommandError("--messages needs SIZE too (use 'none' for no storage limit)")
        if _do(cfg, lambda s: s.get_account(address)) is None:
            raise CommandError(f"no account {address}")
        own = store.own_quota(address)
        limits = store.quota_limits(address)
        # Read-only: the CLI may run as another user than the daemon and must not create
        # maildirsize with its owner.
        used = quota.peek_usage(store.maildir_path(address))
        source = "its own" if own is not None else "the [quota] default"
        print(f"{address}: quota {_limits_text(limits)} ({source});"
              f" in use {used.storage} bytes, {used.messages} messages")
        return 0
    if args.size.lower() == "default":
        if args.messages is not None:
            raise CommandError("'default' takes no --messages")
        _do(cfg, lambda s: s.set_quota(address, None))
        print(f"{address}: quota back to the [quota] default"
              f" ({_limits_text(store.default_quota)})")
        return 0
    if args.messages is not None and args.messages < 0:
        raise CommandError("--messages must be 0 (unlimited) or more")
    limits = quota.Limits(_parse_quota_size(args.size), args.messages or 0)
    _do(cfg, lambda s: s.set_quota(address, limits))
    print(f"{address}: quota {_limits_text(limits)}")
    return 0


def _alias_add(args: argparse.Namespace, cfg: Config) -> int:
    _check_domain(cfg, args.alias)
    _do(cfg, lambda store: store.add_alias(args.alias, args.target))
    print(f"alias {args.alias.lower()} -> {args.target.lower()}")
    return 0


def _alias_remove(args: argparse.Namespace, cfg: Config) -> int:
    _do(cfg, lambda store: store.remove_alias(args.alias, args.target))
    print(f"removed alias {args.alias.lower()}")
    return 0


def _alias_list(args: argparse.Namespace, cfg: Config) -> int:
    for alias, target in _store(cfg).list_aliases():
        print(f"{alias} -> {target}")
    return 0


def _catch_all_set(args: argparse.Namespace, cfg: Config) -> int:
    if not cfg.is_local_domain(args.domain):
        raise CommandError(f"{args.domain} is not in local_domains of {cfg.path}")
    _do(cfg, lambda store: store.set_catch_all(args.domain, None if args.target == "none" else args.target))
    print(f"catch-all for {args.domain.lower()}: {args.target}")
    return 0


def _catch_all_list(args: argparse.Namespace, cfg: Config) -> int:
    for domain, target in _store(cfg).list_catch_all():
        print(f"{domain} -> {target}")
    return 0


def _sender_allow(args: argparse.Namespace, cfg: Config) -> int:
    _do(cfg, lambda store: store.allow_sender(args.account, args.address))
    print(f"{args.account.lower()} may now send as {args.address.lower()}")
    return 0


def _sender_deny(args: argparse.Namespace, cfg: Config) -> int:
    _do(cfg, lambda store: store.deny_sender(args.account, args.address))
    print(f"{args.account.lower()} may no longer send as {args.address.lower()}")
    return 0


def _sender_list(args: argparse.Namespace, cfg: Config) -> int:
    store = _store(cfg)
    accounts = [args.account] if args.account else [a.address for a in store.list_accounts()]
    for account in accounts:
        try:
            addresses = sorted(store.sender_addresses(account))
        except AccountError as exc:
            raise CommandError(str(exc)) from None
        print(f"{account.lower()}: {', '.join(addresses)}")
    return 0


def _add_password_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")


def register(sub: argparse._SubParsersAction[Any]) -> None:  # Any: the parser class is cli._Parser
    for name, help_text in (("creds", "manage accounts (login + mailbox)"),
                            ("imap-acct", "maddy-compatible alias of creds for IMAP accounts")):
        cmd = sub.add_parser(name, help=help_text)
        actions = cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = actions.add_parser("create", help="create an account with its Maildir")
        create.add_argument("address")
        _add_password_flag(create)
        create.set_defaults(func=_create)
        remove = actions.add_parser("remove", help="remove an account (mail is kept)")
        remove.add_argument("address")
        remove.add_argument("--purge-mail", action="store_true", help="also delete the Maildir")
        remove.set_defaults(func=_remove)
        lst = actions.add_parser("list", help="list accounts")
        lst.set_defaults(func=_list)
        if name == "creds":
            q = actions.add_parser(
                "quota", help="show or set an account's quota (RFC 9208 STORAGE and MESSAGE)")
            q.add_argument("address")
            q.add_argument("size", nargs="?", help="e.g. 500M, 2G; 'none' for no storage limit;"
                           " 'default' for the [quota] defaults; omit to show")
            q.add_argument("--messages", type=int, metavar="N",
                           help="at most N messages (0: no limit)")
            q.set_defaults(func=_quota)
            password = actions.add_parser("password", help="change an account's password")
            password.add_argument("address")
            _add_password_flag(password)
            password.set_defaults(func=_password)

    alias = sub.add_parser("alias", help="manage aliases (alias -> account)")
    actions = alias.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="deliver mail for ALIAS to TARGET")
    add.add_argument("alias")
    add.add_argument("target")
    add.set_defaults(func=_alias_add)
    rm = actions.add_parser("remove", help="remove an alias (all its targets, or one)")
    rm.add_argument("alias")
    rm.add_argument("target", nargs="?")
    rm.set_defaults(func=_alias_remove)
    actions.add_parser("list", help="list aliases").set_defaults(func=_alias_list)

    sender = sub.add_parser("sender", help="extra addresses an account may send as")
    actions = sender.add_subparsers(dest="action", required=True, metavar="ACTION")
    allow = actions.add_parser("allow", help="let ACCOUNT send as ADDRESS (or @domain for all of it)")
    allow.add_argument("account")
    allow.add_argument("address")
    allow.set_defaults(func=_sender_allow)
    deny = actions.add_parser("deny", help="take back an address given with allow")
    deny.add_argument("account")
    deny.add_argument("address")
    deny.set_defaults(func=_sender_deny)
    slist = actions.add_parser("list", help="what each account may send as (itself, aliases, extras)")
    slist.add_argument("account", nargs="?")
    slist.set_defaults(func=_sender_list)

    catch = sub.add_parser("catch-all", help="deliver unknown addresses of a domain to one account")
    actions = catch.add_subparsers(dest="action", required=True, metavar="ACTION")
    st = actions.add_parser("set", help="set DOMAIN's catch-all to TARGET ('none' removes it)")
    st.add_argument("domain")
    st.add_argument("target")
    st.set_defaults(func=_catch_all_set)
    actions.add_parser("list", help="list catch-alls").set_defaults(func=_catch_all_list)
