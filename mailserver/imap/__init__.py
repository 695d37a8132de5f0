"""IMAP4rev1 foundation: a sans-I/O framer, command parser and response formatter.

Not wired into the daemon yet: the IMAP server is a later task. ``protocol`` is the
public facade; the other modules each have one job (framing, commands, fetch items,
search keys, sequence sets, dates, modified UTF-7, response formatting).
"""
