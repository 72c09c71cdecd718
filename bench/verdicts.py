"""From map to decision, measured: how fast the labels of a few cells make right, calibrated verdicts.

1. simulate two balanced nights (7 classes in equal share, 4 CCDs of 512x512), seeds not used for any
   choice of the decide settings (those were set on seeds 61 and 62: ``--seeds 61 62``);
2. ingest; histo-vectors with the shipped DESOM-1; train DESOM-2 on both nights; promote; assign;
3. for three orders of labelling -- the console's "label next" (``suggested``), ``random`` and
   ``fullest`` cells first -- label cells one at a time by their majority true class (as an expert
   would, looking at the members) and after 5, 10, 20 and 40 labels score the verdicts of every
   exposure: accuracy of ``decision != accept`` against truth Bad (not Good), expected calibration
   error of ``p_bad``, and how many are left to ``review``;
4. with every occupied cell labelled by its majority class, retrain DESOM-2 with another seed,
   promote, assign: the
   share of labelled exposures whose decision holds with no new label, and the share of the new
   map's occupied cells that are offered a suggested label.

Run: python bench/verdicts.py [--exposures 160] [--seeds 71 73] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from desomspark import registry
from desomspark.config import conf_dir, load_config
from desomspark.decide.active import label_next
from desomspark.decide.labels import suggestions
from desomspark.evaluation.holdout import label_cells_with, majority_labels, verdict_scores
from desomspark.evaluation.simulate import simulate_night, small_config
from desomspark.lake.layout import Lake
from desomspark.serve.explore import label_cell
from desomspark.stages.ingest import ingest
from desomspark.stages.nightly import run_assign, run_histovectors
from desomspark.stages.spark import get_spark
from desomspark.stages.train_desom2 import train_desom2
from desomspark.stages.verdicts import decide_nights, resolved_members

CHECKPOINTS = (5, 10, 20, 40)


def prepare(spark, lake: Lake, cfg, exposures: int, seeds: list[int]) -> list[str]:
    sim = replace(small_config(cfg.simulate, 4, (512, 512)), p_dead_ccd=0.02)
    nights = []
    for i, seed in enumerate(seeds):
        night = f"2026110{i + 1}"
        raw = lake.path("raw", night)
        simulate_night(
            raw, exposures, sim, seed=seed, mix="balanced", processes=2, progress=False, mjd0=61000.3 + i
        )
        ingest(spark, raw, lake, night=night, cfg=cfg.ingest)
        nights.append(night)
    run_histovectors(spark, lake, cfg)
    d2 = train_desom2(lake, cfg)
    registry.promote(lake, cfg.mlflow, "desom2", d2["version"])
    run_assign(spark, lake, cfg)
    return nights


def score(verdicts: pd.DataFrame, lake: Lake) -> dict:
    s = verdict_scores(verdicts, lake)
    return {k: s[k] for k in ("accuracy", "calibration_error", "review", "exposures")}


def clear_labels(lake: Lake) -> None:
    for table in ("labels", "exposure_labels", "verdicts", "_verdict_models"):
        if lake.exists(table):
            shutil.rmtree(lake.path(table))


def next_cell(order: str, verdicts: pd.DataFrame, labelled: dict, rng, cfg) -> tuple[int, int]:
    if order == "suggested":
        ranked = label_next(verdicts, labelled, cfg.watch.good_labels)
    else:
        cells = verdicts.groupby(["cell_x", "cell_y"]).size().rename("members").reset_index()
        ranked = cells[[(int(x), int(y)) not in labelled for x, y in zip(cells["cell_x"], cells["cell_y"])]]
        ranked = (
            ranked.sample(frac=1, random_state=rng)
            if order == "random"
            else ranked.sort_values("members", ascending=False, kind="stable")
        )
    row = ranked.iloc[0]
    return int(row["cell_x"]), int(row["cell_y"])


def run_order(lake: Lake, cfg, desom2, order: str, majority: dict) -> list[dict]:
    clear_labels(lake)
    rng = np.random.RandomState(7)
    verdicts = decide_nights(lake, cfg, desom2=desom2)
    rows, labelled = [], {}
    for n in range(1, min(max(CHECKPOINTS), len(majority)) + 1):
        cell = next_cell(order, verdicts, labelled, rng, cfg)
        labelled[cell] = majority[cell]
        label_cell(lake, desom2.version, cell, majority[cell], desom2.map_shape)
        if order == "suggested" or n in CHECKPOINTS:
            verdicts = decide_nights(lake, cfg, desom2=desom2)
        if n in CHECKPOINTS:
            rows.append({"order": order, "labelled_cells": n, **score(verdicts, lake)})
            print(f"  {order:9s} {n:3d} cells: {rows[-1]}", flush=True)
    return rows


def retrain(spark, lake: Lake, cfg, old, majority: dict) -> dict:
    """Every occupied cell labelled (a map an expert has been through); a DESOM-2 of another seed
    promoted; what the verdicts keep, and how many new cells are offered a label."""
    clear_labels(lake)
    label_cells_with(lake, old, majority)
    before = decide_nights(lake, cfg, desom2=old)
    known = before[before["label_source"].notna()]
    other = replace(cfg, desom2=replace(cfg.desom2, seed=cfg.desom2.seed + 1000))
    d2 = train_desom2(lake, other)
    registry.promote(lake, cfg.mlflow, "desom2", d2["version"])
    run_assign(spark, lake, cfg)  # the old map's labels are inherited here, then decided
    new = registry.registered(lake, cfg, "desom2")
    after = decide_nights(lake, cfg, desom2=new)
    kept = known.merge(after, on=["night", "exposure_id"], suffixes=("", "_new"))
    members = resolved_members(lake, new)
    offered = suggestions(members)
    occupied = members.groupby(["cell_x", "cell_y"]).ngroups
    return {
        "labelled_exposures": len(known),
        "decision_kept": float((kept["decision"] == kept["decision_new"]).mean()),
        "cells_suggested": float(len(offered) / occupied),
        "new_map_cells": occupied,
        "after": score(after, lake),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exposures", type=int, default=160, help="exposures per night")
    parser.add_argument("--seeds", type=int, nargs=2, default=[71, 73])
    parser.add_argument("--conf", default=str(conf_dir() / "local.yaml"))
    parser.add_argument("--keep", default=None, help="lake folder to keep (reused when it has assignments)")
    args = parser.parse_args()
    cfg = load_config(args.conf)
    cfg = replace(cfg, desom2=replace(cfg.desom2, map_shape=None, exposures_per_cell=3))
    root = args.keep or tempfile.mkdtemp(prefix="bench-verdicts-")
    lake = Lake(root)
    spark = get_spark(cfg.spark, master="local[2]")
    t0 = time.time()
    if not lake.exists("assignments"):
        prepare(spark, lake, cfg, args.exposures, args.seeds)
    print(f"pipeline ready in {time.time() - t0:.0f} s (lake {root})", flush=True)
    desom2 = registry.registered(lake, cfg, "desom2")
    majority = majority_labels(lake, desom2)
    print(f"seeds {args.seeds}: map {desom2.map_shape}, {len(majority)} occupied cells", flush=True)
    rows = []
    for order in ("suggested", "random", "fullest"):
        rows += run_order(lake, cfg, desom2, order, majority)
    table = pd.DataFrame(rows).pivot(index="labelled_cells", columns="order")
    print("\nverdicts against the simulated truth (accuracy of decision != accept vs not Good; ECE of p_bad)")
    print(table.round(3).to_string())
    result = retrain(spark, lake, cfg, desom2, majority)
    print(f"\nretrained DESOM-2 (another seed), promoted, assigned: {result}")
    print(f"total {time.time() - t0:.0f} s")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
