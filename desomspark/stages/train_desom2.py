"""``desomspark train-desom2``: read the histo-vectors, fit DESOM-2, record it in MLflow.

prepare (:func:`training_inputs`: the lake's histo-vectors and quality numbers)
-> fit (:func:`fit_desom2`: arrays in, mapper and metrics out, no I/O)
-> record (:func:`record_desom2`: one MLflow run and the registered model).
The model itself and its normalisation are :mod:`desomspark.desom.exposure_mapper`.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from desomspark import registry
from desomspark.config import Config, Desom2Config
from desomspark.desom.exposure_mapper import (
    NOVELTY_QUANTILE,
    ExposureMapper,
    build_mapper,
    desom2_map_shape,
)
from desomspark.desom.metrics import neighbour_distance
from desomspark.desom.model import split_inference
from desomspark.desom.train import Shard, TrainJob, fit, row_groups
from desomspark.errors import UserError
from desomspark.ingest.qa import QA_FEATURES
from desomspark.lake.layout import Lake
from desomspark.lake.queries import desom2_inputs, input_matrix

_LOG = logging.getLogger(__name__)


@dataclass
class Desom2Inputs:
    """What DESOM-2 is trained on: one row per exposure (``table``) and its raw input matrix."""

    table: pd.DataFrame  # night, exposure_id, counts, the quality numbers
    x_raw: np.ndarray  # histo-vector, then the quality numbers (as the served model reads them)
    n_bins: int
    desom1_version: str
    desom1_grid: tuple[int, int]


@dataclass
class Desom2Fit:
    """A trained DESOM-2 inside its mapper, and what the fit measured."""

    mapper: ExposureMapper
    map_shape: tuple[int, int]
    history: list[dict]
    cells_used: int
    iterations: int
    t_max: float
    seed: int
    neighbour_distance: float  # metrics.neighbour_distance of this draw's map (lower: alike together)
    draws: list[dict] = field(default_factory=list)  # every draw fitted: seed, neighbour_distance, cells


def training_inputs(
    lake: Lake, c: Desom2Config, desom1_version: str | None = None, exposure_ids: list[str] | None = None
) -> Desom2Inputs:
    """Prepare: the lake's histo-vectors of one DESOM-1 version (``exposure_ids``: only those
    exposures'), with the quality numbers DESOM-2 reads."""
    unknown = sorted(set(c.qa_inputs) - set(QA_FEATURES))
    if unknown:
        raise UserError(
            f"desom2.qa_inputs: unknown quality number(s) {', '.join(unknown)} "
            f"(known: {', '.join(QA_FEATURES)})"
        )
    table, version = desom2_inputs(lake, desom1_version, tuple(c.qa_inputs), exposure_ids)
    grid = registry.RegisteredModel.load("desom1", version).map_shape
    return Desom2Inputs(
        table,
        input_matrix(table["counts"], table, c.qa_inputs),
        len(table["counts"].iloc[0]),
        str(version),
        grid,
    )


def fit_desom2(data: Desom2Inputs, c: Desom2Config, iterations: int | None = None) -> Desom2Fit:
    """Fit: ``c.draws`` draws of DESOM-2 on the arrays of ``data`` (seeds ``c.seed``, ``c.seed + 1``...),
    keeping the one whose map neighbours are nearest in the input space (no labels: README, "One map
    is one draw").  No I/O but a scratch folder for the shard."""
    fits = [fit_draw(data, replace(c, seed=c.seed + k), iterations) for k in range(c.draws)]
    best = min(fits, key=lambda f: (f.neighbour_distance, f.seed))
    best.draws = [
        {"seed": f.seed, "neighbour_distance": f.neighbour_distance, "cells_used": f.cells_used} for f in fits
    ]
    if c.draws > 1:
        _LOG.info(
            f"train-desom2: {c.draws} draws, neighbour distance "
            + ", ".join(f"{f.neighbour_distance:.4f} (seed {f.seed})" for f in fits)
            + f": kept seed {best.seed}"
        )
    return best


def fit_draw(data: Desom2Inputs, c: Desom2Config, iterations: int | None = None) -> Desom2Fit:
    """One draw: normalisation and DESOM-2 with seed ``c.seed``, and how its map keeps neighbours."""
    counts = data.x_raw[:, : data.n_bins]
    qa = data.x_raw[:, data.n_bins :] if c.qa_inputs else None
    map_shape = desom2_map_shape(c, len(data.x_raw))
    _LOG.info(
        f"train-desom2: {len(data.x_raw)} histo-vectors of desom1 v{data.desom1_version} ({c.transform}"
        f"{', + ' + ', '.join(c.qa_inputs) if c.qa_inputs else ''}), map {map_shape[0]}x{map_shape[1]}"
    )
    mapper = build_mapper(counts, qa, c, map_shape, data.desom1_version, node_grid=data.desom1_grid)
    model = mapper.inference.desom
    with torch.no_grad():
        x = mapper.normalise(torch.as_tensor(data.x_raw)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        # the training loop reads Parquet shards (as DESOM-1's ranks do): one in-memory shard here
        sample = Path(tmp) / "sample"
        sample.mkdir()
        pq.write_table(
            pa.table({"x": pa.array(list(x), type=pa.list_(pa.float32()))}),
            sample / "part.parquet",
            row_group_size=4096,
        )
        job = TrainJob(
            kind="desom2",
            sample_path=str(sample),
            checkpoint_path=str(Path(tmp) / "ckpt.pt"),
            spec=model.spec.to_dict(),
            iterations=iterations or c.iterations,
            batch_size=min(c.batch_size, len(x)),
            learning_rate=c.learning_rate,
            gamma=c.gamma,
            t_max=min(c.t_max, max(map_shape) / 2),
            t_min=c.t_min,
            seed=c.seed,
            checkpoint_every=0,
            log_every=c.log_every,
            column="x",
        )
        shard = Shard(
            str(sample),
            row_groups(str(sample)),
            "x",
            torch.device("cpu"),
            1e12,
            torch.Generator().manual_seed(c.seed),
        )
        result = fit(model, shard, job)
    model.eval()
    with torch.no_grad():
        node, distance, _ = split_inference(mapper.inference(torch.as_tensor(x)))
    mapper.fit_cell_scale(node, distance)
    cells = node.numpy()
    used = int(np.unique(cells).size)
    cols = map_shape[1]
    positions = {int(cell): (int(cell) // cols, int(cell) % cols) for cell in np.unique(cells)}
    _LOG.info(
        f"train-desom2: {used} of {map_shape[0] * map_shape[1]} cells used by {len(x)} exposures "
        f"({len(x) / used:.1f} per used cell)"
    )
    return Desom2Fit(
        mapper,
        map_shape,
        result["history"],
        used,
        job.iterations,
        job.t_max,
        c.seed,
        neighbour_distance(x, cells, positions),
    )


def _description(c: Desom2Config, trained: Desom2Fit, data: Desom2Inputs, nights: list[str]) -> str:
    rows, cols = trained.map_shape
    qa = f" + {', '.join(c.qa_inputs)}" if c.qa_inputs else ""
    smoothing = f", smoothed over {c.node_smoothing:g} DESOM-1 nodes" if c.node_smoothing > 0 else ""
    return (
        f"DESOM-2 {rows}x{cols} on desom1 v{data.desom1_version}: {len(data.x_raw)} exposures of nights "
        f"{registry.night_span(nights)}, input {c.transform}{qa}{smoothing}"
    )


def record_desom2(lake: Lake, cfg: Config, data: Desom2Inputs, trained: Desom2Fit) -> tuple[str, str]:
    """Record: one MLflow run (settings, data, curves) and the registered model; returns (version, run id)."""
    c, mapper, version = cfg.desom2, trained.mapper, data.desom1_version
    model, table, (rows, cols) = mapper.inference.desom, data.table, trained.map_shape
    nights = sorted(table["night"].unique())
    span = registry.night_span(nights)
    name = f"desom2 {rows}x{cols} on desom1 v{version} {len(table)} exposures nights {span}"
    with registry.run(lake, cfg.mlflow, name) as active:
        # each parameter once: the settings as this run used them, then what only the run knows
        keys = "\n".join(table["night"] + "/" + table["exposure_id"])
        registry.log_training_inputs(
            "desom2",
            replace(c, iterations=trained.iterations),
            {
                "map_rows": rows,
                "map_cols": cols,
                "t_max_used": trained.t_max,
                "n_exposures": len(table),
                "desom1_version": version,
                "kept_seed": trained.seed,
            },
            registry.TrainingData(
                f"desom2 training histo-vectors of desom1 v{version}",
                lake.path("histovectors"),
                nights,
                len(table),
                hashlib.sha256(keys.encode()).hexdigest(),
            ),
        )
        registry.log_training_outcome(
            trained.history,
            metrics={"cells_used": trained.cells_used, "neighbour_distance": trained.neighbour_distance},
            dicts={
                "training_exposures.json": {"exposures": list(table["exposure_id"])},
                "draws.json": {"kept_seed": trained.seed, "draws": trained.draws},
            },
        )
        new_version = registry.register_model(
            mapper,
            "desom2",
            input_example=np.where(np.isnan(data.x_raw[:2]), 0.0, data.x_raw[:2]).astype(np.float32),
            metadata=model.spec.to_dict()
            | {
                "clip_sigma": c.clip_sigma,
                "n_bins": data.n_bins,
                "qa_inputs": list(c.qa_inputs),
                "qa_weight": c.qa_weight,
                "node_smoothing": c.node_smoothing,
                # the distance it serves is over each cell's own scale: this quantile of the cell's
                # training distances (ExposureMapper.cell_scale)
                "novelty_quantile": NOVELTY_QUANTILE,
            },
            tags={"desom1_version": version, "run_id": active.info.run_id},
            description=_description(c, trained, data, nights),
            extra={
                "bin_center": mapper.bin_center.numpy(),
                "bin_scale": mapper.bin_scale.numpy(),
                "qa_center": mapper.qa_center.numpy(),
                "qa_scale": mapper.qa_scale.numpy(),
                "cell_scale": mapper.cell_scale.numpy(),
                "prototypes": model.som.prototypes.detach().numpy(),
            },
        )
    return new_version, active.info.run_id


def train_desom2(
    lake: Lake,
    cfg: Config,
    iterations: int | None = None,
    desom1_version: str | None = None,
    exposure_ids: list[str] | None = None,
) -> dict:
    """Prepare, fit and record DESOM-2 (tagged with its DESOM-1 version), on every histo-vector of
    the lake or on those of ``exposure_ids``."""
    registry.connect(lake, cfg.mlflow)  # an unreachable MLflow fails here, not after the training
    data = training_inputs(lake, cfg.desom2, desom1_version, exposure_ids)
    trained = fit_desom2(data, cfg.desom2, iterations)
    new_version, run_id = record_desom2(lake, cfg, data, trained)
    _LOG.info(
        f"train-desom2: registered desom2 version {new_version} (alias {registry.CHALLENGER}) "
        f"on desom1 v{data.desom1_version}"
    )
    return {
        "version": new_version,
        "desom1_version": data.desom1_version,
        "map_shape": trained.map_shape,
        "cells_used": trained.cells_used,
        "history": trained.history,
        "seed": trained.seed,
        "draws": trained.draws,
        "run_id": run_id,
        "mapper": trained.mapper,
    }
