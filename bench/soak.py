"""A soak of the lake's writers: ``watch`` all night while ``nightly`` and ``assign`` run over the
same night and the console is polled, then ``check``: is every exposure in each table once?

A feeder lands ``--exposures`` small simulated exposures (2 CCDs of 512x512) into an arrival
folder at a steady rate (hidden name, then rename, as the arrival contract says).  ``watch``
sorts them as they land; while it does, ``nightly`` runs twice over the arrival folder (the
files landed so far) and ``assign`` once; ``serve`` is polled (map, nights, the JSON API) all
along.  When everything has landed and ``watch`` has caught up, one last ``nightly`` is *not*
run: the figures are of the lake the interleaved writers left.

Prints: exposures landed, rows per exposure in each table (min/max: 1/1 means none lost or
doubled), the console's answers (by status), ``check``'s verdict, and the writers' exit codes.

Run: python bench/soak.py [--exposures 200] [--interval 1.5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from desomspark.config import load_config
from desomspark.evaluation.simulate import simulate_night, small_config
from desomspark.lake.check import check_lake
from desomspark.lake.layout import Lake

NIGHT = "20251120"
TABLES = ("exposures", "histovectors", "assignments", "verdicts")


def cli(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "desomspark.cli", *args],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process ended with {proc.returncode}")
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def rows_per_exposure(lake: Lake) -> dict[str, Counter]:
    return {
        t: Counter(lake.read(t, columns=["exposure_id"]).column("exposure_id").to_pylist()) for t in TABLES
    }


def poll_console(url: str, stop: threading.Event, answers: Counter) -> None:
    pages = ["/map", "/nights", "/api/v1/nights", f"/api/v1/nights/{NIGHT}/exposures"]
    k = 0
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url + pages[k % len(pages)], timeout=30) as response:
                answers[response.status] += 1
        except urllib.error.HTTPError as err:
            answers[err.code] += 1
        except OSError:
            answers["no answer"] += 1
        k += 1
        stop.wait(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=200)
    parser.add_argument("--interval", type=float, default=1.5, help="seconds between two landings")
    parser.add_argument("--port", type=int, default=8071)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    data, arrivals, logs = tmp / "data", tmp / "arrivals", tmp / "logs"
    for d in (arrivals, logs):
        d.mkdir()
    t0 = time.time()
    sim = small_config(load_config().simulate, 2, (512, 512))
    simulate_night(data, args.exposures, sim, seed=91, mix="survey", processes=2, progress=False)
    print(f"simulated {args.exposures} exposures in {time.time() - t0:.0f} s", flush=True)
    lake = Lake(str(tmp / "lake"))
    files = sorted(data.glob("*.fits"))
    common = ["--lake", lake.root, "--master", "local[1]"]

    def land(k: int) -> None:
        hidden = arrivals / f".{files[k].name}.part"
        shutil.copyfile(files[k], hidden)
        os.rename(hidden, arrivals / files[k].name)

    # the lake and its models exist before the watch starts (a night already sorted)
    for k in range(10):
        land(k)
    first = subprocess.run(
        [
            sys.executable,
            "-m",
            "desomspark.cli",
            "nightly",
            "--input",
            str(arrivals),
            "--night",
            NIGHT,
            *common,
        ],
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    watcher = cli("watch", "--input", str(arrivals), "--night", NIGHT, *common, log=logs / "watch.log")
    console = cli("serve", "--lake", lake.root, "--port", str(args.port), log=logs / "serve.log")
    stop, answers = threading.Event(), Counter()
    writers: dict[str, int] = {}
    try:
        wait_for(lambda: "watch: sorting" in (logs / "watch.log").read_text(), 300, "watch start", watcher)
        poller = threading.Thread(
            target=poll_console, args=(f"http://127.0.0.1:{args.port}", stop, answers), daemon=True
        )
        poller.start()
        runs = {len(files) // 4: "nightly-1", len(files) // 2: "assign", 3 * len(files) // 4: "nightly-2"}
        running: dict[str, subprocess.Popen] = {}
        for k in range(10, len(files)):
            land(k)
            if k in runs:
                name = runs[k]
                extra = ["--input", str(arrivals), "--night", NIGHT] if name.startswith("nightly") else []
                running[name] = cli(name.split("-")[0], *extra, *common, log=logs / f"{name}.log")
            time.sleep(args.interval)
        for name, proc in running.items():
            writers[name] = proc.wait(timeout=1800)
        wait_for(
            lambda: len(rows_per_exposure(lake)["verdicts"]) >= len(files), 1800, "watch catching up", watcher
        )
    finally:
        stop.set()
        for proc in (watcher, console):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=120)
    writers["watch"] = watcher.returncode
    counts = rows_per_exposure(lake)
    print(f"{len(files)} exposures landed every {args.interval:g} s over {time.time() - t0:.0f} s")
    for table, c in counts.items():
        low, high = min(c.values()), max(c.values())
        print(f"  {table:13s} {len(c):4d} exposures, rows per exposure min {low} max {high}")
    print(f"  console answers: {dict(answers)}")
    print(f"  writers' exit codes: {writers}")
    for line in check_lake(lake).lines():
        print(f"  check: {line}")
    locks = [line for f in logs.glob("*.log") for line in f.read_text().splitlines() if "kept" in line]
    print(f"  night commits that kept another writer's rows: {len(locks)}")
    print(f"  logs: {logs}")


if __name__ == "__main__":
    main()
