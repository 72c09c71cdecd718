"""nightly on full-size exposures: this code against an earlier commit, in one run.

Both run ``desomspark nightly`` (ingest -> histo-vectors -> assign -> verdicts,
with the champions shipped in models/) as a subprocess, each on a fresh lake,
over the same simulated night of full-size exposures (36 CCDs of 2048x4612);
the earlier commit runs from a git worktree of it (made once, kept under
``--data``).  The runs alternate (before, after, before, after ...) so that a
change in the machine's load falls on both.  Prints wall seconds per exposure
for each and the ratio after/before.

Run: python bench/nightly.py --before REV [--exposures N] [--repeats R] [--master local[2]]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from desomspark.config import load_config
from desomspark.evaluation.simulate import simulate_night

ROOT = Path(__file__).resolve().parent.parent


def worktree(rev: str, data: Path) -> Path:
    """A checkout of ``rev`` (kept: made once per commit)."""
    sha = subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", rev], text=True).strip()
    tree = data / f"tree-{sha[:10]}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), sha], check=True)
    return tree


def run_nightly(code: Path, night_dir: Path, master: str) -> float:
    """Wall seconds of one ``desomspark nightly`` from the source tree ``code``, on a fresh lake."""
    lake = tempfile.mkdtemp(prefix="bench-nightly-")
    env = dict(os.environ, PYTHONPATH=str(code), PYSPARK_PYTHON=sys.executable)
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "desomspark.cli", "nightly", "-q", "--master", master]
    command += ["--lake", lake, "--input", str(night_dir), "--night", "20251121"]
    try:
        t = time.perf_counter()
        subprocess.run(command, env=env, cwd=code, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t
    finally:
        shutil.rmtree(lake, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="the earlier commit (e.g. a tag or a sha)")
    parser.add_argument("--exposures", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--data", default=".bench/nightly", help="where the exposures and worktree are kept")
    args = parser.parse_args()
    data = Path(args.data).resolve()
    night = data / f"n{args.exposures}"
    if len(list(night.glob("*.fits"))) != args.exposures:
        shutil.rmtree(night, ignore_errors=True)
        print(f"simulating {args.exposures} full-size exposures into {night} ...")
        simulate_night(night, args.exposures, load_config().simulate, seed=11, mix="balanced", progress=False)
    trees = {"before": worktree(args.before, data), "after": ROOT}
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.repeats):
        for label, code in trees.items():
            seconds = run_nightly(code, night, args.master)
            times[label].append(seconds)
            print(f"{label:6s} {seconds:6.1f} s  ({seconds / args.exposures:.1f} s/exposure)")
    best = {k: min(v) / args.exposures for k, v in times.items()}
    print(
        f"nightly {args.master}, {args.exposures} full-size exposures, best of {args.repeats}: "
        f"before ({args.before}) {best['before']:.1f} s/exposure, after {best['after']:.1f} s/exposure "
        f"(after/before {best['after'] / best['before']:.2f})"
    )


if __name__ == "__main__":
    main()
