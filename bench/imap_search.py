"""IMAP SEARCH BODY/TEXT benchmark: per-message cost of the text search evaluation
(mailserver/imap/searcheval.py and the modules it uses), without a daemon, the disk or the network.

    python bench/imap_search.py                    # 2,000 messages, 5 rounds
    python bench/imap_search.py --count 500 --rounds 3
    python bench/imap_search.py --baseline HEAD~1  # also time searcheval.py as of a git revision

The corpus is bench/imap_sync.py's (same generator and seed): 2-50 KB messages, 55 %
plain text (a quarter of them quoted-printable), 38 % multipart/alternative text + HTML,
7 % multipart/mixed with a base64 attachment; UTF-8 bodies with umlauts and ß, encoded-word
names in the headers, DKIM signatures.

Each row is one SEARCH key evaluated over every message (the content already in memory, as
the loader hands it over), timed in three modes of the module switches:

    reference     SHORTCUTS = False, FAST_PARSE = False  (the email package + full normalisation)
    fast parse    SHORTCUTS = False, FAST_PARSE = True   (same decoding without the feed parser)
    shortcuts     SHORTCUTS = True,  FAST_PARSE = True   (normal operation)

Figures are microseconds of this process's CPU time per message (time.process_time, so
other load on a shared machine counts less than in wall-clock time), the best of --rounds
rounds. The hit count of every mode must agree: a
disagreement is printed as a BUG line. It prints figures; nothing here is a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import imap_sync  # noqa: E402  (the message generator)

from mailserver.imap import mimesplit, searcheval  # noqa: E402
from mailserver.imap.searchkeys import TextKey  # noqa: E402

MISS = "xylophone"  # in no message
RARE = imap_sync.TEXT_WORD  # "zanzibar": in ~1 % of the bodies
COMMON = "the"  # in nearly every body
PHRASE = "warehouse this morning"  # in the same ~1 % (the paragraph with the rare word)
ACCENTED = "grüße"  # non-ASCII: only the fragment check applies
HEADER_ONLY = imap_sync.SUBJECT_WORD  # "quokka": in ~1 % of the subjects, no body

KEYS = [
    ("miss", "BODY", MISS), ("miss", "TEXT", MISS),
    ("rare hit", "BODY", RARE), ("rare hit", "TEXT", RARE),
    ("common hit", "BODY", COMMON), ("common hit", "TEXT", COMMON),
    ("phrase", "BODY", PHRASE),
    ("non-ASCII", "BODY", ACCENTED),
    ("subject word", "BODY", HEADER_ONLY), ("subject word", "TEXT", HEADER_ONLY),
]
MODES = [("reference", False, False), ("fast parse", False, True), ("shortcuts", True, True)]


def corpus(count: int) -> list[bytes]:
    rng = random.Random(imap_sync.SEED)
    c = imap_sync.Corpus.build(rng)
    when = 1_672_531_200.0
    return [imap_sync.make_message(c, i, when + i * 900.0, None).data for i in range(count)]


def load_baseline(rev: str) -> ModuleType | None:
    """searcheval.py as of a git revision, imported as a separate module (its sibling modules,
    mimesplit.py, bodypieces.py, ..., are imported from the working tree, not the revision)."""
    try:
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:mailserver/imap/searcheval.py"],
                                check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"baseline {rev}: cannot read it ({e})")
        return None
    path = Path(tempfile.mkdtemp()) / "searcheval_baseline.py"
    source = source.replace(b"from .", b"from mailserver.imap.")
    # Modules renamed since (an old searcheval imports them by their old names).
    source = source.replace(b"from mailserver.imap.search import", b"from mailserver.imap.searchkeys import")
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("searcheval_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_key(module: ModuleType, key: TextKey, messages: list[bytes]) -> tuple[float, list[int]]:
    """Seconds for one SEARCH over all messages, and the matching sequence numbers."""
    cands = [module.Candidate(i, i, frozenset(), False, len(m), 0.0, 1) for i, m in enumerate(messages, 1)]
    ctx = module.SearchContext(max_seq=len(cands), max_uid=len(cands))

    def load(c: object, need: str) -> tuple[bytes | None, bytes | None]:
        return None, messages[c.seq - 1]  # type: ignore[attr-defined]

    start = time.process_time()
    found = module.search(key, cands, ctx, load)
    return time.process_time() - start, [c.seq for c in found]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000, help="messages (default 2000)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per figure; the best counts (default 5)")
    ap.add_argument("--baseline", metavar="REV", help="also time searcheval.py as of this git revision")
    args = ap.parse_args()

    messages = corpus(args.count)
    kinds = {"plain": 0, "alternative": 0, "mixed": 0}
    for m in messages:
        kind = "plain" if b"multipart/" not in m else "mixed" if b"multipart/mixed" in m else "alternative"
        kinds[kind] += 1
    total = sum(len(m) for m in messages)
    print(f"{len(messages)} messages, {total / len(messages) / 1024:.1f} KiB average, {kinds}")
    baseline = load_baseline(args.baseline) if args.baseline else None

    cols = [name for name, _, _ in MODES] + ([f"git {args.baseline}"] if baseline is not None else [])
    print(f"\n{'us per message':34s}" + "".join(f"{c:>14s}" for c in cols) + f"{'speed-up':>10s}{'hits':>7s}")
    saved = (searcheval.SHORTCUTS, mimesplit.FAST_PARSE)
    try:
        for label, where, word in KEYS:
            key = TextKey(where, word)
            best: dict[str, float] = {}
            hits: dict[str, list[int]] = {}
            for _ in range(args.rounds):  # interleaved, so a disturbance hits every mode alike
                for name, shortcuts, fast in MODES:
                    searcheval.SHORTCUTS, mimesplit.FAST_PARSE = shortcuts, fast
                    seconds, found = run_key(searcheval, key, messages)
                    best[name] = min(best.get(name, seconds), seconds)
                    hits[name] = found
                if baseline is not None:
                    seconds, found = run_key(baseline, key, messages)
                    best[cols[-1]] = min(best.get(cols[-1], seconds), seconds)
                    hits[cols[-1]] = found
            row = f"{label + ' ' + where + ' ' + repr(word):34s}"
            row += "".join(f"{best[c] / len(messages) * 1e6:14.1f}" for c in cols)
            row += f"{best['reference'] / best['shortcuts']:9.1f}x{len(hits['reference']):7d}"
            print(row, flush=True)
            for c in cols:
                if hits[c] != hits["reference"]:
                    print(f"BUG: {where} {word!r}: {c} finds {len(hits[c])} messages, "
                          f"reference {len(hits['reference'])}")
    finally:
        searcheval.SHORTCUTS, mimesplit.FAST_PARSE = saved


if __name__ == "__main__":
    main()
