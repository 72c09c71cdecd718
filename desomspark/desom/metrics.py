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


def map_neighbours(clusters, positions: dict, metric: str = "chebyshev") -> list[np.ndarray]:
    """Each sample's neighbours on a map: the other members of its cluster (cell), or, for a sample
    alone in its cluster, the members of the nearest ring of occupied clusters (all those at the
    smallest distance from its own).  A sample alone in all has none.

    Parameters
    ----------
    clusters : array
        Cluster (cell) of each sample.
    positions : dict
        Cluster -> coordinates: (row, column) on a map, or a centroid.
    metric : {"chebyshev", "euclidean"}
        Ring distance: Chebyshev for map cells (the 8 neighbours first), Euclidean for centroids.
    """
    clusters = np.asarray(clusters)
    members: dict = {}
    for i, c in enumerate(clusters):
        members.setdefault(c, []).append(i)
    occupied = list(members)
    coords = np.array([np.asarray(positions[c], dtype=float) for c in occupied])
    neighbours: list[np.ndarray] = [np.zeros(0, int)] * len(clusters)
    for k, c in enumerate(occupied):
        idx = members[c]
        if len(idx) > 1:
            for i in idx:
                neighbours[i] = np.array([j for j in idx if j != i])
            continue
        diff = np.abs(coords - coords[k])
        dist = diff.max(axis=1) if metric == "chebyshev" else np.sqrt((diff**2).sum(axis=1))
        dist[k] = np.inf
        if np.isfinite(dist).any():
            ring = np.flatnonzero(np.isclose(dist, dist.min()))
            neighbours[idx[0]] = np.array([j for r in ring for j in members[occupied[r]]])
    return neighbours


def neighbour_predictions(truth, clusters, positions: dict, metric: str = "chebyshev") -> np.ndarray:
    """Leave-one-out class of each sample from its neighbours on a map (or among clusters).

    Each sample's class is predicted by the majority class of its :func:`map_neighbours`: the
    *other* members of its cluster, or the nearest ring of occupied clusters for a sample alone
    in its own.  This is what an expert's cell label does to a new exposure, and, unlike cell
    purity, it does not reward a map that gives every exposure a cell of its own.  A sample
    alone in all keeps its own class (nothing to compare with).  ``truth``: array of str; the
    other parameters as :func:`map_neighbours`.
    """
    truth = np.asarray(truth).astype(str)
    return np.array(
        [
            _majority(list(truth[nb])) if len(nb) else truth[i]
            for i, nb in enumerate(map_neighbours(clusters, positions, metric))
        ],
        dtype=str,
    )


def neighbour_distance(x: np.ndarray, clusters, positions: dict, pairs: int = 20_000, seed: int = 0) -> float:
    """How far apart, in the input space ``x``, samples and their neighbours on the map are: the mean
    distance of a sample to its :func:`map_neighbours`, over the mean distance between two samples.

    The label-free side of :func:`neighbour_predictions`: a map whose cells (or nearest rings)
    gather samples close in the input space scores low, and such a map lets an expert's cell
    label reach alike exposures.  Used to choose among DESOM-2 draws (README, "One map is one
    draw").  The mean pairwise distance is taken over ``pairs`` random pairs (``seed``).
    """
    x = np.asarray(x, dtype=np.float64)
    near = [
        np.linalg.norm(x[nb] - x[i], axis=1).mean()
        for i, nb in enumerate(map_neighbours(clusters, positions))
        if len(nb)
    ]
    rng = np.random.default_rng(seed)
    i, j = rng.integers(len(x), size=(2, pairs))
    keep = i != j
    scale = np.linalg.norm(x[i[keep]] - x[j[keep]], axis=1).mean()
    return float(np.mean(near) / scale) if near and scale > 0 else float("nan")


def knn_predictions(truth, features: np.ndarray, k: int = 5, query: np.ndarray | None = None) -> np.ndarray:
    """k-nearest-neighbour class (majority of the k nearest): leave-one-out of each sample of
    ``features``, or, with ``query``, of each query row among all of ``features`` (a classifier
    fitted on one night and applied to another)."""
    from sklearn.neighbors import NearestNeighbors

    truth = np.asarray(truth).astype(str)
    loo = query is None
    k = min(k, len(truth) - 1 if loo else len(truth))
    found = NearestNeighbors(n_neighbors=k + loo).fit(features)
    _, neighbours = found.kneighbors(features if loo else query)
    out = []
    for i, row in enumerate(neighbours):
        others = [j for j in row if not (loo and j == i)][:k]
        out.append(_majority([truth[j] for j in others]))
    return np.asarray(out, dtype=str)


def cell_label_predictions(truth, clusters, positions: dict, query_clusters) -> np.ndarray:
    """The class an expert's cell labels give exposures mapped later: out of sample.

    Each cell holding samples (``truth``, ``clusters``: a training night) is labelled with their
    majority class, as an expert labels the map; an exposure of ``query_clusters`` takes its cell's
    label, or, in a cell the training night left empty, the majority label of the training
    samples in the nearest ring of labelled cells.  ``positions`` gives every cell's (row, column),
    the query's included.
    """
    truth = np.asarray(truth).astype(str)
    members: dict = {}
    for label, c in zip(truth, np.asarray(clusters)):
        members.setdefault(c, []).append(label)
    labelled = list(members)
    coords = np.array([np.asarray(positions[c], dtype=float) for c in labelled])
    cell_label = {c: _majority(v) for c, v in members.items()}
    out = []
    for c in np.asarray(query_clusters):
        if c in cell_label:
            out.append(cell_label[c])
            continue
        dist = np.abs(coords - np.asarray(positions[c], dtype=float)).max(axis=1)
        ring = np.flatnonzero(np.isclose(dist, dist.min()))
        out.append(_majority([label for r in ring for label in members[labelled[r]]]))
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
