"""Which unlabelled cell to label next: the one whose label would change the most verdicts.

A cell's score is the sum over its members of how unsure their verdict is -- ``4 p (1 - p)`` of
their ``p_bad``, plus ``1 / (1 + evidence)`` for an exposure the vote decides (a rule's retake
counts nothing) -- times
``1 + disagreement``, where ``disagreement`` (0..1) is how split its labelled neighbour cells are
between good and bad labels.  Full cells of unsure exposures, on a border between good and bad
ground, come first; a cell whose members all carry labels of their own scores about nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def label_next(verdicts: pd.DataFrame, cell_labels: dict[tuple[int, int], str], good_labels) -> pd.DataFrame:
    """Unlabelled occupied cells, best to label first.

    ``verdicts``: one row per exposure with ``cell_x``, ``cell_y``, ``p_bad``, ``evidence``,
    ``basis`` and ``decision``.  Returns ``cell_x, cell_y, members, review, score``.
    """
    v = verdicts
    # a rule's retake stands whatever the labels say: it asks for no label
    unsure = np.where(v["basis"] == "rule", 0.0, 4 * v["p_bad"] * (1 - v["p_bad"])) + np.where(
        v["basis"] == "vote", 1 / (1 + v["evidence"].fillna(0)), 0.0
    )
    scored = v.assign(unsure=unsure, review=(v["decision"] == "review").astype(int))
    cells = (
        scored.groupby(["cell_x", "cell_y"])
        .agg(members=("exposure_id", "size"), review=("review", "sum"), unsure=("unsure", "sum"))
        .reset_index()
    )
    labelled = {key: label in good_labels for key, label in cell_labels.items() if isinstance(label, str)}
    keep = [(int(x), int(y)) not in labelled for x, y in zip(cells["cell_x"], cells["cell_y"])]
    cells = cells[keep].copy()
    cells["disagreement"] = [
        split_around((int(x), int(y)), labelled) for x, y in zip(cells["cell_x"], cells["cell_y"])
    ]
    cells["score"] = cells["unsure"] * (1 + cells["disagreement"])
    ordered = cells.sort_values(["score", "members"], ascending=False, kind="stable")
    return ordered[["cell_x", "cell_y", "members", "review", "score"]].reset_index(drop=True)


def split_around(cell: tuple[int, int], good: dict[tuple[int, int], bool]) -> float:
    """2 x the minority share of good/bad among the labelled cells next to ``cell`` (0: none or all alike)."""
    x, y = cell
    around = [
        good[(x + dx, y + dy)]
        for dx in (-1, 0, 1)
        for dy in (-1, 0, 1)
        if (dx or dy) and (x + dx, y + dy) in good
    ]
    if not around:
        return 0.0
    share = sum(around) / len(around)
    return 2 * min(share, 1 - share)
