"""``desomspark evaluate``: score the map against ground truth, beside the seed baselines.

On data with a true class per exposure (simulated ``QUALITY``), each cluster
(a DESOM-2 cell, or a baseline's cluster) is labelled by its majority class,
as an expert would after looking at it (paper section 5.1).  Then

* multi-class purity (= accuracy of that labelling) and NMI;
* Good-vs-Bad accuracy, precision and recall, *Good* being the positive class
  (paper: 0.958, 0.929, 0.991 on real data), a cluster being Good when its
  majority class is Good;
* the leave-one-out *neighbour accuracy* (:func:`metrics.neighbour_predictions`):
  each exposure's class predicted from the other members of its cell, or from
  the nearest ring of occupied cells when it is alone -- over every class, over
  the paper's six, and Good/Bad.  Cell purity alone rewards a map with one
  exposure per cell; this does not.

Beside the map: the classical numbers an operator already has
(:data:`qa.QA_FEATURES`, robustly standardised) with 5-NN and with k-means,
5-NN on the histo-vectors (Hellinger: square root of the proportions),
5-NN on DESOM-2's own input (the champion's transform, node smoothing and
QA block, fitted on these exposures: the map against k-NN on the same
features), and the seed's pixel baselines.  k-NN methods make no clusters: they have only
the neighbour scores.

The baselines (:mod:`desomspark.evaluation.baselines`) cluster the same exposures into
as many clusters as DESOM-2 uses cells.  A t-SNE picture of DESOM-1's latent
space, coloured by the class of each cutout's exposure (document 004), is
written beside the tables.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import torch

from desomspark import registry
from desomspark.desom import metrics
from desomspark.desom.exposure_mapper import build_mapper, hellinger
from desomspark.desom.model import split_inference
from desomspark.errors import UserError
from desomspark.evaluation import baselines
from desomspark.ingest.cutout import decode_pixels
from desomspark.ingest.qa import QA_FEATURES, compared_z
from desomspark.lake.layout import Lake
from desomspark.lake.queries import exposure_views, map_members

_LOG = logging.getLogger(__name__)


GOOD = "Good"
#: the six classes of the paper (the simulator adds Streak, which the classical numbers cannot see)
PAPER_CLASSES = ["Good", "BT", "RBT", "B-Seeing", "BadFocus", "BGP"]
COLUMNS = [
    "method",
    "clusters",
    "purity",
    "nmi",
    "accuracy",
    "precision",
    "recall",
    "neighbour_accuracy",
    "neighbour_accuracy_6",
    "neighbour_good_bad",
    "neighbour_good_bad_6",
]
KNN = 5


def majority_scores(truth, clusters, good: str = GOOD) -> dict[str, float]:
    """Purity, NMI and Good-vs-Bad accuracy / precision / recall of a majority-labelled clustering."""
    truth, clusters = np.asarray(truth).astype(str), np.asarray(clusters)
    frame = pd.DataFrame({"truth": truth, "cluster": clusters})
    majority = frame.groupby("cluster")["truth"].agg(lambda s: s.value_counts().index[0])
    predicted = frame["cluster"].map(majority).to_numpy()
    actual_good, said_good = truth == good, predicted == good
    tp = int((actual_good & said_good).sum())
    fp = int((~actual_good & said_good).sum())
    fn = int((actual_good & ~said_good).sum())
    return {
        "clusters": int(len(majority)),
        "purity": metrics.purity(truth, clusters),
        "nmi": metrics.nmi(truth, clusters),
        "accuracy": float((actual_good == said_good).mean()),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
    }


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table (numbers to 3 decimals)."""

    def cell(v):
        if isinstance(v, float) and np.isnan(v):
            return "-"
        if isinstance(v, float) and v.is_integer() and abs(v) > 1:  # a count stored as float
            return str(int(v))
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def tsne_figure(
    lake: Lake, desom1_uri: str, members: pd.DataFrame, path, n: int = 3000, seed: int = 0
) -> str:
    """t-SNE of the DESOM-1 latent vectors of up to ``n`` random cutouts, coloured by their exposure's
    class."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    cutouts = lake.read(
        "cutouts",
        columns=["exposure_id", "pixels"],
        where=ds.field("exposure_id").isin(list(members["exposure_id"])),
    ).to_pandas()
    rng = np.random.default_rng(seed)
    pick = cutouts.iloc[np.sort(rng.choice(len(cutouts), size=min(n, len(cutouts)), replace=False))]
    model = registry.cached_model(desom1_uri, "cpu")
    with torch.no_grad():
        z = split_inference(model(torch.from_numpy(decode_pixels(pick["pixels"])).unsqueeze(1)))[2].numpy()
    xy = TSNE(
        n_components=2, perplexity=min(30.0, max(2.0, len(z) / 4)), random_state=seed, init="pca"
    ).fit_transform(z)
    cls = pick["exposure_id"].map(members.set_index("exposure_id")["truth_label"]).to_numpy()
    fig, ax = plt.subplots(figsize=(7, 6), dpi=90)
    for k, name in enumerate(sorted(set(cls))):
        sel = cls == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=3, color=plt.get_cmap("tab10")(k), label=f"{name} ({sel.sum()})")
    ax.legend(markerscale=4, fontsize=8)
    ax.set_title("DESOM-1 latent space (t-SNE), cutouts coloured by exposure class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def evaluate(
    lake: Lake,
    cfg,
    out: str | Path | None = None,
    baseline_cfg: baselines.BaselineConfig = baselines.BaselineConfig(),
    max_exposures: int = 3000,
) -> pd.DataFrame:
    """Score the champion DESOM-2's cells and the baselines; writes ``evaluation.{csv,md}`` and ``tsne.png``.

    Every method is scored on the same exposures: all those with a true class,
    or a random ``max_exposures`` of them (the baselines hold one image per
    exposure in memory, and affinity propagation needs n^2 similarities).
    """
    if out is None and not lake.is_local:
        raise UserError(
            f"the lake {lake.root} is not a local folder: give --out, a local folder for the tables"
        )
    desom1 = registry.registered(lake, cfg, "desom1")
    desom2 = registry.registered(lake, cfg, "desom2")
    d1_uri, d1_version, d2_version = desom1.uri, desom1.version, desom2.version
    # the champion's input settings (a model from before node smoothing has none)
    desom2_cfg = replace(
        cfg.desom2,
        transform=desom2.transform or cfg.desom2.transform,
        qa_inputs=desom2.qa_inputs,
        qa_weight=cfg.desom2.qa_weight if desom2.qa_weight is None else desom2.qa_weight,
        node_smoothing=desom2.node_smoothing,
    )
    desom1_grid = desom1.map_shape
    members = _scored_members(lake, d2_version, max_exposures, baseline_cfg.seed)
    truth = members["truth_label"].to_numpy()
    k = int(members["cell"].nunique())
    _LOG.info(
        f"evaluate: {len(members)} exposures with a true class, {k} DESOM-2 cells used "
        f"(desom2 v{d2_version} on desom1 v{d1_version})"
    )
    methods = score_methods(lake, members, d1_version, k, baseline_cfg, desom2_cfg, desom1_grid)
    table = pd.DataFrame([m["row"] for m in methods.values()], columns=COLUMNS)
    per_class = pd.DataFrame(
        {
            name: per_class_recall(truth, m["predicted"])
            for name, m in methods.items()
            if name in (MAP, QA_KNN, HISTO_KNN, INPUT_KNN)
        }
    ).T
    out = Path(out) if out is not None else Path(lake.path("evaluation"))
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "evaluation.csv", index=False)
    confusions = {name: metrics.confusion(truth, methods[name]["predicted"]) for name in (MAP, QA_KNN)}
    for name, frame in confusions.items():
        frame.to_csv(out / f"confusion_{CONFUSION_FILES[name]}.csv")
    header = f"Evaluation of desom2 v{d2_version} (desom1 v{d1_version}) on {len(members)} exposures"
    (out / "evaluation.md").write_text(_evaluation_markdown(header, table, per_class, confusions))
    tsne_figure(lake, d1_uri, members, out / "tsne.png")
    _LOG.info(markdown(table))
    _LOG.info("neighbour accuracy per true class:\n" + markdown(per_class.reset_index(names="method")))
    _LOG.info(
        f"evaluate: wrote {out / 'evaluation.csv'}, {out / 'evaluation.md'} (with confusion matrices) "
        f"and {out / 'tsne.png'}"
    )
    return table


def _scored_members(lake: Lake, d2_version: str, max_exposures: int, seed: int) -> pd.DataFrame:
    """The exposures the champion assigned that have a true class (a random ``max_exposures`` of them)."""
    members = map_members(lake, d2_version)
    if members.empty:
        raise UserError(f"no exposure of {lake.root} is assigned by desom2 v{d2_version}: run assign first")
    members = members[members["truth_label"].notna()].reset_index(drop=True)
    if len(members) > max_exposures:
        _LOG.info(f"evaluate: scoring a random {max_exposures} of {len(members)} exposures")
        members = members.sample(n=max_exposures, random_state=seed).reset_index(drop=True)
    if members.empty:
        raise UserError(
            f"no exposure assigned by desom2 v{d2_version} has a true class (QUALITY header): "
            "evaluate needs ground truth, e.g. a simulated night"
        )
    return members


def _evaluation_markdown(header: str, table: pd.DataFrame, per_class: pd.DataFrame, confusions: dict) -> str:
    return (
        f"{header}; clusters labelled by majority class; Good is the positive class; neighbour accuracy is "
        f"leave-one-out (cell-mates, else the nearest ring of occupied cells; k-NN: the {KNN} nearest "
        f"others).\n\n"
        + markdown(table)
        + "\nNeighbour accuracy per true class (recall):\n\n"
        + markdown(per_class.reset_index(names="method"))
        + "".join(
            f"\nConfusion, {name} (rows: true class, columns: predicted from neighbours):\n\n"
            + markdown(frame.reset_index())
            for name, frame in confusions.items()
        )
    )


MAP = "DESOM-1 + DESOM-2 (cells)"
QA_KNN = f"{KNN}-NN on QA numbers (classical)"
QA_KMEANS = "k-means on QA numbers"
HISTO_KNN = f"{KNN}-NN on histo-vectors (Hellinger)"
INPUT_KNN = f"{KNN}-NN on DESOM-2's input"
CONFUSION_FILES = {MAP: "desom2", QA_KNN: "qa_knn"}


def cell_positions(members: pd.DataFrame) -> dict:
    """Map cell -> its (row, column), from assignment rows."""
    cells = members[["cell", "cell_y", "cell_x"]].drop_duplicates()
    return {c: (y, x) for c, y, x in cells.itertuples(index=False)}


def per_class_recall(truth, predicted) -> dict[str, float]:
    """Share of each true class whose neighbours name it."""
    truth, predicted = np.asarray(truth).astype(str), np.asarray(predicted).astype(str)
    return {c: float((predicted[truth == c] == c).mean()) for c in sorted(set(truth))}


def _clustering(truth, clusters, positions, metric) -> dict:
    predicted = metrics.neighbour_predictions(truth, clusters, positions, metric)
    row = majority_scores(truth, clusters) | metrics.prediction_scores(truth, predicted, GOOD, PAPER_CLASSES)
    return {"row": row, "predicted": predicted}


def _centroids(features: np.ndarray, clusters: np.ndarray) -> dict:
    return {c: features[clusters == c].mean(axis=0) for c in np.unique(clusters)}


def desom2_input(counts: np.ndarray, qa: pd.DataFrame, c, desom1_grid: tuple[int, int]) -> np.ndarray:
    """DESOM-2's input for these exposures under the settings ``c`` (normalisation fitted on them)."""
    qa_block = qa[list(c.qa_inputs)].to_numpy(dtype=float) if c.qa_inputs else None
    mapper = build_mapper(counts, qa_block, c, (2, 2), node_grid=desom1_grid)  # the map itself is unused
    raw = counts if qa_block is None else np.hstack([counts, qa_block])
    with torch.no_grad():
        return mapper.normalise(torch.as_tensor(raw, dtype=torch.float32)).numpy()


def score_methods(
    lake: Lake,
    members: pd.DataFrame,
    desom1_version: str,
    k: int,
    baseline_cfg: baselines.BaselineConfig,
    desom2_cfg,
    desom1_grid: tuple[int, int],
) -> dict[str, dict]:
    """Every method's scores (``row``) and leave-one-out predictions, on the exposures of ``members``.

    ``desom2_cfg`` holds the champion DESOM-2's input settings, ``desom1_grid`` DESOM-1's (rows, columns).
    """
    truth = members["truth_label"].to_numpy()
    ids = list(members["exposure_id"])
    cells = members["cell"].to_numpy()
    out = {MAP: _clustering(truth, cells, cell_positions(members), "chebyshev")}

    qa = lake.read(
        "exposures", columns=["night", "exposure_id", *QA_FEATURES], where=ds.field("exposure_id").isin(ids)
    ).to_pandas()
    qa = members[["night", "exposure_id"]].merge(qa, on=["night", "exposure_id"], how="left")
    z = compared_z(qa)
    predicted = metrics.knn_predictions(truth, z, KNN)
    out[QA_KNN] = {
        "row": {"clusters": None} | metrics.prediction_scores(truth, predicted, GOOD, PAPER_CLASSES),
        "predicted": predicted,
    }
    clusters = baselines.kmeans(z, k, baseline_cfg.seed)
    out[QA_KMEANS] = _clustering(truth, clusters, _centroids(z, clusters), "euclidean")

    vectors = lake.read(
        "histovectors",
        columns=["night", "exposure_id", "desom1_version", "counts"],
        where=ds.field("exposure_id").isin(ids),
    ).to_pandas()
    vectors = vectors[vectors["desom1_version"] == str(desom1_version)]
    vectors = members[["night", "exposure_id"]].merge(vectors, on=["night", "exposure_id"], how="left")

    counts = np.stack(vectors["counts"].to_numpy())
    hell = hellinger(torch.as_tensor(counts)).numpy()
    predicted = metrics.knn_predictions(truth, hell, KNN)
    out[HISTO_KNN] = {
        "row": {"clusters": None} | metrics.prediction_scores(truth, predicted, GOOD, PAPER_CLASSES),
        "predicted": predicted,
    }
    predicted = metrics.knn_predictions(truth, desom2_input(counts, qa, desom2_cfg, desom1_grid), KNN)
    out[INPUT_KNN] = {
        "row": {"clusters": None} | metrics.prediction_scores(truth, predicted, GOOD, PAPER_CLASSES),
        "predicted": predicted,
    }

    views = exposure_views(lake, ids)
    images = np.stack([baselines.exposure_image(views.get(e, {}).get("window")) for e in ids])
    for name, (clusters, features) in baselines.run_baselines(images, k, baseline_cfg).items():
        out[name] = _clustering(truth, clusters, _centroids(features, clusters), "euclidean")
    for name, m in out.items():
        m["row"] = {"method": name} | m["row"]
    return out
