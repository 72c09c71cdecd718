"""Simulator speed on full-size MegaCam CCDs (2048x4612).

Prints seconds per CCD (one core, per class) and per 36-CCD exposure
(written to disk with every core).  Run: python bench/simulate.py [--exposures N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from desomspark.config import load_config
from desomspark.evaluation.simulate import CLASSES, plan_night, simulate_ccd, simulate_night


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exposures", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config().simulate
    specs = plan_night(len(CLASSES), seed=1, cfg=cfg)
    print(f"full-size CCD {cfg.ccd_shape[0]}x{cfg.ccd_shape[1]}, one core:")
    per_ccd = []
    for spec in specs:
        t = time.perf_counter()
        simulate_ccd(spec, 1, cfg)
        dt = time.perf_counter() - t
        per_ccd.append(dt)
        print(f"  {spec.quality:9s} {dt:6.2f} s/CCD")
    mean = sum(per_ccd) / len(per_ccd)
    print(
        f"  mean      {mean:6.2f} s/CCD  -> {mean * cfg.n_ccds:6.1f} s of one core per {cfg.n_ccds}-CCD "
        f"exposure"
    )
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        paths = simulate_night(out, args.exposures, cfg, seed=2, progress=False)
        dt = time.perf_counter() - t
        size = sum(os.path.getsize(p) for p in paths) / len(paths) / 2**20
    print(
        f"{args.exposures} exposures written with {os.cpu_count()} processes: {dt:.1f} s wall, "
        f"{dt / args.exposures:.1f} s per exposure, {dt / args.exposures / cfg.n_ccds:.2f} s per CCD, "
        f"{size:.0f} MiB per file"
    )


if __name__ == "__main__":
    main()
