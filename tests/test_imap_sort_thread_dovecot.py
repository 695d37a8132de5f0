"""SORT and THREAD against Dovecot: the same mailbox, the same commands, the same answers.

A corpus made to trip implementations (tests/support/sortcorpus.py: encoded subjects,
replies and forwards, list tags, missing and duplicate Message-IDs, broken dates, loops)
is put in a Maildir; Dovecot (Debian's dovecot-imapd, private config on loopback) serves
a hard-link copy of it. Every SORT key in both directions, a few combinations, and
THREAD with each algorithm must give Dovecot's answer message for message:

* ``test_keys_and_trees_match_dovecot``: our sort keys and thread trees
  (imap/sorting.py, imap/mailthreads.py) computed from the files;
* ``test_server_matches_dovecot``: pymaild itself, serving a copy of the same Maildir.
"""

from __future__ import annotations

import imaplib
import re
import shutil
from pathlib import Path

import pytest

from mailserver.imap.mailthreads import ALGORITHMS, thread
from mailserver.imap.sorting import MessageFields, sort
from mailserver.message import header_end
from tests.support import dovecot
from tests.support.ca import TestCA
from tests.support.imap import client_ctx, imap_daemon
from tests.support.sortcorpus import write_corpus
from tests.support.tools import missing

N = 300
USER, PASSWORD = "sort@example.test", "sort-test-password"
SORTS: list[tuple[tuple[str, bool], ...]] = [
    *[((key, rev),) for key in ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",
                                "DISPLAYFROM", "DISPLAYTO") for rev in (False, True)],
    (("SUBJECT", False), ("DATE", True)),
    (("FROM", False), ("SIZE", True), ("ARRIVAL", False)),
    (("SIZE", False), ("SUBJECT", False)),
]


def _criteria(keys: tuple[tuple[str, bool], ...]) -> str:
    return "(" + " ".join(("REVERSE " if rev else "") + key for key, rev in keys) + ")"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sortcorpus") / "Maildir"
    write_corpus(root, N)
    return root


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def _client(port: int, ca: TestCA) -> imaplib.IMAP4_SSL:
    conn = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_ctx(ca), timeout=30)
    conn.login(USER, PASSWORD)
    typ, _ = conn.select("INBOX")
    assert typ == "OK"
    return conn


def _answers(conn: imaplib.IMAP4) -> dict[str, str]:
    """Every command's untagged data, by command: what the two servers must agree on."""
    out: dict[str, str] = {}
    for keys in SORTS:
        for uid in (False, True):
            args = (_criteria(keys), "UTF-8", "ALL")
            typ, data = conn.uid("SORT", *args) if uid else conn.sort(*args)
            assert typ == "OK", (keys, data)
            out[("UID " if uid else "") + "SORT " + _criteria(keys)] = (data[0] or b"").decode()
    for algorithm in ALGORITHMS:
        typ, data = conn.thread(algorithm, "UTF-8", "ALL")
        assert typ == "OK", (algorithm, data)
        out["THREAD " + algorithm] = (data[0] or b"").decode()
    return out


@pytest.fixture(scope="module")
def dovecot_answers(corpus: Path, ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not dovecot.available():
        missing("dovecot not installed (Debian package dovecot-imapd; .ci/run installs it)")
    work = tmp_path_factory.mktemp("dovecot")
    copy = work / "mail" / "Maildir"
    dovecot.copy_maildir(corpus, copy)
    cert, key = ca.issue("127.0.0.1")
    server = dovecot.DovecotServer(work / "server", cert, key, max_connections=10)
    server.add_user(USER, PASSWORD, copy)
    server.start()
    try:
        conn = _client(server.imaps_port, ca)
        try:
            # The two servers number the messages alike (delivery order from the names).
            typ, data = conn.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (X-Corpus)])")
            assert typ == "OK"
            seen = [int(m) for m in re.findall(rb"X-Corpus: (\d+)", b"".join(
                part[1] for part in data if isinstance(part, tuple)))]
            assert seen == list(range(1, N + 1))
            return _answers(conn)
        finally:
            conn.logout()
    finally:
        server.stop()


def _our_fields(corpus: Path, criteria: frozenset[str]) -> list[MessageFields]:
    """Only the keys ``criteria`` need, as the server computes them for one command."""
    files = sorted((corpus / "new").iterdir(), key=lambda p: int(p.name.split(".")[0]))
    out = []
    for seq, path in enumerate(files, 1):
        data = path.read_bytes()
        out.append(MessageFields.parse(seq, seq, len(data), path.stat().st_mtime, data[:header_end(data)],
                                       criteria))
    return out


def _sort_data(numbers: list[int]) -> str:
    return " ".join(map(str, numbers))


def test_keys_and_trees_match_dovecot(corpus: Path, dovecot_answers: dict[str, str]) -> None:
    ours: dict[str, str] = {}
    for keys in SORTS:
        numbers = [m.seq for m in sort(_our_fields(corpus, frozenset(k for k, _ in keys)), keys)]
        ours["SORT " + _criteria(keys)] = _sort_data(numbers)
        ours["UID SORT " + _criteria(keys)] = _sort_data(numbers)  # UID = seq here
    fields = _our_fields(corpus, frozenset({"THREAD"}))
    for algorithm in ALGORITHMS:
        ours["THREAD " + algorithm] = thread([m.thread_input(False) for m in fields], algorithm)
    _compare(ours, dovecot_answers)


def _compare(ours: dict[str, str], theirs: dict[str, str]) -> None:
    wrong = []
    for command, answer in theirs.items():
        if ours.get(command) != answer:
            a, b = (ours.get(command) or "").split(" "), answer.split(" ")
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            wrong.append(f"{command}: first difference at item {at}: "
                         f"ours {a[at:at + 6]}, Dovecot {b[at:at + 6]}")
    assert not wrong, "\n".join(wrong)


def test_server_matches_dovecot(corpus: Path, ca: TestCA, dovecot_answers: dict[str, str],
                                tmp_path: Path) -> None:
    d = imap_daemon(tmp_path / "d", ca, start=False)
    root = d.add_account(USER, PASSWORD)
    for sub in ("cur", "new"):  # a plain copy: Dovecot's copy was chown'd through its links
        shutil.rmtree(root / sub, ignore_errors=True)
        shutil.copytree(corpus / sub, root / sub)
    d.start()
    try:
        conn = _client(d.imaps_port, ca)  # type: ignore[attr-defined]
        try:
            ours = _answers(conn)
            # ESORT (RFC 5267) says the same as SORT, in its own form.
            typ, data = conn.sort("(REVERSE DATE)", "UTF-8", "ALL")
            plain = (data[0] or b"").decode().split()
            typ, data = conn._simple_command("SORT", "RETURN (MIN MAX COUNT PARTIAL 1:3)",
                                             "(REVERSE DATE)", "UTF-8", "ALL")
            assert typ == "OK"
            esearch = conn.untagged_responses.pop("ESEARCH", [b""])[0].decode()
            assert f"MIN {plain[0]} MAX {plain[-1]} COUNT {N} PARTIAL (1:3 " in esearch, esearch
        finally:
            conn.logout()
    finally:
        d.stop()
    _compare(ours, dovecot_answers)
