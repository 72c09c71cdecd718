"""``desomspark demo``: a small simulated survey through the whole chain, on a laptop.

1. simulate a balanced night (every class, 20 exposures each) into ``<lake>/raw/<night>/``;
2. ingest it; map its cutouts with the DESOM-1 shipped in ``models/`` (or, with
   ``train_desom1``, train one with 2 DDP processes and promote it);
3. histo-vectors; train DESOM-2 (map scaled to the night: ~3 exposures a cell,
   so that classes need not share cells); promote it; assign;
4. print the map against the true classes and its neighbour accuracy;
5. simulate the next night and run ``nightly`` on it with the champion models;
6. write the HTML report and print where everything is.

A few minutes on 2 cores (README: "The two commands").
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import pandas as pd

from desomspark import registry
from desomspark.config import Config
from desomspark.desom import metrics
from desomspark.evaluation.evaluate import GOOD, PAPER_CLASSES, cell_positions, per_class_recall
from desomspark.evaluation.holdout import assigned_truth
from desomspark.evaluation.simulate import simulate_night, small_config
from desomspark.lake.layout import Lake
from desomspark.serve.report import write_report
from desomspark.stages.ingest import ingest
from desomspark.stages.nightly import nightly, run_assign, run_histovectors
from desomspark.stages.train_desom1 import train_desom1
from desomspark.stages.train_desom2 import train_desom2

_LOG = logging.getLogger(__name__)


TRAIN_NIGHT, NEXT_NIGHT = "20251120", "20251121"


def class_table(lake: Lake, nights: list[str]) -> pd.DataFrame:
    """Exposures per (cell, true class): how the map sorted a simulated night.

    Cells are grouped by their majority class, so that a map that sorts well
    reads as a block diagonal.
    """
    table = assigned_truth(lake, nights).pivot_table(
        index=["cell_y", "cell_x"], columns="truth_label", values="exposure_id", aggfunc="count", fill_value=0
    )
    majority = table.idxmax(axis=1)
    order = sorted(
        table.index, key=lambda cell: (list(table.columns).index(majority[cell]), -table.loc[cell].max())
    )
    return table.loc[order]


def map_scores(lake: Lake, nights: list[str]) -> dict:
    """Leave-one-out neighbour accuracy of the map on ``nights`` (all classes, the paper's six, Good/Bad),
    each class's neighbour recall (``recall``) and how many cells the exposures use.
    """
    members = assigned_truth(lake, nights)
    members = members[members["truth_label"].notna()]
    predicted = metrics.neighbour_predictions(
        members["truth_label"], members["cell"], cell_positions(members)
    )
    return metrics.prediction_scores(members["truth_label"], predicted, GOOD, PAPER_CLASSES) | {
        "recall": per_class_recall(members["truth_label"], predicted),
        "exposures": len(members),
        "cells_used": int(members["cell"].nunique()),
    }


def scores_line(scores: dict) -> str:
    return (
        f"map neighbour accuracy {scores['neighbour_accuracy']:.3f} (the paper's six classes "
        f"{scores['neighbour_accuracy_6']:.3f}), Good/Bad {scores['neighbour_good_bad']:.3f} "
        f"(six classes {scores['neighbour_good_bad_6']:.3f}); "
        f"{scores['cells_used']} cells used by {scores['exposures']} exposures"
    )


def train_and_map(spark, lake: Lake, cfg: Config, train_desom1_too: bool = True) -> tuple[dict, dict]:
    """Train DESOM-1 (2 DDP processes where there are 2 cores; else the champion, e.g. the shipped one)
    and DESOM-2 on the lake, promote both, assign."""
    if train_desom1_too:
        processes = 2 if (os.cpu_count() or 1) >= 2 else 1
        d1 = train_desom1(spark, lake, cfg, processes=processes)
        registry.promote(lake, cfg.mlflow, "desom1", d1["version"])
    else:
        d1 = {"version": registry.registered(lake, cfg, "desom1").version}
    run_histovectors(spark, lake, cfg)
    d2 = train_desom2(lake, cfg, desom1_version=d1["version"])
    registry.promote(lake, cfg.mlflow, "desom2", d2["version"])
    run_assign(spark, lake, cfg)
    return d1, d2


#: ~3 exposures a cell: a 7x7 map for the demo's 140 exposures, room for every class
DEMO_EXPOSURES_PER_CELL = 3
HOW_TO_READ = (
    "demo: how to read the table below: each row is one cell of the DESOM-2 map (x = column, y = row), "
    "each column a simulated true class, each number the exposures of that class in that cell. A map that "
    "sorts by quality puts each class in cells of its own: one non-zero number per row, rows grouped by "
    "class. A row with two numbers is a cell that mixes classes: an expert labelling it would mislabel "
    "the smaller part."
)


def demo(spark, lake: Lake, cfg: Config, n_exposures: int = 140, train_desom1_too: bool = False) -> dict:
    sim = replace(small_config(cfg.simulate, 4, (512, 512)), p_dead_ccd=0.02)
    raw = lake.path("raw", TRAIN_NIGHT)
    _LOG.info(f"demo: simulating {n_exposures} exposures (4 CCDs of 512x512, every class) into {raw}")
    simulate_night(raw, n_exposures, sim, seed=0, mix="balanced")
    ingest(spark, raw, lake, night=TRAIN_NIGHT, cfg=cfg.ingest)
    cfg = replace(cfg, desom2=replace(cfg.desom2, exposures_per_cell=DEMO_EXPOSURES_PER_CELL))
    if not train_desom1_too:
        _LOG.info("demo: DESOM-1 is the one shipped in models/ (desomspark demo --train-desom1 trains one)")
    d1, d2 = train_and_map(spark, lake, cfg, train_desom1_too)
    _LOG.info(HOW_TO_READ)
    _LOG.info(class_table(lake, [TRAIN_NIGHT]).to_string())
    _LOG.info("demo: " + scores_line(map_scores(lake, [TRAIN_NIGHT])))

    raw2 = lake.path("raw", NEXT_NIGHT)
    _LOG.info(f"demo: the next night ({NEXT_NIGHT}) arrives: nightly with the champion models")
    # dated a day later, so that the files say the night they belong to
    simulate_night(raw2, max(6, n_exposures // 10), sim, seed=1, mix="survey", mjd0=61001.3)
    summary = nightly(spark, raw2, lake, NEXT_NIGHT, cfg)

    report = write_report(lake, cfg, lake.path("report"))
    uri = registry.tracking_uri(lake, cfg.mlflow)
    _LOG.info("demo: done. Outputs:")
    _LOG.info(
        f"  lake tables      {lake.root}/{{exposures,ccds,cutouts,rejects,histovectors,assignments}}/night=*/"
    )
    _LOG.info(f"  raw FITS         {lake.path('raw')}")
    _LOG.info(f"  MLflow store     {uri}  (browse: mlflow ui --backend-store-uri {uri})")
    _LOG.info(f"  models           desom1 v{d1['version']}, desom2 v{d2['version']} (alias champion)")
    _LOG.info(f"  HTML report      {report}")
    _LOG.info(
        f"  console          desomspark serve --lake {lake.root}   (then open http://127.0.0.1:8050/map)"
    )
    return {"desom1": d1, "desom2": d2, "nightly": summary, "report": str(report)}
