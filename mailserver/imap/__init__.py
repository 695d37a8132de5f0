"""The IMAP4rev1 server of the daemon (``daemon.py`` builds it and listens on
``listen.imap`` / ``listen.imaps``), serving the accounts' Maildir++ stores.

* ``server``: the asyncio transport (sockets, TLS, timeouts, IDLE); ``session``: the state
  machine of one connection (dispatch, any-state commands, IDLE), built from
  ``session_core`` (state, selected folder, responses), ``session_updates`` (others'
  changes, RFC 3501 7.4.1), ``session_auth`` (STARTTLS, LOGIN, AUTHENTICATE),
  ``session_mailboxes`` (the authenticated-state folder commands) and
  ``session_selected`` (the selected-state commands); ``backend``: what all sessions
  share; ``hub``: change
  notification between sessions, deliveries and other programs writing the Maildir;
  ``mailboxes``: one account's folder tree.
* Sans-I/O protocol core, one job per module: ``framing`` (bytes -> events), ``lexer`` and
  ``commands`` (command parser), ``fetchitems`` and ``searchkeys`` (FETCH items, SEARCH
  keys, parsed),
  ``seqset``, ``dates``, ``utf7`` (modified UTF-7), ``errors``, ``format`` (responses).
* Answering FETCH, SEARCH, SORT and THREAD: ``fetchrender`` (rendering, in a worker
  thread), ``mime``
  (ENVELOPE, BODYSTRUCTURE, sections), ``fetchcache`` (the per-folder SQLite cache of
  rendered ENVELOPE/BODYSTRUCTURE and header blocks), ``searcheval`` (evaluating a parsed
  SEARCH) with its helpers for header and body text: ``searchtext`` (normalisation,
  charsets, RFC 2047, header fields), ``mimesplit`` (MIME tree without the feed parser),
  ``bodypieces`` (the searchable text parts), ``textfold`` (byte folding), ``searchneedle``
  (compiled BODY/TEXT needles), ``rawfilter`` (the raw-bytes pre-filter); ``sortkeys``
  (RFC 5256 base subject, sent date, address keys; i;unicode-casemap), ``sorting`` (SORT
  and its answers), ``mailthreads`` (the THREAD algorithms).
"""
