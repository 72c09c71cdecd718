"""The console's shared view of the lake: the map read once per change, labels re-read when they change.

Every route reads through one :class:`LakeView` per worker process; it also
holds the pictures and tables the pages show (made once per map version).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from desomspark.decide.active import label_next
from desomspark.decide.labels import suggestions
from desomspark.lake import schema
from desomspark.lake.layout import COMMIT_FILE, Lake
from desomspark.lake.queries import exposure_views, label_history
from desomspark.serve import plots
from desomspark.serve.mapstate import MapState, read_map_state
from desomspark.stages.verdicts import resolved_members, verdict_table

_LOG = logging.getLogger(__name__)


def listing(lake: Lake, *parts: str) -> tuple:
    """Names, sizes and times of the files under a lake folder (what changes when it is written)."""
    root = lake.path(*parts)
    if not lake.is_local:
        return tuple(sorted((f["name"], f.get("size")) for f in lake.fs.find(root, detail=True).values()))
    out = []
    for folder, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(folder, name))
            out.append((folder, name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


class LakeView:
    """The console's view of a lake, shared by the requests of one process.

    ``map()`` is re-read when the assignments, exposures or the model
    registry change (checked every ``refresh_seconds``, read in the
    background, never while a commit is under way: a night replaced in the
    middle of a read would show half of it); ``labels()`` when a file is added to ``labels/`` (checked on
    each call).
    """

    def __init__(self, lake: Lake, cfg, refresh_seconds: float = 2.0):
        self.lake, self.cfg, self.refresh_seconds = lake, cfg, refresh_seconds
        self._lock = threading.RLock()
        self._map: MapState | None = None
        self._checked = time.monotonic()
        self._reading = False
        self._labels: tuple[tuple, pd.DataFrame] | None = None
        self._current: tuple[pd.DataFrame, dict] | None = None

    def _data_key(self) -> tuple:
        registry_db = self.lake.path("mlflow.db")
        mtime = os.stat(registry_db).st_mtime_ns if self.lake.is_local and os.path.exists(registry_db) else 0
        return (listing(self.lake, "assignments"), listing(self.lake, "exposures"), mtime)

    def map(self) -> MapState:
        """The map as last read.  A change of the lake is read in the background while requests are
        answered from the map before it (only the first read makes requests wait).
        """
        with self._lock:
            if self._map is None:
                self._map = self._read(self._data_key())
            now = time.monotonic()
            if now - self._checked > self.refresh_seconds and not self._reading:
                self._checked = now
                key = self._data_key()
                if key != self._map.key and not self._committing():
                    self._reading = True
                    threading.Thread(target=self._reread, args=(key,), daemon=True).start()
            return self._map

    def _read(self, key: tuple) -> MapState:
        t0 = time.perf_counter()
        data = read_map_state(self.lake, self.cfg)
        data.key = key
        _LOG.info(
            f"console: map of desom2 v{data.d2_version} read, {len(data.members)} exposures "
            f"in {time.perf_counter() - t0:.2f} s"
        )
        return data

    def _committing(self) -> bool:
        """Whether a commit is under way (its decision written, its partitions not all moved yet)."""
        return self.lake.is_local and any(Path(self.lake.path("_staging")).glob(f"*/{COMMIT_FILE}"))

    def _reread(self, key: tuple) -> None:
        try:
            data = self._read(key)
            if self._committing() or self._data_key() != key:  # read across a commit: maybe half of it
                with self._lock:
                    self._checked = 0.0  # read again at the next request
                return
            with self._lock:
                self._map = data
        except Exception:  # a lake caught mid-commit: the next check tries again
            _LOG.exception("console: reading the lake failed; the map before it is kept")
        finally:
            self._reading = False

    def labels(self, d2_version: str) -> pd.DataFrame:
        """The label history of a DESOM-2 version (oldest first)."""
        with self._lock:
            key = (listing(self.lake, "labels"), d2_version)
            if self._labels is None or self._labels[0] != key:
                self._labels = (key, label_history(self.lake, d2_version))
            return self._labels[1]

    def label_of(self, d2_version: str) -> dict[tuple[int, int], str]:
        """The current label of each labelled cell (the last entry per cell wins; an unlabel removes it)."""
        history = self.labels(d2_version)
        with self._lock:
            if self._current is None or self._current[0] is not history:
                latest = history.drop_duplicates(["cell_x", "cell_y"], keep="last")
                self._current = (
                    history,
                    {
                        (int(r.cell_x), int(r.cell_y)): r.label
                        for r in latest.itertuples()
                        if isinstance(r.label, str)
                    },
                )
            return self._current[1]

    def decisions(self) -> "Decisions":
        """The verdicts of every exposure the map assigned, as the labels stand now (not committed:
        ``desomspark verdicts`` and the stages write the table), with the cells' suggested labels and
        the label-next ranking.  Made again when the map or a label log changes."""
        data = self.map()
        key = ("decisions", listing(self.lake, "labels"), listing(self.lake, "exposure_labels"))
        with self._lock:
            if key not in data.pages:
                data.pages = {k: v for k, v in data.pages.items() if not (k and k[0] == "decisions")}
                made = Decisions.of(self.lake, self.cfg, data, self.label_of(data.d2_version))
                made.key = hash(key)
                data.pages[key] = made
            return data.pages[key]

    def cached(self, data: MapState, key: tuple, make):
        """A page or image of this map version, made once (``make()``) per ``key``."""
        if key not in data.pages:
            data.pages[key] = make()
        return data.pages[key]


@dataclass
class Decisions:
    """What the console shows of the decision: verdicts, suggested cell labels, cells to label next."""

    verdicts: pd.DataFrame
    suggested: pd.DataFrame  # cell_x, cell_y, suggested, agreement, support, members
    next_cells: pd.DataFrame  # cell_x, cell_y, members, review, score
    key: int = 0  # which state of the label logs it was made from (pages cached by it)

    @classmethod
    def of(cls, lake: Lake, cfg, data: MapState, cell_labels: dict) -> "Decisions":
        nights = sorted(set(data.members["night"]))
        if not nights:
            empty = pd.DataFrame(columns=schema.VERDICTS.names)
            return cls(empty, suggestions(empty.assign(cell_label=None, own_label=None)), pd.DataFrame())
        verdicts, _ = verdict_table(lake, cfg, data.desom2, nights)
        members = resolved_members(lake, data.desom2)
        return cls(verdicts, suggestions(members), label_next(verdicts, cell_labels, cfg.watch.good_labels))

    def coverage(self) -> tuple[int, int]:
        """(labelled exposures, exposures)."""
        return int(self.verdicts["label_source"].notna().sum()), len(self.verdicts)

    def of_exposure(self, night: str, exposure_id: str) -> dict | None:
        v = self.verdicts
        rows = v[(v["night"] == night) & (v["exposure_id"] == exposure_id)]
        return rows.iloc[0].to_dict() if len(rows) else None

    def suggestion(self, x: int, y: int) -> dict | None:
        s = self.suggested
        rows = s[(s["cell_x"] == x) & (s["cell_y"] == y)]
        return rows.iloc[0].to_dict() if len(rows) else None


# --- pictures ------------------------------------------------------------------------------------
def cell_colours(cells: pd.DataFrame, labels: dict, by: str) -> dict[tuple[int, int], str]:
    """A CSS colour per occupied cell: by its label (unlabelled cells grey), count or median novelty."""
    top = max(1, int(cells["count"].max())) if len(cells) else 1
    lo, hi = (cells["novelty"].min(), cells["novelty"].max()) if len(cells) else (0.0, 1.0)
    named = plots.label_colours(labels.values())
    out = {}
    for c in cells.itertuples():
        key = (int(c.cell_x), int(c.cell_y))
        if by == "label":
            out[key] = named.get(labels.get(key), "#d0d4dc")
        elif by == "count":
            out[key] = plots.css_colour(0.15 + 0.85 * c.count / top, "Blues")
        else:
            out[key] = plots.css_colour((c.novelty - lo) / (hi - lo) if hi > lo else 0.5, "magma_r")
    return out


def exposure_image(
    lake: Lake,
    night: str,
    exposure_id: str,
    kind: str,
    d1_version: str | None = None,
    d1_shape: tuple[int, int] = (25, 25),
) -> bytes | None:
    """PNG of an exposure's focal-plane ``mosaic``, full-resolution ``window``, stacked ``star`` or
    histo-vector ``density``."""
    if kind == "density":
        vectors = lake.read(
            "histovectors", nights=[night], where=ds.field("exposure_id") == exposure_id
        ).to_pandas()
        vectors = vectors[vectors["desom1_version"] == str(d1_version)]
        if vectors.empty:
            return None
        return plots.histovector_png(vectors["counts"].iloc[0], d1_shape)
    view = exposure_views(lake, [exposure_id], nights=[night]).get(exposure_id)
    if view is None or view.get(kind) is None:
        return None
    if kind == "star":
        return plots.star_png(view["star"])
    if kind == "window":  # at native size: a scale bar from the PSF's FWHM in arcsec and pixels
        return plots.png(plots.with_scale_bar(view["window"], pixel_scale(lake, night, exposure_id)))
    return plots.png(view[kind])


def pixel_scale(lake: Lake, night: str, exposure_id: str) -> float | None:
    """arcsec per pixel of an exposure, as its quality numbers measured it (FWHM in arcsec over px)."""
    row = lake.read(
        "exposures", nights=[night], columns=["fwhm", "fwhm_px"], where=ds.field("exposure_id") == exposure_id
    ).to_pylist()
    if not row or not row[0]["fwhm"] or not row[0]["fwhm_px"]:
        return None
    return float(row[0]["fwhm"]) / float(row[0]["fwhm_px"])


def cell_star(lake: Lake, members: pd.DataFrame) -> bytes | None:
    """PNG of a cell's stacked star: the median of its members' stacked stars (None without any)."""
    views = exposure_views(lake, list(members["exposure_id"]), nights=sorted(set(members["night"])))
    stars = [v["star"] for v in views.values() if v["star"] is not None]
    return plots.star_png(np.median(stars, axis=0)) if stars else None


# A text cell that starts with one of these is a formula to a spreadsheet (OWASP "CSV injection")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with text cells that a spreadsheet would run as formulas quoted by a leading '.

    Labels, authors and header fields (OBJECT, ...) are typed by people or read
    from files; a downloaded table must open as data.  Numbers are left alone.
    """
    out = frame.copy()
    for column in [c for c in out.columns if out[c].dtype == object or pd.api.types.is_string_dtype(out[c])]:
        text = out[column]
        risky = text.map(lambda v: isinstance(v, str) and v.startswith(FORMULA_STARTS))
        out.loc[risky, column] = "'" + text[risky]
    return out
