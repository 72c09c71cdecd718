"""Map quality: a balanced simulated night through the whole pipeline, scored against the seed baselines.

1. simulate N small exposures (4 CCDs of 512x512), every class in equal share;
2. ingest; train DESOM-1 (2 DDP processes) and DESOM-2 on it; assign;
3. ``evaluate``: majority-labelled cells -> purity, NMI, Good-vs-Bad accuracy /
   precision / recall, beside pixel PCA + k-means, PCA + Ward, affinity
   propagation, conv AE + k-means and VAE + k-means with as many clusters.

Prints the table (and writes it with the t-SNE picture under the lake's
``evaluation/``).  Settings: conf/local.yaml unless --conf, DESOM-1
iterations from --iterations.

Run: python bench/quality.py [--exposures 300] [--iterations 1500] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace

from desomspark.config import conf_dir, load_config
from desomspark.evaluation.demo import class_table, map_scores, scores_line, train_and_map
from desomspark.evaluation.evaluate import evaluate
from desomspark.evaluation.simulate import simulate_night, small_config
from desomspark.lake.layout import Lake
from desomspark.stages.ingest import ingest
from desomspark.stages.spark import get_spark


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exposures", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=1500, help="DESOM-1 training iterations")
    parser.add_argument("--conf", default=str(conf_dir() / "local.yaml"))
    parser.add_argument("--keep", default=None, help="lake folder to keep (default: a temporary one)")
    parser.add_argument(
        "--seed", type=int, default=23, help="simulation seed (defaults were tuned on seed 11)"
    )
    args = parser.parse_args()

    cfg = load_config(args.conf, overrides={"desom1": {"iterations": args.iterations}})
    root = args.keep or tempfile.mkdtemp(prefix="desomspark-quality-")
    lake = Lake(root)
    spark = get_spark(cfg.spark)
    try:
        t0 = time.perf_counter()
        sim = replace(small_config(cfg.simulate, 4, (512, 512)), p_dead_ccd=0.02)
        simulate_night(
            lake.path("raw"), args.exposures, sim, seed=args.seed, mix="balanced", processes=2, progress=False
        )
        t_sim = time.perf_counter() - t0
        ingest(spark, lake.path("raw"), lake, night="20251120", cfg=cfg.ingest)
        t_ingest = time.perf_counter() - t0 - t_sim
        train_and_map(spark, lake, cfg)
        t_train = time.perf_counter() - t0 - t_sim - t_ingest
        print(class_table(lake, ["20251120"]).to_string())
        print(scores_line(map_scores(lake, ["20251120"])))
        table = evaluate(lake, cfg)
        t_eval = time.perf_counter() - t0 - t_sim - t_ingest - t_train
        print(
            f"\nquality bench: {args.exposures} exposures, DESOM-1 {args.iterations} iterations; "
            f"simulate {t_sim:.0f} s, ingest {t_ingest:.0f} s, train+map {t_train:.0f} s, evaluate "
            f"{t_eval:.0f} s"
        )
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    finally:
        spark.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
