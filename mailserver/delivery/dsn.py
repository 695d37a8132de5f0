"""Delivery status notifications (RFC 3464): bounces and delay warnings, as bytes.

Pure functions, no I/O. The result is a complete RFC 5322 message with CRLF line
endings and only 7-bit bytes, so it can be handed to any MTA or Maildir as is:

    multipart/report; report-type=delivery-status
      1. text/plain             what failed, why, and the remote server's words
      2. message/delivery-status Reporting-MTA, Arrival-Date, one group per recipient
      3. text/rfc822-headers     the original header (never the body: no backscatter payload)

The envelope is the caller's job: a DSN must be sent with the null reverse path
(``MAIL FROM:<>``, RFC 5321 section 4.5.5) so that it can never bounce back and loop.
The header carries ``Auto-Submitted: auto-replied`` (RFC 3834) for the same reason.
"""

from __future__ import annotations

import binascii
import email.utils
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from mailserver.message import header_end

DSNKind = Literal["failure", "delayed"]

SUBJECTS: dict[str, str] = {
    "failure": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
}

# Only the header of the original is returned; a pathological header is cut here so a
# bounce can never be much larger than the limit of an ordinary message.
MAX_ORIGINAL_HEADER = 64 * 1024

_NOT_7BIT_TEXT = re.compile(r"[^\t\r\n\x20-\x7e]")
_STATUS_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True)
class RecipientFailure:
    """One recipient's line in a DSN.

    ``code``/``text`` are the remote server's reply (``550``, ``"5.1.1 no such user"``)
    or our own explanation with code 0 when no server answered (DNS failure, timeout).
    ``status`` is the RFC 3463 enhanced code (``5.1.1``); ``remote_mta`` the MX host
    that answered, if any.
    """

    recipient: str
    status: str
    text: str
    code: int = 0
    remote_mta: str = ""
    last_attempt: float | None = None
    will_retry_until: float | None = None


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    failures: Sequence[RecipientFailure],
    original: bytes,
    kind: DSNKind,
    arrival_date: float,
    message_id_domain: str,
    now: float | None = None,
) -> bytes:
    """Build one DSN covering ``failures`` of the message ``original``.

    ``kind="failure"`` reports ``Action: failed`` (the message is given up for those
    recipients); ``kind="delayed"`` reports ``Action: delayed`` and each recipient's
    ``Will-Retry-Until``. Times are Unix timestamps. Non-ASCII text (UTF-8 addresses,
    diagnostics, 8-bit original headers) is encoded so the result stays 7-bit.
    """
    if kind not in SUBJECTS:
        raise ValueError(f"unknown DSN kind {kind!r}")
    if not failures:
        raise ValueError("a DSN needs at least one recipient")
    when = time.time() if now is None else now
    boundary = _boundary(original)
    mailer_daemon = f"MAILER-DAEMON@{reporting_mta}"
    head = [
        f"From: Mail Delivery System <{mailer_daemon}>",
        *([f"To: <{original_sender}>"] if original_sender.isascii() and original_sender else []),
        f"Subject: {SUBJECTS[kind]}",
        f"Date: {_date(when)}",
        f"Message-ID: <{int(when)}.{secrets.token_hex(8)}@{message_id_domain}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 7bit",
    ]
    human, human_cte = _encode_text(_human_text(reporting_mta, failures, kind, arrival_date, when))
    headers, headers_cte = _encode_text(_original_header(original))
    parts = [
        (f"Content-Type: text/plain; charset={'us-ascii' if human_cte == '7bit' else 'utf-8'}\r\n"
         f"Content-Description: Notification\r\nContent-Transfer-Encoding: {human_cte}", human),
        ("Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n"
         "Content-Transfer-Encoding: 7bit",
         _delivery_status(reporting_mta, failures, kind, arrival_date)),
        ("Content-Type: text/rfc822-headers\r\nContent-Description: Undelivered message headers\r\n"
         f"Content-Transfer-Encoding: {headers_cte}", headers),
    ]
    out = ["\r\n".join(head), "", "This is a MIME-encapsulated message.", ""]
    for part_head, body in parts:
        out += [f"--{boundary}", part_head, "", body.rstrip("\r\n"), ""]
    out.append(f"--{boundary}--")
    return ("\r\n".join(out) + "\r\n").encode("ascii")


def format_reply(code: int, text: str) -> str:
    """``550 5.1.1 no such user`` from code and text, whether or not text has the code."""
    if not code or text.startswith(str(code)):
        return text
    return f"{code} {text}"


# ---------------------------------------------------------------------------- parts


def _human_text(host: str, failures: Sequence[RecipientFailure], kind: DSNKind,
                arrival: float, now: float) -> str:
    lines = [f"This is the mail system at host {host}.", ""]
    if kind == "failure":
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
            "",
            "For further assistance, please send mail to postmaster.",
            "",
            "If you do so, please include this problem report. You can",
            "delete your own text from the attached returned message.",
        ]
    else:
        until = max((f.will_retry_until or 0.0) for f in failures)
        lines += [
            "####################################################################",
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
            "####################################################################",
            "",
            f"Your message could not be delivered for {_duration(now - arrival)}.",
        ]
        if until:
            lines.append(f"It will be retried until {_date(until)}.")
    lines += ["", "                   The mail system", ""]
    for f in failures:
        reply = _one_line(format_reply(f.code, f.text))
        where = f"host {f.remote_mta} said: " if f.remote_mta and f.code else ""
        lines.append(f"<{f.recipient}>: {where}{reply}")
    return "\r\n".join(lines) + "\r\n"


def _delivery_status(host: str, failures: Sequence[RecipientFailure], kind: DSNKind,
                     arrival: float) -> str:
    groups = [[f"Reporting-MTA: dns; {host}",
               f"Arrival-Date: {_date(arrival)}"]]
    for f in failures:
        if not _STATUS_RE.match(f.status):
            raise ValueError(f"not an RFC 3463 status code: {f.status!r}")
        group = [
            f"Final-Recipient: {_address_field(f.recipient)}",
            f"Action: {'failed' if kind == 'failure' else 'delayed'}",
            f"Status: {f.status}",
        ]
        if f.remote_mta:
            group.append(f"Remote-MTA: dns; {_ascii(f.remote_mta)}")
        if f.code:
            reply = _ascii(_one_line(format_reply(f.code, f.text)))
            group.append(_fold(f"Diagnostic-Code: smtp; {reply}"))
        elif f.text:
            # Not a server reply (DNS failure, timeout...): RFC 3464 has the "X-" type
            # for diagnostics that are not SMTP codes.
            group.append(_fold(f"Diagnostic-Code: X-pymaild; {_ascii(_one_line(f.text))}"))
        if f.last_attempt is not None:
            group.append(f"Last-Attempt-Date: {_date(f.last_attempt)}")
        if kind == "delayed" and f.will_retry_until is not None:
            group.append(f"Will-Retry-Until: {_date(f.will_retry_until)}")
        groups.append(group)
    return "\r\n\r\n".join("\r\n".join(g) for g in groups) + "\r\n"


def _original_header(original: bytes) -> str:
    """The header section of ``original`` with CRLF endings, decoded losslessly enough.

    The header ends at the first empty line, CRLF or bare LF (``message.header_end``):
    remote delivery sends every line end as CRLF, so that is where the header ended for
    the host that refused the message.
    """
    cut = header_end(original)
    head = original[:cut]
    if cut < len(original):
        # Without the last field's LF (and its CR when the empty line is CRLF too): a CR
        # left in front of it would come out as one more line, here an empty one.
        head = head[:-1]
        if original[cut] == 0x0D:
            head = head.removesuffix(b"\r")
    head = head[:MAX_ORIGINAL_HEADER]
    text = head.decode("utf-8", errors="replace")
    return "\r\n".join(text.splitlines()) + "\r\n"


# ---------------------------------------------------------------------------- encoding


def _encode_text(text: str) -> tuple[str, str]:
    """(body, Content-Transfer-Encoding): 7bit when ASCII, else UTF-8 quoted-printable."""
    # 7bit means printable ASCII (and tab) in lines of at most 998 octets (RFC 2045 2.7): a
    # NUL or other control octet from the original header is quoted-printable-encoded too.
    if not _NOT_7BIT_TEXT.search(text) and all(len(line) <= 998 for line in text.split("\r\n")):
        return text, "7bit"
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii")
    # b2a_qp keeps the line endings it was given; make them CRLF whatever it produced.
    return "\r\n".join(encoded.splitlines()) + "\r\n", "quoted-printable"


def _address_field(address: str) -> str:
    """``rfc822; addr``, or RFC 6533's ``utf-8;`` type with ``\\x{HEX}`` escapes."""
    if address.isascii():
        return f"rfc822; {_ascii(address)}"
    escaped = "".join(c if c.isascii() and c.isprintable() and c != "\\" else f"\\x{{{ord(c):X}}}"
                      for c in address)
    return f"utf-8; {escaped}"


def _one_line(text: str) -> str:
    """Multi-line SMTP replies and stray control characters become one line."""
    return " ".join(text.split())


def _ascii(text: str) -> str:
    """Printable ASCII only: anything else would break the 7-bit promise of the part."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _fold(field: str, width: int = 78) -> str:
    """Fold a long field at spaces, continuation lines starting with a tab."""
    if len(field) <= width:
        return field
    lines: list[str] = []
    current = ""
    for word in field.split(" "):
        limit = width if not lines else width - 1  # continuation lines start with a tab
        if current and len(current) + 1 + len(word) > limit:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return "\r\n\t".join(lines)


def _date(ts: float) -> str:
    """RFC 5322 date in UTC with an explicit +0000 (formatdate's -0000 means "unknown")."""
    return email.utils.format_datetime(datetime.fromtimestamp(ts, UTC))


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 3600:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def _boundary(original: bytes) -> str:
    # Random enough never to occur in the returned header; checked anyway.
    while True:
        boundary = f"=_dsn_{secrets.token_hex(12)}"
        if boundary.encode() not in original:
            return boundary
