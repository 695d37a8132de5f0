"""IMAP command parser: one complete command -> a typed, frozen dataclass.

``parse_command(data)`` takes what the framer assembled (``IMAPConnection`` does this):
the command's lines and literal octets, ending with CRLF. Errors are ``IMAPError``
subclasses carrying the tag (None when the tag itself is invalid: answer ``* BAD``).
Mailbox names are returned as on the wire (modified UTF-7 unless UTF8=ACCEPT) with
``INBOX`` case-normalised; ``decode_mailbox_name`` turns them into Unicode.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from .dates import parse_datetime
from .errors import BadCharsetError, DateError, IMAPParseError, UnknownCommandError
from .fetchitems import FetchItem, read_fetch_items
from .lexer import MAX_NUMBER, MAX_NUMBER64, TAG_CHARS, Reader, decode_text
from .searchkeys import SearchKey, read_search_program, read_sequence_set
from .seqset import SequenceSet

SYSTEM_FLAGS = {f.upper(): f for f in (
    "\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")}
STATUS_ITEMS = frozenset({"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE",
                          "HIGHESTMODSEQ", "APPENDLIMIT", "DELETED-STORAGE"})
SEARCH_CHARSETS = ("US-ASCII", "UTF-8")
LIST_SELECTION = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})  # RFC 5258, 6154
LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "STATUS", "SPECIAL-USE"})  # RFC 5258, 5819, 6154


# ---------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Command:
    tag: str
    name: str  # upper-case command name: "FETCH", "UID FETCH" is name "FETCH" with uid=True


@dataclass(frozen=True, slots=True)
class SimpleCommand(Command):
    """CAPABILITY, NOOP, LOGOUT, STARTTLS, CHECK, CLOSE, UNSELECT, EXPUNGE, IDLE, NAMESPACE."""


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    mechanism: str  # upper-case
    initial_response: bytes | None = None  # SASL-IR decoded; b"" for "="; None when absent


@dataclass(frozen=True, slots=True)
class Login(Command):
    username: str
    password: str

    def __repr__(self) -> str:  # keep passwords out of logs and test failure output
        return f"Login(tag={self.tag!r}, username={self.username!r}, password='***')"


@dataclass(frozen=True, slots=True)
class QResync:
    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None  # (sequence numbers, UIDs)


@dataclass(frozen=True, slots=True)
class Select(Command):
    """SELECT, or EXAMINE (``readonly``)."""

    mailbox: str
    readonly: bool = False
    condstore: bool = False
    qresync: QResync | None = None


@dataclass(frozen=True, slots=True)
class MailboxCommand(Command):
    """CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE, GETQUOTAROOT."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class Create(MailboxCommand):
    """CREATE with RFC 4466 create-params; USE is the only one (RFC 6154 3, 5)."""

    use: tuple[str, ...] = ()  # special-use attributes, as the client wrote them


@dataclass(frozen=True, slots=True)
class Quota(Command):
    """GETQUOTA and SETQUOTA (RFC 9208 4.1): ``resources`` only for SETQUOTA."""

    root: str
    resources: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Rename(Command):
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST with RFC 5258 selection and return options (upper-case atoms)."""

    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()  # e.g. {"SPECIAL-USE", "SUBSCRIBED"}
    returns: frozenset[str] = frozenset()  # e.g. {"SPECIAL-USE", "CHILDREN", "STATUS"}
    status_items: tuple[str, ...] = ()  # RETURN (STATUS (...)) per RFC 5819

    @property
    def extended(self) -> bool:
        return bool(self.selection or self.returns or len(self.patterns) != 1)


@dataclass(frozen=True, slots=True)
class Lsub(Command):
    reference: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Status(Command):
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Append(Command):
    mailbox: str
    flags: tuple[str, ...]
    date_time: _dt.datetime | None
    message: bytes
    binary: bool = False  # sent as literal8 (~{n}, RFC 3516)


@dataclass(frozen=True, slots=True)
class Search(Command):
    uid: bool
    criteria: SearchKey
    charset: str | None = None  # upper-case, None when absent
    returns: tuple[str, ...] | None = None  # ESEARCH RETURN (...) options, None when absent


SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",  # RFC 5256 3
                       "DISPLAYFROM", "DISPLAYTO"})  # RFC 5957 3
SORT_RETURNS = frozenset({"MIN", "MAX", "COUNT", "ALL", "PARTIAL"})  # RFC 5267 3.2, RFC 9394
THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES", "REFS")  # RFC 5256 3, Dovecot's REFS


@dataclass(frozen=True, slots=True)
class Sort(Command):
    """``[UID] SORT [RETURN (...)] (criteria) charset search-key...`` (RFC 5256, 5267)."""

    uid: bool
    keys: tuple[tuple[str, bool], ...]  # (sort key, reversed), most significant first
    charset: str
    criteria: SearchKey
    returns: tuple[str, ...] | None = None  # ESORT RETURN options; None: a plain * SORT
    partial: tuple[int, int] | None = None  # RFC 9394 range; negative: counted from the end


@dataclass(frozen=True, slots=True)
class Thread(Command):
    """``[UID] THREAD algorithm charset search-key...`` (RFC 5256)."""

    uid: bool
    algorithm: str
    charset: str
    criteria: SearchKey


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    uid: bool
    sequence_set: SequenceSet
    items: tuple[FetchItem, ...]
    changedsince: int | None = None
    vanished: bool = False


@dataclass(frozen=True, slots=True)
class Store(Command):
    uid: bool
    sequence_set: SequenceSet
    mode: str  # "+" add, "-" remove, "" replace
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None


@dataclass(frozen=True, slots=True)
class Copy(Command):
    """COPY or MOVE (``name``), UID variants with ``uid``."""

    uid: bool
    sequence_set: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class UidExpunge(Command):
    sequence_set: SequenceSet


@dataclass(frozen=True, slots=True)
class Enable(Command):
    capabilities: tuple[str, ...]  # upper-case


@dataclass(frozen=True, slots=True)
class Compress(Command):
    """``COMPRESS mechanism`` (RFC 4978 3)."""

    mechanism: str  # upper-case


@dataclass(frozen=True, slots=True)
class Id(Command):
    params: tuple[tuple[str, str | None], ...] | None  # None for "ID NIL"


# ---------------------------------------------------------------------------- helpers


def _flag(r: Reader) -> str:
    if r.try_char(b"\\"):
        atom = r.atom()
        canonical = SYSTEM_FLAGS.get("\\" + atom.upper())
        return canonical if canonical is not None else "\\" + atom
    return r.atom()


def _flag_list(r: Reader) -> tuple[str, ...]:
    r.expect(b"(")
    flags: list[str] = []
    if r.try_char(b")"):
        return ()
    while True:
        flags.append(_flag(r))
        if r.try_char(b")"):
            return tuple(dict.fromkeys(flags))
        r.sp()


def _modseq(r: Reader, *, zero_ok: bool = True) -> int:
    return r.number(MAX_NUMBER64, nonzero=not zero_ok, what="mod-sequence")


_TAG_RE = re.compile(rb"[^ ]*")


def _split_tag(data: bytes) -> tuple[str | None, int]:
    m = _TAG_RE.match(data)
    assert m is not None
    raw = m.group(0)
    if not raw or any(b not in TAG_CHARS for b in raw) or len(raw) > 64:
        return None, m.end()
    return raw.decode("ascii"), m.end()


# ---------------------------------------------------------------------------- per command


def _no_args(r: Reader, tag: str, name: str) -> Command:
    return SimpleCommand(tag, name)


def _authenticate(r: Reader, tag: str, name: str) -> Command:
    r.sp()
    mechanism = r.atom().upper()
    initial: bytes | None = None
    if r.try_sp():
        raw = r.take(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="),
                     "a base64 initial response")
        if raw == b"=":
            initial = b""
        else:
            try:
                initial = base64.b64decode(raw, validate=True)
            except binascii.Error:
                raise r.error("invalid base64 in the initial response") from None
    return Authenticate(tag, name, mechanism, initial)


def _login(r: Reader, tag: str, name: str) -> Command:
    r.sp()
    user = r.astring_text("user name")
    r.sp()
    password = r.astring_text("password")
    return Login(tag, name, user, password)


def _select(r: Reader, tag: str, name: str) -> Command:
    r.sp()
    mailbox = r.mailbox()
    condstore = False
    qresync: QResync | None = None
    if r.try_sp():
        r.expect(b"(")
        while True:
            param = r.atom().upper()
            if param == "CONDSTORE":
                condstore = True
            elif param == "QRESYNC":
                r.sp()
                qresync = _qresync(r)
            else:
                raise r.error(f"unknown {name} parameter {param[:30]}")
            if r.try_char(b")"):
                break
            r.sp()
    return Select(tag, name, mailbox, readonly=name == "EXAMINE", condstore=condstore, qresync=qresync)


def _qresync(r: Reader) -> QResync:
    r.expect(b"(")
    uidvalidity = r.number(nonzero=True, what="UIDVALIDITY")
    r.sp()
    modseq = _modseq(r, zero_ok=False)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if r.try_sp():
        if r.peek() != 0x28:
            known = read_sequence_set(r)
            if known.uses_star or known.saved:
                raise r.error("known-uids must not use '*' or '$'")
            if r.try_sp():
                match = _seq_match(r)
        else:
            match = _seq_match(r)
    r.expect(b")")
    return QResync(uidvalidity, modseq, known, match)


def _seq_match(r: Reader) -> tuple[SequenceSet, SequenceSet]:
    r.expect(b"(")
    seqs = read_sequence_set(r)
    r.sp()
    uids = read_sequence_set(r)
    r.expect(b")")
    return seqs, uids


def _mailbox_cmd(r: Reader, tag: str, name: str) -> Command:
    r.sp()
    return MailboxCommand(tag, name, r.mailbox())


def _create(r: Reader, tag: str, name: str) -> Command:
    """``"CREATE" SP mailbox [SP "(" create-param *(SP create-param) ")"]`` (RFC 4466 2.2),
    ``create-param =/ "USE" SP "(" [use-attr *(SP use-attr)] ")"`` (RFC 6154 5)."""
    r.sp()
    mailbox = r.mailbox()
    use: list[str] = []
    if r.try_sp():
        r.expect(b"(")
        while True:
            param = r.atom().upper()
            if param != "USE":  # RFC 4466 2.2: an unknown parameter is BAD
                raise r.error(f"unknown CREATE parameter {param[:30]}")
            r.sp()
            r.expect(b"(")
            while not r.try_char(b")"):
                if use and r.peek() == 0x20:
                    r.sp()
                r.expect(b"\\")
                use.append("\\" + r.atom())
                if r.peek() not in (0x20, 0x29):
                    raise r.error("expected ')'")
            if r.try_char(b")"):
                break
            r.sp()
    return Create(tag, name, mailbox, tuple(dict.fromkeys(use)))


def _quota(r: Reader, tag: str, name: str) -> Command:
    """``GETQUOTA SP quota-root-name`` / ``SETQUOTA SP quota-root-name SP setquota-list``
    with ``setquota-list = "(" [resource-name SP number64 *(SP ...)] ")"`` (RFC 9208 9)."""
    r.sp()
    root = decode_text(r.astring(), r.tag, "quota root")
    if name == "GETQUOTA":
        return Quota(tag, name, root)
    r.sp()
    r.expect(b"(")
    resources: list[tuple[str, int]] = []
    while not r.try_char(b")"):
        if resources:
            r.sp()
        resource = r.atom().upper()
        r.sp()
        resources.append((resource, r.number(MAX_NUMBER64, what="a resource limit")))
        if len(resources) > 20:
            raise r.error("too many quota resources")
    return Quota(tag, name, root, tuple(resources))


def _rename(r: Reader, tag: str, name: str) -> Command:
    r.sp()
    old = r.mailbox()
    r.sp()
    return Rename(tag, name, old, r.mailbox())


def _status_items(r: Reader) -> tuple[str, ...]:
    items = r.paren_list()
    if not items:
        raise r.error("STATUS needs at least one item")
    for item in items:
        if item not in STATUS_ITEMS:
            raise r.error(f"unknown STATUS item {item[:30]}")
    return tuple(dict.fromkeys(items))


def _list(r: Reader, tag: str, name: str) -> Command:
    r.sp()
    selection: frozenset[str] = frozenset()
    if r.peek() == 0x28:
        selection = frozenset(r.paren_list())
        unknown = selection - LIST_SELECTION
        if unknown:
            raise r.error(f"unknown LIST selection option {min(unknown)[:30]}")
        if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
            raise r.error("RECURSIVEMATCH must not be the only selection option (RFC 5258)")
        r.sp()
    reference = decode_text(r.astring(), r.tag, "reference")
    r.sp()
    patterns: list[str] = []
    if r.try_char(b"("):
        while True:
            patterns.append(decode_text(r.list_mailbox(), r.tag, "pattern"))
            if r.try_char(b")"):
                break
            r.sp()
    else:
        patterns.append(decode_text(r.list_mailbox(), r.tag, "pattern"))
    returns: set[str] = set()
    status_items: tuple[str, ...] = ()
    if r.try_sp():
        if not r.try_keyword("RETURN"):
            raise r.error("expected RETURN")
        r.sp()
        r.expect(b"(")
        while not r.try_char(b")"):
            if returns:
                r.sp()
            opt = r.atom().upper()
            if opt not in LIST_RETURN:
                raise r.error(f"unknown LIST return option {opt[:30]}")
            returns.add(opt)
            if opt == "STATUS":
                r.sp()
                status_items = _status_items(r)
            if r.peek() not in (0x20, 0x29):
                raise r.error("expected ')'")
    return List(tag, name, reference, tuple(patterns), selection, frozenset(returns), status_items)


def _lsub(r: Reader, tag: str, name: str) -> Command:
    r.sp()
    reference = decode_text(r.astring(), r.tag, "reference")
    r.sp()
    return Lsub(tag, name, reference, decode_text(r.list_mailbox(), r.tag, "pattern"))


def _status(r: Reader, tag: str, name: str) -> Command:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    return Status(tag, name, mailbox, _status_items(r))


def _append(r: Reader, tag: str, name: str) -> Command:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    flags: tuple[str, ...] = ()
    date_time: _dt.datetime | None = None
    if r.peek() == 0x28:
        flags = _flag_list(r)
        r.sp()
    if r.peek() == 0x22:
        raw = r.quoted()
        try:
            date_time = parse_datetime(raw.decode("ascii", "replace"))
        except DateError as exc:
            raise r.error(str(exc)) from None
        r.sp()
    if r.peek() not in (0x7B, 0x7E):
        raise r.error("APPEND needs the message as a literal")
    message, binary = r.literal(allow_literal8=True)
    if not r.at_end():
        raise r.error("MULTIAPPEND and CATENATE are not supported")
    return Append(tag, name, mailbox, flags, date_time, message, binary)


def _search(r: Reader, tag: str, name: str, uid: bool = False) -> Command:
    r.sp()
    returns: tuple[str, ...] | None = None
    charset: str | None = None
    if r.try_keyword("RETURN"):
        r.sp()
        returns = tuple(dict.fromkeys(r.paren_list()))
        for opt in returns:
            if opt not in ("MIN", "MAX", "ALL", "COUNT", "SAVE"):
                raise r.error(f"unknown SEARCH RETURN option {opt[:30]}")
        r.sp()
    if r.try_keyword("CHARSET"):
        r.sp()
        charset = r.astring_text("charset").upper()
        if charset not in SEARCH_CHARSETS:
            raise BadCharsetError(tag, f"charset {charset[:30]} is not supported",
                                  code="BADCHARSET (" + " ".join(SEARCH_CHARSETS) + ")")
        r.sp()
    return Search(tag, name, uid, read_search_program(r), charset, returns)


def _charset(r: Reader, tag: str) -> str:
    """The charset SORT and THREAD require before their search keys (RFC 5256 5)."""
    charset = r.astring_text("charset").upper()
    if charset not in SEARCH_CHARSETS:
        raise BadCharsetError(tag, f"charset {charset[:30]} is not supported",
                              code="BADCHARSET (" + " ".join(SEARCH_CHARSETS) + ")")
    return charset


def _partial_range(r: Reader) -> tuple[int, int]:
    """RFC 9394 3.1 ``partial-range``: ``first:last`` or ``-first:-last`` (from the end)."""
    negative = r.try_char(b"-")
    first = r.number(MAX_NUMBER, nonzero=True, what="a PARTIAL range")
    r.expect(b":")
    if negative:
        r.expect(b"-")
    last = r.number(MAX_NUMBER, nonzero=True, what="a PARTIAL range")
    low, high = min(first, last), max(first, last)
    return (-low, -high) if negative else (low, high)


def _sort(r: Reader, tag: str, name: str, uid: bool = False) -> Command:
    r.sp()
    returns: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None
    if r.try_keyword("RETURN"):  # RFC 5267 3.2: sort-return-opts
        r.sp()
        r.expect(b"(")
        opts: list[str] = []
        while not r.try_char(b")"):
            if opts:
                r.sp()
            opt = r.atom().upper()
            if opt not in SORT_RETURNS:
                raise r.error(f"unknown SORT RETURN option {opt[:30]}")
            if opt == "PARTIAL":
                r.sp()
                partial = _partial_range(r)
            opts.append(opt)
        returns = tuple(dict.fromkeys(opts))
        r.sp()
    r.expect(b"(")
    keys: list[tuple[str, bool]] = []
    while True:
        reverse = r.try_keyword("REVERSE")
        if reverse:
            r.sp()
        key = r.atom().upper()
        if key not in SORT_KEYS:
            raise r.error(f"unknown sort key {key[:30]}")
        keys.append((key, reverse))
        if r.try_char(b")"):
            break
        r.sp()
    r.sp()
    charset = _charset(r, tag)
    r.sp()
    return Sort(tag, name, uid, tuple(keys), charset, read_search_program(r), returns, partial)


def _thread(r: Reader, tag: str, name: str, uid: bool = False) -> Command:
    r.sp()
    algorithm = r.atom().upper()
    if algorithm not in THREAD_ALGORITHMS:
        raise r.error(f"unknown THREAD algorithm {algorithm[:30]}")
    r.sp()
    charset = _charset(r, tag)
    r.sp()
    return Thread(tag, name, uid, algorithm, charset, read_search_program(r))


def _fetch(r: Reader, tag: str, name: str, uid: bool = False) -> Command:
    r.sp()
    seqs = read_sequence_set(r)
    r.sp()
    items = read_fetch_items(r)
    changedsince: int | None = None
    vanished = False
    if r.try_sp():
        r.expect(b"(")
        while True:
            mod = r.atom().upper()
            if mod == "CHANGEDSINCE":
                r.sp()
                changedsince = _modseq(r)
            elif mod == "VANISHED":
                vanished = True
            else:
                raise r.error(f"unknown FETCH modifier {mod[:30]}")
            if r.try_char(b")"):
                break
            r.sp()
        if vanished and (not uid or changedsince is None):
            raise r.error("VANISHED needs UID FETCH with CHANGEDSINCE (RFC 7162 3.2.6)")
    return Fetch(tag, name, uid, seqs, items, changedsince, vanished)


def _store(r: Reader, tag: str, name: str, uid: bool = False) -> Command:
    r.sp()
    seqs = read_sequence_set(r)
    r.sp()
    unchangedsince: int | None = None
    if r.try_char(b"("):
        while True:
            mod = r.atom().upper()
            if mod != "UNCHANGEDSINCE":
                raise r.error(f"unknown STORE modifier {mod[:30]}")
            r.sp()
            unchangedsince = _modseq(r)
            if r.try_char(b")"):
                break
            r.sp()
        r.sp()
    mode = ""
    if r.peek() in (0x2B, 0x2D):
        mode = chr(r.data[r.pos])
        r.pos += 1
    item = r.atom().upper()
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise r.error("STORE takes FLAGS, +FLAGS or -FLAGS (optionally .SILENT)")
    r.sp()
    if r.peek() == 0x28:
        flags = _flag_list(r)
    else:
        collected = [_flag(r)]
        while r.try_sp():
            collected.append(_flag(r))
        flags = tuple(dict.fromkeys(collected))
    return Store(tag, name, uid, seqs, mode, item.endswith(".SILENT"), flags, unchangedsince)


def _copy(r: Reader, tag: str, name: str, uid: bool = False) -> Command:
    r.sp()
    seqs = read_sequence_set(r)
    r.sp()
    return Copy(tag, name, uid, seqs, r.mailbox())


def _uid(r: Reader, tag: str, name: str) -> Command:
    r.sp()
    sub = r.atom().upper()
    if sub == "EXPUNGE":
        r.sp()
        return UidExpunge(tag, "EXPUNGE", read_sequence_set(r))
    handler = _UID_COMMANDS.get(sub)
    if handler is None:
        raise r.error(f"UID {sub[:30]} is not a UID command")
    return handler(r, tag, sub, True)


def _enable(r: Reader, tag: str, name: str) -> Command:
    caps: list[str] = []
    while r.try_sp():
        caps.append(r.atom().upper())
    if not caps:
        raise r.error("ENABLE needs at least one capability")
    return Enable(tag, name, tuple(dict.fromkeys(caps)))


def _compress(r: Reader, tag: str, name: str) -> Command:
    r.sp()
    return Compress(tag, name, r.atom().upper())


def _id(r: Reader, tag: str, name: str) -> Command:
    r.sp()
    if r.try_keyword("NIL"):
        return Id(tag, name, None)
    r.expect(b"(")
    pairs: list[tuple[str, str | None]] = []
    if not r.try_char(b")"):
        while True:
            raw_key = r.string()
            r.sp()
            value = r.nstring()
            if len(raw_key) > 30 or (value is not None and len(value) > 1024):
                raise r.error("ID fields are at most 30 octets, values 1024 (RFC 2971 3.3)")
            key = decode_text(raw_key, r.tag, "ID field")
            pairs.append((key, None if value is None else decode_text(value, r.tag, "ID value")))
            if len(pairs) > 30:
                raise r.error("ID takes at most 30 field-value pairs (RFC 2971)")
            if r.try_char(b")"):
                break
            r.sp()
    return Id(tag, name, tuple(pairs))


_Handler = Callable[[Reader, str, str], Command]
_UidHandler = Callable[[Reader, str, str, bool], Command]

_UID_COMMANDS: dict[str, _UidHandler] = {"FETCH": _fetch, "STORE": _store, "COPY": _copy, "MOVE": _copy,
                                         "SEARCH": _search, "SORT": _sort, "THREAD": _thread}

_COMMANDS: dict[str, _Handler] = {
    **{n: _no_args for n in ("CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT",
                             "EXPUNGE", "IDLE", "NAMESPACE")},
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "SELECT": _select,
    "EXAMINE": _select,
    "CREATE": _create,
    "DELETE": _mailbox_cmd,
    "SUBSCRIBE": _mailbox_cmd,
    "UNSUBSCRIBE": _mailbox_cmd,
    "GETQUOTAROOT": _mailbox_cmd,
    "GETQUOTA": _quota,
    "SETQUOTA": _quota,
    "RENAME": _rename,
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": _append,
    "SEARCH": _search,
    "SORT": _sort,
    "THREAD": _thread,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "UID": _uid,
    "ENABLE": _enable,
    "COMPRESS": _compress,
    "ID": _id,
}
COMMAND_NAMES = frozenset(_COMMANDS)


def split_tag_and_name(line: bytes) -> tuple[str | None, str | None]:
    """The tag and upper-case command name at the start of a command line, or None for
    either when it is missing or invalid. The framer uses this to answer early."""
    tag, end = _split_tag(line)
    if tag is None or line[end : end + 1] != b" ":
        return tag, None
    m = re.match(rb"[A-Za-z]+", line[end + 1 :])
    return tag, m.group(0).decode("ascii").upper() if m else None


def parse_command(data: bytes) -> Command:
    """Parse one complete command (ending with CRLF) into a Command dataclass."""
    if not data.endswith(b"\r\n"):
        raise IMAPParseError(None, "command must end with CRLF")
    data = data[:-2]
    tag, end = _split_tag(data)
    if tag is None:
        raise IMAPParseError(None, "missing or invalid tag")
    r = Reader(data, tag, end)
    if r.at_end():
        raise r.error("missing command")
    r.sp()
    raw_name = r.take(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"), "a command name")
    name = raw_name.decode("ascii").upper()
    handler = _COMMANDS.get(name)
    if handler is None or (not r.at_end() and r.peek() != 0x20):
        raise UnknownCommandError(tag, f"unknown command {name[:30]}")
    command = handler(r, tag, name)
    r.end()
    return command


__all__ = [
    "COMMAND_NAMES", "MAX_NUMBER", "Append", "Authenticate", "Command", "Copy", "Enable", "Fetch", "Id",
    "List", "Login", "Lsub", "MailboxCommand", "QResync", "Quota", "Rename", "Search", "Select",
    "SimpleCommand", "Sort", "Status", "Store", "Thread", "UidExpunge", "parse_command", "split_tag_and_name",
]
