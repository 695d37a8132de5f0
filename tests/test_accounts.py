"""AccountStore on a real SQLite file: accounts, aliases, catch-all and resolve()."""

from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from mailserver.auth.passwords import make_hasher, verify_password
from mailserver.auth.store import (
    MAX_ALIAS_DEPTH,
    SCHEMA_VERSION,
    Account,
    AccountError,
    AccountExists,
    AccountStore,
    InvalidAddress,
    InvalidPassword,
    NoSuchAccount,
    NoSuchAlias,
    normalize_address,
)
from mailserver.storage.maildir import MaildirWriter

CHEAP = make_hasher(time_cost=1, memory_cost_kib=8, parallelism=1)
DOMAINS = ("example.org", "example.net")
MSG = [b"Subject: kept\r\n\r\nhello\r\n"]


@pytest.fixture
def store(tmp_path: Path) -> AccountStore:
    s = AccountStore.in_state_dir(tmp_path, hasher=CHEAP)
    yield s
    s.close()


def resolve(store: AccountStore, address: str, **kw: str) -> list[str] | None:
    return store.resolve(address, local_domains=DOMAINS, primary_domain="example.org", **kw)


# ------------------------------------------------------------------ database file


def test_database_file_schema_and_modes(tmp_path: Path, store: AccountStore) -> None:
    db = tmp_path / "accounts.db"
    assert store.db_path == db and store.mail_root == tmp_path / "mail"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600  # password hashes inside
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    # Reopening the same file migrates nothing and keeps the data.
    store.create_account("bob@example.org", "pw")
    again = AccountStore.in_state_dir(tmp_path, hasher=CHEAP)
    assert again.get_account("bob@example.org") is not None
    again.close()


def test_newer_schema_is_refused(tmp_path: Path, store: AccountStore) -> None:
    with sqlite3.connect(tmp_path / "accounts.db") as c:
        c.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(AccountError, match="schema version 99"):
        AccountStore.in_state_dir(tmp_path)


# ------------------------------------------------------------------ accounts


def test_create_account(store: AccountStore) -> None:
    acct = store.create_account("Bob@Example.ORG.", "hunter2")
    assert isinstance(acct, Account)
    assert acct.address == "bob@example.org"
    assert (acct.local, acct.domain) == ("bob", "example.org")
    assert not acct.disabled and acct.created_at > 0
    assert store.get_account("BOB@example.org") == acct
    h = store.password_hash("bob@EXAMPLE.org")
    assert h is not None and h.startswith("$argon2id$")
    assert verify_password(h, "hunter2")
    root = store.maildir_path("bob@example.org")
    assert root == store.mail_root / "example.org" / "bob"
    for sub in ("cur", "new", "tmp", ".Sent/cur", ".Drafts/new", ".Trash/tmp", ".Junk/cur"):
        assert (root / sub).is_dir()


def test_create_duplicate(store: AccountStore) -> None:
    store.create_account("bob@example.org", "pw")
    for variant in ("bob@example.org", "BOB@Example.Org", "bob@example.org."):
        with pytest.raises(AccountExists, match="already exists"):
            store.create_account(variant, "other")
    assert verify_password(store.password_hash("bob@example.org") or "", "pw")


BAD_ADDRESSES = [
    "",
    "bob",
    "@example.org",
    "bob@",
    "bob@@example.org",
    "bob@example.org@",
    "bob smith@example.org",
    " bob@example.org",
    "bob@example.org ",
    "bob\t@example.org",
    "bob\r\n@example.org",
    "bob@example.org\r\nRCPT TO:<x@y>",
    "bob\n@example.org",
    "bob\x00@example.org",
    "bob\u2028@example.org",
    '"bob"@example.org',
    '"bob smith"@example.org',
    "bob'@example.org\"",
    "<bob@example.org>",
    "bob,alice@example.org",
    "@relay.example:bob@example.org",
    "bob/../x@example.org",
    "../bob@example.org",
    ".bob@example.org",
    "bob.@example.org",
    "bo..b@example.org",
    "bob@[127.0.0.1]",
    "bob@exa mple.org",
    "bob@example..org",
    "bob@.example.org",
    "bob@-example.org",
    "bob@example-.org",
    "bob@exam_ple.org",
    "bob@example.org..",
    "a" * 65 + "@example.org",
    "é" * 33 + "@example.org",  # 33 characters but 66 octets
    "bob@" + "a" * 64 + ".org",
    "b@" + ("a" * 60 + ".") * 5 + "org",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_invalid_addresses(store: AccountStore, address: str) -> None:
    with pytest.raises(InvalidAddress) as err:
        store.create_account(address, "pw")
    message = str(err.value)
    assert "\n" not in message and "\r" not in message and message.startswith("invalid")
    assert store.list_accounts() == []
    assert store.get_account(address) is None
    assert store.password_hash(address) is None


@pytest.mark.parametrize(
    ("address", "normal"),
    [
        ("Bob.Smith+Lists@Example.ORG.", "bob.smith+lists@example.org"),
        ("o'brien@example.org", "o'brien@example.org"),
        ("a!#$%&*+-=?^_`{|}~z@example.org", "a!#$%&*+-=?^_`{|}~z@example.org"),
        ("a" * 64 + "@example.org", "a" * 64 + "@example.org"),
        ("JÖRG@Bücher.Example", "jörg@xn--bcher-kva.example"),
        ("user@localhost", "user@localhost"),
    ],
)
def test_valid_addresses_normalise(address: str, normal: str) -> None:
    assert normalize_address(address) == normal


@pytest.mark.parametrize("password", ["", "a\x00b", "line\r\n", "x" * 1025])
def test_invalid_passwords(store: AccountStore, password: str) -> None:
    with pytest.raises(InvalidPassword):
        store.create_account("bob@example.org", password)
    assert store.get_account("bob@example.org") is None


def test_set_password(store: AccountStore) -> None:
    store.create_account("bob@example.org", "old")
    store.set_password("Bob@example.org", "new")
    h = store.password_hash("bob@example.org") or ""
    assert verify_password(h, "new") and not verify_password(h, "old")
    with pytest.raises(NoSuchAccount, match=r"no account alice@example\.org"):
        store.set_password("alice@example.org", "x")
    with pytest.raises(NoSuchAccount):
        store.set_password_hash("alice@example.org", h)


def test_disabled_account_cannot_log_in_but_receives_mail(store: AccountStore) -> None:
    store.create_account("bob@example.org", "pw")
    store.set_disabled("bob@example.org", True)
    assert store.password_hash("bob@example.org") is None
    assert store.get_account("bob@example.org").disabled  # type: ignore[union-attr]
    assert resolve(store, "bob@example.org") == ["bob@example.org"]
    store.set_disabled("bob@example.org", False)
    assert store.password_hash("bob@example.org") is not None
    with pytest.raises(NoSuchAccount):
        store.set_disabled("nobody@example.org", True)


def test_remove_account_keeps_mail(store: AccountStore) -> None:
    store.create_account("bob@example.org", "pw")
    root = store.maildir_path("bob@example.org")
    delivered = MaildirWriter().deliver(root, None, MSG)
    store.remove_account("BOB@example.org")
    assert store.get_account("bob@example.org") is None
    assert store.password_hash("bob@example.org") is None
    assert resolve(store, "bob@example.org") is None
    assert delivered.read_bytes() == b"".join(MSG)  # never destroy mail unasked
    with pytest.raises(NoSuchAccount):
        store.remove_account("bob@example.org")
    # Re-creating the account finds the old mail where it was.
    store.create_account("bob@example.org", "pw2")
    assert delivered.read_bytes() == b"".join(MSG)


def test_remove_account_purge_mail(store: AccountStore) -> None:
    store.create_account("bob@example.org", "pw")
    root = store.maildir_path("bob@example.org")
    MaildirWriter().deliver(root, None, MSG)
    store.remove_account("bob@example.org", purge_mail=True)
    assert not root.exists()
    assert (store.mail_root / "example.org").is_dir()


def test_list_accounts(store: AccountStore) -> None:
    for a in ("carol@example.net", "bob@example.org", "alice@example.org"):
        store.create_account(a, "pw")
    assert [a.address for a in store.list_accounts()] == [
        "alice@example.org",
        "bob@example.org",
        "carol@example.net",
    ]
    assert [a.address for a in store.list_accounts("Example.NET.")] == ["carol@example.net"]


# ------------------------------------------------------------------ aliases and catch-all


def test_alias_management(store: AccountStore) -> None:
    store.create_account("bob@example.org", "pw")
    store.create_account("alice@example.org", "pw")
    store.add_alias("Sales@example.org", "bob@example.org")
    store.add_alias("sales@example.org", "ALICE@example.org")
    store.add_alias("sales@example.org", "alice@example.org")  # same pair: no-op
    assert store.list_aliases() == [
        ("sales@example.org", "alice@example.org"),
        ("sales@example.org", "bob@example.org"),
    ]
    with pytest.raises(AccountExists, match="is an account"):
        store.add_alias("bob@example.org", "alice@example.org")
    with pytest.raises(AccountExists, match="is an alias"):
        store.create_account("sales@example.org", "pw")
    with pytest.raises(AccountError, match="itself"):
        store.add_alias("x@example.org", "X@example.org")
    store.remove_alias("sales@example.org", "bob@example.org")
    assert store.list_aliases() == [("sales@example.org", "alice@example.org")]
    with pytest.raises(NoSuchAlias):
        store.remove_alias("sales@example.org", "bob@example.org")
    store.remove_alias("sales@example.org")
    assert store.list_aliases() == []
    with pytest.raises(NoSuchAlias):
        store.remove_alias("sales@example.org")


def test_catch_all_management(store: AccountStore) -> None:
    store.set_catch_all("Example.ORG.", "bob@example.org")
    store.set_catch_all("example.org", "alice@example.org")  # replaces
    store.set_catch_all("example.net", "bob@example.org")
    assert store.list_catch_all() == [
        ("example.net", "bob@example.org"),
        ("example.org", "alice@example.org"),
    ]
    store.set_catch_all("example.net", None)
    store.set_catch_all("example.net", None)  # removing twice is fine
    assert store.list_catch_all() == [("example.org", "alice@example.org")]
    with pytest.raises(InvalidAddress):
        store.set_catch_all("bad domain", "bob@example.org")


# ------------------------------------------------------------------ resolve


def test_resolve_exact_and_unknown(store: AccountStore) -> None:
    store.create_account("bob@example.org", "pw")
    assert resolve(store, "bob@example.org") == ["bob@example.org"]
    assert resolve(store, "alice@example.org") is None
    assert resolve(store, "bob@elsewhere.example") is None  # not a local domain
    with pytest.raises(InvalidAddress):
        resolve(store, "bob\r\n@example.org")


def test_resolve_case_insensitive_and_trailing_dot(store: AccountStore) -> None:
    store.create_account("bob@example.org", "pw")
    assert resolve(store, "BOB@EXAMPLE.ORG.") == ["bob@example.org"]
    got = store.resolve(
        "Bob@Example.Org", local_domains=["EXAMPLE.org."], primary_domain="Example.ORG."
    )
    assert got == ["bob@example.org"]


def test_resolve_alias_chain_and_several_targets(store: AccountStore) -> None:
    for a in ("bob@example.org", "alice@example.org", "carol@example.net"):
        store.create_account(a, "pw")
    store.add_alias("team@example.org", "bob@example.org")
    store.add_alias("team@example.org", "devs@example.org")
    store.add_alias("devs@example.org", "alice@example.org")
    store.add_alias("devs@example.org", "carol@example.net")
    store.add_alias("devs@example.org", "bob@example.org")  # diamond: bob only once
    store.add_alias("devs@example.org", "outside@remote.example")  # not an account: ignored
    assert sorted(resolve(store, "team@example.org") or []) == [
        "alice@example.org",
        "bob@example.org",
        "carol@example.net",
    ]
    assert len(resolve(store, "team@example.org") or []) == 3


def test_resolve_alias_loop_is_cut(store: AccountStore) -> None:
    store.add_alias("a@example.org", "b@example.org")
    store.add_alias("b@example.org", "c@example.org")
    store.add_alias("c@example.org", "a@example.org")
    assert resolve(store, "a@example.org") is None
    store.create_account("bob@example.org", "pw")
    store.add_alias("b@example.org", "bob@example.org")
    assert resolve(store, "a@example.org") == ["bob@example.org"]
    assert resolve(store, "c@example.org") == ["bob@example.org"]


def test_resolve_alias_depth_limit(store: AccountStore) -> None:
    store.create_account("end@example.org", "pw")
    # a0 -> a1 -> ... -> a{n-1} -> end: n hops.
    n = MAX_ALIAS_DEPTH
    for i in range(n):
        nxt = f"a{i + 1}@example.org" if i < n - 1 else "end@example.org"
        store.add_alias(f"a{i}@example.org", nxt)
    assert resolve(store, "a0@example.org") == ["end@example.org"]
    store.add_alias("a-1@example.org", "a0@example.org")  # one hop too many
    assert resolve(store, "a-1@example.org") is None


def test_resolve_dangling_alias_falls_through_to_catch_all(store: AccountStore) -> None:
    store.create_account("bob@example.org", "pw")
    store.add_alias("old@example.org", "gone@example.org")
    assert resolve(store, "old@example.org") is None
    store.set_catch_all("example.org", "bob@example.org")
    assert resolve(store, "old@example.org") == ["bob@example.org"]


def test_resolve_plus_addressing(store: AccountStore) -> None:
    store.create_account("bob@example.org", "pw")
    store.add_alias("sales@example.org", "bob@example.org")
    assert resolve(store, "bob+lists@example.org") == ["bob@example.org"]
    assert resolve(store, "Bob+Lists+More@Example.org") == ["bob@example.org"]
    assert resolve(store, "sales+q3@example.org") == ["bob@example.org"]
    assert resolve(store, "+lists@example.org") is None
    assert resolve(store, "alice+x@example.org") is None
    assert resolve(store, "bob-lists@example.org") is None
    assert resolve(store, "bob-lists@example.org", plus_separator="-") == ["bob@example.org"]
    assert resolve(store, "bob+lists@example.org", plus_separator="") is None
    # An account whose name contains the separator is matched exactly first.
    store.create_account("bob+work@example.org", "pw")
    assert resolve(store, "bob+work@example.org") == ["bob+work@example.org"]
    assert resolve(store, "bob+other@example.org") == ["bob@example.org"]


def test_resolve_catch_all(store: AccountStore) -> None:
    store.create_account("bob@example.org", "pw")
    store.create_account("alice@example.org", "pw")
    store.add_alias("everyone@example.org", "bob@example.org")
    store.add_alias("everyone@example.org", "alice@example.org")
    store.set_catch_all("example.org", "everyone@example.org")
    assert sorted(resolve(store, "random@example.org") or []) == [
        "alice@example.org",
        "bob@example.org",
    ]
    assert resolve(store, "bob@example.org") == ["bob@example.org"]  # exact still wins
    assert resolve(store, "random@example.net") is None  # other domain, no catch-all
    store.set_catch_all("example.org", "nobody@example.org")  # target does not exist
    assert resolve(store, "random@example.org") is None
    store.set_catch_all("example.org", None)
    assert resolve(store, "random@example.org") is None


def test_postmaster_with_no_accounts_at_all(store: AccountStore, tmp_path: Path) -> None:
    for addr in ("postmaster@example.org", "POSTMASTER@example.net.", "abuse@example.net",
                 "postmaster", "Postmaster", "postmaster+x@example.org"):
        assert resolve(store, addr) == ["postmaster@example.org"], addr
    # The mailbox does not exist yet; the writer creates it on the first delivery.
    root = store.maildir_path("postmaster@example.org")
    assert not root.exists()
    path = MaildirWriter().deliver(root, None, MSG)
    assert path.read_bytes() == b"".join(MSG)
    # Later creating the account keeps that mail.
    store.create_account("postmaster@example.org", "pw")
    assert path.read_bytes() == b"".join(MSG)
    assert (root / ".Sent" / "cur").is_dir()


def test_postmaster_fallback_chain(store: AccountStore) -> None:
    # Only accounts in the primary domain: example.net's postmaster goes to the first.
    store.create_account("zed@example.org", "pw")
    store.create_account("amy@example.org", "pw")
    assert resolve(store, "postmaster@example.net") == ["amy@example.org"]
    # A disabled account is passed over while an enabled one exists.
    store.set_disabled("amy@example.org", True)
    assert resolve(store, "postmaster@example.net") == ["zed@example.org"]
    store.set_disabled("amy@example.org", False)
    # An account in the domain itself comes before the primary domain.
    store.create_account("net-admin@example.net", "pw")
    assert resolve(store, "abuse@example.net") == ["net-admin@example.net"]
    # The configured postmaster (accounts.postmaster) comes before that.
    assert resolve(store, "abuse@example.net", postmaster="zed@example.org") == [
        "zed@example.org"
    ]
    assert resolve(store, "abuse@example.net", postmaster="bad address") == [
        "net-admin@example.net"
    ]
    # postmaster@d (alias) serves abuse@d too.
    store.add_alias("postmaster@example.net", "zed@example.org")
    assert resolve(store, "abuse@example.net") == ["zed@example.org"]
    # An alias of its own wins for abuse@.
    store.add_alias("abuse@example.net", "amy@example.org")
    assert resolve(store, "abuse@example.net") == ["amy@example.org"]
    # Role addresses beat the catch-all; other unknown addresses go to it.
    store.set_catch_all("example.org", "zed@example.org")
    assert resolve(store, "postmaster@example.org") == ["amy@example.org"]
    assert resolve(store, "whoever@example.org") == ["zed@example.org"]
    # A real postmaster account is used as is.
    store.create_account("postmaster@example.org", "pw")
    assert resolve(store, "Postmaster@Example.ORG.") == ["postmaster@example.org"]
    assert resolve(store, "postmaster") == ["postmaster@example.org"]


# ------------------------------------------------------------------ concurrency


def test_concurrent_threads_and_two_store_instances(tmp_path: Path) -> None:
    """8 threads on two store objects (like daemon and CLI) create and resolve at once."""
    stores = [AccountStore.in_state_dir(tmp_path, hasher=CHEAP) for _ in range(2)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        s = stores[n % 2]
        try:
            barrier.wait()
            for i in range(15):
                addr = f"u{n}-{i}@example.org"
                s.create_account(addr, "pw")
                s.add_alias(f"list{n}@example.org", addr)
                assert resolve(s, addr) == [addr]
                assert s.password_hash(addr) is not None
                got = resolve(s, f"list{n}@example.org") or []
                assert addr in got and len(got) == i + 1
            with pytest.raises(AccountExists):
                s.create_account(f"u{n}-0@example.org", "pw")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(stores[0].list_accounts()) == 8 * 15
    assert len(stores[1].list_aliases()) == 8 * 15
    for s in stores:
        s.close()


def test_close_then_reuse(store: AccountStore) -> None:
    store.create_account("bob@example.org", "pw")
    store.close()
    assert store.get_account("bob@example.org") is not None
