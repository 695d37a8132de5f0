"""A connection dropped during IDLE leaves no task behind.

In-process (the daemon's IMAP endpoint on a real loopback TLS socket in this test's event
loop), so that the garbage collector can be run and asyncio's own log read: a helper task
of ``idle_wait()`` left pending is reported as "Task was destroyed but it is pending!"
when it is collected (it was, once per dropped IDLE connection).
"""

from __future__ import annotations

import asyncio
import gc
import logging

from mailserver.auth.passwords import PasswordChecker, make_hasher
from mailserver.auth.ratelimit import AuthThrottle
from mailserver.auth.store import AccountStore
from mailserver.imap.backend import IMAPBackend
from mailserver.imap.server import IMAPEndpoint
from mailserver.tls import server_context
from tests.support.imap import PASSWORD, client_ctx
from tests.support.imapclient import IMAPClient
from tests.support.wait import async_wait_until


def test_dropped_idle_connections_leave_no_pending_task(ca, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    cert, key = ca.issue("mx.example.test", "localhost", stem="idledrop")
    hasher = make_hasher(time_cost=1, memory_cost_kib=8, parallelism=1)
    store = AccountStore.in_state_dir(tmp_path / "state", hasher=hasher)
    user = "idler@example.test"
    store.create_account(user, PASSWORD)

    async def main() -> int:
        backend = IMAPBackend(hostname="mx.example.test", store=store,
                              passwords=PasswordChecker(hasher=hasher), throttle=AuthThrottle())
        endpoint = IMAPEndpoint(backend, tls_context=lambda: server_context(cert, key))
        await endpoint.listen("127.0.0.1", 0, implicit_tls=True)
        port = endpoint.sockets[0][1]
        for i in range(4):
            c = IMAPClient(f"c{i}")
            await c.connect("127.0.0.1", port, client_ctx(ca))
            assert (await c.command(f'LOGIN "{user}" "{PASSWORD}"')).ok
            if i % 2 == 0:  # IDLE in the selected and in the authenticated state
                assert (await c.command("SELECT INBOX")).ok
            await c.idle_start()
            c.abort()
            await c.close()
        await async_wait_until(lambda: not endpoint.sessions, what="the dropped sessions to end")
        await endpoint.drain()
        # Every task but this one ends (the sessions', their IDLE helpers', the hub's poll);
        # one left pending would not, and collected it would log "destroyed but pending".
        me = asyncio.current_task()
        await async_wait_until(lambda: all(t is me or t.done() for t in asyncio.all_tasks()),
                               what="every other task to end")
        gc.collect()
        return len(endpoint.sessions)

    try:
        assert asyncio.run(main()) == 0
        gc.collect()
    finally:
        store.close()
    assert "Task was destroyed but it is pending" not in caplog.text
