"""IMAP under real-world load: many long-lived sessions on one account, random commands,
every response checked against each session's model of its view (RFC 3501 7.4.1 and
the rest of tests/support/imapclient.py). The long version of tests/test_imap_stress.py.

    python bench/imap_stress.py                       # 12 sessions, 10 minutes, seed 20261205
    python bench/imap_stress.py --seconds 60 --sessions 20 --seed 7

One real ``pymaild run`` subprocess, IMAPS on 127.0.0.1, a throwaway CA. Sessions: 2
IDLE-heavy, 3 QRESYNC, 2 CONDSTORE, the rest plain; commands: FETCH/UID FETCH (flags,
headers, bodies, CHANGEDSINCE, VANISHED), STORE/UID STORE of flags and keywords, SEARCH,
COPY/MOVE (by number and UID, to another folder and to INBOX), EXPUNGE/UID EXPUNGE,
APPEND, LIST, STATUS, SELECT (with QRESYNC), IDLE. Stops at the first violation and
prints the seed and the session's last lines; exit status 1 then. Otherwise prints the
counts: commands per kind, untagged responses seen, the expected EXPUNGEISSUED answers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.ca import TestCA  # noqa: E402
from tests.support.imap import PASSWORD, client_ctx, imap_daemon, new_account  # noqa: E402
from tests.support.imapclient import Violation  # noqa: E402
from tests.support.imapstress import StressConfig, run_stress  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600.0, help="how long the sessions run (default 600)")
    ap.add_argument("--sessions", type=int, default=12, help="sessions on the one account (default 12)")
    ap.add_argument("--seed", type=int, default=20261205)
    ap.add_argument("--dir", type=Path, default=None, help="where to make the temporary directory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="imap-stress-") as tmp:
        base = Path(tmp)
        ca = TestCA(base / "ca")
        d = imap_daemon(base / "d", ca)
        try:
            user = new_account(d)
            cfg = StressConfig(host="127.0.0.1", port=d.imaps_port, ctx=client_ctx(ca),  # type: ignore[attr-defined]
                               user=user, password=PASSWORD, sessions=args.sessions,
                               seconds=args.seconds, seed=args.seed)
            print(f"{args.sessions} sessions for {args.seconds:.0f} s, seed {args.seed}", flush=True)
            t0 = time.monotonic()
            try:
                result = asyncio.run(run_stress(cfg))
            except Violation as exc:
                print(f"VIOLATION after {time.monotonic() - t0:.0f} s:\n{exc}")
                return 1
            print(result.summary())
            print(f"  {result.total / result.seconds:.0f} commands/s; 0 violations")
            errors = [line for line in d.log_lines if "Traceback" in line or "ERROR" in line]
            print(f"  daemon log: {len(d.log_lines)} lines, {len(errors)} errors"
                  + (f" (first: {errors[0]})" if errors else ""))
            return 1 if errors else 0
        finally:
            d.stop()


if __name__ == "__main__":
    sys.exit(main())
