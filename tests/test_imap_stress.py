"""IMAP under concurrent load: many sessions on one account, every response checked
against each session's model of its view (tests/support/imapclient.py).

The seed and the length can be changed with IMAP_STRESS_SEED / IMAP_STRESS_SECONDS; a
failure prints the seed and the session's last lines. bench/imap_stress.py runs the same
for ten minutes.
"""

from __future__ import annotations

import asyncio
import os

from tests.support.imap import PASSWORD, client_ctx, imap_daemon, new_account
from tests.support.imapstress import StressConfig, run_stress


def test_concurrent_sessions_only_see_rfc_ordered_updates(ca, tmp_path):
    d = imap_daemon(tmp_path / "d", ca)
    try:
        user = new_account(d)
        cfg = StressConfig(
            host="127.0.0.1", port=d.imaps_port, ctx=client_ctx(ca), user=user,  # type: ignore[attr-defined]
            password=PASSWORD, sessions=12,
            seconds=float(os.environ.get("IMAP_STRESS_SECONDS", "30")),
            seed=int(os.environ.get("IMAP_STRESS_SEED", "20261205")),
        )
        result = asyncio.run(run_stress(cfg))
        print(result.summary())
        assert not result.violations
        assert result.total > 500, result.summary()
        # Every kind of update reached the sessions, so the rules were exercised.
        for word in ("EXPUNGE", "VANISHED", "EXISTS", "FETCH"):
            assert result.responses[word] > 0, result.summary()
        assert "Traceback" not in d.log_text()
    finally:
        d.stop()
