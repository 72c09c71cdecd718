"""How long the small commands and the console take on the demo lake, as an astronomer meets them.

The demo lake is made once (``desomspark demo --lake DIR``, kept) unless ``--lake`` names one.
Each command runs as the user runs it, a fresh ``python -m desomspark.cli`` process, and its wall
time is printed against the target (3 s: these commands read and write small tables with
pyarrow and MLflow, no Spark session).  Then ``desomspark serve`` is started: the time until
it answers (its workers have read the map), and the first load of the map, a cell page and an
exposure page (target 1 s each).  Whatever a command changes (a label) it changes back.

Run: python bench/commands.py [--lake .bench/demo-lake]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from desomspark.lake.layout import Lake

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test suite's helpers
from localcluster import free_port  # noqa: E402

COMMAND_TARGET_S, READY_TARGET_S, PAGE_TARGET_S = 3.0, 3.0, 1.0


def cli(*args: str) -> float:
    """Wall seconds of one ``desomspark`` command (it must succeed)."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "desomspark.cli", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"desomspark {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds


def fetch(url: str) -> float:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as answer:
        answer.read()
    return time.perf_counter() - t


def time_commands(lake: Lake) -> list[tuple[str, float, float]]:
    """(command, seconds, target) of each small command on ``lake``."""
    a = lake.read("assignments", columns=["night", "exposure_id", "cell_x", "cell_y"]).to_pylist()[0]
    night, exposure, cell = a["night"], a["exposure_id"], f"{a['cell_x']},{a['cell_y']}"
    out = Path(tempfile.mkdtemp(prefix="bench-commands-"))
    root = ["--lake", lake.root, "-q"]
    runs = [
        ("label --cell X,Y --label bt", ["label", *root, "--cell", cell, "--label", "bt"]),
        ("label --cell X,Y --undo", ["label", *root, "--cell", cell, "--undo"]),
        (
            "label --exposure N/ID --label Good",
            ["label", *root, "--exposure", f"{night}/{exposure}", "--label", "Good"],
        ),
        ("label --exposure N/ID --undo", ["label", *root, "--exposure", f"{night}/{exposure}", "--undo"]),
        ("similar --exposure ID -k 10", ["similar", *root, "--exposure", exposure, "-k", "10"]),
        ("export --format csv", ["export", *root, "--format", "csv", "--out", str(out / "e.csv")]),
        (
            "filter --node 12,12 --min-fraction 0.05",
            ["filter", *root, "--node", "12,12", "--min-fraction", "0.05"],
        ),
        (
            "promote desom2 (the champion again)",
            ["promote", *root, "--model", "desom2", "--version", champion_version(lake)],
        ),
        ("verdicts --night N", ["verdicts", *root, "--night", night, "--out", str(out / "v.csv")]),
    ]
    return [(name, cli(*args), COMMAND_TARGET_S) for name, args in runs]


def champion_version(lake: Lake) -> str:
    from desomspark import registry
    from desomspark.config import load_config

    return str(registry.registered(lake, load_config(), "desom2").version)


def time_console(lake: Lake) -> list[tuple[str, float, float]]:
    """(what, seconds, target): the console's start until it answers, then each page's first load."""
    a = lake.read("assignments", columns=["night", "exposure_id", "cell_x", "cell_y"]).to_pylist()[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "desomspark.cli", "serve", "--lake", lake.root, "--port", str(port), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                fetch(url + "/healthz")
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - t > 300:
                    raise SystemExit("serve did not start") from None
                time.sleep(0.1)
        ready = time.perf_counter() - t
        pages = [
            ("map page, first load", "/map"),
            ("cell page, first load", f"/cell/{a['cell_x']}/{a['cell_y']}"),
            ("exposure page, first load", f"/exposure/{a['night']}/{a['exposure_id']}"),
        ]
        return [("serve: start until it answers", ready, READY_TARGET_S)] + [
            (name, fetch(url + path), PAGE_TARGET_S) for name, path in pages
        ]
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lake", default=".bench/demo-lake", help="a demo lake (made here if absent)")
    args = parser.parse_args()
    lake = Lake(os.path.abspath(args.lake))
    if not lake.exists("assignments"):
        print(f"making the demo lake in {lake.root} (desomspark demo, a few minutes) ...")
        cli("demo", "--lake", lake.root, "-q")
    rows = time_commands(lake) + time_console(lake)
    print(f"lake {lake.root}: {lake.read('assignments', columns=['exposure_id']).num_rows} exposures")
    print(f"{'what':42s} {'wall s':>7s} {'target':>7s}")
    for name, seconds, target in rows:
        print(f"{name:42s} {seconds:7.2f} {target:7.1f}  {'ok' if seconds <= target else 'OVER'}")


if __name__ == "__main__":
    main()
