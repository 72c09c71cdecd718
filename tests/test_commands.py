"""The commands an operator runs, through the command line: exit codes, what they print, one-line errors.

``demo`` is the README's first command; ``evaluate`` scores its lake.  The
stage commands run out of order (a lake with cutouts but no histo-vectors)
must say what to run first in one line, with no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from tools import child_env

from desomspark.lake.layout import Lake
from desomspark.stages.ingest import ingest

#: the JVM's own start-up line: nothing in Spark can turn it off (README, "What an error looks like")
JVM_LINE = "WARNING: Using incubator modules"


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "desomspark.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(DESOMSPARK_AUTHOR="tests"),
    )


def _own_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(JVM_LINE)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """``desomspark demo`` as the README runs it, with the laptop settings shortened for the test."""
    tmp = tmp_path_factory.mktemp("demo")
    conf = tmp / "short.yaml"
    local = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "conf", "local.yaml")))
    local["desom1"] |= {"iterations": 40, "sample": 3000, "log_every": 20, "checkpoint_every": 0}
    local["desom2"] |= {"iterations": 300, "log_every": 100, "draws": 4}
    conf.write_text(yaml.safe_dump(local))
    lake = tmp / "lake"
    done = _cli("demo", "--lake", str(lake), "--exposures", "14", "--conf", str(conf), "--master", "local[2]")
    return Lake(str(lake)), done


def test_demo_runs_the_whole_chain(demo_run):
    lake, done = demo_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "map neighbour accuracy" in done.stdout and "demo: done" in done.stdout
    assert not _own_lines(done.stderr), done.stderr[-2000:]  # quiet: nothing but the JVM's line
    assert os.path.isfile(lake.path("report", "index.html"))
    assigned = lake.read("assignments").to_pandas()
    assert set(assigned["night"]) == {"20251120", "20251121"}
    # the printed table is the map's: one row per used cell of the training night
    train = assigned[assigned["night"] == "20251120"]
    assert f"{train['cell'].nunique()} cells used by {len(train)} exposures" in done.stdout
    # the shipped DESOM-1 mapped the cutouts (no training in the default demo) and DESOM-2 is the night's
    assert "DESOM-1 is the one shipped in models/" in done.stdout and "how to read the table" in done.stdout
    assert set(assigned["desom1_version"]) == {"1"} and set(assigned["desom2_version"]) == {"2"}
    # each night's files say the night they belong to (DATE-OBS a day apart, the dayobs rule)
    dates = lake.read("exposures", columns=["night", "date_obs"]).to_pandas()
    assert set(dates.loc[dates["night"] == "20251120", "date_obs"].str[:10]) == {"2025-11-21"}
    assert set(dates.loc[dates["night"] == "20251121", "date_obs"].str[:10]) == {"2025-11-22"}


def test_evaluate_scores_the_demo_lake(demo_run, tmp_path):
    lake, demo = demo_run
    assert demo.returncode == 0
    done = _cli("evaluate", "--lake", lake.root, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(tmp_path / "evaluation.csv")
    methods = set(table["method"])
    assert any("DESOM-2" in m for m in methods) and any("classical" in m for m in methods)
    assert table["neighbour_accuracy"].between(0, 1).all() and (tmp_path / "tsne.png").is_file()
    assert "neighbour accuracy per true class" in done.stdout


@pytest.fixture(scope="module")
def ingested_only(spark, night_dir, tmp_path_factory, config):
    lake = Lake(str(tmp_path_factory.mktemp("ingested")))
    ingest(spark, str(night_dir), lake, cfg=config.ingest)
    return lake


@pytest.mark.parametrize(
    "command, says",
    [
        ("assign", "run histovectors first"),
        ("train-desom2", "run histovectors first"),
        ("report", "run assign first"),
        ("evaluate", "run assign first"),
    ],
)
def test_a_stage_run_too_early_says_what_to_run_first(ingested_only, tmp_path, command, says):
    extra = ["--out", str(tmp_path / "out")] if command in ("report", "evaluate") else []
    done = _cli(command, "--lake", ingested_only.root, *extra)
    assert done.returncode == 1
    assert _own_lines(done.stderr) == [
        line for line in _own_lines(done.stderr) if line.startswith(f"desomspark {command}: ")
    ], done.stderr[-2000:]
    (line,) = _own_lines(done.stderr)
    assert says in line and "Traceback" not in done.stderr


#: a Py4J client whose JVM has gone (the socket closes before answering), logging as the CLI does
_LOST_GATEWAY = """
import socket, sys, threading
from desomspark.cli import _configure_logging
from py4j.java_gateway import GatewayClient, GatewayParameters

_configure_logging(verbose=sys.argv[1] == "-v", quiet=False)
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
client = GatewayClient(gateway_parameters=GatewayParameters(port=server.getsockname()[1]))
client.send_command("m\\nd\\no1\\ne\\n", retry=False)
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_a_gateway_lost_at_exit_stays_off_stderr_unless_verbose(verbose):
    # Py4J's finaliser thread can send "delete" to a JVM already exiting, and Py4J logs that
    # on the root logger: a command that succeeded must not end with its traceback
    done = subprocess.run(
        [sys.executable, "-c", _LOST_GATEWAY, "-v" if verbose else "-"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    assert ("Exception while sending command" in done.stderr) == verbose, done.stderr
