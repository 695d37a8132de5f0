"""Long fuzz runs: ``python3 -m tests.fuzz.run --target smtp --seconds 600``.

Engines:

* ``atheris`` (default; ``pip install atheris``): coverage-guided libFuzzer over the byte
  entry points in ``targets.py``, started from a corpus drawn from the grammars. Each target
  runs in its own process; the corpus grows in ``WORKDIR/<target>/corpus`` and a crashing
  input is saved as ``WORKDIR/<target>/crash-*`` (replay it with
  ``python3 -m tests.fuzz.run --target T --replay FILE``).
* ``hypothesis``: the property tests of ``tests/fuzz`` with the ``long`` profile (many
  examples, failures kept in ``.hypothesis/``), for machines without atheris.

``--target all`` runs every target in turn, ``--seconds`` each. Prints one line per target:
inputs run, new corpus entries, crashes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]

# pytest -k expressions selecting each target's property tests (hypothesis engine).
_PYTEST_K = {
    "smtp": "smtp",
    "imap-framer": "framer or literal or line_limit",
    "imap-parser": "parser or login",
    "mime": "mime",
    "address": "address",
    "dkim": "dkim",
    "dmarc": "dmarc",
    "spf": "spf",
    "utf7": "utf7",
    "seqset-dates": "seqset or dates or txt",
}


TARGET_NAMES = (
    "smtp",
    "imap-framer",
    "imap-parser",
    "mime",
    "address",
    "dkim",
    "dmarc",
    "spf",
    "utf7",
    "seqset-dates",
)


def _atheris_child(target: str, args: list[str]) -> None:
    import atheris

    # Coverage feedback from our code (and the record parsers of dkimpy and pyspf), not from
    # the whole interpreter: instrumenting everything takes minutes and slows every run.
    with atheris.instrument_imports(include=["mailserver", "dkim", "spf"]):
        from tests.fuzz.targets import TARGETS

    check = TARGETS[target]
    atheris.Setup([sys.argv[0], *args], check)
    atheris.Fuzz()


def run_atheris(target: str, seconds: int, workdir: Path, max_len: int) -> dict[str, object]:
    tdir = workdir / target
    corpus = tdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        from tests.fuzz.targets import seeds

        for i, seed in enumerate(seeds(target)):
            (corpus / f"seed-{i:03d}").write_bytes(seed)
    cmd = [
        sys.executable,
        "-m",
        "tests.fuzz.run",
        "--child",
        target,
        "--",
        str(corpus),
        f"-max_total_time={seconds}",
        f"-max_len={max_len}",
        "-timeout=10",
        "-rss_limit_mb=1024",
        f"-artifact_prefix={tdir}/",
        "-print_final_stats=1",
    ]
    env = dict(os.environ, PYTHONPATH=str(_ROOT))
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True, text=True, errors="replace")
    log = proc.stdout + proc.stderr
    (tdir / "last-run.log").write_text(log)
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log) or re.findall(r"Done (\d+) runs", log)
    new = re.findall(r"stat::new_units_added:\s*(\d+)", log)
    crashes = sorted(str(p) for p in tdir.glob("crash-*")) + sorted(str(p) for p in tdir.glob("timeout-*"))
    return {
        "target": target,
        "engine": "atheris",
        "seconds": round(time.monotonic() - started),
        "inputs": int(runs[-1]) if runs else None,
        "new_corpus": int(new[-1]) if new else None,
        "crashes": crashes,
        "exit": proc.returncode,
    }


def run_hypothesis(target: str, seconds: int) -> dict[str, object]:
    env = dict(os.environ, PYMAILD_FUZZ_PROFILE="long", PYTHONPATH=str(_ROOT))
    started = time.monotonic()
    inputs = 0
    failed = False
    while time.monotonic() - started < seconds and not failed:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--hypothesis-show-statistics",
                "-k",
                _PYTEST_K[target],
                "tests/fuzz",
                "--timeout",
                str(max(60, seconds)),
            ],
            cwd=_ROOT,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
        )
        inputs += sum(int(n) for n in re.findall(r"(\d+) passing examples", proc.stdout))
        failed = proc.returncode not in (0, 5)
        if failed:
            print(proc.stdout[-4000:], file=sys.stderr)
    return {
        "target": target,
        "engine": "hypothesis",
        "seconds": round(time.monotonic() - started),
        "inputs": inputs,
        "crashes": ["see output above"] if failed else [],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _atheris_child(argv[1], argv[3:])
        return 0
    ap = argparse.ArgumentParser(prog="python3 -m tests.fuzz.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="all", choices=["all", *TARGET_NAMES])
    ap.add_argument("--seconds", type=int, default=600, help="per target (default 600)")
    ap.add_argument("--engine", choices=["atheris", "hypothesis"], default="atheris")
    ap.add_argument("--workdir", type=Path, default=_ROOT / ".fuzz")
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--replay", type=Path, help="run one saved input through the target and show the error")
    args = ap.parse_args(argv)
    if args.replay:
        from tests.fuzz.targets import TARGETS

        TARGETS[args.target](args.replay.read_bytes())
        print("no failure")
        return 0
    targets = list(TARGET_NAMES) if args.target == "all" else [args.target]
    bad = False
    for t in targets:
        if args.engine == "atheris":
            res = run_atheris(t, args.seconds, args.workdir, args.max_len)
        else:
            res = run_hypothesis(t, args.seconds)
        bad = bad or bool(res["crashes"])
        print(" ".join(f"{k}={v}" for k, v in res.items()), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
