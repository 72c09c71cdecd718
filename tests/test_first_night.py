"""README, "Your first real night": its commands, as written there, take a new night to a labelled map.

The commands are read from the README itself (between the ``first-night``
markers), so the section cannot drift from what works.  Only the training
lengths are shortened for the test, and the labelled cell is one the map
actually uses.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from desomspark.lake.layout import Lake

README = Path(__file__).resolve().parents[1] / "README.md"
# shorter trainings, and 4 DESOM-2 draws instead of the conf's 8: the choice among draws is still made
SHORTER = {"--iterations 20000": "--iterations 40", "--iterations 10000": "--iterations 300 --draws 4"}


def first_night_commands() -> list[str]:
    text = README.read_text()
    block = re.search(r"<!-- first-night:.*?-->\s*```bash\n(.*?)```\s*<!-- /first-night -->", text, re.S)
    assert block, "README has no first-night block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _run(line: str, env: dict) -> subprocess.CompletedProcess:
    """One README line as a shell runs it, with this environment's ``desomspark`` first on the PATH."""
    for long, short in SHORTER.items():
        line = line.replace(long, short)
    assert line.startswith("desomspark ")
    return subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=600)


def test_the_readme_first_night_gives_a_labelled_map(night_dir, tmp_path):
    lake_dir = tmp_path / "my-lake"
    env = dict(
        os.environ,
        NIGHT_DIR=str(night_dir),
        LAKE=str(lake_dir),
        DESOMSPARK_AUTHOR="first-night",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    commands = first_night_commands()
    assert [shlex.split(c)[1] for c in commands] == [
        "ingest",
        "train-desom1",
        "promote",
        "histovectors",
        "train-desom2",
        "promote",
        "assign",
        "report",
        "label",
        "export",
    ]
    lake = Lake(str(lake_dir))
    for line in commands:
        if " label " in line:
            # the README labels cell 0,0; label a cell this small map uses
            used = lake.read("assignments").to_pandas().iloc[0]
            line = line.replace("--cell 0,0", f"--cell {int(used.cell_x)},{int(used.cell_y)}")
        done = _run(line, env)
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
        # quiet: no Spark start-up warnings nor MLflow INFO lines between the command's own lines
        noisy = [line for line in done.stderr.splitlines() if " WARN " in line or " INFO " in line]
        assert not noisy, done.stderr[-2000:]
        if line.split()[1] == "promote":
            assert "is now 'champion'" in done.stdout

    exported = pd.read_csv(lake_dir / "night.csv", dtype={"exposure_id": str})
    assert len(exported) == 12 and exported["night"].astype(str).eq("20251120").all()
    labelled = exported[exported["label"] == "Good"]
    cell = (int(used.cell_x), int(used.cell_y))
    members = exported[(exported["cell_x"] == cell[0]) & (exported["cell_y"] == cell[1])]
    assert len(labelled) == len(members) > 0
    assert (lake_dir / "report" / "index.html").is_file()
    # the map is the one just trained and promoted, not the shipped default
    assignments = lake.read("assignments").to_pandas()
    from mlflow import MlflowClient

    from desomspark import registry
    from desomspark.config import load_config

    registry.connect(lake, load_config().mlflow)
    champion = MlflowClient().get_model_version_by_alias("desom2", "champion")
    assert assignments["desom2_version"].eq(str(champion.version)).all()
    assert MlflowClient().get_run(champion.run_id).data.params["desom2.draws"] == "4"  # --draws
    assert champion.description and "20251120" in champion.description
