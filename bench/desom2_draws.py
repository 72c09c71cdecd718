"""Does the label-free score that picks a DESOM-2 draw pick the good ones?  Single draws on one night.

``desom2.draws`` fits several DESOM-2 draws and keeps the one with the lowest
neighbour distance (``metrics.neighbour_distance``: how far, in DESOM-2's input
space, an exposure's map neighbours are from it).  This bench fits N single
draws (seeds 1..N, in process: no registration, no Spark) on the histo-vectors
of one night of a lake with simulated truth, and prints for each draw its
neighbour accuracy (the labelled score) beside its neighbour distance and the
usual map errors; then the Spearman correlation of each with the accuracy; then
what the procedure with D draws gives, over every way of drawing D of the N
(the kept draw's accuracy: mean and worst), against one draw alone.

Run: python bench/desom2_draws.py --lake DIR [--night 20251120] [--seeds 16] [--draws 4]
     (a lake of ``desomspark demo --lake DIR``, or of bench/quality.py --keep DIR)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from itertools import combinations

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from desomspark import registry
from desomspark.config import conf_dir, load_config
from desomspark.desom import metrics
from desomspark.evaluation.demo import DEMO_EXPOSURES_PER_CELL, TRAIN_NIGHT
from desomspark.evaluation.evaluate import GOOD, PAPER_CLASSES
from desomspark.lake.layout import Lake
from desomspark.stages.train_desom2 import Desom2Inputs, fit_draw, training_inputs

SCORES = ["acc", "acc6", "good_bad", "good_bad6"]


def night_inputs(lake: Lake, cfg, night: str) -> tuple[Desom2Inputs, np.ndarray]:
    """DESOM-2's training inputs of one night (the champion DESOM-1's histo-vectors) and the truth."""
    registry.connect(lake, cfg.mlflow)
    data = training_inputs(lake, cfg.desom2, registry.registered(lake, cfg, "desom1").version)
    keep = (data.table["night"] == night).to_numpy()
    data = Desom2Inputs(
        data.table[keep].reset_index(drop=True),
        data.x_raw[keep],
        data.n_bins,
        data.desom1_version,
        data.desom1_grid,
    )
    truth = lake.read("exposures", nights=[night], columns=["exposure_id", "truth_label"]).to_pandas()
    return data, truth.set_index("exposure_id").loc[data.table["exposure_id"], "truth_label"].to_numpy()


def score_draw(data: Desom2Inputs, truth: np.ndarray, c, seed: int) -> dict:
    t = time.perf_counter()
    fit = fit_draw(data, replace(c, seed=seed))
    mapper = fit.mapper.eval()
    with torch.no_grad():
        x = mapper.normalise(torch.as_tensor(data.x_raw))
        cells = mapper.inference.desom.predict(x)[0].numpy()
    cols = fit.map_shape[1]
    positions = {int(v): (int(v) // cols, int(v) % cols) for v in np.unique(cells)}
    s = metrics.prediction_scores(
        truth, metrics.neighbour_predictions(truth, cells, positions), GOOD, PAPER_CLASSES
    )
    last = fit.history[-1]
    return {
        "seed": seed,
        "acc": s["neighbour_accuracy"],
        "acc6": s["neighbour_accuracy_6"],
        "good_bad": s["neighbour_good_bad"],
        "good_bad6": s["neighbour_good_bad_6"],
        "cells": fit.cells_used,
        "nb_dist": fit.neighbour_distance,
        "QE": last["quantization_error"],
        "TE": last["topographic_error"],
        "s": time.perf_counter() - t,
    }


def procedure(table: pd.DataFrame, draws: int) -> pd.DataFrame:
    """Every way of drawing ``draws`` of the single draws: the kept one's scores (lowest nb_dist)."""
    kept = [
        table.loc[list(group)].sort_values(["nb_dist", "seed"]).iloc[0]
        for group in combinations(table.index, draws)
    ]
    return pd.DataFrame(kept)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lake", required=True)
    parser.add_argument("--night", default=TRAIN_NIGHT)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--conf", default=str(conf_dir() / "local.yaml"))
    parser.add_argument(
        "--exposures-per-cell", type=int, default=DEMO_EXPOSURES_PER_CELL, help="map size (the demo's: 3)"
    )
    args = parser.parse_args()
    cfg = load_config(args.conf)
    c = replace(cfg.desom2, exposures_per_cell=args.exposures_per_cell)
    data, truth = night_inputs(Lake(args.lake), replace(cfg, desom2=c), args.night)
    print(
        f"{len(truth)} exposures of night {args.night}: "
        + ", ".join(f"{k} {v}" for k, v in pd.Series(truth).value_counts().items())
    )
    rows = []
    for seed in range(1, args.seeds + 1):
        rows.append(score_draw(data, truth, c, seed))
        print(
            pd.DataFrame(rows[-1:]).to_string(
                index=False, header=seed == 1, float_format=lambda v: f"{v:.3f}"
            ),
            flush=True,
        )
    table = pd.DataFrame(rows)
    print("\nSpearman correlation with the neighbour accuracy (nb_dist should be well below 0):")
    for crit in ("nb_dist", "QE", "TE", "cells"):
        print(
            f"  {crit:8s} "
            + "  ".join(f"{m} {spearmanr(table[crit], table[m]).statistic:+.2f}" for m in SCORES)
        )
    kept = procedure(table, args.draws)
    print(
        f"\none draw vs the kept one of {args.draws} "
        f"(all {len(kept)} ways of drawing {args.draws} of {len(table)}):"
    )
    for m in SCORES:
        print(
            f"  {m:9s} one draw: mean {table[m].mean():.3f}, 10th percentile {table[m].quantile(0.1):.3f}, "
            f"worst {table[m].min():.3f}   kept of {args.draws}: mean {kept[m].mean():.3f}, "
            f"10th percentile {kept[m].quantile(0.1):.3f}, worst {kept[m].min():.3f}"
        )


if __name__ == "__main__":
    main()
