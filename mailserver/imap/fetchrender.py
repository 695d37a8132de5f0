"""FETCH rendering, run in a worker thread: index rows + cache + message files -> responses.

What each item costs decides what is read: FLAGS, UID, RFC822.SIZE, INTERNALDATE and MODSEQ
come from the index alone; ENVELOPE and header sections (what a client's header sync asks
for) come from the per-folder :class:`~mailserver.imap.fetchcache.FetchCache`, filled
from the first 16 KiB of each file on a miss; BODY/BODYSTRUCTURE are cached too; only real
content (``BODY[]``, ``BODY[TEXT]``, parts) reads the whole file.

Messages written by other programs may use bare LF line ends (Dovecot, mutt): they are
served with CRLF, which is what ``RFC822.SIZE`` (the ``,W=`` size) promises.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailserver.imap.fetchcache import HEADER_CAP, CacheEntry, FetchCache, entry_for, fields_key
from mailserver.message import split_header
from mailserver.storage.api import MailboxView, Message

from . import format as fmt
from . import mime
from .binarypart import binary_section
from .fetchitems import Attribute, BodySection, FetchItem, Section
from .searcheval import Candidate, ContentNeed

log = logging.getLogger("pymaild.imap")

_HEADER_READ = 16 * 1024
_HEADER_MAX = 256 * 1024
_HEADER_TEXTS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT")


@dataclass(frozen=True, slots=True)
class FetchPlan:
    items: tuple[FetchItem, ...]
    need_header: bool
    need_structure: bool
    need_full: bool

    @classmethod
    def of(cls, items: Sequence[FetchItem]) -> FetchPlan:
        header = structure = full = False
        for item in items:
            if isinstance(item, Attribute):
                if item.name in ("ENVELOPE", "RFC822.HEADER"):
                    header = True
                elif item.name in ("BODY", "BODYSTRUCTURE"):
                    structure = True
                elif item.name in ("RFC822", "RFC822.TEXT"):
                    full = True
            elif not item.section.part and item.section.text in _HEADER_TEXTS:
                header = True
            else:
                full = True
        return cls(tuple(items), header, structure, full)


def to_crlf(data: bytes) -> bytes:
    """Bare LF line ends -> CRLF (files from Dovecot/mutt); CRLF files are returned as is."""
    nl = data.find(b"\n")
    if nl < 0 or (nl > 0 and data[nl - 1] == 0x0D):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def read_header(index: MailboxView, uid: int) -> bytes:
    with index.open(uid) as f:
        data = f.read(_HEADER_READ)
        while b"\n\r\n" not in data and b"\n\n" not in data and len(data) < _HEADER_MAX:
            more = f.read(_HEADER_READ)
            if not more:
                break
            data += more
    return split_header(to_crlf(data))[0]


def read_message(index: MailboxView, uid: int, row: Message | None = None) -> bytes:
    with index.open(uid, row) as f:
        return to_crlf(f.read())


def _internaldate(ts: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts).astimezone()


_Render = Callable[[int, Message, CacheEntry | None, bytes | None], bytes]  # (uid, row, entry, full)


class Renderer:
    """Renders ``* n FETCH`` responses for one FETCH command (in a worker thread)."""

    def __init__(self, index: MailboxView, cache: FetchCache | None, plan: FetchPlan, *,
                 with_uid: bool, with_modseq: bool, force_flags: frozenset[int] = frozenset()) -> None:
        self.index = index
        self.cache = cache
        self.plan = plan
        self.with_uid = with_uid
        self.with_modseq = with_modseq
        self.force_flags = force_flags  # UIDs whose \Seen was just set: FLAGS must be sent
        self.missing: list[int] = []  # files gone (expunged by another program)
        # Response names ("BODY[HEADER.FIELDS (...)] ") are the same for every message:
        # built once here, not 10,000 times (a header sync's hot spot).
        seen = {"UID"} if with_uid else set()
        # (response name, renderer, raw): a raw renderer gives a section's bytes, which
        # _one sends as a string (a literal's body is then not copied into a formatted
        # value first); the others give the value in wire form.
        self._items: list[tuple[bytes, _Render, bool]]
        self._items = []
        for item in plan.items:
            name = item.response_name()
            if name not in seen:
                seen.add(name)
                self._items.append((name.encode("ascii") + b" ", self._renderer(item),
                                    isinstance(item, BodySection) and not item.binary))
        # A client's header sync (only HEADER.FIELDS besides index items): the cut result
        # itself is cached per field list, so a warm sync reads small blobs and no regex.
        self._fields_key: str | None = None
        sections = [i for i in plan.items if isinstance(i, BodySection)]
        header_items = [i for i in plan.items if isinstance(i, Attribute)
                        and i.name in ("ENVELOPE", "RFC822.HEADER")]
        if (len(sections) == 1 and not header_items and not plan.need_structure and not plan.need_full
                and sections[0].section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT")):
            sec = sections[0].section
            self._fields_key = fields_key(sec.fields, exclude=sec.text == "HEADER.FIELDS.NOT")
        self._cuts: dict[str, bytes] = {}
        self._fresh_cuts: dict[str, bytes] = {}
        self._wants_envelope = "ENVELOPE" in seen
        self._has_flags = "FLAGS" in seen
        self._has_modseq = "MODSEQ" in seen
        self._flag_cache: dict[tuple[str, str, bool], bytes] = {}
        # FLAGS / MODSEQ the client did not ask for but must get (a \Seen just set;
        # CONDSTORE), after the asked items.
        self._tail_flags = not self._has_flags and bool(force_flags)
        self._tail_modseq = with_modseq and not self._has_modseq

    def render(self, uids: Sequence[int]) -> list[bytes]:
        index, plan = self.index, self.plan
        entries: dict[str, CacheEntry] = {}
        rows = index.view_rows(uids)  # (seq, row) of those still in the view
        cached = (plan.need_header or plan.need_structure) and self.cache is not None
        if cached and self.cache is not None:
            try:
                wanted = [m.base for _seq, m in rows]
                if self._fields_key is not None:
                    self._cuts = self.cache.get_fields(wanted, self._fields_key)
                    wanted = [b for b in wanted if b not in self._cuts]
                entries = self.cache.get_many(wanted) if wanted else {}
            except Exception:  # a cache never fails a FETCH
                log.exception("fetch cache read failed in %s", index.dir)
                entries = {}
        fresh: dict[str, CacheEntry] = {}
        out: list[bytes] = []
        one = self._one
        for seq, m in rows:
            try:
                out.append(one(m, seq, cached, entries, fresh))
            except FileNotFoundError:
                self.missing.append(m.uid)
        if (fresh or self._fresh_cuts) and self.cache is not None:
            try:
                self.cache.put_many(fresh)
                if self._fields_key is not None:
                    self.cache.put_fields(self._fields_key, self._fresh_cuts)
            except Exception:
                log.exception("fetch cache write failed in %s", index.dir)
        self._fresh_cuts = {}
        return out

    def _one(self, m: Message, seq: int, cached: bool, entries: dict[str, CacheEntry],
             fresh: dict[str, CacheEntry]) -> bytes:
        """One ``* seq FETCH (...)``; ``cached``: the cache was asked for this chunk
        (fresh entries are then written back to it)."""
        index, plan = self.index, self.plan
        uid = m.uid
        base = m.base if cached else None
        full: bytes | None = None
        entry = entries.get(base) if base is not None else None
        if plan.need_full:
            full = read_message(index, uid, m)
        cut_cached = base is not None and base in self._cuts
        if (plan.need_header or plan.need_structure) and not cut_cached and (
                entry is None or (plan.need_structure and entry.bodystructure is None)):
            if plan.need_structure and full is None:
                full = read_message(index, uid)
            if full is not None:
                entry = entry_for(full, structure=plan.need_structure)
            else:
                header = read_header(index, uid)
                # ENVELOPE only when asked: a header sync of 10k messages need not parse
                # 10k address lists (it is filled in the first time a client wants it).
                entry = (entry_for(header, structure=False) if self._wants_envelope
                         else CacheEntry(header[:HEADER_CAP], None, None, None))
            if base is not None:
                fresh[base] = entry
        # One list of pieces and one join: a whole body is copied once here, not once per
        # level of nesting (item, item list, response).
        pieces = [b"* %d FETCH (UID %d " % (seq, uid) if self.with_uid else b"* %d FETCH (" % seq]
        for name, render, raw in self._items:
            value = render(uid, m, entry, full)
            if raw:
                # A line end cannot be quoted: a literal, without a quotability scan.
                if value[-1:] == b"\n" or not fmt.can_quote(value):
                    pieces += (name, b"{%d}\r\n" % len(value), value, b" ")
                    continue
                value = fmt.quoted(value)
            pieces += (name, value, b" ")
        if self._tail_flags and uid in self.force_flags:
            pieces += (b"FLAGS ", self._flags(uid, m), b" ")
        if self._tail_modseq:
            pieces.append(b"MODSEQ (%d) " % m.modseq)
        last = pieces[-1]
        if last.endswith(b" "):  # the separator after the last item
            pieces[-1] = last[:-1]
        pieces.append(b")\r\n")
        return b"".join(pieces)

    def _flags(self, uid: int, m: Message) -> bytes:
        key = (m.suffix, m.extra, self.index.is_recent(uid))  # the suffix: no letters parse
        out = self._flag_cache.get(key)
        if out is None:
            flags = self.index.flags(uid)
            if key[2]:
                flags = flags | {"\\Recent"}
            out = self._flag_cache[key] = fmt.flags(sorted(flags))
        return out

    def _header_of(self, uid: int, entry: CacheEntry | None) -> bytes:
        """The header block: cached, unless the cache holds only its first HEADER_CAP octets."""
        assert entry is not None
        return read_header(self.index, uid) if entry.header_truncated else entry.header

    def _renderer(self, item: FetchItem) -> Callable[[int, Message, CacheEntry | None, bytes | None], bytes]:
        """A function giving the item's value, already in wire form, for one message."""
        if isinstance(item, BodySection) and item.binary:
            return _binary_renderer(item)
        if isinstance(item, BodySection):
            section, partial = item.section, item.partial
            header_only = not section.part and section.text in _HEADER_TEXTS

            def body_section(uid: int, m: Message, entry: CacheEntry | None, full: bytes | None) -> bytes:
                if header_only and full is None:
                    if self._fields_key is not None:
                        data = self._cuts.get(m.base)
                        if data is None:
                            data = self._fresh_cuts[m.base] = _header_section(
                                self._header_of(uid, entry), section)
                    else:
                        data = _header_section(self._header_of(uid, entry), section)
                else:
                    assert full is not None
                    data = mime.section_bytes(full, section)
                if partial is not None:
                    data = data[partial[0]:partial[0] + partial[1]]
                return data  # raw: _one makes it a string

            return body_section
        name = item.name
        if name == "FLAGS":
            return lambda uid, m, entry, full: self._flags(uid, m)
        if name == "UID":
            return lambda uid, m, entry, full: b"%d" % uid
        if name == "RFC822.SIZE":
            return lambda uid, m, entry, full: b"%d" % m.size
        if name == "INTERNALDATE":
            return lambda uid, m, entry, full: fmt.format_value(_internaldate(m.internal_date))
        if name == "MODSEQ":
            return lambda uid, m, entry, full: b"(%d)" % m.modseq
        if name == "ENVELOPE":
            return lambda uid, m, entry, full: (
                entry.envelope if entry is not None and entry.envelope is not None
                else fmt.format_value(mime.envelope(entry.header if entry else b"")))
        if name in ("BODYSTRUCTURE", "BODY"):
            def structure(uid: int, m: Message, entry: CacheEntry | None, full: bytes | None) -> bytes:
                assert entry is not None
                data = entry.bodystructure if name == "BODYSTRUCTURE" else entry.body
                assert data is not None
                return data
            return structure
        if name == "RFC822":
            return lambda uid, m, entry, full: fmt.string(full or b"")
        if name == "RFC822.HEADER":
            return lambda uid, m, entry, full: fmt.string(entry.header if entry else b"")
        if name == "RFC822.TEXT":
            return lambda uid, m, entry, full: fmt.string(split_header(full or b"")[1])
        raise ValueError(f"unexpected fetch attribute {name}")


def _binary_renderer(item: BodySection) -> _Render:
    """``BINARY[...]`` / ``BINARY.SIZE[...]`` (RFC 3516 4.2-4.3) in wire form: a
    ``literal8`` when the decoded content holds a NUL (which a literal may not), else a
    quoted string or a literal. Raises ``UnknownCTE``."""
    section, partial, size_only = item.section, item.partial, item.size_only

    def binary(uid: int, m: Message, entry: CacheEntry | None, full: bytes | None) -> bytes:
        assert full is not None
        data = binary_section(full, section)
        if size_only:
            return b"%d" % len(data)
        if partial is not None:
            data = data[partial[0]:partial[0] + partial[1]]
        if b"\0" in data:
            return b"~{%d}\r\n" % len(data) + data
        if data[-1:] != b"\n" and fmt.can_quote(data):
            return fmt.quoted(data)
        return b"{%d}\r\n" % len(data) + data

    return binary


def _header_section(header: bytes, section: Section) -> bytes:
    if section.text == "HEADER":
        return header
    return mime.header_fields(header, section.fields, exclude=section.text == "HEADER.FIELDS.NOT")


class SearchLoader:
    """``load`` for the SEARCH evaluator: headers from the FETCH cache, fetched 500 at a
    time ahead of the evaluator (a SUBJECT search of 10k messages then reads no file when
    the client has synced headers before), whole messages from the files."""

    _AHEAD = 500

    def __init__(self, index: MailboxView, cache: FetchCache | None) -> None:
        self.index = index
        self.cache = cache
        self._headers: dict[int, bytes] = {}
        self._fresh: dict[str, CacheEntry] = {}

    def __call__(self, cand: Candidate, need: ContentNeed) -> tuple[bytes | None, bytes | None]:
        uid, seq = cand.uid, cand.seq
        try:
            if need == "full":
                return None, read_message(self.index, uid)
            header = self._headers.pop(uid, None)
            if header is None:
                self._prefetch(seq)
                header = self._headers.pop(uid, None)
            if header is None:
                header = read_header(self.index, uid)
                base = self.index.message(uid).base
                self._fresh[base] = CacheEntry(header[:HEADER_CAP], None, None, None)
                if len(self._fresh) >= self._AHEAD:
                    self.flush()
            return header, None
        except FileNotFoundError:
            return b"", b""

    def _prefetch(self, seq: int) -> None:
        self._headers.clear()
        if self.cache is None:
            return
        uids = self.index.uids[seq - 1:seq - 1 + self._AHEAD]
        bases = {self.index.message(u).base: u for u in uids}
        for base, entry in self.cache.get_many(list(bases)).items():
            if not entry.header_truncated:
                self._headers[bases[base]] = entry.header

    def flush(self) -> None:
        if self._fresh and self.cache is not None:
            try:
                self.cache.put_many(self._fresh)
            except Exception:
                log.exception("fetch cache write failed in %s", self.index.dir)
        self._fresh = {}
