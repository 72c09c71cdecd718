"""Labelling that propagates through assign, export, similar exposures and node filters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from tools import renumbered_copy

from desomspark import registry
from desomspark.lake.layout import Lake
from desomspark.registry import registered
from desomspark.serve.explore import export, filter_node, label_cell, similar
from desomspark.stages.ingest import ingest
from desomspark.stages.nightly import run_assign, run_histovectors


@pytest.fixture(scope="module")
def lake(spark, night_dir, tmp_path_factory, config):
    """The test night mapped with the default models (a fresh install)."""
    lake = Lake(str(tmp_path_factory.mktemp("explore")))
    ingest(spark, str(night_dir), lake, cfg=config.ingest)
    run_histovectors(spark, lake, config)
    run_assign(spark, lake, config)
    return lake


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "desomspark.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_a_label_reaches_every_exposure_of_its_cell(spark, lake, config, monkeypatch):
    before = lake.read("assignments").to_pandas()
    cell = before.iloc[0]
    monkeypatch.setenv("DESOMSPARK_AUTHOR", "night-astronomer")
    desom2 = registered(lake, config, "desom2")
    version, shape = desom2.version, desom2.map_shape
    row = label_cell(lake, version, (int(cell.cell_x), int(cell.cell_y)), "BadFocus", shape)
    assert row["author"] == "night-astronomer"
    after = run_assign(spark, lake, config)
    members = (after["cell_x"] == cell.cell_x) & (after["cell_y"] == cell.cell_y)
    assert (after.loc[members, "label"] == "BadFocus").all() and after.loc[~members, "label"].isna().all()
    # the last word wins: unlabel
    label_cell(lake, version, (int(cell.cell_x), int(cell.cell_y)), None, shape)
    assert run_assign(spark, lake, config)["label"].isna().all()
    with pytest.raises(ValueError, match="outside"):
        label_cell(lake, version, (shape[1], 0), "x", shape)


def test_a_label_shows_at_once_where_results_are_read(lake, config, tmp_path):
    """No assign needed: export and similar read the labels as they are now."""
    table = lake.read("assignments").to_pandas()
    cell = table.iloc[0]
    desom2 = registered(lake, config, "desom2")
    version, shape = desom2.version, desom2.map_shape
    members = table[(table["cell_x"] == cell.cell_x) & (table["cell_y"] == cell.cell_y)]["exposure_id"]
    label_cell(lake, version, (int(cell.cell_x), int(cell.cell_y)), "Ghost", shape)
    try:
        assert lake.read("assignments").to_pandas()["label"].isna().all()  # the table is not rewritten ...
        export(lake, str(tmp_path / "now.csv"), "csv")
        csv = pd.read_csv(tmp_path / "now.csv", dtype={"exposure_id": str}).set_index("exposure_id")
        assert (csv.loc[members, "label"] == "Ghost").all()  # ... yet export shows the label
        assert csv.drop(index=members)["label"].isna().all()
        near = similar(lake, desom2, members.iloc[0], k=len(table))
        assert near.iloc[0]["label"] == "Ghost"
        assert (near.set_index("exposure_id").loc[members, "label"] == "Ghost").all()
    finally:
        label_cell(lake, version, (int(cell.cell_x), int(cell.cell_y)), None, shape)
    export(lake, str(tmp_path / "after.csv"), "csv")
    assert pd.read_csv(tmp_path / "after.csv")["label"].isna().all()


def test_a_moved_lake_runs_nightly(lake, night_dir, tmp_path, config):
    """A lake copied elsewhere (shared storage) serves its models from its own mlartifacts/, not the old
    place."""
    import os
    import shutil
    import sqlite3

    moved = tmp_path / "shared" / "lake"
    shutil.copytree(lake.root, moved)
    # a cell labelled before the night: the new night's exposures that land there carry the label
    first = lake.read("assignments").to_pandas().sort_values("exposure_id").iloc[0]
    shape = registered(lake, config, "desom2").map_shape
    label_cell(Lake(str(moved)), first.desom2_version, (int(first.cell_x), int(first.cell_y)), "Ghost", shape)
    # the next night: the same pixels as exposures under new ids (an id is unique in the lake)
    next_night = renumbered_copy(night_dir, tmp_path / "next", offset=500_000)
    hidden = lake.path("mlartifacts") + ".hidden"
    os.rename(lake.path("mlartifacts"), hidden)  # the old place is gone: nothing may be read from it
    try:
        done = _cli(
            "nightly",
            "--lake",
            str(moved),
            "--input",
            str(next_night),
            "--night",
            "20251122",
            "--master",
            "local[2]",
        )
    finally:
        os.rename(hidden, lake.path("mlartifacts"))
    assert done.returncode == 0, done.stderr[-2000:]
    assigned = Lake(str(moved)).read("assignments", nights=["20251122"]).to_pandas()
    assert len(assigned) == 12 and assigned["cell_x"].notna().all()
    in_cell = (assigned["cell_x"] == first.cell_x) & (assigned["cell_y"] == first.cell_y)
    assert in_cell.any() and (assigned.loc[in_cell, "label"] == "Ghost").all()
    assert assigned.loc[~in_cell, "label"].isna().all()
    with sqlite3.connect(moved / "mlflow.db") as db:
        locations = [loc for (loc,) in db.execute("SELECT storage_location FROM model_versions")]
        # no experiment of the store points outside the lake (MLflow's Default one included)
        experiments = [loc for (loc,) in db.execute("SELECT artifact_location FROM experiments")]
    assert locations and all(loc.startswith(f"file://{moved}/mlartifacts/") for loc in locations)
    assert all(loc.startswith(f"file://{moved}/mlartifacts") for loc in experiments)
    with sqlite3.connect(lake.path("mlflow.db")) as db:  # the lake it was copied from is untouched
        assert (
            db.execute("SELECT artifact_location FROM experiments WHERE name = 'desomspark'").fetchone()[0]
            == f"file://{lake.root}/mlartifacts"
        )
    assert not os.path.exists(os.path.join(lake.root, "20251122")) and "20251122" not in lake.nights(
        "exposures"
    )


def test_export_csv_and_parquet(lake, tmp_path):
    n = export(lake, str(tmp_path / "a.csv"), "csv")
    csv = pd.read_csv(tmp_path / "a.csv", dtype={"exposure_id": str})
    assert n == len(csv) == 12 and {"exposure_id", "cell_x", "cell_y", "label", "path"} <= set(csv.columns)
    # the header fields and the classical quality numbers travel with the cells
    assert {"date_obs", "filter", "object", "airmass", "fwhm", "elongation_median", "sky", "depth"} <= set(
        csv.columns
    )
    assert csv["airmass"].ge(1.0).all()  # the simulator writes AIRMASS >= 1
    assert csv["sky"].gt(0).all() and csv["fwhm"].notna().any()
    export(lake, str(tmp_path / "a.parquet"), "parquet")
    assert len(pd.read_parquet(tmp_path / "a.parquet")) == 12


def test_similar_returns_the_exposure_itself_first(lake, config):
    desom2 = registered(lake, config, "desom2")
    exposures = lake.read("assignments").to_pandas()["exposure_id"]
    table = similar(lake, desom2, exposures.iloc[3], k=5)
    assert table["exposure_id"].iloc[0] == exposures.iloc[3] and table["distance"].iloc[0] == 0
    assert len(table) == 5 and table["distance"].is_monotonic_increasing
    with pytest.raises(ValueError, match="no histo-vector"):
        similar(lake, desom2, "nope", 3)


def test_filter_finds_exposures_rich_in_a_node(lake):
    vectors = lake.read("histovectors").to_pandas()
    import numpy as np

    counts = np.stack(vectors["counts"])
    node = int(counts.sum(0).argmax())
    x, y = node % 25, node // 25
    share = counts[:, node] / counts.sum(1)
    threshold = float(np.median(share))
    table = filter_node(lake, (x, y), threshold, (25, 25))
    assert len(table) == int((share >= threshold).sum()) and (table["fraction"] >= threshold).all()
    assert table["fraction"].is_monotonic_decreasing


def test_a_mistyped_lake_is_not_created(tmp_path):
    """Only ingest, nightly and demo make a lake; a typo elsewhere says so and leaves nothing behind."""
    missing = tmp_path / "nolake"
    for args in (
        ["similar", "--exposure", "1000000"],
        ["export", "--format", "csv", "--out", str(tmp_path / "x.csv")],
        ["report", "--out", str(tmp_path / "r")],
        ["assign"],
        ["train-desom2"],
    ):
        done = _cli(args[0], "--lake", str(missing), *args[1:])
        assert done.returncode == 1, (args, done.stderr)
        assert (
            done.stderr.strip().splitlines()[-1]
            == f"desomspark {args[0]}: lake {missing} does not exist (ingest or nightly create a lake)"
        )
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _cli("similar", "--lake", str(empty), "--exposure", "1")
    assert done.returncode == 1 and "not a desomspark lake" in done.stderr and list(empty.iterdir()) == []


def test_export_into_a_new_folder(lake, tmp_path):
    out = tmp_path / "reports" / "tonight" / "cells.csv"
    done = _cli("export", "--lake", lake.root, "--format", "csv", "--out", str(out))
    assert done.returncode == 0 and out.exists() and "Traceback" not in done.stderr


def test_command_line(lake, tmp_path):
    done = _cli("label", "--lake", lake.root, "--cell", "0,0", "--label", "good")  # the vocabulary's Good
    assert done.returncode == 0 and "'Good'" in done.stdout, done.stderr
    assert _cli("label", "--lake", lake.root, "--cell", "0,0").returncode == 1
    typo = _cli("label", "--lake", lake.root, "--cell", "0,0", "--label", "Goood")
    assert typo.returncode == 1 and "not a known label" in typo.stderr and "--add" in typo.stderr
    added = _cli("label", "--lake", lake.root, "--cell", "0,0", "--label", "Ghosts", "--add")
    assert added.returncode == 0 and "'Ghosts'" in added.stdout, added.stderr
    undone = _cli("label", "--lake", lake.root, "--cell", "0,0", "--undo")
    assert undone.returncode == 0 and "'Good'" in undone.stdout, undone.stderr
    out = tmp_path / "e.csv"
    assert (
        _cli("export", "--lake", lake.root, "--format", "csv", "--out", str(out)).returncode == 0
        and out.exists()
    )
    exposure = lake.read("assignments").to_pandas()["exposure_id"].iloc[0]
    done = _cli("similar", "--lake", lake.root, "--exposure", exposure, "-k", "3")
    assert done.returncode == 0 and exposure in done.stdout.splitlines()[2]
    # the lake's cells are unlabelled: blank, not pandas' None or NaN
    assert "None" not in done.stdout and "NaN" not in done.stdout, done.stdout
    # filter: the exposures with at least this share of their detections on the busiest node
    import numpy as np

    counts = np.stack(lake.read("histovectors").to_pandas()["counts"])
    node = int(counts.sum(0).argmax())
    share = counts[:, node] / counts.sum(1)
    threshold = float(np.round(share.max() / 2, 3))  # some exposures above, others below
    done = _cli(
        "filter", "--lake", lake.root, "--node", f"{node % 25},{node // 25}", "--min-fraction", str(threshold)
    )
    expected = int((share >= threshold).sum())
    assert done.returncode == 0 and f"\n{expected} exposures with >= " in "\n" + done.stdout, (
        done.stdout + done.stderr
    )
    assert 0 < expected < len(share)


def test_small_commands_load_neither_spark_nor_mlflow_nor_torch(lake, tmp_path):
    """label, similar, export and filter answer from the lake's tables and its own MLflow store
    (their imports alone took 2-3 s of each command before): none of them brings in Spark, the
    MLflow client or torch."""
    exposure = lake.read("assignments").to_pandas()["exposure_id"].iloc[0]
    root = ["--lake", lake.root, "-q"]
    runs = [
        ["label", *root, "--cell", "1,0", "--label", "Good"],
        ["label", *root, "--cell", "1,0", "--undo"],
        ["similar", *root, "--exposure", exposure, "-k", "3"],
        ["export", *root, "--format", "csv", "--out", str(tmp_path / "e.csv")],
        ["filter", *root, "--node", "0,0", "--min-fraction", "0.5"],
    ]
    script = (
        "import json, sys\n"
        "from desomspark.cli import main\n"
        "codes = [main(args) for args in json.loads(sys.argv[1])]\n"
        "print(json.dumps([codes, sorted(m for m in ('pyspark', 'mlflow', 'torch') if m in sys.modules)]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(runs)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    codes, loaded = json.loads(done.stdout.splitlines()[-1])
    assert codes == [0] * len(runs) and loaded == [], done.stdout
    assert exposure in done.stdout and (tmp_path / "e.csv").exists()


def test_a_cell_label_belongs_to_its_map_version_and_its_exposures_keep_it(spark, lake, config, tmp_path):
    """Cells of a new DESOM-2 are other cells: once it is promoted an old cell label labels no cell, in
    assign and in export, but the exposures that were in the cell keep it (inherited, in the verdicts);
    promoted back, the old map has its label again.
    """
    from dataclasses import replace

    from desomspark.stages.train_desom2 import train_desom2

    champion = registered(lake, config, "desom2")
    old, shape = champion.version, champion.map_shape
    first = lake.read("assignments").to_pandas().iloc[0]
    cell = (int(first.cell_x), int(first.cell_y))
    label_cell(lake, old, cell, "BadFocus", shape)
    assigned = lake.read("assignments").to_pandas()
    was_in_cell = assigned.loc[
        (assigned["cell_x"] == cell[0]) & (assigned["cell_y"] == cell[1]), "exposure_id"
    ]
    short = replace(config, desom2=replace(config.desom2, map_shape=None, iterations=100, batch_size=12))
    try:
        new = train_desom2(lake, short)["version"]
        registry.promote(lake, config.mlflow, "desom2", new)
        after = run_assign(spark, lake, config)
        assert set(after["desom2_version"]) == {new} and after["label"].isna().all()
        members = set(lake.read("assignments").to_pandas()["exposure_id"]) & set(was_in_cell)
        verdicts = lake.read("verdicts").to_pandas().set_index("exposure_id").loc[sorted(members)]
        assert (verdicts["label"] == "BadFocus").all() and (verdicts["label_source"] == "inherited").all()
        export(lake, str(tmp_path / "new.csv"), "csv")
        exported = pd.read_csv(tmp_path / "new.csv", dtype={"exposure_id": str}).set_index("exposure_id")
        assert exported["cell_label"].isna().all()  # no cell of the new map is labelled
        kept = exported["label_source"] == "inherited"
        assert set(exported.index[kept]) == members and (exported.loc[kept, "label"] == "BadFocus").all()
        registry.promote(lake, config.mlflow, "desom2", old)
        back = run_assign(spark, lake, config)
        members = (back["cell_x"] == cell[0]) & (back["cell_y"] == cell[1])
        assert set(back["desom2_version"]) == {old} and (back.loc[members, "label"] == "BadFocus").all()
    finally:
        registry.promote(lake, config.mlflow, "desom2", old)
        label_cell(lake, old, cell, None, shape)
        if lake.exists("exposure_labels"):  # the inherited labels go too: the lake as the other tests expect
            shutil.rmtree(lake.path("exposure_labels"))
        run_assign(spark, lake, config)


def test_undo_steps_back_through_the_history_and_labels_are_matched_to_the_vocabulary(tmp_path):
    from desomspark.errors import UserError
    from desomspark.lake.queries import current_labels
    from desomspark.serve.explore import known_labels, undo_label, vocabulary_label

    lake, shape = Lake(str(tmp_path / "lake")), (3, 3)
    for name in ("Good", "BT", "Streak"):
        label_cell(lake, "1", (0, 0), name, shape)
    label_cell(lake, "1", (1, 0), "RBT", shape)  # another cell's changes are its own
    assert [undo_label(lake, "1", (0, 0), shape)["label"] for _ in range(3)] == ["BT", "Good", None]
    with pytest.raises(UserError, match="no label change to undo"):
        undo_label(lake, "1", (0, 0), shape)
    label_cell(lake, "1", (0, 0), "BGP", shape)
    assert undo_label(lake, "1", (0, 0), shape)["label"] is None  # a change after the undos, undone alone
    now = current_labels(lake, "1").set_index(["cell_x", "cell_y"])["label"]
    assert pd.isna(now.loc[(0, 0)]) and now.loc[(1, 0)] == "RBT"

    vocabulary = {"Good": "sharp, round stars", "Streak": "a satellite streak"}
    known = known_labels(lake, vocabulary)
    assert known[:2] == ["Good", "Streak"] and "RBT" in known and "BT" in known  # then the lake's own
    assert vocabulary_label("streak", known) == "Streak" and vocabulary_label("rbt", known) == "RBT"
    with pytest.raises(UserError, match="--add"):
        vocabulary_label("Ghosts", known)
    assert vocabulary_label("Ghosts", known, add=True) == "Ghosts"
    with pytest.raises(UserError, match="space"):
        vocabulary_label(" Good", known)
