"""Does the label-free score that picks a DESOM-2 draw pick the good ones?  Single draws on one night.

``desom2.draws`` fits several DESOM-2 draws and keeps the one with the lowest
neighbour distance (``metrics.neighbour_distance``: how far, in DESOM-2's input
space, an exposure's map neighbours are from it).  This bench fits N single
draws (seeds 1..N, in process: no registration, no Spark) on the histo-vectors
of one night of a lake with simulated truth, and prints for each draw its
neighbour accuracy (the labelled score) beside its neighbour distance and the
usual map errors; then the Spearman correlation of each with the accuracy; then
what the procedure with D draws gives, over every way of drawing D of the N
(the kept draw's accuracy: mean and worst), against one draw alone, for each
label-free way of keeping one: the lowest neighbour distance (``nb_dist``), the
draw that agrees most with the others (``consensus``: the highest mean adjusted
Rand index of its cells with theirs, the medoid of the D partitions), and the
consensus among the draws of below-median neighbour distance (``both``).

With ``--test-nights``, each draw also sorts those nights out of sample, as
``bench/holdout.py`` scores a promoted map: its cells labelled by the training
night's majority class, a test exposure named by its cell (or the nearest ring
of labelled cells); the ``oos_`` columns.  ``--qa-input-weight NAME=W`` sets
``desom2.qa_input_weights`` for a comparison.

Run: python bench/desom2_draws.py --lake DIR [--night 20251120] [--seeds 16] [--draws 4 8]
         [--test-nights 20251121 20251122] [--qa-input-weight trail_length=3]
     (a lake of ``desomspark demo --lake DIR``, or of bench/quality.py or bench/holdout.py --keep DIR)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from itertools import combinations, product

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score

from desomspark import registry
from desomspark.config import conf_dir, load_config
from desomspark.desom import metrics
from desomspark.evaluation.demo import DEMO_EXPOSURES_PER_CELL, TRAIN_NIGHT
from desomspark.evaluation.evaluate import GOOD, PAPER_CLASSES, per_class_recall
from desomspark.lake.layout import Lake
from desomspark.stages.train_desom2 import Desom2Inputs, fit_draw, training_inputs

SCORES = ["acc", "acc6", "good_bad", "good_bad6", "Streak"]
OUT_OF_SAMPLE = ["oos_acc", "oos_acc6", "oos_good_bad", "oos_Streak"]


def night_inputs(lake: Lake, cfg, nights: list[str]) -> tuple[Desom2Inputs, np.ndarray]:
    """DESOM-2's inputs of some nights (the champion DESOM-1's histo-vectors) and the truth, in one read."""
    registry.connect(lake, cfg.mlflow)
    data = training_inputs(lake, cfg.desom2, registry.registered(lake, cfg, "desom1").version)
    data, _ = of_nights(data, None, nights)
    truth = lake.read("exposures", nights=nights, columns=["exposure_id", "truth_label"]).to_pandas()
    return data, truth.set_index("exposure_id").loc[data.table["exposure_id"], "truth_label"].to_numpy()


def of_nights(
    data: Desom2Inputs, truth: np.ndarray | None, nights: list[str]
) -> tuple[Desom2Inputs, np.ndarray | None]:
    """The rows of ``data`` (and of ``truth``, if given) of ``nights``."""
    keep = data.table["night"].isin(nights).to_numpy()
    return (
        Desom2Inputs(
            data.table[keep].reset_index(drop=True),
            data.x_raw[keep],
            data.n_bins,
            data.desom1_version,
            data.desom1_grid,
        ),
        None if truth is None else truth[keep],
    )


def mapped_cells(mapper, x_raw: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return mapper.inference.desom.predict(mapper.normalise(torch.as_tensor(x_raw)))[0].numpy()


def streak_recall(truth: np.ndarray, predicted: np.ndarray) -> float:
    return per_class_recall(truth, predicted).get("Streak", float("nan"))


def score_draw(
    data: Desom2Inputs, truth: np.ndarray, c, seed: int, test: tuple[Desom2Inputs, np.ndarray] | None = None
) -> tuple[dict, np.ndarray]:
    t = time.perf_counter()
    fit = fit_draw(data, replace(c, seed=seed))
    mapper = fit.mapper.eval()
    cells = mapped_cells(mapper, data.x_raw)
    test_cells = mapped_cells(mapper, test[0].x_raw) if test is not None else np.zeros(0, int)
    cols = fit.map_shape[1]
    positions = {
        int(v): (int(v) // cols, int(v) % cols) for v in np.unique(np.concatenate([cells, test_cells]))
    }
    predicted = metrics.neighbour_predictions(truth, cells, positions)
    s = metrics.prediction_scores(truth, predicted, GOOD, PAPER_CLASSES)
    last = fit.history[-1]
    row = {
        "seed": seed,
        "acc": s["neighbour_accuracy"],
        "acc6": s["neighbour_accuracy_6"],
        "good_bad": s["neighbour_good_bad"],
        "good_bad6": s["neighbour_good_bad_6"],
        "Streak": streak_recall(truth, predicted),
        "cells": fit.cells_used,
        "nb_dist": fit.neighbour_distance,
        "QE": last["quantization_error"],
        "TE": last["topographic_error"],
    }
    if test is not None:
        test_truth = test[1]
        named = metrics.cell_label_predictions(truth, cells, positions, test_cells)
        o = metrics.prediction_scores(test_truth, named, GOOD, PAPER_CLASSES)
        row |= {
            "oos_acc": o["neighbour_accuracy"],
            "oos_acc6": o["neighbour_accuracy_6"],
            "oos_good_bad": o["neighbour_good_bad"],
            "oos_Streak": streak_recall(test_truth, named),
        }
    return row | {"s": time.perf_counter() - t}, cells


def procedure(table: pd.DataFrame, draws: int, agreement: np.ndarray, rule: str) -> pd.DataFrame:
    """Every way of drawing ``draws`` of the single draws: the scores of the one ``rule`` keeps
    (``nb_dist``, ``consensus`` or ``both``, see the module docstring); ``agreement`` holds the
    adjusted Rand index of every two draws' cells."""
    kept = []
    for group in combinations(table.index, draws):
        group = list(group)
        if rule != "nb_dist":
            if rule == "both":
                group = [g for g in group if table.loc[g, "nb_dist"] <= table.loc[group, "nb_dist"].median()]
            mean_ari = {g: np.mean([agreement[g, h] for h in group if h != g] or [0.0]) for g in group}
            kept.append(table.loc[max(group, key=lambda g: (mean_ari[g], -g))])
        else:
            kept.append(table.loc[group].sort_values(["nb_dist", "seed"]).iloc[0])
    return pd.DataFrame(kept)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lake", required=True)
    parser.add_argument("--night", default=TRAIN_NIGHT)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument(
        "--draws", type=int, nargs="+", default=[4], help="draws per procedure (several: each)"
    )
    parser.add_argument("--conf", default=str(conf_dir() / "local.yaml"))
    parser.add_argument(
        "--exposures-per-cell", type=int, default=DEMO_EXPOSURES_PER_CELL, help="map size (the demo's: 3)"
    )
    parser.add_argument("--test-nights", nargs="*", default=[], help="nights to sort out of sample")
    parser.add_argument(
        "--qa-input-weight", action="append", default=[], metavar="NAME=W", help="desom2.qa_input_weights"
    )
    args = parser.parse_args()
    cfg = load_config(args.conf)
    weights = {k: float(v) for k, v in (item.split("=") for item in args.qa_input_weight)}
    c = replace(cfg.desom2, exposures_per_cell=args.exposures_per_cell, qa_input_weights=weights)
    lake = Lake(args.lake)
    every, every_truth = night_inputs(lake, replace(cfg, desom2=c), [args.night, *args.test_nights])
    data, truth = of_nights(every, every_truth, [args.night])
    test = of_nights(every, every_truth, args.test_nights) if args.test_nights else None
    scores = SCORES + (OUT_OF_SAMPLE if test is not None else [])
    print(f"desom2.qa_input_weights: {weights or 'none (all 1)'}")
    print(
        f"{len(truth)} exposures of night {args.night}: "
        + ", ".join(f"{k} {v}" for k, v in pd.Series(truth).value_counts().items())
    )
    rows, cells = [], []
    for seed in range(1, args.seeds + 1):
        row, cells_of_draw = score_draw(data, truth, c, seed, test)
        rows.append(row)
        cells.append(cells_of_draw)
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
            + "  ".join(f"{m} {spearmanr(table[crit], table[m]).statistic:+.2f}" for m in scores)
        )
    agreement = np.array([[adjusted_rand_score(a, b) for b in cells] for a in cells])
    table["mean_ari"] = (agreement.sum(axis=1) - 1) / max(len(cells) - 1, 1)
    print("\nmean adjusted Rand index of each draw's cells with the other draws' (the consensus score):")
    print(table[["seed", "mean_ari", *scores]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(
        "  Spearman with mean_ari: "
        + "  ".join(f"{m} {spearmanr(table['mean_ari'], table[m]).statistic:+.2f}" for m in scores)
    )
    for m in scores:
        print(
            f"  {m:9s} one draw: mean {table[m].mean():.3f}, 10th percentile {table[m].quantile(0.1):.3f}, "
            f"worst {table[m].min():.3f}"
        )
    for draws, rule in product(args.draws, ("nb_dist", "consensus", "both")):
        kept = procedure(table, draws, agreement, rule)
        print(f"\nkept one of {draws} by {rule} (all {len(kept)} ways of drawing {draws} of {len(table)}):")
        for m in scores:
            print(
                f"  {m:9s} mean {kept[m].mean():.3f}, 10th percentile {kept[m].quantile(0.1):.3f}, "
                f"worst {kept[m].min():.3f}"
            )


if __name__ == "__main__":
    main()
