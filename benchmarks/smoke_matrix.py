"""Time `run --suite S --profile smoke --method M` as a whole process, for every suite that has a
smoke profile and every registered method, and fail when one takes longer than the limit.

    python benchmarks/smoke_matrix.py [--limit 60] [--suites quickstart table2] [--out FILE.md]

A benchmark, not a test: run it alone on the machine (two torch processes on 2 cores slow each
other 10-100x). Every run starts in a fresh records folder; the cache folder is shared by the
runs (as a user's is), so the first run that needs a pool or a dataset cache builds it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dfmlbench.config import load_suite, suite_names
from dfmlbench.methods import METHODS


def time_run(suite: str, method: str, out: Path, env: dict[str, str]) -> tuple[float, int, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dfmlbench", "run", "--suite", suite, "--profile", "smoke",
                             "--method", method, "--out", str(out), "--no-progress"],
                            capture_output=True, text=True, env=env)
    last = (result.stderr.strip().splitlines() or [""])[-1]
    return time.perf_counter() - started, result.returncode, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=60.0, help="seconds allowed per run (default 60)")
    parser.add_argument("--suites", nargs="+", help="default: every suite with a smoke profile")
    parser.add_argument("--methods", nargs="+", help="default: every registered method and variant")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = parser.parse_args()
    suites = args.suites or [s for s in suite_names() if "smoke" in load_suite(s).profiles]
    methods = args.methods or METHODS.names()
    rows, worst, failures = [], 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DFMLBENCH_CACHE": os.environ.get("DFMLBENCH_CACHE") or str(Path(tmp) / "cache")}
        for suite in suites:
            for method in methods:
                seconds, code, last = time_run(suite, method, Path(tmp) / f"{suite}-{method}", env)
                worst = max(worst, seconds)
                status = "ok" if code == 0 and seconds <= args.limit else f"exit {code}" if code else "too slow"
                if status != "ok":
                    failures.append(f"{suite} {method}: {status} ({seconds:.1f} s) {last}")
                rows.append(f"| {suite} | {method} | {seconds:.1f} | {status} |")
                print(rows[-1], flush=True)
    table = "\n".join(["| suite | method | seconds | status |", "|---|---|---|---|", *rows])
    summary = f"{len(rows)} runs, slowest {worst:.1f} s, limit {args.limit:.0f} s, {len(failures)} over or failed"
    if args.out:
        args.out.write_text(f"{table}\n\n{summary}\n")
    print(summary)
    for line in failures:
        print(line, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
