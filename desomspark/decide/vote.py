"""``p_bad``: how likely an exposure is not good, from the labelled exposures near it.

A kernel vote in DESOM-2's latent space (the space where the map puts alike exposures together):
each labelled exposure within reach votes with weight ``w = exp(-d^2 / 2h^2)``, and the vote is
shrunk to the prior by ``prior_weight`` pseudo-exposures::

    p_bad = (sum w * bad + prior_weight * prior) / (sum w + prior_weight)

``evidence = sum w`` says how much labelled ground the answer stands on: a novel exposure, or one far
from every labelled cell, gets ``p_bad`` near the prior and little evidence, never a confident
guess.  The width ``h`` is chosen by cross-validation over the labels, leaving out one labelling
act at a time (a cell's members were labelled together, so they are left out together), and the
prior is the labelled exposures' bad share, (n_bad + 1) / (n + 2).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from desomspark.config import DecideConfig


def nearest(
    query: np.ndarray, points: np.ndarray, k: int, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and squared distances of the ``k`` nearest ``points`` of each ``query`` row."""
    k = min(k, len(points))
    pp = np.einsum("ij,ij->i", points, points)
    index = np.empty((len(query), k), dtype=np.int64)
    dist2 = np.empty((len(query), k))
    for start in range(0, len(query), chunk):
        q = query[start : start + chunk]
        d2 = np.maximum(np.einsum("ij,ij->i", q, q)[:, None] + pp[None, :] - 2 * q @ points.T, 0.0)
        part = (
            np.argpartition(d2, k - 1, axis=1)[:, :k]
            if k < len(points)
            else np.tile(np.arange(k), (len(q), 1))
        )
        index[start : start + len(q)] = part
        dist2[start : start + len(q)] = np.take_along_axis(d2, part, axis=1)
    return index, dist2


def typical_spacing(z: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """The median distance from an exposure to its nearest other exposure (the kernel's unit)."""
    if len(z) < 2:
        return 1.0
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(z), size=min(sample, len(z)), replace=False)
    _, d2 = nearest(z[pick], z, 2)
    d = np.sqrt(np.sort(d2, axis=1)[:, 1])
    positive = d[d > 0]
    return float(np.median(positive)) if len(positive) else 1.0


@dataclass
class Vote:
    """The labelled exposures (latent vectors ``z``, ``bad`` 0/1) and the chosen kernel width."""

    z: np.ndarray
    bad: np.ndarray
    bandwidth: float
    prior: float
    settings: DecideConfig
    cv: dict = field(default_factory=dict)  # cross-validated log loss and calibration, per width

    def predict(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(p_bad, evidence)`` for each row of ``query``."""
        return kernel_vote(query, self.z, self.bad, self.bandwidth, self.prior, self.settings)

    @property
    def digest(self) -> str:
        """A short hash of what decides the vote (labels, vectors, width, settings)."""
        h = hashlib.sha256()
        for part in (self.z.astype(np.float32), self.bad.astype(np.int8)):
            h.update(np.ascontiguousarray(part).tobytes())
        h.update(repr((round(self.bandwidth, 9), self.settings)).encode())
        return h.hexdigest()[:16]


def kernel_vote(query, z, bad, bandwidth, prior, settings: DecideConfig):
    """The kernel vote of labelled ``z`` (``bad``) for each ``query`` row: ``(p_bad, evidence)``."""
    if len(z) == 0:
        return np.full(len(query), prior), np.zeros(len(query))
    index, d2 = nearest(query, z, settings.neighbours)
    w = np.exp(-d2 / (2 * bandwidth**2))
    evidence = w.sum(axis=1)
    votes = (w * bad[index]).sum(axis=1)
    return (votes + settings.prior_weight * prior) / (evidence + settings.prior_weight), evidence


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the mean |observed bad share - mean p_bad| over ``bins`` equal-width
    bins of ``p_bad``, weighted by their counts."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    if len(p) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        sel = which == b
        total += sel.sum() * abs(y[sel].mean() - p[sel].mean())
    return float(total / len(p))


def fit_vote(
    z: np.ndarray, bad: np.ndarray, groups: np.ndarray, spacing: float, settings: DecideConfig
) -> Vote:
    """Choose the kernel width by leave-one-group-out log loss (the first width when labels are too few)."""
    bad = np.asarray(bad, dtype=float)
    prior = (bad.sum() + 1) / (len(bad) + 2)
    widths = [b * spacing for b in settings.bandwidths]
    unique = np.unique(groups)
    classes = {g: bad[groups == g].mean() for g in unique}
    if len(unique) < 3 or len({v > 0.5 for v in classes.values()}) < 2:
        # one labelling act, or only one class so far: nothing to cross-validate on
        return Vote(z, bad, widths[min(1, len(widths) - 1)], prior, settings, cv={"folds": len(unique)})
    # leave one group out; beyond 50 groups, ten folds of whole groups (the same answer, cheaper)
    fold = np.searchsorted(unique, groups) % 10 if len(unique) > 50 else np.searchsorted(unique, groups)
    scores = {}
    for width in widths:
        p, evidence = out_of_group(z, bad, fold, width, settings)
        scores[width] = (log_loss(p, bad), calibration_error(p, bad), evidence)
    best = min(scores, key=lambda w: scores[w][0])
    loss, ece, evidence = scores[best]
    # the prior is what the vote falls back on where labels are far: learn it where they were far in
    # the cross-validation (each held-out exposure weighs by how much of its vote was the prior)
    weight = settings.prior_weight / (evidence + settings.prior_weight)
    far_prior = (float((weight * bad).sum()) + 1) / (float(weight.sum()) + 2)
    cv = {"folds": len(unique), "log_loss": loss, "calibration_error": ece, "far_prior": far_prior}
    return Vote(z, bad, best, far_prior, settings, cv=cv)


def out_of_group(z, bad, fold, width, settings: DecideConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each labelled exposure's vote by the labels of the other folds: ``(p_bad, evidence)``."""
    p, evidence = np.empty(len(bad)), np.empty(len(bad))
    for g in np.unique(fold):
        out = fold == g
        rest = bad[~out]
        prior = (rest.sum() + 1) / (len(rest) + 2)
        p[out], evidence[out] = kernel_vote(z[out], z[~out], rest, width, prior, settings)
    return p, evidence
