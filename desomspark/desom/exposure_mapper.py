"""DESOM-2: histo-vector (+ quality numbers) -> one cell of the exposure map: the model side.

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
    the :data:`qa.LOG_SCALED` ones (a trail's length) on log(1 + value), then
    each robustly standardised (median, IQR), clipped to +-10, a missing value
    (no PSF star measured) set to the median, and scaled so that the block
    carries ``qa_weight`` times the histogram block's variance.

The distance it returns is the *novelty*: the latent distance to the cell's
prototype over the cell's own scale, the :data:`NOVELTY_QUANTILE` of the
distances of the training exposures it holds (of all of them, for a cell that
holds fewer than :data:`NOVELTY_MIN_MEMBERS`).  Cells differ in spread: a
cell of alike exposures is tight, so an exposure that is ordinary elsewhere
stands out there, and 1 means "as far as the cell's own far members".

The DESOM-1 version whose histo-vectors it was trained on is in the model's
metadata; a histo-vector made by another DESOM-1 is refused.  Training runs in
one process (tens of thousands of vectors) with :func:`desomspark.desom.train.fit`;
the job that reads the lake and records the run is :mod:`desomspark.stages.train_desom2`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from desomspark.config import Desom2Config
from desomspark.desom.model import DESOM, DesomInference, desom2, map_side_for
from desomspark.errors import UserError
from desomspark.ingest.qa import LOG_SCALED, compared, robust_scale

TRANSFORMS = ("original", "hellinger")
NOVELTY_QUANTILE = 0.9  # a cell's scale: this quantile of its training exposures' latent distances
NOVELTY_MIN_MEMBERS = 3  # fewer training exposures than this: the map's scale stands in


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
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
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

    def __init__(
        self,
        desom: DESOM,
        transform: str,
        bin_center: torch.Tensor,
        bin_scale: torch.Tensor,
        clip_sigma: float,
        qa_center: torch.Tensor | None = None,
        qa_scale: torch.Tensor | None = None,
        node_taps: torch.Tensor | None = None,
        node_grid: tuple[int, int] | None = None,
        qa_log: torch.Tensor | None = None,
    ):
        super().__init__()
        if transform not in TRANSFORMS:
            raise UserError(f"desom2.transform must be one of {', '.join(TRANSFORMS)}, not {transform!r}")
        self.inference = DesomInference(desom)
        self.transform = transform
        self.n_bins = int(bin_center.numel())
        node_taps = torch.zeros(0) if node_taps is None else node_taps
        if node_taps.numel() and (node_grid is None or node_grid[0] * node_grid[1] != self.n_bins):
            raise UserError(
                f"node smoothing needs DESOM-1's grid: {node_grid} does not hold {self.n_bins} nodes"
            )
        self.register_buffer("node_taps", node_taps.float())
        self.node_grid = tuple(node_grid) if node_grid else None
        self.register_buffer("bin_center", bin_center.float())
        self.register_buffer(
            "bin_scale", torch.where(bin_scale > 0, bin_scale, torch.ones_like(bin_scale)).float()
        )
        self.clip_sigma = float(clip_sigma)
        qa_center = torch.zeros(0) if qa_center is None else qa_center
        qa_scale = torch.ones(0) if qa_scale is None else qa_scale
        self.register_buffer("qa_center", qa_center.float())
        self.register_buffer("qa_scale", qa_scale.float())
        # which quality inputs are compared on log(1 + value) (qa.LOG_SCALED)
        qa_log = torch.zeros(qa_center.numel(), dtype=torch.bool) if qa_log is None else qa_log
        self.register_buffer("qa_log", qa_log.bool())
        # each cell's novelty scale (fit_cell_scale); 1: the plain latent distance
        self.register_buffer("cell_scale", torch.ones(desom.som.n_nodes))

    @property
    def n_inputs(self) -> int:
        return self.n_bins + int(self.qa_center.numel())

    def histogram_block(self, counts: torch.Tensor) -> torch.Tensor:
        if self.node_taps.numel():
            counts = smooth_on_grid(counts, self.node_taps, self.node_grid)
        v = (
            hellinger(counts)
            if self.transform == "hellinger"
            else clean_and_standardise(counts, self.clip_sigma)
        )
        return (v - self.bin_center) / self.bin_scale

    def qa_block(self, qa: torch.Tensor) -> torch.Tensor:
        # qa_scale already holds the block weight; a missing number sits at the median
        qa = torch.where(self.qa_log, torch.log1p(qa.clamp_min(0.0)), qa)  # as qa.compared
        z = ((qa - self.qa_center) / self.qa_scale).clamp(-10.0, 10.0)  # as qa.standardise
        return torch.where(torch.isnan(z), torch.zeros_like(z), z)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [self.histogram_block(x[:, : self.n_bins])]
        if self.qa_center.numel():
            blocks.append(self.qa_block(x[:, self.n_bins :]))
        return torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]

    def forward(self, x: torch.Tensor):
        out = self.inference(self.normalise(x))
        node = out[:, 0].round().long()
        novelty = out[:, 1] / self.cell_scale[node]
        return torch.cat([out[:, :1], novelty[:, None], out[:, 2:]], dim=1)

    @torch.no_grad()
    def fit_cell_scale(self, node: torch.Tensor, distance: torch.Tensor) -> None:
        """Each cell's novelty scale from the training exposures' cells and latent distances."""
        overall = torch.quantile(distance, NOVELTY_QUANTILE).clamp_min(1e-12)
        scale = torch.full_like(self.cell_scale, float(overall))
        for cell in torch.unique(node):
            members = distance[node == cell]
            if members.numel() >= NOVELTY_MIN_MEMBERS:
                scale[cell] = torch.quantile(members, NOVELTY_QUANTILE).clamp_min(1e-12)
        self.cell_scale.copy_(scale)


def fit_normalisation(
    counts: torch.Tensor,
    qa: torch.Tensor | None,
    transform: str,
    clip_sigma: float,
    qa_weight: float,
    qa_inputs: tuple[str, ...] = (),
    qa_input_weights: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """The mapper's buffers fitted on a training set (see the module docstring); ``qa_inputs`` names
    each column of ``qa``, ``qa_input_weights`` multiplies the named ones' standardised values."""
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
        if len(qa_inputs) != qa.shape[1]:
            raise ValueError(f"{qa.shape[1]} quality columns but {len(qa_inputs)} names: {qa_inputs}")
        x_hist = (v - out["bin_center"]) / out["bin_scale"]
        block_variance = float(x_hist.var(dim=0, unbiased=False).sum())
        median, spread = robust_scale(compared(qa.double().numpy(), qa_inputs))
        # unit-variance features, then the block weighted to qa_weight x the histogram block
        factor = np.sqrt(qa_weight * block_variance / qa.shape[1]) if qa_weight > 0 else 0.0
        # then each named number's value multiplied by its weight: its scale divided by it
        weight_of = qa_input_weights or {}
        factor = factor * np.array([float(weight_of.get(name, 1.0)) for name in qa_inputs])
        out["qa_center"] = torch.as_tensor(median, dtype=torch.float32)
        out["qa_scale"] = torch.as_tensor(
            np.divide(spread, factor, out=np.full_like(spread, np.inf), where=factor > 0), dtype=torch.float32
        )
        out["qa_log"] = torch.tensor([name in LOG_SCALED for name in qa_inputs], dtype=torch.bool)
    return out


def desom2_map_shape(c: Desom2Config, n_exposures: int) -> tuple[int, int]:
    """The map: ``c.map_shape`` (20x20) for survey-size sets, smaller where that would leave
    fewer than ``c.exposures_per_cell`` exposures per cell (a map of singletons sorts nothing).
    """
    side = map_side_for(n_exposures, c.exposures_per_cell)
    if not c.map_shape:
        return side, side
    rows, cols = (int(v) for v in c.map_shape)
    return (min(rows, side), min(cols, side)) if side * side < rows * cols else (rows, cols)


def build_mapper(
    counts: np.ndarray,
    qa: np.ndarray | None,
    c: Desom2Config,
    map_shape: tuple[int, int],
    desom1_version: str | None = None,
    node_grid: tuple[int, int] | None = None,
) -> ExposureMapper:
    """A fresh DESOM-2 inside its mapper, the normalisation fitted on ``counts`` (and ``qa``).

    ``node_grid`` is DESOM-1's (rows, columns), needed when ``c.node_smoothing`` > 0.
    """
    raw = torch.as_tensor(counts, dtype=torch.float32)
    taps = gaussian_taps(c.node_smoothing)
    if taps.numel():
        if node_grid is None or node_grid[0] * node_grid[1] != raw.shape[1]:
            raise UserError(
                f"desom2.node_smoothing needs DESOM-1's grid: {node_grid} does not hold {raw.shape[1]} nodes"
            )
        raw = smooth_on_grid(raw, taps, node_grid)
    stats = fit_normalisation(
        raw,
        None if qa is None else torch.as_tensor(qa, dtype=torch.float32),
        c.transform,
        c.clip_sigma,
        c.qa_weight,
        tuple(c.qa_inputs) if qa is not None else (),
        dict(c.qa_input_weights),
    )
    torch.manual_seed(c.seed)
    n_inputs = counts.shape[1] + (0 if qa is None else qa.shape[1])
    return ExposureMapper(
        desom2(c, n_inputs, map_shape, desom1_version),
        c.transform,
        clip_sigma=c.clip_sigma,
        node_taps=taps,
        node_grid=node_grid,
        **stats,
    )
