"""One SMTP reply: code, enhanced status, text, and the stage that produced it.

Every layer that decides an SMTP answer (the protocol core, the endpoint handlers, the
inbound checks in pipeline/) builds an ``SMTPReply``; the SMTP core renders it. The text
never carries the enhanced status code: ``encode`` puts it in front of each line, so no
layer has to add it to a string or strip it off again.

This module imports nothing from the project, so every layer may use it.

References:
* RFC 5321 4.2: a reply is a three-digit code, then text; a multi-line reply repeats the
  code on every line, with "-" after it on all lines but the last. 4.2.1: the first
  digit says 2 (done), 3 (go on), 4 (transient failure: the same request may succeed
  later), 5 (permanent failure).
* RFC 3463: enhanced status codes "class.subject.detail", class 2/4/5 matching the
  reply's first digit.
* RFC 2034: with ENHANCEDSTATUSCODES the enhanced code follows the reply code, then a
  space, on every line of the reply (replies 220/221 greeting and 354 have none).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True, slots=True)
class SMTPReply:
    """An SMTP reply (RFC 5321 4.2) with its RFC 3463 enhanced status code.

    ``code``: the three-digit reply code. ``enhanced``: "5.7.1", or "" for replies that
    carry none (greeting, 354, EHLO). ``text``: the human part, without the enhanced code;
    "\\n" separates the lines of a multi-line reply. ``module``: which stage produced the
    reply ("mx", "inbound", "core"...), for logs only; never on the wire and not part of
    equality.
    """

    code: int
    enhanced: str
    text: str
    module: str = field(default="", compare=False)

    @property
    def temporary(self) -> bool:
        """RFC 5321 4.2.1: a 4yz reply is a transient failure; retrying may succeed."""
        return self.code // 100 == 4

    @property
    def permanent(self) -> bool:
        """A 5yz reply: the same request will fail again."""
        return self.code // 100 == 5

    @property
    def positive(self) -> bool:
        """A 2yz (completion) or 3yz (intermediate) reply."""
        return self.code // 100 in (2, 3)

    def as_temporary(self, code: int = 451) -> SMTPReply:
        """The transient form of a failure: reply ``code`` (4yz) and the enhanced status in
        class 4 (RFC 3463 2: the class follows the reply's first digit), same subject and
        detail, same text."""
        if code // 100 != 4:
            raise ValueError(f"not a transient reply code: {code}")
        enhanced = "4" + self.enhanced[1:] if self.enhanced else ""
        return replace(self, code=code, enhanced=enhanced)

    def lines(self) -> list[str]:
        """The reply's lines as sent, without CRLF (RFC 5321 4.2, RFC 2034 on each line)."""
        # A stray CR must never reach the wire: it would let a text forge reply lines.
        text = self.text.replace("\r\n", "\n").replace("\r", " ")
        parts = text.split("\n") if text else [""]
        prefix = f"{self.enhanced} " if self.enhanced else ""
        last = len(parts) - 1
        return [f"{self.code}{' ' if i == last else '-'}{prefix}{line}".rstrip(" ")
                for i, line in enumerate(parts)]

    def encode(self) -> bytes:
        """The reply on the wire: CRLF-terminated lines, UTF-8 (SMTPUTF8 texts)."""
        return ("\r\n".join(self.lines()) + "\r\n").encode("utf-8", "replace")

    def __str__(self) -> str:
        """One line for logs: "550 5.7.1 text" (multi-line texts joined by " / ")."""
        text = self.text.replace("\r\n", "\n").replace("\r", " ").replace("\n", " / ")
        return " ".join(part for part in (str(self.code), self.enhanced, text) if part)
