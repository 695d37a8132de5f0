"""Public facade of the IMAP protocol layer (sans-I/O; served by ``session.py`` and ``server.py``).

* ``IMAPConnection`` (framing): bytes in, events out — ``CommandReceived``, ``CommandError``,
  ``ContinuationRequest``, ``AuthResponse``, ``IdleDone``, ``ConnectionClosed``.
* ``parse_command`` (commands): one complete command -> a typed dataclass.
* ``SequenceSet`` (seqset), search AST (search), fetch items (fetch).
* ``encode_mailbox_name``/``decode_mailbox_name`` (utf7), dates (dates).
* response formatting (format, imported as a module: ``protocol.fmt.tagged(...)``).
"""

from __future__ import annotations

from . import format as fmt
from .commands import (
    COMMAND_NAMES,
    Append,
    Authenticate,
    Command,
    Copy,
    Enable,
    Fetch,
    Id,
    List,
    Login,
    Lsub,
    MailboxCommand,
    QResync,
    Rename,
    Search,
    Select,
    SimpleCommand,
    Status,
    Store,
    UidExpunge,
    parse_command,
)
from .dates import format_date, format_datetime, parse_date, parse_datetime
from .errors import (
    BadCharsetError,
    DateError,
    IMAPError,
    IMAPParseError,
    MailboxNameError,
    SequenceSetError,
    UnknownCommandError,
)
from .fetch import Attribute, BodySection, FetchItem, Section
from .framing import (
    NEED_DATA,
    PAUSED,
    AuthResponse,
    CommandError,
    CommandReceived,
    ConnectionClosed,
    ContinuationRequest,
    Event,
    IdleDone,
    IMAPConnection,
    Limits,
    ProtocolError,
)
from .search import (
    AllKey,
    AndKey,
    DateKey,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    NotKey,
    OrKey,
    SearchKey,
    SequenceKey,
    SizeKey,
    TextKey,
    uses_modseq,
)
from .seqset import SequenceSet
from .utf7 import decode_mailbox_name, encode_mailbox_name

__all__ = [
    "COMMAND_NAMES", "NEED_DATA", "PAUSED", "AllKey", "AndKey", "Append", "Attribute", "AuthResponse",
    "Authenticate", "BadCharsetError", "BodySection", "Command", "CommandError", "CommandReceived",
    "ConnectionClosed", "ContinuationRequest", "Copy", "DateError", "DateKey", "Enable", "Event", "Fetch",
    "FetchItem", "FlagKey", "HeaderKey", "IMAPConnection", "IMAPError", "IMAPParseError", "Id", "IdleDone",
    "Limits", "List", "Login", "Lsub", "MailboxCommand", "MailboxNameError", "ModSeqKey", "NotKey", "OrKey",
    "ProtocolError", "QResync", "Rename", "Search", "SearchKey", "Section", "Select", "SequenceKey",
    "SequenceSet", "SequenceSetError", "SimpleCommand", "SizeKey", "Status", "Store", "TextKey", "UidExpunge",
    "UnknownCommandError", "decode_mailbox_name", "encode_mailbox_name", "fmt", "format_date",
    "format_datetime", "parse_command", "parse_date", "parse_datetime", "uses_modseq",
]
