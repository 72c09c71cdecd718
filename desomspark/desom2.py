"""DESOM-2: histo-vector (+ quality numbers) -> one cell of the exposure map (``desomspark train-desom2``).

The input of one exposure is its raw histo-vector (weighted counts per DESOM-1
node), optionally followed by its classical quality numbers
(:data:`qa.QA_FEATURES`, ``desom2.qa_inputs`` in conf).  The mapper turns it into
DESOM-2's input inside the registered graph, with every statistic fitted on the
training set stored as a buffer, so a served model needs nothing else:

``transform: original`` (the paper's pipeline)
    per vector, clip above mean + 3 sigma and z-score; per bin, min-max.
``transform: hellinger``
    the square root of each vector's proportions (counts are multinomial: the
    square root stabilises their variance, and the Euclidean distance between
    such vectors is the Hellinger distance between the exposures' node
    distributions), divided by one number (the training set's largest value)
    so that the geometry is kept, the input lies in [0, 1] like the paper's,
    and rare nodes (a trail, a donut) weigh as much as their evidence.
``node_smoothing`` (before either transform)
    each vector, laid out on DESOM-1's grid, is convolved with a Gaussian of
    that many nodes.  Neighbouring nodes hold similar cutouts, so a cutout
    counts partly in its neighbours: the sampling noise of ~100 cutouts a CCD
    over 625 nodes averages out while a feature that fills a region of the
    map (trail tiles, donuts) stays (README "Measured quality").
quality numbers
    each robustly standardised (median, IQR), clipped to +-10, a missing value
    (no PSF star measured) set to the median, and scaled so that the block
    carries ``qa_weight`` times the histogram block's variance.

The DESOM-1 version whose histo-vectors it was trained on is in the model's
metadata; a histo-vector made by another DESOM-1 is refused.  Training runs in
one process (tens of thousands of vectors) with :func:`train.fit`.
"""
from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from . import registry
from .config import Config, Desom2Config
from .errors import UserError
from .lake import Lake
from .model import DESOM, DesomInference, ModelSpec, desom2, map_side_for
from .qa import QA_FEATURES, robust_scale
from .queries import desom2_inputs, input_matrix
from .train import Shard, TrainJob, fit, row_groups

_LOG = logging.getLogger(__name__)


TRANSFORMS = ("original", "hellinger")





def clean_and_standardise(counts: torch.Tensor, clip_sigma: float = 3.0) -> torch.Tensor:
    """Steps 1-2 for a batch of vectors (n, bins): clip above mu + k sigma, then z-score, per vector."""
    mu, sd = counts.mean(dim=1, keepdim=True), counts.std(dim=1, unbiased=False, keepdim=True)
    v = torch.minimum(counts, mu + clip_sigma * sd)
    mu, sd = v.mean(dim=1, keepdim=True), v.std(dim=1, unbiased=False, keepdim=True)
    return (v - mu) / torch.where(sd > 0, sd, torch.ones_like(sd))


def hellinger(counts: torch.Tensor) -> torch.Tensor:
    """Square root of each vector's proportions (an empty vector stays zero)."""
    total = counts.sum(dim=1, keepdim=True)
    return torch.sqrt(counts.clamp_min(0) / torch.where(total > 0, total, torch.ones_like(total)))


def gaussian_taps(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian sampled at whole nodes out to 3 sigma (empty for sigma 0)."""
    if sigma <= 0:
        return torch.zeros(0)
    offsets = torch.arange(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1, dtype=torch.float32)
    taps = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    return taps / taps.sum()


def smooth_on_grid(counts: torch.Tensor, taps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Each vector (n, rows*cols) as a ``grid`` image, convolved with ``taps`` along both axes.

    Nothing is added beyond the map's edge (zero padding), so an edge node
    keeps less of its own mass; the transforms that follow work on proportions.
    """
    rows, cols = grid
    image = counts.reshape(-1, 1, rows, cols)
    k = taps.to(counts.dtype)
    image = nn.functional.conv2d(image, k.reshape(1, 1, -1, 1), padding=(k.numel() // 2, 0))
    image = nn.functional.conv2d(image, k.reshape(1, 1, 1, -1), padding=(0, k.numel() // 2))
    return image.reshape(-1, rows * cols)


class ExposureMapper(nn.Module):
    """Raw input (weighted counts, then quality numbers) -> (DESOM-2 node, latent distance, latent vector).

    The whole normalisation is inside ``forward``: the buffers are the
    statistics fitted on the training set (:func:`fit_normalisation`), so the
    registered model carries everything it was trained with.
    """

    output_names = DesomInference.output_names

    def __init__(self, desom: DESOM, transform: str, bin_center: torch.Tensor, bin_scale: torch.Tensor,
                 clip_sigma: float, qa_center: torch.Tensor | None = None, qa_scale: torch.Tensor | None = None,
                 node_taps: torch.Tensor | None = None, node_grid: tuple[int, int] | None = None):
        super().__init__()
        if transform not in TRANSFORMS:
            raise UserError(f"desom2.transform must be one of {', '.join(TRANSFORMS)}, not {transform!r}")
        self.inference = DesomInference(desom)
        self.transform = transform
        self.n_bins = int(bin_center.numel())
        node_taps = torch.zeros(0) if node_taps is None else node_taps
        if node_taps.numel() and (node_grid is None or node_grid[0] * node_grid[1] != self.n_bins):
            raise UserError(f"node smoothing needs DESOM-1's grid: {node_grid} does not hold {self.n_bins} nodes")
        self.register_buffer("node_taps", node_taps.float())
        self.node_grid = tuple(node_grid) if node_grid else None
        self.register_buffer("bin_center", bin_center.float())
        self.register_buffer("bin_scale", torch.where(bin_scale > 0, bin_scale, torch.ones_like(bin_scale)).float())
        self.clip_sigma = float(clip_sigma)
        qa_center = torch.zeros(0) if qa_center is None else qa_center
        qa_scale = torch.ones(0) if qa_scale is None else qa_scale
        self.register_buffer("qa_center", qa_center.float())
        self.register_buffer("qa_scale", qa_scale.float())

    @property
    def n_inputs(self) -> int:
        return self.n_bins + int(self.qa_center.numel())

    def histogram_block(self, counts: torch.Tensor) -> torch.Tensor:
        if self.node_taps.numel():
            counts = smooth_on_grid(counts, self.node_taps, self.node_grid)
        v = hellinger(counts) if self.transform == "hellinger" else clean_and_standardise(counts, self.clip_sigma)
        return (v - self.bin_center) / self.bin_scale

    def qa_block(self, qa: torch.Tensor) -> torch.Tensor:
        # qa_scale already holds the block weight; a missing number sits at the median
        z = ((qa - self.qa_center) / self.qa_scale).clamp(-10.0, 10.0)  # as qa.standardise
        return torch.where(torch.isnan(z), torch.zeros_like(z), z)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [self.histogram_block(x[:, :self.n_bins])]
        if self.qa_center.numel():
            blocks.append(self.qa_block(x[:, self.n_bins:]))
        return torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]

    def forward(self, x: torch.Tensor):
        return self.inference(self.normalise(x))


def fit_normalisation(counts: torch.Tensor, qa: torch.Tensor | None, transform: str, clip_sigma: float,
                      qa_weight: float) -> dict[str, torch.Tensor]:
    """The mapper's buffers fitted on a training set (see the module docstring)."""
    v = hellinger(counts) if transform == "hellinger" else clean_and_standardise(counts, clip_sigma)
    if transform == "hellinger":
        # one scale for every bin keeps the Hellinger geometry; dividing by the largest
        # value puts the input in [0, 1] as the paper's min-max did, so the dense
        # autoencoder and gamma keep the balance they were chosen for
        center = torch.zeros_like(v[0])
        scale = torch.full_like(center, float(v.max().clamp_min(1e-12)))
    else:
        center = v.min(dim=0).values
        scale = v.max(dim=0).values - center
    out = {"bin_center": center, "bin_scale": torch.where(scale > 0, scale, torch.ones_like(scale))}
    if qa is not None and qa.shape[1]:
        x_hist = (v - out["bin_center"]) / out["bin_scale"]
        block_variance = float(x_hist.var(dim=0, unbiased=False).sum())
        median, spread = robust_scale(qa.double().numpy())
        # unit-variance features, then the block weighted to qa_weight x the histogram block
        factor = np.sqrt(qa_weight * block_variance / qa.shape[1]) if qa_weight > 0 else 0.0
        out["qa_center"] = torch.as_tensor(median, dtype=torch.float32)
        out["qa_scale"] = torch.as_tensor(spread / factor if factor > 0 else np.full_like(spread, np.inf),
                                          dtype=torch.float32)
    return out


def desom2_map_shape(c: Desom2Config, n_exposures: int) -> tuple[int, int]:
    """The map: ``c.map_shape`` (20x20) for survey-size sets, smaller where that would leave
    fewer than ``c.exposures_per_cell`` exposures per cell (a map of singletons sorts nothing)."""
    side = map_side_for(n_exposures, c.exposures_per_cell)
    if not c.map_shape:
        return side, side
    rows, cols = (int(v) for v in c.map_shape)
    return (min(rows, side), min(cols, side)) if side * side < rows * cols else (rows, cols)





def build_mapper(counts: np.ndarray, qa: np.ndarray | None, c: Desom2Config, map_shape: tuple[int, int],
                 desom1_version: str | None = None, node_grid: tuple[int, int] | None = None) -> ExposureMapper:
    """A fresh DESOM-2 inside its mapper, the normalisation fitted on ``counts`` (and ``qa``).

    ``node_grid`` is DESOM-1's (rows, columns), needed when ``c.node_smoothing`` > 0.
    """
    raw = torch.as_tensor(counts, dtype=torch.float32)
    taps = gaussian_taps(c.node_smoothing)
    if taps.numel():
        if node_grid is None or node_grid[0] * node_grid[1] != raw.shape[1]:
            raise UserError(f"desom2.node_smoothing needs DESOM-1's grid: {node_grid} does not hold "
                            f"{raw.shape[1]} nodes")
        raw = smooth_on_grid(raw, taps, node_grid)
    stats = fit_normalisation(raw, None if qa is None else torch.as_tensor(qa, dtype=torch.float32),
                              c.transform, c.clip_sigma, c.qa_weight)
    torch.manual_seed(c.seed)
    n_inputs = counts.shape[1] + (0 if qa is None else qa.shape[1])
    return ExposureMapper(desom2(c, n_inputs, map_shape, desom1_version), c.transform, clip_sigma=c.clip_sigma,
                          node_taps=taps, node_grid=node_grid, **stats)


def train_desom2(lake: Lake, cfg: Config, iterations: int | None = None, desom1_version: str | None = None) -> dict:
    """Normalise, train and register DESOM-2 (tagged with its DESOM-1 version)."""
    c = cfg.desom2
    unknown = sorted(set(c.qa_inputs) - set(QA_FEATURES))
    if unknown:
        raise UserError(f"desom2.qa_inputs: unknown quality number(s) {', '.join(unknown)} "
                         f"(known: {', '.join(QA_FEATURES)})")
    registry.connect(lake, cfg.mlflow)  # an unreachable MLflow fails here, not after the training
    table, version = desom2_inputs(lake, desom1_version, tuple(c.qa_inputs))
    x_raw = input_matrix(table["counts"], table, c.qa_inputs)
    n_bins = len(table["counts"].iloc[0])
    counts, qa = x_raw[:, :n_bins], (x_raw[:, n_bins:] if c.qa_inputs else None)
    map_shape = desom2_map_shape(c, len(table))
    _LOG.info(f"train-desom2: {len(table)} histo-vectors of desom1 v{version} ({c.transform}"
        f"{', + ' + ', '.join(c.qa_inputs) if c.qa_inputs else ''}), map {map_shape[0]}x{map_shape[1]}")
    desom1_grid = tuple(ModelSpec.from_dict(registry.model_metadata(registry.download_uri("desom1", version))).map_shape)
    mapper = build_mapper(counts, qa, c, map_shape, version, node_grid=desom1_grid)
    model = mapper.inference.desom
    with torch.no_grad():
        x = mapper.normalise(torch.as_tensor(x_raw)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample"
        sample.mkdir()
        pq.write_table(pa.table({"x": pa.array(list(x), type=pa.list_(pa.float32()))}), sample / "part.parquet",
                       row_group_size=4096)
        job = TrainJob(kind="desom2", sample_path=str(sample), checkpoint_path=str(Path(tmp) / "ckpt.pt"),
                       spec=model.spec.to_dict(), iterations=iterations or c.iterations,
                       batch_size=min(c.batch_size, len(x)), learning_rate=c.learning_rate, gamma=c.gamma,
                       t_max=min(c.t_max, max(map_shape) / 2), t_min=c.t_min, seed=c.seed, checkpoint_every=0,
                       log_every=c.log_every, column="x")
        shard = Shard(str(sample), row_groups(str(sample)), "x", torch.device("cpu"), 1e12,
                      torch.Generator().manual_seed(c.seed))
        result = fit(model, shard, job)
    model.eval()
    with torch.no_grad():
        cells = model.predict(torch.as_tensor(x))[0].numpy()
    used = int(np.unique(cells).size)
    _LOG.info(f"train-desom2: {used} of {map_shape[0] * map_shape[1]} cells used by {len(x)} exposures "
        f"({len(x) / used:.1f} per used cell)")
    example = np.where(np.isnan(x_raw[:2]), 0.0, x_raw[:2]).astype(np.float32)
    nights = sorted(table["night"].unique())
    name = (f"desom2 {map_shape[0]}x{map_shape[1]} on desom1 v{version} {len(x)} exposures "
            f"nights {registry.night_span(nights)}")
    with registry.run(lake, cfg.mlflow, name) as active:
        # each parameter once: the settings as this run used them, then what only the run knows
        keys = "\n".join(table["night"] + "/" + table["exposure_id"])
        registry.log_training_inputs(
            "desom2", replace(c, iterations=job.iterations),
            {"map_rows": map_shape[0], "map_cols": map_shape[1], "t_max_used": job.t_max,
             "n_exposures": len(x), "desom1_version": version},
            registry.TrainingData(f"desom2 training histo-vectors of desom1 v{version}", lake.path("histovectors"),
                                  nights, len(x), hashlib.sha256(keys.encode()).hexdigest()))
        registry.log_training_outcome(result["history"], metrics={"cells_used": used},
                                      dicts={"training_exposures.json": {"exposures": list(table["exposure_id"])}})
        new_version = registry.register_model(
            mapper, "desom2", input_example=example,
            metadata=model.spec.to_dict() | {"clip_sigma": c.clip_sigma, "n_bins": n_bins,
                                             "qa_inputs": list(c.qa_inputs), "qa_weight": c.qa_weight,
                                             "node_smoothing": c.node_smoothing},
            tags={"desom1_version": version, "run_id": active.info.run_id},
            description=f"DESOM-2 {map_shape[0]}x{map_shape[1]} on desom1 v{version}: {len(x)} exposures of nights "
                        f"{registry.night_span(nights)}, input {c.transform}"
                        f"{' + ' + ', '.join(c.qa_inputs) if c.qa_inputs else ''}"
                        f"{f', smoothed over {c.node_smoothing:g} DESOM-1 nodes' if c.node_smoothing > 0 else ''}",
            extra={"bin_center": mapper.bin_center.numpy(), "bin_scale": mapper.bin_scale.numpy(),
                   "qa_center": mapper.qa_center.numpy(), "qa_scale": mapper.qa_scale.numpy(),
                   "prototypes": model.som.prototypes.detach().numpy()})
    _LOG.info(f"train-desom2: registered desom2 version {new_version} (alias {registry.CHALLENGER}) on desom1 v{version}")
    return {"version": new_version, "desom1_version": version, "map_shape": map_shape, "cells_used": used,
            "history": result["history"], "run_id": active.info.run_id, "mapper": mapper}
