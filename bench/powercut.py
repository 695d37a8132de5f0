"""Long power-cut run: ``python3 bench/powercut.py [--seconds 300] [--site SITE]``.

The same harness as tests/test_powercut.py (a real pymaild on tests/support/powercutfs.py
under load on every durable path, cuts checked against the acknowledgements), for as
long as you like. Needs root (FUSE), /dev/fuse, fusermount3 (Debian: fuse3) and mfusepy.
Prints the figures: cuts taken, cuts opened by a second pymaild, acknowledgements per
path, violations (acknowledged messages lost, partial files visible, ...). Exit 1 on any
violation; failing cuts are kept under the work directory for a look.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.ca import TestCA
from tests.support.powercut import Harness


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--site", default="", help="remove this fsync site (see tests/support/fsyncskip.py)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--open-every", type=int, default=150, help="start pymaild on every Nth cut")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="powercut-bench-"))
    h = Harness(work, TestCA(work / "ca"), site=args.site, seed=args.seed, open_every=args.open_every)
    t0 = time.monotonic()
    try:
        h.start()
        h.run(args.seconds)
    finally:
        h.stop()
    took = time.monotonic() - t0
    lost = [v for v in h.violations if "not in" in v or "neither" in v or "none of" in v]
    print(f"{took:.0f} s, {h.cuts} power cuts ({h.cuts / took:.1f}/s), {h.opened} opened by pymaild")
    print(f"acknowledged: {len(h.acks.mx)} MX, {len(h.acks.sub)} submission "
          f"({len(h.sink.delivered)} taken by the remote), {len(h.acks.imap)} IMAP APPEND/COPY/MOVE, "
          f"{len(h.acks.accounts)} accounts, {len(h.acks.dkim)} DKIM files")
    print(f"violations: {len(h.violations)}; acknowledged messages lost: {len(lost)}")
    for line in h.violations[:20]:
        print("  " + line)
    for line in h.errors:
        print("error: " + line)
    print(f"work directory: {work}")
    return 1 if h.violations or h.errors else 0


if __name__ == "__main__":
    sys.exit(main())
