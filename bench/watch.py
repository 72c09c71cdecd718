"""The live night's latency: full-size exposures landing at the telescope's cadence.

``desomspark watch`` (local[2]) runs on an arrival folder; a feeder lands one
full-size simulated MegaCam exposure (36 CCDs of 2048x4612) every
``--cadence`` seconds (CFHT: ~40 s), written under a hidden name and renamed
as the arrival contract says.  For each exposure the latency is the time from
its rename to its row in ``assignments/`` (read from the watch's batch lines
and the lake).  Prints p50/p95 latency and whether the stream kept up: the
last exposures' latency no larger than the first ones' (no growing backlog).

Targets (issue 16): p95 <= 60 s at a 40 s cadence, no backlog over 20 exposures.

Run: python bench/watch.py [--exposures 20] [--cadence 40] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from desomspark.config import load_config
from desomspark.evaluation.simulate import simulate_night
from desomspark.lake.layout import Lake


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=20)
    parser.add_argument("--cadence", type=float, default=40.0, help="seconds between two exposures")
    parser.add_argument(
        "--data", default=None, help="a folder of full-size exposures to reuse (made if missing)"
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    data = Path(args.data) if args.data else tmp / "data"
    if len(list(data.glob("*.fits"))) < args.exposures:
        print(f"simulating {args.exposures} full-size exposures into {data} ...", flush=True)
        simulate_night(data, args.exposures, load_config().simulate, seed=40, mix="survey", progress=False)
    files = sorted(data.glob("*.fits"))[: args.exposures]
    arrivals, lake = tmp / "arrivals", Lake(str(tmp / "lake"))
    arrivals.mkdir()
    log = tmp / "watch.log"
    cmd = [
        sys.executable,
        "-m",
        "desomspark.cli",
        "watch",
        "--lake",
        lake.root,
        "--input",
        str(arrivals),
        "--night",
        "20251120",
        "--master",
        "local[2]",
    ]
    watcher = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while "watch: sorting" not in log.read_text():  # the stream is listening
            assert watcher.poll() is None, log.read_text()
            time.sleep(0.5)
        landed: dict[str, float] = {}
        assigned_at: dict[str, float] = {}

        def poll() -> None:
            """Note when each landed file's exposure first shows in assignments/."""
            if lake.nights("assignments"):
                now = time.time()
                done = set(
                    lake.read("assignments", columns=["exposure_id"]).column("exposure_id").to_pylist()
                )
                paths = lake.read("exposures", columns=["exposure_id", "path"]).to_pandas()
                for row in paths[paths["exposure_id"].isin(done)].itertuples():
                    assigned_at.setdefault(Path(row.path).name, now)

        start = time.time()
        for i, src in enumerate(files):
            while time.time() < start + i * args.cadence:
                poll()
                time.sleep(0.5)
            hidden = arrivals / f".{src.name}.part"
            shutil.copyfile(src, hidden)
            os.rename(hidden, arrivals / src.name)
            landed[src.name] = time.time()
        deadline = time.time() + 600
        while len(assigned_at) < len(files) and time.time() < deadline:
            poll()
            time.sleep(0.5)
    finally:
        os.killpg(watcher.pid, signal.SIGINT)
        watcher.wait(timeout=120)
    latency = np.array([assigned_at[e] - landed[e] for e in landed if e in assigned_at])
    missing = len(landed) - len(latency)
    half = max(1, len(latency) // 4)
    print(
        f"{len(files)} full-size exposures every {args.cadence:g} s on local[2]: "
        "latency from landing to cell "
        f"p50 {np.percentile(latency, 50):.1f} s, p95 {np.percentile(latency, 95):.1f} s, "
        f"max {latency.max():.1f} s; {missing} never assigned"
    )
    print(
        f"backlog: first {half} exposures {latency[:half].mean():.1f} s, last {half} "
        f"{latency[-half:].mean():.1f} s "
        f"({'keeps up' if latency[-half:].mean() <= 1.25 * latency[:half].mean() + 5 else 'falls behind'})"
    )
    for line in log.read_text().splitlines():
        if line.startswith("watch: batch"):
            print("  " + line)
    shutil.rmtree(tmp / "lake", ignore_errors=True)


if __name__ == "__main__":
    main()
