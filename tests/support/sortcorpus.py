"""A mailbox built to trip SORT and THREAD implementations (RFC 5256, RFC 5957).

``write_corpus(maildir, n)`` puts ``n`` messages into ``maildir/new`` (a Maildir++ root:
``cur``, ``new`` and ``tmp`` are created), deterministic for a given ``seed``. What is in it:

* subjects with every artifact of RFC 5256 2.1: Re/RE/Fw/Fwd, "Re[2]:", "(fwd)" trailers,
  "[list]" blobs, "[fwd: ...]" wrappers, encoded words (UTF-8 Q and B, Latin-1), raw
  UTF-8, folding and tabs, empty and missing subjects;
* From/To/Cc with and without display names (encoded too), groups, missing fields,
  local parts in mixed case;
* Date fields in many zones, missing, unparseable, and equal to the second (ties);
* Message-IDs: normal, missing, duplicated, folded; References chains, references to
  messages that are not there, In-Reply-To only, self-references and loops;
* INTERNALDATE (the file's mtime) and RFC822.SIZE with ties.

Each message carries ``X-Corpus: <n>`` so tests can map any server's numbers back to
the corpus. File names carry increasing times, so Dovecot and pymaild give the same
UIDs (both order new files by the time in their names).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

_WORDS = ["budget", "lunch", "report", "release", "Urlaub", "café", "zebra", "Alpha", "beta",
          "meeting", "invoice", "ÉTÉ", "straße", "naïve", "résumé", "quarterly", "plan"]
_PEOPLE = [("Amy", "amy"), ("bob", "Bob"), ("Zoë Ünal", "zoe"), ("", "carol"), ("Dave", "dave"),
           ("émile", "emile"), ("Ann", "ANN"), ("", "Zed"), ("Mary O'Neil", "mary")]
_ZONES = ["+0000", "-0800", "+0530", "+0100", "-0000", "+1400", "-1200"]
_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def _encoded(text: str, rng: random.Random) -> str:
    import base64
    import quopri

    if text.isascii() and rng.random() < 0.7:
        return text
    kind = rng.choice(["q", "b", "latin1", "raw"])
    if kind == "raw":
        return text  # 8-bit UTF-8 in the header (RFC 6532 style)
    if kind == "latin1":
        try:
            data = text.encode("latin-1")
        except UnicodeEncodeError:
            data = None
        if data is not None:
            q = quopri.encodestring(data, header=True).decode("ascii")
            return f"=?iso-8859-1?q?{q}?="
    data = text.encode("utf-8")
    if kind == "q":
        q = quopri.encodestring(data, header=True).decode("ascii")
        return f"=?utf-8?q?{q}?="
    return f"=?UTF-8?B?{base64.b64encode(data).decode('ascii')}?="


def _subject(base: str, reply: bool, rng: random.Random) -> str | None:
    r = rng.random()
    if r < 0.03:
        return None  # no Subject field
    if r < 0.06:
        return ""
    text = base
    if reply:
        text = rng.choice(["Re: ", "RE: ", "re: ", "Re: Re: ", "Fwd: ", "Fw: ", "Re[2]: ", "Re : ",
                           "[list] Re: ", "Re: [list] ", "FWD: Re: "]) + text
    elif rng.random() < 0.15:
        text = rng.choice(["[list] ", "[team][x] ", ""]) + text
    if rng.random() < 0.06:
        text = text + rng.choice([" (fwd)", " (FWD)  ", "  "])
    if rng.random() < 0.04:
        text = f"[Fwd: {text}]"
    text = _encoded(text, rng)
    if rng.random() < 0.08 and " " in text and "=?" not in text:
        i = text.index(" ")
        text = text[:i] + "\r\n\t" + text[i + 1:]  # folded
    return text


def _address(rng: random.Random) -> str:
    name, local = rng.choice(_PEOPLE)
    domain = rng.choice(["example.org", "Example.NET", "x.test"])
    if not name or rng.random() < 0.2:
        return f"{local}@{domain}" if rng.random() < 0.5 else f"<{local}@{domain}>"
    shown = _encoded(name, rng)
    if not shown.startswith("=?") and (" " in shown or "'" in shown):
        shown = f'"{shown}"'
    return f"{shown} <{local}@{domain}>"


def _addresses(rng: random.Random) -> str | None:
    r = rng.random()
    if r < 0.15:
        return None
    if r < 0.2:
        return "undisclosed-recipients:;"
    if r < 0.25:
        return f"team: {_address(rng)}, {_address(rng)};"
    return ", ".join(_address(rng) for _ in range(rng.choice([1, 1, 2, 3])))


def _date(when: int, rng: random.Random) -> str | None:
    import datetime as dt

    r = rng.random()
    if r < 0.04:
        return None
    if r < 0.07:
        return rng.choice(["yesterday", "Mon, 32 Foo 2024 25:61:00", "", "12 Dec"])
    zone = rng.choice(_ZONES)
    sign = -1 if zone[0] == "-" else 1
    offset = sign * (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60)
    local = dt.datetime.fromtimestamp(when + offset, dt.UTC)
    day = _DAYS[local.weekday()] + ", " if rng.random() < 0.8 else ""
    return (f"{day}{local.day} {_MONTHS[local.month - 1]} {local.year} "
            f"{local.hour:02d}:{local.minute:02d}:{local.second:02d} {zone}")


def write_corpus(maildir: Path, n: int = 300, seed: int = 5256) -> list[Path]:
    """Write the corpus; returns the message files in delivery order."""
    rng = random.Random(seed)
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    threads: list[dict[str, object]] = []
    ids: list[str | None] = []
    files: list[Path] = []
    start = 1_700_000_000
    for i in range(1, n + 1):
        headers: list[str] = []
        when = start + rng.randrange(0, 90 * 86400)
        if i > 1 and rng.random() < 0.1:
            when = start + 3600 * rng.randrange(0, 3)  # many messages at the same second
        known = [t for t in threads if t["ids"]]
        if known and rng.random() < 0.55:  # a reply in an existing thread
            t = rng.choice(known)
            chain: list[str] = list(t["ids"])  # type: ignore[arg-type]
            parent_at = rng.randrange(len(chain))
            refs = chain[: parent_at + 1]
            if rng.random() < 0.1:
                refs = [f"gone{i}@lost.example", *refs]  # a reference to a message not here
            if rng.random() < 0.08 and len(refs) > 2:
                refs = refs[-2:]  # truncated References
            subject = _subject(str(t["base"]), True, rng)
            how = rng.random()
            if how < 0.75:
                headers.append("References: " + "\r\n ".join(f"<{r}>" for r in refs))
                if rng.random() < 0.5:
                    headers.append(f"In-Reply-To: <{refs[-1]}>")
            elif how < 0.9:
                headers.append(f"In-Reply-To: <{refs[-1]}> (from a client that writes comments)")
            else:
                headers.append("References: <not-an-id> " + f"<{refs[-1]}>")
            thread = t
        else:
            base = " ".join(rng.choice(_WORDS) for _ in range(rng.choice([1, 2, 3])))
            thread = {"base": base, "ids": []}
            threads.append(thread)
            reply = rng.random() < 0.12  # a reply whose original is not in the mailbox
            subject = _subject(base, reply, rng)
            if reply:
                headers.append(f"References: <orig{i}@elsewhere.example>")
        mid: str | None = f"m{i}.{rng.randrange(10**6)}@corpus.example"
        r = rng.random()
        if r < 0.04:
            mid = None
        elif r < 0.07 and any(ids):
            mid = rng.choice([x for x in ids if x])  # a duplicate Message-ID
        elif r < 0.09:
            headers.append(f"References: <{mid}>")  # references itself
        ids.append(mid)
        if mid is not None:
            thread["ids"].append(mid)  # type: ignore[union-attr]
            folded = rng.random() < 0.05
            headers.append(f"Message-ID:{' ' if not folded else chr(13) + chr(10) + ' '}<{mid}>")
        if subject is not None:
            headers.append(f"Subject: {subject}")
        frm = _addresses(rng)
        if frm is not None:
            headers.append(f"From: {frm}")
        for name in ("To", "Cc"):
            value = _addresses(rng)
            if value is not None:
                headers.append(f"{name}: {value}")
        date = _date(when, rng)
        if date is not None:
            headers.append(f"Date: {date}")
        headers.append(f"X-Corpus: {i}")
        rng.shuffle(headers)
        body = "".join(f"line {k} of message {i}\r\n" for k in range(rng.choice([1, 1, 3, 10, 40])))
        data = ("\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8")
        name = f"{start + i}.M{i:06d}P1.corpus"
        path = maildir / "new" / name
        path.write_bytes(data)
        arrival = when + rng.choice([0, 0, 60, 3600, -86400])
        if rng.random() < 0.1:
            arrival = start  # INTERNALDATE ties
        os.utime(path, (arrival, arrival))
        files.append(path)
    return files
