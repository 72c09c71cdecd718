"""Which label an exposure has, and which label a cell of a new map is offered.

Labels are facts about exposures.  An exposure's label, strongest first:

1. ``exposure``: an expert labelled this exposure itself (the last word in ``exposure_labels/``
   with ``source == "exposure"``; removing it falls back to what follows);
2. ``cell``: the expert label of its cell on the map that assigned it (``labels/``);
3. ``inherited``: the label its cell had on an earlier map, recorded when that map's assignment was
   replaced (the newest such record), so that a retrained map starts with the expert's work.

A cell of the current map with no label of its own is *suggested* the label most of its members
carry by (1) or (3), with the share that agree.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KEY = ["night", "exposure_id"]
OWN_SOURCES = ("exposure", "inherited")


def own_labels(log: pd.DataFrame) -> pd.DataFrame:
    """Per exposure, the label of its own: the expert's exposure label, else the newest inherited one.

    ``log`` is the ``exposure_labels`` table.  Returns ``night, exposure_id, own_label, own_source,
    own_from`` (rows only for exposures whose own label is not removed; ``own_from`` names the map
    and cell an inherited label came from).
    """
    columns = [*KEY, "own_label", "own_source", "own_from"]
    if log.empty:
        return pd.DataFrame(columns=columns)
    log = log.sort_values("labelled_at", kind="stable")
    # the latest entry of each source: an expert's removal (null) ends the expert label only
    latest = log.drop_duplicates([*KEY, "source"], keep="last")
    latest = latest[latest["label"].notna()]
    rank = latest["source"].map({"exposure": 0, "inherited": 1})
    best = latest.assign(rank=rank).sort_values("rank", kind="stable").drop_duplicates(KEY, keep="first")
    best["own_from"] = [
        f"desom2 v{v} cell {int(x)},{int(y)}" if s == "inherited" and pd.notna(x) else None
        for s, v, x, y in zip(best["source"], best["desom2_version"], best["cell_x"], best["cell_y"])
    ]
    return best.rename(columns={"label": "own_label", "source": "own_source"})[columns].reset_index(drop=True)


def resolve(
    members: pd.DataFrame, cell_labels: dict[tuple[int, int], str], own: pd.DataFrame
) -> pd.DataFrame:
    """``members`` (night, exposure_id, cell_x, cell_y) with ``cell_label``, ``own_label``,
    ``own_source``, and the winning ``label`` and ``label_source``."""
    out = members.drop(
        columns=["label", "own_label", "own_source", "own_from", "cell_label"], errors="ignore"
    )
    out = out.merge(own, on=KEY, how="left")
    keys = list(zip(out["cell_x"].astype(int), out["cell_y"].astype(int)))
    out["cell_label"] = [cell_labels.get(k) for k in keys]
    return pick(out)


def pick(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (with ``cell_label``, ``own_label``, ``own_source``) with the winning ``label`` and
    ``label_source``: the expert's exposure label, else the cell's, else an inherited one."""
    out = frame.copy()
    expert = out["own_source"] == "exposure"
    by_cell = ~expert & out["cell_label"].notna()
    inherited = ~expert & ~by_cell & out["own_label"].notna()
    choices = [expert, by_cell, inherited]
    out["label"] = np.select(choices, [out["own_label"], out["cell_label"], out["own_label"]], None)
    out["label_source"] = np.select(choices, ["exposure", "cell", "inherited"], None)
    return out


def suggestions(resolved: pd.DataFrame) -> pd.DataFrame:
    """Per occupied cell without a label of its own: the label most of its members carry (their own
    labels), ``agreement`` (share of those members that carry it) and ``support`` (how many do).

    Returns ``cell_x, cell_y, suggested, agreement, support, members``.
    """
    columns = ["cell_x", "cell_y", "suggested", "agreement", "support", "members"]
    rows = []
    for (x, y), cell in resolved.groupby(["cell_x", "cell_y"]):
        if cell["cell_label"].notna().any():
            continue
        known = cell["own_label"].dropna()
        if known.empty:
            continue
        counts = known.value_counts()
        rows.append((int(x), int(y), counts.index[0], counts.iloc[0] / len(known), len(known), len(cell)))
    return pd.DataFrame(rows, columns=columns)


def inherited_rows(old: pd.DataFrame, new_desom2_version: str) -> pd.DataFrame:
    """Label records for the exposures whose assignment by another map is about to be replaced.

    ``old``: those assignments with ``label`` = their cell's label on that map (null when none).
    Only labelled cells give records; the new map's own cells stay unlabelled until an expert says.
    """
    keep = old[(old["desom2_version"].astype(str) != str(new_desom2_version)) & old["label"].notna()]
    return keep[[*KEY, "label", "desom2_version", "cell_x", "cell_y"]].assign(source="inherited")
