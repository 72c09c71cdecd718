"""Mapping speed: the histo-vector pandas UDF vs a bare torch forward, and nightly per exposure, in one run.

(a) a bare loop in one process (torch on every core): decode the cutouts of
    the lake and run DESOM-1 over them;
(b) the Spark histo-vector stage (mapInPandas UDF, DESOM-1 loaded once per
    worker, weighted counts per exposure, committed to the lake) on local[*];
(c) ``nightly`` end to end (ingest -> histo-vectors -> assign) on a fresh
    simulated night of full-size exposures, seconds per exposure.

Models: the defaults shipped in models/ (registered into the bench lake).
Prints cutouts/s and the ratio (b)/(a) (target >= 0.85 on the same cores).

Run: python bench/mapping.py [--copies K] [--nightly-exposures N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import replace

import torch

from desomspark.config import load_config
from desomspark.desom.mapping import cutout_nodes
from desomspark.evaluation.simulate import simulate_night, small_config
from desomspark.ingest.cutout import decode_uint8
from desomspark.lake.layout import Lake
from desomspark.registry import cached_model, registered
from desomspark.stages.histovectors import write_histovectors
from desomspark.stages.ingest import ingest
from desomspark.stages.nightly import nightly
from desomspark.stages.spark import get_spark


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=20, help="replicate the ingested cutouts K times")
    parser.add_argument("--nightly-exposures", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config()
    tmp = tempfile.mkdtemp(prefix="bench-map-")
    try:
        spark = get_spark(cfg.spark)
        from pyspark.sql import functions as F

        lake = Lake(f"{tmp}/lake")
        simulate_night(f"{tmp}/raw", 12, small_config(cfg.simulate, 4, (1024, 1024)), seed=8, progress=False)
        ingest(spark, f"{tmp}/raw", lake, night="20251120", cfg=cfg.ingest)
        # more cutouts for a steady rate: K copies of the night under other exposure ids
        base = lake.spark_read(spark, "cutouts")
        copies = [
            base.withColumn("exposure_id", F.concat(F.col("exposure_id"), F.lit(f"-{k}")))
            for k in range(args.copies)
        ]
        big = copies[0]
        for c in copies[1:]:
            big = big.unionByName(c)
        big_lake = Lake(f"{tmp}/big")
        big.write.partitionBy("night").parquet(big_lake.spark_path("cutouts"))
        desom1 = registered(lake, cfg, "desom1")
        uri, version = desom1.uri, desom1.version

        pixels = big_lake.read("cutouts", columns=["pixels"]).column("pixels")
        n = len(pixels)
        t = time.perf_counter()
        model = cached_model(uri, "cpu", threads=os.cpu_count())
        cutout_nodes(model, decode_uint8(pixels))
        bare = n / (time.perf_counter() - t)

        t = time.perf_counter()
        write_histovectors(spark, big_lake, desom1)
        udf = n / (time.perf_counter() - t)
        print(f"{n} cutouts, {os.cpu_count()} cores, default DESOM-1 v{version}")
        print(f"(a) bare torch forward, one process   {bare:9.0f} cutouts/s")
        print(f"(b) Spark histo-vector UDF stage      {udf:9.0f} cutouts/s")
        print(f"(b)/(a) = {udf / bare:.3f}   (target >= 0.85)")
        if torch.cuda.is_available():
            gpu_model = cached_model(uri, "cuda")
            t = time.perf_counter()
            cutout_nodes(gpu_model, decode_uint8(pixels))
            torch.cuda.synchronize()
            print(f"GPU forward: {n / (time.perf_counter() - t):.0f} cutouts/s")

        night = f"{tmp}/night2"
        simulate_night(night, args.nightly_exposures, replace(cfg.simulate), seed=9, progress=False)
        t = time.perf_counter()
        nightly(spark, night, lake, "20251121", cfg)
        dt = time.perf_counter() - t
        print(
            f"(c) nightly, {args.nightly_exposures} full-size exposures ({cfg.simulate.n_ccds} CCDs): "
            f"{dt:.1f} s, {dt / args.nightly_exposures:.1f} s per exposure"
        )
        spark.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
