"""MXHandler and SubmissionHandler built in-process, with real parts and no socket.

Issue #11 point 5: each handler is built here as the daemon builds it (mailserver/daemon.py)
with a real AccountStore (SQLite in tmp_path), a real MaildirWriter over real Maildirs and,
for submission, a real outbound Queue. A ``Session`` holds a real ``p.ServerConnection``;
the tests call on_helo/on_mail/on_rcpt/on_message/on_auth directly, or feed client bytes
through the core and hand its events to the handler with ``dispatch``/``give_answer``,
the two functions the socket shell uses (``converse`` below).

Time and threads are injected: ``inline`` runs every blocking call in the caller (a
transaction then runs in order, without threads), and a fake clock shows where the
``ms=`` of the delivery log line comes from. No test sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import pytest

from mailserver.address import parse_path
from mailserver.auth.login import LoginPolicy
from mailserver.auth.passwords import PasswordChecker, make_hasher
from mailserver.auth.ratelimit import AuthThrottle
from mailserver.auth.store import AccountStore
from mailserver.delivery import queue_store
from mailserver.delivery.queue import Queue, QueuedMessage
from mailserver.delivery.results import DeliveryResult
from mailserver.smtp import protocol as p
from mailserver.smtp.mx_policy import MXHandler
from mailserver.smtp.server import Session, SessionHandler, ThreadRunner, dispatch, give_answer
from mailserver.smtp.submission import SubmissionHandler
from mailserver.smtpreply import SMTPReply
from mailserver.storage.maildir import MaildirWriter

HOST = "mx.example.org"
DOMAIN = "example.org"
USER = "alice@example.org"
OTHER = "bob@example.org"
PASSWORD = "right-password-1"
CLIENT_IP = "192.0.2.7"
CHEAP = make_hasher(time_cost=1, memory_cost_kib=8, parallelism=1)

_P = ParamSpec("_P")
_R = TypeVar("_R")


async def inline(func: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """A ThreadRunner that calls in the caller: the blocking work happens right here."""
    return func(*args, **kwargs)


class Clock:
    """A stopwatch the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def timed(runner: ThreadRunner, clock: Clock, seconds: float) -> ThreadRunner:
    """``runner``, but each blocking call takes ``seconds`` on ``clock``."""
    async def run(func: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        clock.now += seconds
        return await runner(func, *args, **kwargs)
    return run


# ---------------------------------------------------------------------------- parts


@dataclass
class Parts:
    store: AccountStore
    writer: MaildirWriter
    mail_root: Path
    announced: list[Path]


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    mail_root = tmp_path / "mail"
    store = AccountStore(tmp_path / "accounts.db", mail_root, hasher=CHEAP)
    store.create_account(USER, PASSWORD)
    store.create_account(OTHER, PASSWORD)
    store.add_alias(f"info@{DOMAIN}", USER)
    writer = MaildirWriter(hostname=HOST)  # fsync on, as the daemon has it
    announced: list[Path] = []
    writer.listeners.append(announced.extend)  # where the daemon hangs the IMAP hub
    yield Parts(store, writer, mail_root, announced)
    store.close()


def inbox(parts: Parts, account: str) -> list[Path]:
    return sorted((parts.store.maildir_path(account) / "new").iterdir())


def mx_handler(parts: Parts, run_in_thread: ThreadRunner, clock: Clock | None = None) -> MXHandler:
    """Wired as mailserver/daemon.py wires it, without the SPF/DKIM/DMARC checks."""
    return MXHandler(hostname=HOST, local_domains=(DOMAIN,), primary_domain=DOMAIN, store=parts.store,
                     writer=parts.writer, checker=None, postmaster=USER, run_in_thread=run_in_thread,
                     clock=clock or Clock())


MX_PARAMS = p.ServerParams(hostname=HOST, tls_available=True)
# Submission on 587 as the daemon sets it up: AUTH offered, only under TLS.
SUBMISSION_PARAMS = p.ServerParams(hostname=HOST, tls_available=True, auth_mechanisms=("PLAIN", "LOGIN"),
                                   auth_requires_tls=True)
# Port 465: TLS from the first byte.
SUBMISSIONS_PARAMS = p.ServerParams(hostname=HOST, tls_active=True, auth_mechanisms=("PLAIN", "LOGIN"),
                                    auth_requires_tls=True)


def session(params: p.ServerParams, listener: str = "smtp", sid: str = "S1") -> Session:
    return Session(sid, listener, CLIENT_IP, 40000, p.ServerConnection(params))


async def converse(handler: SessionHandler, s: Session, *lines: str) -> list[str]:
    """Send ``lines`` through the core, answer every event with ``handler``; the replies."""
    conn = s.conn
    conn.receive_data("".join(f"{line}\r\n" for line in lines).encode())
    while True:
        event = conn.next_event()
        if event is p.NEED_DATA or isinstance(event, p.ConnectionClosed):
            break
        assert isinstance(event, p.Helo | p.MailFrom | p.RcptTo | p.MessageReceived
                          | p.AuthStart | p.AuthResponse), event
        give_answer(conn, await dispatch(handler, s, event))
    return conn.data_to_send().decode().splitlines()


def rcpt(path: str) -> p.RcptTo:
    address = parse_path(path)
    assert address is not None
    return p.RcptTo(address, {}, path)


def mail(path: str) -> p.MailFrom:
    return p.MailFrom(parse_path(path, allow_empty=True), {}, path)


def code(reply: object) -> tuple[int, str]:
    assert isinstance(reply, SMTPReply), reply
    return reply.code, reply.enhanced


def message(from_: str, to: str, subject: str = "hello") -> bytes:
    return (f"From: {from_}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            "Message-ID: <m1@example.net>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
            "Body line.\r\n").encode()


# ---------------------------------------------------------------------------- MX (port 25)


def test_mx_refuses_to_relay_to_a_domain_that_is_not_local(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    """Port 25 takes mail for our domains only: anything else is relaying (554 5.7.1),
    also behind an address literal or a source route; ours is accepted on the same session."""
    caplog.set_level(logging.INFO, logger="pymaild.mx")

    async def main() -> list[tuple[int, str]]:
        h, s = mx_handler(parts, inline), session(MX_PARAMS)
        await h.on_helo(s, p.Helo("client.example.net", extended=True))
        await h.on_mail(s, mail("<sender@example.net>"))
        return [code(await h.on_rcpt(s, rcpt(path))) for path in (
            "<someone@gmail.example>", "<alice@[192.0.2.1]>", "<@mx.example.org:someone@gmail.example>",
            f"<someone@sub.{DOMAIN}>", f"<{USER}>")]

    assert asyncio.run(main()) == [(554, "5.7.1")] * 4 + [(250, "2.1.5")]
    # The line fail2ban's aggressive mode matches (config/fail2ban/filter.d/pymaild.conf).
    assert f"relay denied session=S1 client={CLIENT_IP} rcpt=<someone@gmail.example>" in caplog.text


def test_mx_refuses_an_unknown_local_user_and_delivers_nothing(parts: Parts) -> None:
    async def main() -> list[str]:
        h, s = mx_handler(parts, inline), session(MX_PARAMS)
        return await converse(h, s, "EHLO client.example.net", "MAIL FROM:<sender@example.net>",
                              f"RCPT TO:<nobody@{DOMAIN}>", "DATA")

    replies = asyncio.run(main())
    assert replies[-2].startswith("550 5.1.1 <nobody@example.org>: Recipient address rejected"), replies
    assert replies[-1].startswith("554 5.5.1"), replies  # DATA with no valid recipient
    assert not list(parts.mail_root.rglob("new/*"))


def test_mx_delivers_into_the_maildir_fsynced_with_trace_headers(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """250 only once the file and its new/ entry are on disk (fsync of both, RFC 5321 6.1:
    the server takes responsibility), with Return-Path, Delivered-To and Received (RFC 5321
    4.4) above the message as sent; a forged Authentication-Results of ours is dropped."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:  # the real fsync, noting what it was given
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    forged = f"Authentication-Results: {HOST}; dkim=pass\r\n".encode()
    data = forged + message("Sender <sender@example.net>", USER)

    async def main() -> list[str]:
        h, s = mx_handler(parts, inline), session(MX_PARAMS)
        return await converse(h, s, "EHLO client.example.net", "MAIL FROM:<sender@example.net>",
                              f"RCPT TO:<{USER}>", "DATA", data.decode().removesuffix("\r\n"), ".")

    replies = asyncio.run(main())
    assert replies[-1] == "250 2.0.0 Ok: delivered as S1.1", replies
    [path] = inbox(parts, USER)
    assert path.read_bytes().endswith(message("Sender <sender@example.net>", USER))
    head = path.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith(f"Return-Path: <sender@example.net>\r\nDelivered-To: {USER}\r\n"
                           f"Received: from client.example.net ([{CLIENT_IP}])\r\n"
                           f"\tby {HOST} (pymaild) with ESMTP id S1.1\r\n\tfor <{USER}>;"), head
    assert "Authentication-Results" not in head
    synced = [os.path.realpath(s) for s in synced]
    assert os.path.realpath(path.parent.parent / "tmp" / path.name) in synced  # the file, before its rename
    assert os.path.realpath(path.parent) in synced  # the new/ entry
    assert parts.announced == [path.parent.parent]  # IDLEing IMAP clients are told


def test_mx_one_copy_per_account_for_alias_and_direct_address(parts: Parts) -> None:
    async def main() -> SMTPReply:
        h, s = mx_handler(parts, inline), session(MX_PARAMS)
        await h.on_helo(s, p.Helo("client.example.net", extended=True))
        await h.on_mail(s, mail("<sender@example.net>"))
        for path in (f"<info@{DOMAIN}>", f"<{USER}>", f"<{OTHER}>"):
            assert code(await h.on_rcpt(s, rcpt(path))) == (250, "2.1.5")
        s.messages += 1
        reply = await h.on_message(s, p.MessageReceived(message("x@example.net", USER)))
        assert isinstance(reply, SMTPReply)
        return reply

    assert code(asyncio.run(main())) == (250, "2.0.0")
    [mine] = inbox(parts, USER)
    [bobs] = inbox(parts, OTHER)
    assert b"Delivered-To: info@example.org\r\n" in mine.read_bytes()  # the first address named
    assert b"Delivered-To: bob@example.org\r\n" in bobs.read_bytes()


@pytest.mark.parametrize("threads", ["inline", "asyncio.to_thread"])
def test_mx_times_the_message_with_the_injected_clock(
    parts: Parts, caplog: pytest.LogCaptureFixture, threads: str
) -> None:
    """The delivery line's ms= is the injected clock's: here the Maildir write "takes"
    250 ms on it, whether the runner calls inline or in a real thread (the daemon's)."""
    caplog.set_level(logging.INFO, logger="pymaild.mx")
    clock = Clock()
    runner: ThreadRunner = inline if threads == "inline" else asyncio.to_thread

    async def main() -> list[str]:
        h = mx_handler(parts, timed(runner, clock, 0.25), clock)
        return await converse(h, session(MX_PARAMS), "EHLO c.example.net", "MAIL FROM:<s@example.net>",
                              f"RCPT TO:<{USER}>", "DATA", "Subject: t", "", "x", ".")

    assert asyncio.run(main())[-1].startswith("250 2.0.0")
    [line] = [r.getMessage() for r in caplog.records if "outcome=delivered" in r.getMessage()]
    assert line.endswith(" ms=250.0"), line


# ---------------------------------------------------------------------------- submission


@dataclass
class Submission:
    handler: SubmissionHandler
    queue: Queue


async def never_deliver(msg: QueuedMessage) -> dict[str, DeliveryResult]:
    raise AssertionError("the queue is not started in these tests")


async def never_bounce(sender: str, dsn: bytes) -> None:
    raise AssertionError("the queue is not started in these tests")


def submission_handler(parts: Parts, queue: Queue, run_in_thread: ThreadRunner,
                       clock: Clock | None = None) -> SubmissionHandler:
    """Wired as mailserver/daemon.py wires it: the queue holds a message until the local
    copies are on disk, then releases it."""
    return SubmissionHandler(
        hostname=HOST, local_domains=(DOMAIN,), primary_domain=DOMAIN, store=parts.store,
        passwords=PasswordChecker(hasher=CHEAP), throttle=AuthThrottle(), writer=parts.writer,
        login_policy=LoginPolicy(failure_delay=0),
        enqueue=lambda sender, rcpts, data, msg_id: queue.enqueue(sender, rcpts, data, message_id=msg_id,
                                                                  hold=True),
        release=queue.release, run_in_thread=run_in_thread, clock=clock or Clock())


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    return Queue(tmp_path / "queue", deliver=never_deliver, bounce=never_bounce, hostname=HOST,
                 is_local_sender=lambda a: a.endswith(f"@{DOMAIN}"))


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_submission_refuses_auth_without_tls(parts: Parts, queue: Queue) -> None:
    """RFC 8314 3 / RFC 4954 4: no password over plaintext. On 587 before STARTTLS, AUTH
    is not offered and is refused with 538 5.7.11 (by the core: the handler never sees the
    password), and MAIL is then refused for want of a login; the same AUTH on a TLS
    connection (465) logs in."""
    async def main() -> tuple[list[str], list[str], Session, Session]:
        h = submission_handler(parts, queue, inline)
        plaintext, tls = session(SUBMISSION_PARAMS, "submission"), session(SUBMISSIONS_PARAMS, "submissions")
        before = await converse(h, plaintext, "EHLO client.example.net",
                                f"AUTH PLAIN {plain(USER, PASSWORD)}", f"MAIL FROM:<{USER}>")
        after = await converse(h, tls, "EHLO client.example.net", f"AUTH PLAIN {plain(USER, PASSWORD)}")
        h.passwords.close()
        return before, after, plaintext, tls

    before, after, plaintext, tls = asyncio.run(main())
    assert not any("AUTH" in r for r in before[:-2]), before
    assert before[-2].startswith("538 5.7.11"), before
    assert before[-1] == "530 5.7.0 Authentication required", before
    assert plaintext.conn.authenticated_as is None
    assert any("AUTH PLAIN LOGIN" in r for r in after), after
    assert after[-1].startswith("235 2.7.0"), after
    assert tls.conn.authenticated_as == USER


def test_submission_refuses_a_sender_address_the_user_does_not_own(parts: Parts, queue: Queue) -> None:
    """RFC 6409 8.1: MAIL FROM and the From: header must be the user's own (account,
    alias, plus-address); anything else is 553 5.7.1 and nothing is queued or delivered."""
    async def main() -> tuple[list[tuple[int, str]], list[str]]:
        h = submission_handler(parts, queue, inline)
        s = session(SUBMISSIONS_PARAMS, "submissions")
        anonymous = code(await h.on_mail(s, mail(f"<{USER}>")))
        await converse(h, s, "EHLO client.example.net", f"AUTH PLAIN {plain(USER, PASSWORD)}")
        envelope = [anonymous] + [code(await h.on_mail(s, mail(path))) for path in (
            f"<{OTHER}>", "<alice@elsewhere.example>", "<>", f"<{USER}>", f"<info@{DOMAIN}>",
            "<alice+lists@example.org>")]
        # Envelope owned, header not: the From: a reader sees is what counts.
        replies = await converse(h, s, f"MAIL FROM:<{USER}>", "RCPT TO:<friend@example.net>", "DATA",
                                 *message(f"Bob <{OTHER}>", "friend@example.net").decode().split("\r\n")[:-1],
                                 ".")
        h.passwords.close()
        await queue.stop()
        return envelope, replies

    envelope, replies = asyncio.run(main())
    assert envelope == [(530, "5.7.0"), (553, "5.7.1"), (553, "5.7.1"), (553, "5.7.1"),
                        (250, "2.1.0"), (250, "2.1.0"), (250, "2.1.0")]
    assert replies[-1] == f"553 5.7.1 From address <{OTHER}> not owned by user {USER}", replies
    assert queue.list() == [] and not list(parts.mail_root.rglob("new/*"))


def test_submission_accepts_its_own_address_queues_remote_and_delivers_local(
    parts: Parts, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pymaild.submission")
    clock = Clock()

    async def main() -> tuple[list[str], str]:
        h = submission_handler(parts, queue, timed(inline, clock, 0.125), clock)
        s = session(SUBMISSIONS_PARAMS, "submissions")
        replies = await converse(h, s, "EHLO client.example.net", f"AUTH PLAIN {plain(USER, PASSWORD)}",
                                 "MAIL FROM:<info@example.org>", "RCPT TO:<friend@example.net>",
                                 f"RCPT TO:<{OTHER}>", "DATA", f"From: Info <info@{DOMAIN}>",
                                 "To: friend@example.net", "Subject: hi", "", "Body.", ".")
        h.passwords.close()
        [entry] = queue.list()
        data = await asyncio.to_thread(queue_store.read_data, queue.directory, entry.id)
        assert entry.mail_from == f"info@{DOMAIN}"
        assert [r.address for r in entry.recipients] == ["friend@example.net"]
        await queue.stop()
        return replies, data.decode()

    replies, queued = asyncio.run(main())
    assert replies[-1].startswith("250 2.0.0 Ok: queued as "), replies
    # Received without the client's address (hide_client_ip), and the Date and Message-ID
    # the client left out (RFC 6409 8.2, 8.3).
    received = f"Received: from authenticated-user\r\n\tby {HOST} (pymaild) with ESMTPSA id "
    assert queued.startswith(received), queued
    assert "\r\nDate: " in queued and "\r\nMessage-ID: <" in queued
    assert queued.endswith("Subject: hi\r\n\r\nBody.\r\n")
    [local] = inbox(parts, OTHER)
    assert local.read_bytes().startswith(b"Return-Path: <info@example.org>\r\n"
                                         b"Delivered-To: bob@example.org\r\n")
    # One blocking call inside the timed message: the Maildir write (the queue runs its own).
    [line] = [r.getMessage() for r in caplog.records if "outcome=accepted" in r.getMessage()]
    assert line.endswith(" ms=125.0"), line
