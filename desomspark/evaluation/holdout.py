"""Out-of-sample quality: a map trained on one night, labelled from it, sorting nights it never saw.

An operator trains DESOM-2 once, an expert labels its cells, and later nights
are sorted by those labels.  :func:`holdout_scores` measures exactly that on
simulated nights with a true class per exposure:

* the **map**: each cell is labelled with the majority true class of the
  training nights' exposures in it; an exposure of a test night takes its
  cell's label, or the majority label of the nearest ring of labelled cells
  (:func:`metrics.cell_label_predictions`);
* beside it the **classical 5-NN**: the QA numbers of :data:`qa.QA_FEATURES`,
  standardised with the training nights' median and spread, each test
  exposure given the majority class of its 5 nearest training exposures;
* **novelty** for classes the training nights did not hold: the ROC AUC of the
  assignment distance (latent distance to the cell's prototype) of that
  class against the classes seen, and the share of it the novelty alert rule
  flags: distance above ``watch.novelty_margin`` times the
  ``watch.novelty_quantile`` of the training nights' distances (and the share
  the verdicts send to review, at ``decide.novelty_margin``);
* beside the map's novelty, the simple alternative (:func:`input_novelty`):
  each test exposure's distance to its nearest training exposure in DESOM-2's
  own normalised input, which depends on no draw of the map;
* the **verdicts** an operator gets (:func:`verdict_scores`): with every cell
  labelled by an expert from the training night (:func:`majority_labels`), how
  many bad exposures of the test nights are accepted and how many Good ones
  are not.

Scoring over lake tables; the bench that makes the nights is
``bench/holdout.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from desomspark.config import Config
from desomspark.decide.labels import KEY
from desomspark.desom import metrics
from desomspark.evaluation.evaluate import GOOD, KNN, PAPER_CLASSES, cell_positions, per_class_recall
from desomspark.ingest.qa import QA_FEATURES, compared_z
from desomspark.lake.layout import Lake

_LOG = logging.getLogger(__name__)

MAP = "map, cells labelled on the training night"
QA_KNN = f"classical {KNN}-NN on QA numbers, fitted on the training night"


def assigned_truth(lake: Lake, nights: list[str], columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Each assigned exposure of ``nights``: its cell, novelty distance and true class (and ``columns``
    of ``exposures``)."""
    exposures = lake.read("exposures", nights=nights, columns=[*KEY, "truth_label", *columns]).to_pandas()
    cells = lake.read(
        "assignments",
        nights=nights,
        columns=[*KEY, "desom2_version", "cell", "cell_x", "cell_y", "distance"],
    ).to_pandas()
    return cells.merge(exposures, on=KEY)


def novelty(train: pd.DataFrame, test: pd.DataFrame, cfg: Config) -> dict[str, dict]:
    """Per test class absent from ``train``: the novelty distance's ROC AUC against the classes
    present, and the share above the novelty rule's cut (``hit_rate``; ``false_alarms`` among the
    classes present)."""
    from sklearn.metrics import roc_auc_score

    from desomspark.stages.verdicts import novelty_cutoff

    seen = set(train["truth_label"])
    cut = novelty_cutoff(train["distance"], cfg, cfg.watch.novelty_margin)
    review_cut = novelty_cutoff(train["distance"], cfg, cfg.decide.novelty_margin)
    known = test[test["truth_label"].isin(seen)]
    out = {}
    for name in sorted(set(test["truth_label"]) - seen):
        new = test[test["truth_label"] == name]
        y = np.r_[np.ones(len(new)), np.zeros(len(known))]
        out[name] = {
            "exposures": len(new),
            "auc": float(roc_auc_score(y, np.r_[new["distance"], known["distance"]])),
            "hit_rate": float((new["distance"] > cut).mean()),
            "false_alarms": float((known["distance"] > cut).mean()),
            "cutoff": cut,
            "review_rate": float((new["distance"] > review_cut).mean()),
            "review_false_alarms": float((known["distance"] > review_cut).mean()),
        }
    return out


def input_novelty(lake: Lake, cfg: Config, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, dict]:
    """The simple alternative to the map's novelty, per test class absent from ``train``: each test
    exposure's distance to its nearest training exposure in DESOM-2's own input (histo-vector and
    quality numbers, normalised on ``train`` as a DESOM-2 trained on it would be), in units of the
    ``watch.novelty_quantile`` of the training exposures' own distances to their nearest other one.

    Returns ``auc`` (that distance against the classes present) and ``hit_rate`` / ``false_alarms``
    beyond ``watch.novelty_margin`` of those units.  ``train`` and ``test`` as :func:`assigned_truth`.
    """
    import torch
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import NearestNeighbors

    from desomspark.desom.exposure_mapper import build_mapper
    from desomspark.stages.train_desom2 import training_inputs

    data = training_inputs(lake, cfg.desom2)  # the champion DESOM-1's histo-vectors
    rows = data.table[KEY].reset_index().merge(train[KEY], on=KEY)["index"].to_numpy()
    queried = test.merge(data.table[KEY].reset_index(), on=KEY)
    counts, qa = data.x_raw[:, : data.n_bins], data.x_raw[:, data.n_bins :]
    mapper = build_mapper(
        counts[rows], qa[rows] if qa.shape[1] else None, cfg.desom2, (2, 2), node_grid=data.desom1_grid
    )  # its normalisation only: the map itself is unused
    with torch.no_grad():
        z = mapper.normalise(torch.as_tensor(data.x_raw, dtype=torch.float32)).numpy()
    nearest = NearestNeighbors(n_neighbors=2).fit(z[rows])
    own = nearest.kneighbors(z[rows])[0][:, 1]  # the first neighbour of a training exposure is itself
    unit = max(float(np.quantile(own, cfg.watch.novelty_quantile)), 1e-12)
    distance = nearest.kneighbors(z[queried["index"].to_numpy()], n_neighbors=1)[0][:, 0] / unit
    labels = queried["truth_label"].to_numpy(str)
    known = np.isin(labels, list(set(train["truth_label"])))
    out = {}
    for name in sorted(set(labels[~known])):
        new = labels == name
        y = np.r_[np.ones(new.sum()), np.zeros(known.sum())]
        out[name] = {
            "auc": float(roc_auc_score(y, np.r_[distance[new], distance[known]])),
            "hit_rate": float((distance[new] > cfg.watch.novelty_margin).mean()),
            "false_alarms": float((distance[known] > cfg.watch.novelty_margin).mean()),
        }
    return out


def true_classes(lake: Lake) -> pd.DataFrame:
    """``night``, ``exposure_id`` and ``truth_label`` (the simulated class) of every exposure."""
    return lake.read("exposures", columns=[*KEY, "truth_label"]).to_pandas()


def majority_labels(lake: Lake, desom2, nights: list[str] | None = None) -> dict[tuple[int, int], str]:
    """Each occupied cell of the map ``desom2`` (a :class:`RegisteredModel`) and the majority true
    class of its exposures of ``nights`` (default: every night): the label an expert who looked at
    those members would give it."""
    from desomspark.stages.verdicts import resolved_members

    members = resolved_members(lake, desom2)
    if nights is not None:
        members = members[members["night"].isin(nights)]
    members = members.merge(true_classes(lake), on=KEY)
    return {
        (int(x), int(y)): cell["truth_label"].value_counts().index[0]
        for (x, y), cell in members.groupby(["cell_x", "cell_y"])
    }


def label_cells_with(lake: Lake, desom2, labels: dict[tuple[int, int], str]) -> None:
    """Record ``labels`` (cell -> label, e.g. :func:`majority_labels`) on the map ``desom2``, as an
    expert labelling from the console would: one label file per label given."""
    from desomspark.serve.explore import label_cells

    for label in sorted(set(labels.values())):
        cells = [cell for cell, given in labels.items() if given == label]
        label_cells(lake, desom2.version, cells, label, desom2.map_shape)


def verdict_scores(verdicts: pd.DataFrame, lake: Lake) -> dict:
    """How ``verdicts`` rows (``decide_nights``) fare against the simulated truth: ``accuracy`` of
    decision != accept against bad (not Good), the expected ``calibration_error`` of ``p_bad``, how
    many went to ``review``, and the operator's two costly errors: ``bad_accepted`` (of ``bad``)
    and ``good_held`` (Good exposures not accepted, of ``good``), with the bad accepted per class."""
    from desomspark.decide.vote import calibration_error

    v = verdicts.merge(true_classes(lake), on=KEY)
    bad = (v["truth_label"] != GOOD).to_numpy()
    accepted = (v["decision"] == "accept").to_numpy()
    return {
        "accuracy": float((~accepted == bad).mean()),
        "calibration_error": calibration_error(v["p_bad"].to_numpy(), bad.astype(float)),
        "review": int((v["decision"] == "review").sum()),
        "exposures": len(v),
        "bad_accepted": int((bad & accepted).sum()),
        "bad": int(bad.sum()),
        "good_held": int((~bad & ~accepted).sum()),
        "good": int((~bad).sum()),
        "bad_accepted_by_class": v.loc[bad & accepted, "truth_label"].value_counts().to_dict(),
    }


def holdout_scores(
    lake: Lake, train_nights: list[str], test_nights: list[str], cfg: Config, unseen: tuple[str, ...] = ()
) -> dict:
    """The map (cells labelled on ``train_nights``) and the classical 5-NN (fitted on them), scored on
    ``test_nights``, with novelty for the test classes training did not hold (and the labels the
    map gives them: ``named_as``).

    ``unseen``: classes of the training nights that DESOM-2 was not trained on; they label no cell
    and fit no neighbour.  Both nights must be assigned by the same DESOM-2 version.  Returns
    ``scores`` (method -> accuracy over all classes, the paper's six, Good/Bad), ``recall``
    (method -> class -> share named right), ``novelty`` (:func:`novelty`) and the exposure counts.
    """
    train = assigned_truth(lake, train_nights, QA_FEATURES).dropna(subset=["truth_label"])
    train = train[~train["truth_label"].isin(unseen)]
    test = assigned_truth(lake, test_nights, QA_FEATURES).dropna(subset=["truth_label"])
    versions = set(train["desom2_version"]) | set(test["desom2_version"])
    if len(versions) != 1:
        raise ValueError(f"the nights are assigned by several DESOM-2 versions: {sorted(versions)}")
    positions = cell_positions(pd.concat([train, test]))
    truth = test["truth_label"].to_numpy(str)
    predicted = {
        MAP: metrics.cell_label_predictions(train["truth_label"], train["cell"], positions, test["cell"]),
        QA_KNN: metrics.knn_predictions(
            train["truth_label"], compared_z(train), KNN, query=compared_z(test, reference=train)
        ),
    }
    found = novelty(train, test, cfg)
    nearest = input_novelty(lake, cfg, train, test) if found else {}
    for name, entry in found.items():
        entry["named_as"] = pd.Series(predicted[MAP][truth == name]).value_counts().to_dict()
        entry["input_1nn"] = nearest[name]
    return {
        "scores": {
            name: metrics.prediction_scores(truth, p, GOOD, PAPER_CLASSES) for name, p in predicted.items()
        },
        "recall": {name: per_class_recall(truth, p) for name, p in predicted.items()},
        "novelty": found,
        "train_exposures": len(train),
        "test_exposures": len(test),
    }


def scores_table(result: dict) -> pd.DataFrame:
    """One row per method: accuracy (all classes, the paper's six, Good/Bad) and each class's recall."""
    rows = []
    for name, scores in result["scores"].items():
        rows.append(
            {
                "method": name,
                "all": scores["neighbour_accuracy"],
                "six": scores["neighbour_accuracy_6"],
                "good_bad": scores["neighbour_good_bad"],
            }
            | result["recall"][name]
        )
    return pd.DataFrame(rows)
