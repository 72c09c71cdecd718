"""Out-of-sample quality and novelty: train on one night, sort two nights the map never saw.

1. simulate night A (every class of ``--classes``) and nights B and C (other
   seeds), each of ``--exposures`` small exposures (4 CCDs of 512x512);
2. ingest A; histo-vectors with the DESOM-1 shipped in ``models/``; train
   DESOM-2 on A (the conf's draws), promote it, assign;
3. ``nightly`` on B and C with the champions, as an operator runs them;
4. score B and C (``desomspark.evaluation.holdout``): the map's cells labelled
   by A's majority class against the classical 5-NN fitted on A, per class;
5. the verdicts an operator gets on B and C once an expert has labelled every
   cell from night A (each by its majority class there): bad exposures
   accepted and Good ones held back, at ``decide.novelty_margin`` or at each of
   ``--verdict-margins``;
6. with ``--withhold NAME``: train DESOM-2 again on A without that class,
   promote, assign A, B, C, and score again: where the unseen class lands, and
   the novelty distance's AUC and the novelty rule's hit rate for it, beside
   the same for the simple alternative: the distance to the nearest training
   exposure in DESOM-2's input (``holdout.input_novelty``).

Seeds given here must not have been used to choose anything (README "Measured
quality" lists those that were).

Run: python bench/holdout.py [--exposures 306] [--seeds 71 72 73] [--withhold AmpGlow] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from desomspark import registry
from desomspark.config import conf_dir, load_config
from desomspark.evaluation.demo import map_scores, scores_line, train_and_map
from desomspark.evaluation.holdout import (
    assigned_truth,
    holdout_scores,
    label_cells_with,
    majority_labels,
    scores_table,
    verdict_scores,
)
from desomspark.evaluation.simulate import KNOWN_CLASSES, simulate_night, small_config
from desomspark.lake.layout import Lake
from desomspark.stages.ingest import ingest
from desomspark.stages.nightly import nightly, run_assign
from desomspark.stages.spark import get_spark
from desomspark.stages.train_desom2 import train_desom2
from desomspark.stages.verdicts import decide_nights

NIGHTS = ("20251120", "20251121", "20251122")


def simulated(folder: str, exposures: int) -> bool:
    """Whether ``folder`` already holds a whole simulated night of ``exposures`` (its truth.csv last)."""
    truth = Path(folder) / "truth.csv"
    return truth.exists() and len(truth.read_text().splitlines()) == exposures + 1


def report(title: str, result: dict) -> None:
    print(
        f"\n{title}: trained on {result['train_exposures']} exposures, scored on {result['test_exposures']}"
    )
    print(scores_table(result).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for name, n in result["novelty"].items():
        print(
            f"novelty of {name} (absent from training, {n['exposures']} exposures): AUC {n['auc']:.3f}, "
            f"rule (distance > {n['cutoff']:.3g}) flags {n['hit_rate']:.3f} of them and "
            f"{n['false_alarms']:.3f} of the classes seen (at the verdicts' margin: "
            f"{n['review_rate']:.3f} and {n['review_false_alarms']:.3f}); the map's labels name them "
            + ", ".join(f"{k} {v}" for k, v in n["named_as"].items())
        )
        nn = n["input_1nn"]
        print(
            "  the simple alternative, the nearest training exposure in DESOM-2's input: "
            f"AUC {nn['auc']:.3f}, beyond the same margin {nn['hit_rate']:.3f} of them "
            f"and {nn['false_alarms']:.3f} of the classes seen"
        )


def verdicts_report(lake: Lake, cfg, margins: list[float]) -> None:
    """Every cell labelled from night A as an expert would; the verdicts of B and C at each margin."""
    desom2 = registry.registered(lake, cfg, "desom2")
    labels = majority_labels(lake, desom2, [NIGHTS[0]])
    label_cells_with(lake, desom2, labels)
    print(
        f"\nverdicts of nights B and C, the {len(labels)} cells of night A labelled by their majority class"
    )
    for margin in margins:
        decide = replace(cfg.decide, novelty_margin=margin)
        s = verdict_scores(decide_nights(lake, replace(cfg, decide=decide), list(NIGHTS[1:])), lake)
        print(
            f"  decide.novelty_margin {margin:g}: bad accepted {s['bad_accepted']} of {s['bad']} "
            f"{s['bad_accepted_by_class']}, Good held back {s['good_held']} of {s['good']}, "
            f"review {s['review']} of {s['exposures']}, accuracy {s['accuracy']:.3f}, "
            f"calibration error {s['calibration_error']:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exposures", type=int, default=306)
    parser.add_argument("--seeds", type=int, nargs=3, default=(71, 72, 73), metavar=("A", "B", "C"))
    parser.add_argument("--classes", default=",".join(KNOWN_CLASSES))
    parser.add_argument("--withhold", default=None, help="a class to leave out of DESOM-2's training")
    parser.add_argument(
        "--ablate", default=None, help="a QA input to drop from DESOM-2's input, trained and scored again"
    )
    parser.add_argument(
        "--verdict-margins",
        type=float,
        nargs="+",
        default=None,
        help="decide.novelty_margin values to score the verdicts at (default: the conf's)",
    )
    parser.add_argument("--conf", default=str(conf_dir() / "local.yaml"))
    parser.add_argument("--keep", default=None, help="lake folder to keep (default: a temporary one)")
    args = parser.parse_args()

    classes = tuple(c.strip() for c in args.classes.split(","))
    cfg = load_config(args.conf)
    root = args.keep or tempfile.mkdtemp(prefix="desomspark-holdout-")
    Path(root).mkdir(parents=True, exist_ok=True)
    # DESOM-2 is trained on every histo-vector of the lake: a kept lake may keep its simulated
    # nights (raw/), not the tables of an earlier run, or night A's map would have seen B and C
    leftover = sorted(p.name for p in Path(root).iterdir() if p.name != "raw")
    if leftover:
        parser.error(f"--keep {root} holds {', '.join(leftover)} from an earlier run: only raw/ may stay")
    lake = Lake(root)
    spark = get_spark(cfg.spark)
    sim = replace(small_config(cfg.simulate, 4, (512, 512)), p_dead_ccd=0.02)
    times = {}
    try:
        t0 = time.perf_counter()
        for k, (night, seed) in enumerate(zip(NIGHTS, args.seeds)):
            if simulated(lake.path("raw", night), args.exposures):
                continue  # a kept lake's night (--keep): the same seeds give the same files
            simulate_night(
                lake.path("raw", night),
                args.exposures,
                sim,
                seed=seed,
                processes=2,
                progress=False,
                mjd0=61000.3 + k,
                classes=classes,
            )
        times["simulate"] = time.perf_counter() - t0
        ingest(spark, lake.path("raw", NIGHTS[0]), lake, night=NIGHTS[0], cfg=cfg.ingest)
        times["ingest A"] = time.perf_counter() - t0 - sum(times.values())
        train_and_map(spark, lake, cfg, train_desom1_too=False)
        times["DESOM-2 on A"] = time.perf_counter() - t0 - sum(times.values())
        for night in NIGHTS[1:]:
            nightly(spark, lake.path("raw", night), lake, night, cfg)
        times["nightly B, C"] = time.perf_counter() - t0 - sum(times.values())

        print(
            f"\nholdout bench: {args.exposures} exposures a night, classes {', '.join(classes)}, "
            f"seeds A {args.seeds[0]}, B {args.seeds[1]}, C {args.seeds[2]}; DESOM-1 shipped"
        )
        print("in sample, night A: " + scores_line(map_scores(lake, [NIGHTS[0]])))
        print(
            "  per class: "
            + json.dumps({k: round(v, 3) for k, v in map_scores(lake, [NIGHTS[0]])["recall"].items()})
        )
        report("out of sample, nights B and C", holdout_scores(lake, [NIGHTS[0]], list(NIGHTS[1:]), cfg))
        verdicts_report(lake, cfg, args.verdict_margins or [cfg.decide.novelty_margin])
        times["verdicts"] = time.perf_counter() - t0 - sum(times.values())

        if args.ablate:
            ablated = replace(
                cfg,
                desom2=replace(
                    cfg.desom2, qa_inputs=tuple(q for q in cfg.desom2.qa_inputs if q != args.ablate)
                ),
            )
            d2 = train_desom2(lake, ablated)
            registry.promote(lake, cfg.mlflow, "desom2", d2["version"])
            run_assign(spark, lake, ablated)
            times[f"without input {args.ablate}"] = time.perf_counter() - t0 - sum(times.values())
            print(
                f"\nin sample, night A, without input {args.ablate}: "
                + scores_line(map_scores(lake, [NIGHTS[0]]))
            )
            report(
                f"DESOM-2 without input {args.ablate}",
                holdout_scores(lake, [NIGHTS[0]], list(NIGHTS[1:]), cfg),
            )

        if args.withhold:
            seen = assigned_truth(lake, [NIGHTS[0]])
            ids = list(seen.loc[seen["truth_label"] != args.withhold, "exposure_id"])
            d2 = train_desom2(lake, cfg, exposure_ids=ids)
            registry.promote(lake, cfg.mlflow, "desom2", d2["version"])
            run_assign(spark, lake, cfg)
            times[f"without {args.withhold}"] = time.perf_counter() - t0 - sum(times.values())
            result = holdout_scores(lake, [NIGHTS[0]], list(NIGHTS[1:]), cfg, unseen=(args.withhold,))
            report(f"DESOM-2 trained without {args.withhold}, nights B and C", result)
        print("\ntimes: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    finally:
        spark.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
