"""Re-make the default models shipped in models/ (DESOM-1 and DESOM-2 on the simulated survey).

    python models/train_defaults.py [--exposures 96] [--iterations 800]

Runs the real pipeline (simulate -> ingest -> train-desom1 -> histovectors ->
train-desom2) in a scratch lake, copies the two registered MLflow model
folders to models/desom1 and models/desom2, and rewrites models/MODEL_CARD.md
with the data, settings and metrics.  A fresh install registers these as its
first champions, so ``nightly`` assigns exposures before anyone trains.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from desomspark import registry
from desomspark.config import load_config
from desomspark.desom.metrics import nmi, purity
from desomspark.evaluation.demo import class_table
from desomspark.evaluation.simulate import simulate_night, small_config
from desomspark.lake.layout import Lake
from desomspark.stages.ingest import ingest
from desomspark.stages.nightly import run_assign, run_histovectors
from desomspark.stages.spark import get_spark
from desomspark.stages.train_desom1 import train_desom1
from desomspark.stages.train_desom2 import train_desom2

HERE = Path(__file__).resolve().parent
NIGHT = "20251120"


def copy_model(name: str, version: str, target: Path) -> None:
    uri = MlflowClient().get_model_version_download_uri(name, version)
    local = mlflow.artifacts.download_artifacts(uri)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(local, target)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exposures", type=int, default=96)
    parser.add_argument("--iterations", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    cfg = load_config(HERE.parent / "conf" / "local.yaml")
    cfg = replace(
        cfg,
        desom1=replace(
            cfg.desom1,
            iterations=args.iterations,
            batch_size=args.batch_size,
            checkpoint_every=200,
            log_every=100,
        ),
        desom2=replace(cfg.desom2, iterations=3000),
    )
    sim = replace(small_config(cfg.simulate, 4, (1024, 1024)), p_dead_ccd=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(f"{tmp}/lake")
        spark = get_spark(cfg.spark)
        simulate_night(f"{tmp}/raw", args.exposures, sim, seed=2024, mix="balanced")
        ingest(spark, f"{tmp}/raw", lake, night=NIGHT, cfg=cfg.ingest)
        d1 = train_desom1(spark, lake, cfg, processes=2, sample_size=10**6)
        registry.promote(lake, cfg.mlflow, "desom1", d1["version"])
        run_histovectors(spark, lake, cfg)
        d2 = train_desom2(lake, cfg, desom1_version=d1["version"])
        registry.promote(lake, cfg.mlflow, "desom2", d2["version"])
        table = run_assign(spark, lake, cfg)
        truth = lake.read("exposures", columns=["exposure_id", "truth_label"]).to_pandas()
        merged = table.merge(truth, on="exposure_id")
        pur, mi = purity(merged["truth_label"], merged["cell"]), nmi(merged["truth_label"], merged["cell"])
        cells = class_table(lake, [NIGHT])
        n_cutouts = lake.read("cutouts", columns=["exposure_id"]).num_rows
        copy_model("desom1", d1["version"], HERE / "desom1")
        copy_model("desom2", d2["version"], HERE / "desom2")
        spark.stop()
    f1, f2 = d1["final"], d2["history"][-1]
    card = f"""# Default models

Shipped so that a fresh install assigns exposures before anyone trains
(`desomspark nightly` registers them as the first `champion` versions of an
empty registry).  They are small: trained on a simulated survey on a 2-core
CPU, as a starting point, not as the paper's production models.  Re-make with
`python models/train_defaults.py`.

Both are MLflow models in the `pt2` format (`torch.export`: a graph and
tensors, loaded without unpickling code).  Input -> one row per sample:
`[node, latent distance, latent vector...]` (`desomspark.desom.model.split_inference`).

## Data
- {args.exposures} simulated exposures, balanced over Good, BT, RBT, B-Seeing,
  BadFocus, BGP (gradient, scattered light, crowded, low exposure); 4 CCDs of
  1024x1024 each, seed 2024 (`desomspark.evaluation.simulate`).
- {n_cutouts} cutouts (32x32, up to 100 per CCD, sep detection as SExtractor).

## DESOM-1 (`desom1/`)
- Conv autoencoder 32-64-128 / Dense 512 / latent 160, SOM 25x25 (paper architecture).
- {args.iterations} iterations, batch {args.batch_size}, gamma {cfg.desom1.gamma},
  T {cfg.desom1.t_max} -> {cfg.desom1.t_min}, Adam lr {cfg.desom1.learning_rate}; DDP on 2 CPU processes.
- Final: loss {f1.get("loss", float("nan")):.5f}, reconstruction MSE
{f1.get("reconstruction", float("nan")):.5f},
  quantization error {f1.get("quantization_error", float("nan")):.3f}, topographic error
  {f1.get("topographic_error", float("nan")):.3f}.
- Extra: `extra_files/extra.npz` holds `decoded_prototypes` (625x32x32) and `prototypes` (625x160).

## DESOM-2 (`desom2/`)
- Dense autoencoder 625-450-300-100, SOM {d2["map_shape"][0]}x{d2["map_shape"][1]} (scaled to
  {args.exposures} exposures), {cfg.desom2.iterations} iterations, gamma {cfg.desom2.gamma}.
- Normalisation inside the model: clip above mean + 3 sigma, z-score per vector, per-bin min-max fitted here.
- Final: loss {f2["loss"]:.5f}, topographic error {f2["topographic_error"]:.3f}.
- On its training exposures: purity {pur:.3f}, NMI {mi:.3f} against the simulated classes.

Exposures per cell and true class (training night):

```
{cells.to_string()}
```
"""
    (HERE / "MODEL_CARD.md").write_text(card)
    print(card)


if __name__ == "__main__":
    main()
