"""The champion map as the console and the report read it: its two models, its members, its cells.

One reader (:func:`read_map_state`) for both viewers.  Labels are not part of
it: they change on their own (the console re-reads them per request, the
report joins them once with :func:`with_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from desomspark import registry
from desomspark.lake.layout import Lake
from desomspark.lake.queries import map_members
from desomspark.registry import RegisteredModel

#: the quality numbers an operator knows, shown beside each member (desomspark.ingest.qa)
QA_SHOWN = ["fwhm", "elongation_median", "sky", "sky_spread", "depth"]
MEMBER_COLUMNS = [
    "exposure_id",
    "night",
    "object",
    "filter",
    "exptime",
    "airmass",
    *QA_SHOWN,
    "distance",
    "truth_label",
]


@dataclass
class MapState:
    """The champion map's members (sorted by cell, night, exposure: a cell is a slice) and per-cell
    aggregates."""

    desom1: RegisteredModel
    desom2: RegisteredModel
    members: pd.DataFrame  # one row per exposure the champion DESOM-2 assigned
    slices: dict[tuple[int, int], tuple[int, int]]
    cells: pd.DataFrame  # cell_x, cell_y, count, truth, novelty
    key: tuple = ()
    pages: dict = field(default_factory=dict)  # rendered pages and images, keyed by what they depend on

    # the names pages and templates use
    d1_uri = property(lambda self: self.desom1.uri)
    d1_version = property(lambda self: self.desom1.version)
    d1_shape = property(lambda self: self.desom1.map_shape)
    d2_uri = property(lambda self: self.desom2.uri)
    d2_version = property(lambda self: self.desom2.version)
    shape = property(lambda self: self.desom2.map_shape)

    def cell(self, x: int, y: int) -> pd.DataFrame:
        start, stop = self.slices.get((x, y), (0, 0))
        return self.members.iloc[start:stop]

    def cell_members(self) -> dict[tuple[int, int], pd.DataFrame]:
        """Each occupied cell's members, in night and exposure order."""
        return {key: self.members.iloc[start:stop] for key, (start, stop) in self.slices.items()}


#: per-cell medians drawn on the map as bars: (column, what it is, unit)
CELL_MEDIANS = (
    ("fwhm", "seeing, PSF FWHM", "arcsec"),
    ("elongation_median", "star elongation a/b", ""),
    ("depth", "depth, point source at S/N 10", "mag"),
)


#: the colour of each per-cell median's bar on the map (one colour per quantity, on a white track)
BAR_COLOURS = {"fwhm": "#c0392b", "elongation_median": "#7d3c98", "depth": "#1e8449"}


def cell_bars(cells: pd.DataFrame) -> dict[tuple[int, int], list[tuple[int, str, str]]]:
    """Per occupied cell, one bar per quantity of :data:`CELL_MEDIANS`: (width in % of
    its track, its colour, its value with its unit as a tooltip).  Each quantity is scaled from
    its smallest to its largest cell median on this map (10 % to 100 %), so the bars compare
    cells of one map; the values are in the tooltips and the cells CSV."""
    out: dict[tuple[int, int], list[tuple[int, str, str]]] = {
        (int(x), int(y)): [] for x, y in zip(cells["cell_x"], cells["cell_y"])
    }
    for column, what, unit in CELL_MEDIANS:
        values = cells[column].astype(float)
        lo, hi = values.min(), values.max()
        for (x, y), v in zip(zip(cells["cell_x"], cells["cell_y"]), values):
            if not np.isfinite(v):
                out[(int(x), int(y))].append((0, BAR_COLOURS[column], f"{what}: unknown"))
                continue
            width = 10 + 90 * (v - lo) / (hi - lo) if hi > lo else 55
            out[(int(x), int(y))].append((int(round(width)), BAR_COLOURS[column], f"{what}: {v:.2f} {unit}"))
    return out


def cell_summary(members: pd.DataFrame) -> pd.DataFrame:
    """One row per occupied cell: count, median novelty, majority true class where known, the
    medians of :data:`CELL_MEDIANS`, and its most central member (nearest its prototype, the
    exposure that shows the cell best)."""

    def majority(s: pd.Series):
        s = s.dropna()
        return s.value_counts().index[0] if len(s) else None

    cells = members.groupby(["cell_x", "cell_y"])
    summary = cells.agg(
        count=("exposure_id", "size"),
        truth=("truth_label", majority),
        novelty=("distance", "median"),
        **{column: (column, "median") for column, _, _ in CELL_MEDIANS},
    )
    central = members.loc[cells["distance"].idxmin(), ["cell_x", "cell_y", "night", "exposure_id"]]
    central = central.rename(columns={"night": "central_night", "exposure_id": "central_exposure"})
    return summary.reset_index().merge(central, on=["cell_x", "cell_y"], how="left")


def read_map_state(lake: Lake, cfg) -> MapState:
    """Read the champion models' map from the lake (the default models on a fresh lake)."""
    desom1 = registry.registered(lake, cfg, "desom1")
    desom2 = registry.registered(lake, cfg, "desom2")
    members = map_members(lake, desom2.version).drop(columns="label")
    members = members.sort_values(["cell_y", "cell_x", "night", "exposure_id"], kind="stable").reset_index(
        drop=True
    )
    bounds = members.groupby(["cell_x", "cell_y"]).indices
    slices = {(int(x), int(y)): (int(i.min()), int(i.max()) + 1) for (x, y), i in bounds.items()}
    return MapState(desom1, desom2, members, slices, cell_summary(members))


def labelled(state: MapState, labels: pd.DataFrame) -> MapState:
    """The state with each member's and cell's current label (``labels``: cell_x, cell_y, label)."""
    current = {
        (int(r.cell_x), int(r.cell_y)): r.label for r in labels.itertuples() if isinstance(r.label, str)
    }
    return replace(
        state, members=with_labels(state.members, current), cells=with_labels(state.cells, current), pages={}
    )


def with_labels(frame: pd.DataFrame, labels: dict[tuple[int, int], str]) -> pd.DataFrame:
    """``frame`` (with ``cell_x``, ``cell_y``) and a ``label`` column: its cell's current label."""
    keys = pd.MultiIndex.from_arrays([frame["cell_x"].astype(int), frame["cell_y"].astype(int)])
    return frame.assign(label=pd.Series(labels, dtype=object).reindex(keys).to_numpy() if labels else None)
