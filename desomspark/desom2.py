"""DESOM-2: histo-vector -> one cell of the exposure map (``desomspark train-desom2``).

Normalisation of a histo-vector (as in the original pipeline):

1. per vector: clip above mean + 3 sigma (one crowded node must not dominate);
2. per vector: z-score (the shape of the distribution, not the number of sources);
3. per bin: min-max with the minimum and maximum fitted on the training set.

The fitted statistics live in the model (:class:`ExposureMapper` buffers),
and the DESOM-1 version whose histo-vectors it was trained on in the model's
metadata; a histo-vector made by another DESOM-1 is refused.  Training runs in one
process (tens of thousands of 625-bin vectors) with :func:`train.fit`.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from . import registry
from .config import Config
from .lake import Lake
from .model import DESOM, DesomInference, desom2, map_side_for
from .train import Shard, TrainJob, fit, row_groups


class ModelMismatch(ValueError):
    """Histo-vectors and DESOM-2 come from different DESOM-1 versions."""


def clean_and_standardise(counts: torch.Tensor, clip_sigma: float = 3.0) -> torch.Tensor:
    """Steps 1-2 for a batch of vectors (n, bins): clip above mu + k sigma, then z-score, per vector."""
    mu, sd = counts.mean(dim=1, keepdim=True), counts.std(dim=1, unbiased=False, keepdim=True)
    v = torch.minimum(counts, mu + clip_sigma * sd)
    mu, sd = v.mean(dim=1, keepdim=True), v.std(dim=1, unbiased=False, keepdim=True)
    return (v - mu) / torch.where(sd > 0, sd, torch.ones_like(sd))


class ExposureMapper(nn.Module):
    """Raw histo-vector (weighted counts) -> (DESOM-2 node, latent distance, latent vector).

    The whole normalisation is inside ``forward``; buffers ``bin_min`` /
    ``bin_max`` are the per-bin scaler fitted on the training set, so the
    registered model carries every statistic it was trained with.
    """

    def __init__(self, desom: DESOM, bin_min: torch.Tensor, bin_max: torch.Tensor, clip_sigma: float):
        super().__init__()
        self.inference = DesomInference(desom)
        self.register_buffer("bin_min", bin_min.float())
        self.register_buffer("bin_span", torch.where(bin_max > bin_min, bin_max - bin_min,
                                                     torch.ones_like(bin_max)).float())
        self.clip_sigma = float(clip_sigma)

    def normalise(self, counts: torch.Tensor) -> torch.Tensor:
        return (clean_and_standardise(counts, self.clip_sigma) - self.bin_min) / self.bin_span

    def forward(self, counts: torch.Tensor):
        return self.inference(self.normalise(counts))


def check_desom1(metadata: dict, version: str) -> None:
    """Refuse histo-vectors made by another DESOM-1 than the one DESOM-2 was trained on."""
    trained_on = str(metadata.get("desom1_version"))
    if str(version) != trained_on:
        raise ModelMismatch(f"DESOM-2 was trained on histo-vectors of desom1 version {trained_on}, "
                            f"these come from version {version}: recompute them or train DESOM-2 again")


def training_vectors(lake: Lake, desom1_version: str | None = None) -> tuple[np.ndarray, list[str], str]:
    """Every histo-vector of the lake made by one DESOM-1 version (default: the most recent one)."""
    table = lake.read("histovectors").to_pandas()
    if table.empty:
        raise ValueError(f"the lake {lake.root} has no histo-vectors: run histovectors first")
    versions = sorted(table["desom1_version"].unique(), key=lambda v: int(v) if v.isdigit() else v)
    version = str(desom1_version or versions[-1])
    table = table[table["desom1_version"] == version].sort_values(["night", "exposure_id"])
    if table.empty:
        raise ValueError(f"no histo-vectors of desom1 version {version} (have: {', '.join(versions)})")
    return np.stack(table["counts"].to_numpy()), list(table["exposure_id"]), version


def train_desom2(lake: Lake, cfg: Config, iterations: int | None = None, desom1_version: str | None = None,
                 log=print) -> dict:
    """Normalise, train and register DESOM-2 (tagged with its DESOM-1 version)."""
    import mlflow

    c = cfg.desom2
    registry.connect(lake, cfg.mlflow)  # an unreachable MLflow fails here, not after the training
    counts, exposures, version = training_vectors(lake, desom1_version)
    raw = torch.as_tensor(counts, dtype=torch.float32)
    z = clean_and_standardise(raw, c.clip_sigma)
    bin_min, bin_max = z.min(dim=0).values, z.max(dim=0).values
    if c.map_shape:
        map_shape = tuple(c.map_shape)
    else:
        side = map_side_for(len(counts), c.exposures_per_cell)
        map_shape = (side, side)
    log(f"train-desom2: {len(counts)} histo-vectors of desom1 v{version}, map {map_shape[0]}x{map_shape[1]}")
    torch.manual_seed(c.seed)
    model = desom2(c, counts.shape[1], map_shape)
    mapper = ExposureMapper(model, bin_min, bin_max, c.clip_sigma)
    x = mapper.normalise(raw).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample"
        sample.mkdir()
        pq.write_table(pa.table({"x": pa.array(list(x), type=pa.list_(pa.float32()))}), sample / "part.parquet",
                       row_group_size=4096)
        job = TrainJob(kind="desom2", sample_path=str(sample), checkpoint_path=str(Path(tmp) / "ckpt.pt"),
                       model_cfg=asdict(c), iterations=iterations or c.iterations,
                       batch_size=min(c.batch_size, len(x)), learning_rate=c.learning_rate, gamma=c.gamma,
                       t_max=min(c.t_max, max(map_shape) / 2), t_min=c.t_min, seed=c.seed, checkpoint_every=0,
                       log_every=c.log_every, column="x",
                       extra={"input_dim": counts.shape[1], "map_shape": list(map_shape)})
        shard = Shard(str(sample), row_groups(str(sample)), "x", torch.device("cpu"), 1e12,
                      torch.Generator().manual_seed(c.seed))
        result = fit(model, shard, job, log=log)
    model.eval()
    with registry.run(lake, cfg.mlflow, "desom2") as active:
        mlflow.log_params(registry.flatten("desom2", asdict(c)) | {
            "iterations": job.iterations, "map_rows": map_shape[0], "map_cols": map_shape[1],
            "t_max_used": job.t_max, "n_exposures": len(counts), "desom1_version": version})
        registry.log_history(result["history"])
        mlflow.log_dict({"exposures": exposures}, "training_exposures.json")
        new_version = registry.register_model(
            mapper, "desom2", input_example=counts[:2].astype(np.float32),
            metadata={"kind": "desom2", "map_shape": list(map_shape), "desom1_version": version,
                      "clip_sigma": c.clip_sigma, "latent_dim": c.latent_dim},
            tags={"desom1_version": version, "run_id": active.info.run_id},
            extra={"bin_min": bin_min.numpy(), "bin_max": bin_max.numpy(),
                   "prototypes": model.som.prototypes.detach().numpy()})
    log(f"train-desom2: registered desom2 version {new_version} (alias {registry.CHALLENGER}) on desom1 v{version}")
    return {"version": new_version, "desom1_version": version, "map_shape": map_shape,
            "history": result["history"], "run_id": active.info.run_id}
