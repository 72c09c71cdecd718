"""How good is a map: reconstruction, quantization and topographic errors, purity, NMI."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from .model import DESOM


@torch.no_grad()
def map_quality(model: DESOM, x: torch.Tensor, batch_size: int = 1024) -> dict[str, float]:
    """Reconstruction MSE, quantization error and topographic error on ``x``.

    * quantization error: mean Euclidean latent distance to the best-matching prototype;
    * topographic error: fraction of samples whose two best nodes are not
      neighbours on the map (Manhattan distance > 1).
    """
    was_training = model.training
    model.eval()
    mse = qe = te = 0.0
    n = 0
    grid = model.som.grid_distance
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        z, rec, d = model(xb)
        mse += float(((rec - xb) ** 2).flatten(1).mean(1).sum())
        best2 = d.topk(2, dim=1, largest=False)
        qe += float(best2.values[:, 0].clamp_min(0).sqrt().sum())
        te += float((grid[best2.indices[:, 0], best2.indices[:, 1]] > 1).sum())
        n += len(xb)
    model.train(was_training)
    return {"reconstruction_mse": mse / n, "quantization_error": qe / n, "topographic_error": te / n}


def purity(labels, clusters) -> float:
    """Fraction of samples whose label is the majority label of their cluster."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    total = 0
    for c in np.unique(clusters):
        _, counts = np.unique(labels[clusters == c], return_counts=True)
        total += counts.max()
    return total / len(labels)


def nmi(labels, clusters) -> float:
    """Normalized mutual information between labels and clusters."""
    return float(normalized_mutual_info_score(labels, clusters))


def neighbour_vs_random_distance(prototypes: np.ndarray, map_shape: tuple[int, int], seed: int = 0) -> tuple[float, float]:
    """Mean prototype distance between map neighbours, and between random node pairs (topology check)."""
    rows, cols = map_shape
    p = np.asarray(prototypes).reshape(rows, cols, -1)
    neighbours = np.concatenate([np.linalg.norm(p[1:] - p[:-1], axis=-1).ravel(),
                                 np.linalg.norm(p[:, 1:] - p[:, :-1], axis=-1).ravel()])
    rng = np.random.default_rng(seed)
    flat = p.reshape(rows * cols, -1)
    i, j = rng.integers(len(flat), size=(2, 2000))
    keep = i != j
    return float(neighbours.mean()), float(np.linalg.norm(flat[i[keep]] - flat[j[keep]], axis=-1).mean())
