"""How good is a map: reconstruction, quantization and topographic errors, purity, NMI."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from desomspark.desom.model import DESOM


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
        xb = x[start : start + batch_size]
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


def neighbour_vs_random_distance(
    prototypes: np.ndarray, map_shape: tuple[int, int], seed: int = 0
) -> tuple[float, float]:
    """Mean prototype distance between map neighbours, and between random node pairs (topology check)."""
    rows, cols = map_shape
    p = np.asarray(prototypes).reshape(rows, cols, -1)
    neighbours = np.concatenate(
        [
            np.linalg.norm(p[1:] - p[:-1], axis=-1).ravel(),
            np.linalg.norm(p[:, 1:] - p[:, :-1], axis=-1).ravel(),
        ]
    )
    rng = np.random.default_rng(seed)
    flat = p.reshape(rows * cols, -1)
    i, j = rng.integers(len(flat), size=(2, 2000))
    keep = i != j
    return float(neighbours.mean()), float(np.linalg.norm(flat[i[keep]] - flat[j[keep]], axis=-1).mean())


def _majority(labels: list[str]) -> str:
    """Most common label; ties go to the alphabetically first (deterministic)."""
    values, counts = np.unique(np.asarray(labels, dtype=str), return_counts=True)
    return str(values[np.argmax(counts)])


def neighbour_predictions(truth, clusters, positions: dict, metric: str = "chebyshev") -> np.ndarray:
    """Leave-one-out class of each sample from its neighbours on a map (or among clusters).

    Each sample's class is predicted by the majority class of the *other*
    members of its cluster; a sample alone in its cluster takes the majority
    of the nearest ring of occupied clusters (all those at the smallest
    distance from its own).  This is what an expert's cell label does to a new
    exposure, and, unlike cell purity, it does not reward a map that gives
    every exposure a cell of its own.

    Parameters
    ----------
    truth : array of str
    clusters : array
        Cluster (cell) of each sample.
    positions : dict
        Cluster -> coordinates: (row, column) on a map, or a centroid.
    metric : {"chebyshev", "euclidean"}
        Ring distance: Chebyshev for map cells (the 8 neighbours first), Euclidean for centroids.
    """
    truth, clusters = np.asarray(truth).astype(str), np.asarray(clusters)
    members: dict = {}
    for i, c in enumerate(clusters):
        members.setdefault(c, []).append(i)
    occupied = list(members)
    coords = np.array([np.asarray(positions[c], dtype=float) for c in occupied])
    predicted = np.empty(len(truth), dtype=object)
    for k, c in enumerate(occupied):
        idx = members[c]
        if len(idx) > 1:
            for i in idx:
                predicted[i] = _majority([truth[j] for j in idx if j != i])
            continue
        diff = np.abs(coords - coords[k])
        dist = diff.max(axis=1) if metric == "chebyshev" else np.sqrt((diff**2).sum(axis=1))
        dist[k] = np.inf
        if not np.isfinite(dist).any():
            predicted[idx[0]] = truth[idx[0]]  # a single sample in all: nothing to compare with
            continue
        ring = np.flatnonzero(np.isclose(dist, dist.min()))
        predicted[idx[0]] = _majority([truth[j] for r in ring for j in members[occupied[r]]])
    return predicted.astype(str)


def knn_predictions(truth, features: np.ndarray, k: int = 5) -> np.ndarray:
    """Leave-one-out k-nearest-neighbour class of each sample (majority of its k nearest others)."""
    from sklearn.neighbors import NearestNeighbors

    truth = np.asarray(truth).astype(str)
    k = min(k, len(truth) - 1)
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
    out = []
    for i, row in enumerate(neighbours):
        others = [j for j in row if j != i][:k]
        out.append(_majority([truth[j] for j in others]))
    return np.asarray(out, dtype=str)


def prediction_scores(
    truth, predicted, good: str = "Good", classes: list[str] | None = None
) -> dict[str, float]:
    """Accuracy over all classes and Good/Bad; the same over the samples whose truth is one of ``classes``
    (``_6``: the paper's six, without a class added since).
    """
    truth, predicted = np.asarray(truth).astype(str), np.asarray(predicted).astype(str)
    out = {
        "neighbour_accuracy": float((truth == predicted).mean()),
        "neighbour_good_bad": float(((truth == good) == (predicted == good)).mean()),
    }
    if classes is not None:
        sel = np.isin(truth, classes)
        out["neighbour_accuracy_6"] = (
            float((truth[sel] == predicted[sel]).mean()) if sel.any() else float("nan")
        )
        out["neighbour_good_bad_6"] = (
            float(((truth[sel] == good) == (predicted[sel] == good)).mean()) if sel.any() else float("nan")
        )
    return out


def confusion(truth, predicted):
    """Counts of (true class, predicted class)."""
    import pandas as pd

    return pd.crosstab(
        pd.Series(np.asarray(truth).astype(str), name="true"),
        pd.Series(np.asarray(predicted).astype(str), name="predicted"),
    )
