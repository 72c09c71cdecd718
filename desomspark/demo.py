"""``desomspark demo``: a small simulated survey through the whole chain, on a laptop.

1. simulate a balanced night (every class) into ``<lake>/raw/<night>/``;
2. ingest it; train DESOM-1 with 2 DDP processes; promote it;
3. histo-vectors; train DESOM-2 (map scaled to the night); promote it; assign;
4. simulate a second night and run ``nightly`` on it with the champion models;
5. write the HTML report and print where everything is.
"""
from __future__ import annotations

import os
from dataclasses import replace

from . import registry
from .config import Config
from .desom1 import train_desom1
from .desom2 import train_desom2
from .ingest import ingest
from .lake import Lake
from .pipeline import nightly, run_assign, run_histovectors
from .report import write_report
from .simulate import simulate_night, small_config

TRAIN_NIGHT, NEXT_NIGHT = "20251120", "20251121"


def class_table(lake: Lake, nights: list[str]):
    """Exposures per (cell, true class): how the map sorted a simulated night."""
    exposures = lake.read("exposures", nights=nights, columns=["exposure_id", "truth_label"]).to_pandas()
    cells = lake.read("assignments", nights=nights, columns=["exposure_id", "cell_x", "cell_y"]).to_pandas()
    table = cells.merge(exposures, on="exposure_id")
    return table.pivot_table(index=["cell_y", "cell_x"], columns="truth_label", values="exposure_id",
                             aggfunc="count", fill_value=0)


def train_and_map(spark, lake: Lake, cfg: Config, log=print) -> tuple[dict, dict]:
    """Train DESOM-1 (2 DDP processes where there are 2 cores) and DESOM-2 on the lake, promote both, assign."""
    processes = 2 if (os.cpu_count() or 1) >= 2 else 1
    d1 = train_desom1(spark, lake, cfg, processes=processes, log=log)
    registry.promote(lake, cfg.mlflow, "desom1", d1["version"])
    run_histovectors(spark, lake, cfg, log=log)
    d2 = train_desom2(lake, cfg, desom1_version=d1["version"], log=log)
    registry.promote(lake, cfg.mlflow, "desom2", d2["version"])
    run_assign(spark, lake, cfg, log=log)
    return d1, d2


def demo(spark, lake: Lake, cfg: Config, n_exposures: int = 36, log=print) -> dict:
    sim = replace(small_config(cfg.simulate, 4, (512, 512)), p_dead_ccd=0.02)
    raw = lake.path("raw", TRAIN_NIGHT)
    log(f"demo: simulating {n_exposures} exposures (4 CCDs of 512x512, every class) into {raw}")
    simulate_night(raw, n_exposures, sim, seed=0, mix="balanced")
    ingest(spark, raw, lake, night=TRAIN_NIGHT, cfg=cfg.ingest, log=log)

    d1, d2 = train_and_map(spark, lake, cfg, log)
    log("demo: exposures per DESOM-2 cell and true class (training night):")
    log(class_table(lake, [TRAIN_NIGHT]).to_string())

    raw2 = lake.path("raw", NEXT_NIGHT)
    log(f"demo: a new night ({NEXT_NIGHT}) arrives: nightly with the champion models")
    simulate_night(raw2, max(6, n_exposures // 3), sim, seed=1, mix="survey")
    summary = nightly(spark, raw2, lake, NEXT_NIGHT, cfg, log=log)

    report = write_report(lake, cfg, lake.path("report"), log=log)
    uri = registry.tracking_uri(lake, cfg.mlflow)
    log("demo: done. Outputs:")
    log(f"  lake tables      {lake.root}/{{exposures,ccds,cutouts,rejects,histovectors,assignments}}/night=*/")
    log(f"  raw FITS         {lake.path('raw')}")
    log(f"  MLflow store     {uri}  (browse: mlflow ui --backend-store-uri {uri})")
    log(f"  models           desom1 v{d1['version']}, desom2 v{d2['version']} (alias champion)")
    log(f"  HTML report      {report}")
    return {"desom1": d1, "desom2": d2, "nightly": summary, "report": str(report)}
