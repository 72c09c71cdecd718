"""``desomspark serve``: the astronomer's console, the map in a browser where its cells are labelled.

A Flask application served by gunicorn (threads in a few worker processes).
Pages:

* ``/map`` -- the champion DESOM-2 map, cells coloured by label, count or
  novelty, each a link to its cell;
* ``/cell/X/Y`` -- the cell's members a page at a time: each one's
  focal-plane mosaic and full-resolution window, its quality numbers; the
  cell's label, a form to label it, its history and *undo*;
* ``/exposure/NIGHT/ID`` -- one exposure: its images, its histo-vector as a
  density map on DESOM-1, its most similar exposures (:func:`explore.similar`);
* ``/nights`` -- per-night counts, labels, drift (flagged nights), alerts;
  refreshed while ``watch`` writes;
* ``/prototypes`` -- DESOM-1's prototype map and the node filter
  (:func:`explore.filter_node`).

Every table has a CSV download (``?format=csv``).

Scale
    :class:`LakeView` reads the lake once per change and keeps what pages
    need: the members sorted by cell (a cell's page is a slice), per-cell
    aggregates, and the map page rendered per colouring.  Images are rendered
    once per exposure (or model version) and cached.  Labels are re-read when
    the ``labels/`` folder changes (checked on every request: a label shows at
    once); the rest of the lake is checked every ``refresh_seconds``.

Safety
    The console binds 127.0.0.1 by default.  Bound to any other address it
    refuses to start without a token (``$DESOMSPARK_CONSOLE_TOKEN`` or
    ``console.token`` in conf), and every POST must carry it (a cookie set by
    ``/login?token=...``, or ``Authorization: Bearer ...``).  A POST whose
    ``Origin`` (or ``Referer``) is another site is refused (403) whatever it
    carries.  Requests name cells, nights and exposure ids, which are checked
    and used as values in table filters, never as paths.  Templates escape
    every string (Jinja autoescape): a FITS header shows as text.
"""
from __future__ import annotations

import hmac
import io
import ipaddress
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from . import explore, plots, registry
from .errors import UserError
from .lake import Lake
from .model import ModelSpec
from .queries import exposure_views, label_history, map_members, night_summaries
from .report import MEMBER_COLUMNS, cell_summary

_LOG = logging.getLogger(__name__)

#: how a map cell can be coloured
COLOURINGS = ("label", "count", "novelty")
NIGHT = re.compile(r"^\d{8}$")
TOKEN_ENV = "DESOMSPARK_CONSOLE_TOKEN"
TOKEN_COOKIE = "desomspark_token"


# --- what the pages show, read once per change of the lake --------------------------------------
@dataclass
class MapData:
    """The champion map's members and per-cell aggregates (labels apart: they change on their own)."""

    d1_uri: str
    d1_version: str
    d1_shape: tuple[int, int]
    d2_uri: str
    d2_version: str
    d2_metadata: dict
    shape: tuple[int, int]
    members: pd.DataFrame                     # sorted by cell, night, exposure: a cell is a slice
    slices: dict[tuple[int, int], tuple[int, int]]
    cells: pd.DataFrame                       # cell_x, cell_y, count, novelty, truth
    key: tuple = ()
    pages: dict = field(default_factory=dict)  # rendered pages and images, keyed by what they depend on

    def cell(self, x: int, y: int) -> pd.DataFrame:
        start, stop = self.slices.get((x, y), (0, 0))
        return self.members.iloc[start:stop]


def read_map(lake: Lake, cfg) -> MapData:
    """The champion models and their members, sorted for paging, with per-cell aggregates."""
    d1_uri, d1_version, d1_meta = registry.champion_metadata(lake, cfg, "desom1")
    d2_uri, d2_version, d2_meta = registry.champion_metadata(lake, cfg, "desom2")
    members = map_members(lake, d2_version).drop(columns="label")
    members = members.sort_values(["cell_y", "cell_x", "night", "exposure_id"], kind="stable").reset_index(drop=True)
    cells = cell_summary(members.assign(label=None)).drop(columns="label")
    novelty = members.groupby(["cell_x", "cell_y"])["distance"].median().rename("novelty").reset_index()
    cells = cells.merge(novelty, on=["cell_x", "cell_y"])
    bounds = members.groupby(["cell_x", "cell_y"]).indices
    slices = {(int(x), int(y)): (int(i.min()), int(i.max()) + 1) for (x, y), i in bounds.items()}
    return MapData(d1_uri, d1_version, ModelSpec.from_dict(d1_meta).map_shape, d2_uri, d2_version, d2_meta,
                   ModelSpec.from_dict(d2_meta).map_shape, members, slices, cells)


def _listing(lake: Lake, *parts: str) -> tuple:
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
        self._map: MapData | None = None
        self._checked = time.monotonic()
        self._reading = False
        self._labels: tuple[tuple, pd.DataFrame] | None = None
        self._current: tuple[pd.DataFrame, dict] | None = None

    def _data_key(self) -> tuple:
        registry_db = self.lake.path("mlflow.db")
        mtime = os.stat(registry_db).st_mtime_ns if self.lake.is_local and os.path.exists(registry_db) else 0
        return (_listing(self.lake, "assignments"), _listing(self.lake, "exposures"), mtime)

    def map(self) -> MapData:
        """The map as last read.  A change of the lake is read in the background while requests are
        answered from the map before it (only the first read makes requests wait)."""
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

    def _read(self, key: tuple) -> MapData:
        t0 = time.perf_counter()
        data = read_map(self.lake, self.cfg)
        data.key = key
        _LOG.info(f"console: map of desom2 v{data.d2_version} read, {len(data.members)} exposures "
                  f"in {time.perf_counter() - t0:.2f} s")
        return data

    def _committing(self) -> bool:
        """Whether a commit is under way (its decision written, its partitions not all moved yet)."""
        from .lake import COMMIT_FILE

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
            key = (_listing(self.lake, "labels"), d2_version)
            if self._labels is None or self._labels[0] != key:
                self._labels = (key, label_history(self.lake, d2_version))
            return self._labels[1]

    def label_of(self, d2_version: str) -> dict[tuple[int, int], str]:
        """The current label of each labelled cell (the last entry per cell wins; an unlabel removes it)."""
        history = self.labels(d2_version)
        with self._lock:
            if self._current is None or self._current[0] is not history:
                latest = history.drop_duplicates(["cell_x", "cell_y"], keep="last")
                self._current = (history, {(int(r.cell_x), int(r.cell_y)): r.label for r in latest.itertuples()
                                           if isinstance(r.label, str)})
            return self._current[1]

    def cached(self, data: MapData, key: tuple, make):
        """A page or image of this map version, made once (``make()``) per ``key``."""
        if key not in data.pages:
            data.pages[key] = make()
        return data.pages[key]


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


def exposure_image(lake: Lake, night: str, exposure_id: str, kind: str, d1_version: str | None = None,
                   d1_shape: tuple[int, int] = (25, 25)) -> bytes | None:
    """PNG of an exposure's focal-plane ``mosaic``, full-resolution ``window`` or histo-vector ``density``."""
    if kind == "density":
        vectors = lake.read("histovectors", nights=[night],
                            where=ds.field("exposure_id") == exposure_id).to_pandas()
        vectors = vectors[vectors["desom1_version"] == str(d1_version)]
        if vectors.empty:
            return None
        counts = np.asarray(vectors["counts"].iloc[0], dtype=float).reshape(d1_shape)
        return plots.png(np.kron(counts / max(counts.max(), 1), np.ones((8, 8))), vmin=0, vmax=1, cmap="viridis")
    view = exposure_views(lake, [exposure_id], nights=[night]).get(exposure_id)
    if view is None or view.get(kind) is None:
        return None
    return plots.png(view[kind])


def with_labels(frame: pd.DataFrame, labels: dict[tuple[int, int], str]) -> pd.DataFrame:
    """``frame`` (with ``cell_x``, ``cell_y``) and a ``label`` column: its cell's current label."""
    keys = pd.MultiIndex.from_arrays([frame["cell_x"].astype(int), frame["cell_y"].astype(int)])
    return frame.assign(label=pd.Series(labels, dtype=object).reindex(keys).to_numpy() if labels else None)


# --- the application -----------------------------------------------------------------------------
def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    return parsed.scheme, parsed.netloc


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


def create_app(lake: Lake, cfg, token: str | None = None):
    """The console as a Flask application over ``lake`` (``token``: required on every POST when set)."""
    from flask import Flask, Response, abort, redirect, render_template, request, url_for

    c = cfg.console
    app = Flask(__name__)
    view = LakeView(lake, cfg, c.refresh_seconds)
    view.map()  # read before the first request: a worker starts serving with its map in memory
    image_cache = lru_cache(maxsize=4096)(lambda night, exposure, kind, version, shape:
                                          exposure_image(lake, night, exposure, kind, version, shape))

    def the_cell(data: MapData, x: int, y: int) -> None:
        rows, cols = data.shape
        if not (0 <= x < cols and 0 <= y < rows):
            abort(404, f"cell {x},{y} is outside the {rows}x{cols} map of desom2 v{data.d2_version}")

    def the_night(night: str) -> str:
        if not NIGHT.match(night):
            abort(404, f"{night!r} is not a night (YYYYMMDD)")
        return night

    def wants_csv() -> bool:
        fmt = request.args.get("format", "html")
        if fmt not in ("html", "csv"):
            abort(400, f"format must be html or csv, not {fmt!r}")
        return fmt == "csv"

    def csv(frame: pd.DataFrame, name: str) -> Response:
        return Response(spreadsheet_safe(frame).to_csv(index=False), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})

    def png(image: bytes | None, missing: str, max_age: int = 3600) -> Response:
        """An image made once (cached by the browser for ``max_age`` s), or 404 with ``missing``."""
        if image is None:
            abort(404, missing)
        return Response(image, mimetype="image/png", headers={"Cache-Control": f"max-age={max_age}"})

    def page_number(n_rows: int) -> tuple[int, int]:
        try:
            page = int(request.args.get("page", "1"))
        except ValueError:
            abort(400, "page must be a whole number")
        pages = max(1, -(-n_rows // c.page_size))
        if not 1 <= page <= pages:
            abort(404, f"page {page} of {pages}")
        return page, pages

    @app.before_request
    def guard():
        if request.method != "POST":
            return None
        origin = request.headers.get("Origin") or request.headers.get("Referer")
        if origin and _origin(origin) != _origin(request.host_url):
            abort(403, "a POST from another site is refused")
        if token and request.endpoint != "login":
            supplied = request.cookies.get(TOKEN_COOKIE, "")
            bearer = request.headers.get("Authorization", "")
            if bearer.startswith("Bearer "):
                supplied = bearer.removeprefix("Bearer ")
            if not hmac.compare_digest(supplied.encode(), token.encode()):
                abort(403, "labelling needs the console's token: open /login?token=... first")
        return None

    @app.errorhandler(400)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(405)
    def error(exc):
        return render_template("console/error.html", code=exc.code, name=exc.name, message=exc.description), exc.code

    @app.errorhandler(UserError)
    def user_error(exc):
        return render_template("console/error.html", code=400, name="Bad request", message=str(exc)), 400

    @app.get("/healthz")
    def healthz():
        return {"lake": lake.root, "desom2_version": view.map().d2_version}

    @app.route("/login", methods=["GET", "POST"])
    def login():
        supplied = request.values.get("token")
        if supplied is None:
            return render_template("console/login.html")
        if not token or not hmac.compare_digest(supplied.encode(), token.encode()):
            abort(403, "wrong token")
        response = redirect(url_for("map_page"), 303)
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response

    @app.get("/")
    def home():
        return redirect(url_for("map_page"))

    @app.get("/map")
    def map_page():
        by = request.args.get("by", "label")
        if by not in COLOURINGS:
            abort(400, f"colour cells by one of {', '.join(COLOURINGS)}, not {by!r}")
        data = view.map()
        labels = view.label_of(data.d2_version)
        if wants_csv():
            return csv(with_labels(data.cells, labels), "cells")

        def render():
            colours = cell_colours(data.cells, labels, by)
            by_cell = {(int(r.cell_x), int(r.cell_y)): r for r in data.cells.itertuples()}
            return render_template("console/map.html", data=data, by=by, colourings=COLOURINGS, colours=colours,
                                   by_cell=by_cell, labels=labels, legend=plots.label_colours(labels.values()),
                                   novelty_range=(data.cells["novelty"].min(), data.cells["novelty"].max()),
                                   top=int(data.cells["count"].max()))
        return view.cached(data, ("map", by, view.labels(data.d2_version).shape[0]), render)

    @app.get("/cell/<int:x>/<int:y>")
    def cell_page(x: int, y: int):
        data = view.map()
        the_cell(data, x, y)
        members = data.cell(x, y)
        labels = view.label_of(data.d2_version)
        everything = view.labels(data.d2_version)
        if wants_csv():
            if request.args.get("table") == "history":
                return csv(everything[(everything["cell_x"] == x) & (everything["cell_y"] == y)],
                           f"cell_{x}_{y}_labels")
            return csv(members.assign(label=labels.get((x, y))), f"cell_{x}_{y}")
        page, pages = page_number(len(members))

        def render():
            shown = members.iloc[(page - 1) * c.page_size:page * c.page_size]
            history = everything[(everything["cell_x"] == x) & (everything["cell_y"] == y)]
            columns = [k for k in MEMBER_COLUMNS if k in shown and (k != "truth_label" or shown[k].notna().any())]
            return render_template("console/cell.html", data=data, x=x, y=y, members=shown,
                                   n_members=len(members), columns=columns, page=page, pages=pages,
                                   label=labels.get((x, y)),
                                   known_labels=sorted(set(everything["label"].dropna()) | set(cfg.watch.good_labels)),
                                   history=history.iloc[::-1], novelty=members["distance"].median())
        # rendered once per cell page and state of the labels (a label anywhere can enter the list of names)
        return view.cached(data, ("cell", x, y, page, len(everything)), render)

    @app.post("/cell/<int:x>/<int:y>/label")
    def label_page(x: int, y: int):
        data = view.map()
        the_cell(data, x, y)
        label = (request.form.get("label") or "").strip()
        if len(label) > 64 or any(ord(ch) < 32 for ch in label):
            abort(400, "a label is at most 64 printable characters")
        explore.label_cell(lake, data.d2_version, (x, y), label or None, data.shape)
        return redirect(url_for("cell_page", x=x, y=y), 303)

    @app.post("/cell/<int:x>/<int:y>/undo")
    def undo_page(x: int, y: int):
        data = view.map()
        the_cell(data, x, y)
        explore.undo_label(lake, data.d2_version, (x, y), data.shape)
        return redirect(url_for("cell_page", x=x, y=y), 303)

    def exposure_row(night: str, exposure_id: str) -> pd.Series:
        rows = lake.read("exposures", nights=[the_night(night)],
                         where=ds.field("exposure_id") == exposure_id).to_pandas()
        if rows.empty:
            abort(404, f"exposure {exposure_id} of night {night} is not in the lake")
        return rows.iloc[0]

    @app.get("/exposure/<night>/<exposure_id>")
    def exposure_page(night: str, exposure_id: str):
        data = view.map()
        row = exposure_row(night, exposure_id)
        latents = view.cached(data, ("latents",), lambda: explore.latent_vectors(lake, data.d2_uri, data.d2_metadata))
        try:
            near = explore.similar(lake, data.d2_uri, data.d2_metadata, exposure_id, k=c.similar, table=latents)
        except UserError:  # not mapped by this model's DESOM-1
            near = pd.DataFrame(columns=["exposure_id", "night", "distance", "cell_x", "cell_y", "label"])
        fields = {k: v for k, v in row.items() if not isinstance(v, (bytes, np.ndarray, list))}
        if wants_csv():
            if request.args.get("table") == "fields":
                return csv(pd.DataFrame([fields]), f"exposure_{exposure_id}")
            return csv(near, f"similar_{exposure_id}")
        assigned = data.members[(data.members["night"] == night) & (data.members["exposure_id"] == exposure_id)]
        cell = assigned.iloc[0] if len(assigned) else None
        return render_template("console/exposure.html", data=data, night=night, exposure_id=exposure_id,
                               fields=fields, cell=cell, similar=near,
                               label=view.label_of(data.d2_version).get(
                                   (int(cell.cell_x), int(cell.cell_y))) if cell is not None else None)

    @app.get("/img/exposure/<night>/<exposure_id>/<kind>.png")
    def exposure_png(night: str, exposure_id: str, kind: str):
        if kind not in ("mosaic", "window", "density"):
            abort(404, f"no {kind!r} image")
        data = view.map()
        return png(image_cache(the_night(night), exposure_id, kind, data.d1_version, data.d1_shape),
                   f"no {kind} image of exposure {exposure_id}")

    @app.get("/img/prototypes.png")
    def prototypes_png():
        data = view.map()

        def render():
            decoded = registry.model_extra(data.d1_uri).get("decoded_prototypes")
            if decoded is None:
                return None
            buffer = io.BytesIO()
            plots.prototype_map(decoded, data.d1_shape, buffer, title=f"DESOM-1 v{data.d1_version} prototypes")
            return buffer.getvalue()
        return png(view.cached(data, ("prototypes",), render), f"desom1 v{data.d1_version} has no decoded prototypes")

    @app.get("/prototypes")
    def prototypes_page():
        data = view.map()
        found, node = None, request.args.get("node")
        min_fraction = request.args.get("min_fraction", "0.05")
        if node:
            m = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", node)
            if not m:
                abort(400, f"node must be X,Y, not {node!r}")
            try:
                fraction = float(min_fraction)
            except ValueError:
                abort(400, f"min_fraction must be a number, not {min_fraction!r}")
            found = explore.filter_node(lake, (int(m.group(1)), int(m.group(2))), fraction, data.d1_shape)
            found = found[found["desom1_version"] == str(data.d1_version)]
            if wants_csv():
                return csv(found, "filter")
        return render_template("console/prototypes.html", data=data, node=node or "", min_fraction=min_fraction,
                               found=None if found is None else found.head(500),
                               n_found=0 if found is None else len(found))

    def nights_data(data: MapData):
        from .drift import night_drift

        labels = view.label_of(data.d2_version)
        members = with_labels(data.members, labels)
        w = cfg.watch
        drift = night_drift(members, data.shape[0] * data.shape[1], w.drift_window, w.drift_threshold)
        summary = night_summaries(lake).merge(drift[["night", "divergence", "flagged", "median_novelty"]],
                                              on="night", how="left")
        alerts = lake.read("alerts").to_pandas().sort_values("raised_at", ascending=False)
        return drift, summary, alerts

    def nights_key(data: MapData) -> tuple:
        return ("nights", view.labels(data.d2_version).shape[0], _listing(lake, "alerts"), _listing(lake, "rejects"))

    @app.get("/nights")
    def nights_page():
        data = view.map()
        drift, summary, alerts = view.cached(data, nights_key(data), lambda: nights_data(data))
        if wants_csv():
            return csv(alerts, "alerts") if request.args.get("table") == "alerts" else csv(summary, "nights")
        return render_template("console/nights.html", data=data, summary=summary, alerts=alerts.head(200),
                               threshold=cfg.watch.drift_threshold, window=cfg.watch.drift_window,
                               refresh=c.nights_refresh_seconds, stamp=time.strftime("%H:%M:%S"))

    @app.get("/img/nights.png")
    def nights_png():
        data = view.map()
        drift, _, _ = view.cached(data, nights_key(data), lambda: nights_data(data))

        def render():
            buffer = io.BytesIO()
            plots.night_drift(drift, cfg.watch.drift_threshold, buffer)
            return buffer.getvalue()
        return png(view.cached(data, nights_key(data) + ("png",), render), "no nights", max_age=0)

    @app.template_filter("num")
    def num(value):
        """Numbers for tables: 3 decimals for floats, '' for missing."""
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return ""
        return f"{value:.3f}" if isinstance(value, float) else value

    return app


def serve(lake: Lake, cfg, host: str | None = None, port: int | None = None) -> None:
    """Run the console under gunicorn until stopped."""
    from gunicorn.app.base import BaseApplication

    c = cfg.console
    host, port = host or c.host, c.port if port is None else port
    token = os.environ.get(TOKEN_ENV) or c.token
    if not _loopback(host) and not token:
        raise UserError(f"the console bound to {host} lets anyone there label cells: set ${TOKEN_ENV} "
                        f"(or console.token in conf), or bind 127.0.0.1")
    if not lake.exists("assignments"):
        raise UserError(f"the lake {lake.root} has no assignments yet: run nightly (or assign) first")

    class Console(BaseApplication):
        def load_config(self):
            for key, value in {"bind": f"{host}:{port}", "workers": c.workers, "threads": c.threads,
                               "worker_class": "gthread", "timeout": 120, "accesslog": None,
                               # gunicornc's socket lives at one path per user: two consoles would share it
                               "control_socket_disable": True, "errorlog": "-"}.items():
                self.cfg.set(key, value)

        def load(self):
            return create_app(lake, cfg, token)

    print(f"console: http://{host}:{port}/map  (lake {lake.root}; Ctrl-C stops)", flush=True)
    Console().run()
