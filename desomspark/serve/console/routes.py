"""The console's pages, as module-level routes of one blueprint over the app's shared :class:`LakeView`.

Each route reads the map (``view().map()``), answers HTML, CSV
(``?format=csv``) or PNG, and never builds paths from what a request names:
cells, nights and exposure ids are checked and used as filter values.
"""

from __future__ import annotations

import hmac
import io
import re
import struct
import time

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, url_for

from desomspark.errors import UserError
from desomspark.lake.layout import Lake
from desomspark.lake.queries import night_summaries
from desomspark.registry.record import RegisteredModel
from desomspark.registry.store import RegistryError
from desomspark.serve import explore, plots
from desomspark.serve.console.view import (
    LakeView,
    cell_colours,
    cell_star,
    listing,
    spreadsheet_safe,
)
from desomspark.serve.drift import night_drift
from desomspark.serve.mapstate import (
    BAR_COLOURS,
    CELL_MEDIANS,
    MEMBER_COLUMNS,
    MapState,
    cell_bars,
    with_labels,
)

bp = Blueprint("console", __name__)

#: the unit of each quality column the pages show (ingest.qa: arcsec from the header's pixel scale)
COLUMN_UNITS = {
    "fwhm": "arcsec",
    "sky": "ADU",
    "sky_rms": "ADU",
    "sky_spread": "rms",
    "depth": "mag",
    "exptime": "s",
    "distance": "latent units",
    "fwhm_px": "px",
    "elongation_median": "a/b",
}


def column_units(desom2: RegisteredModel) -> dict[str, str]:
    """:data:`COLUMN_UNITS` for the map ``desom2``: its distance (the novelty) is over each cell's own
    scale where the map was trained so (1: the cell's 90th-percentile distance), in latent units
    before."""
    q = desom2.novelty_quantile
    return COLUMN_UNITS if q is None else COLUMN_UNITS | {"distance": f"x the cell's p{100 * q:.0f} distance"}


#: how a map cell can be coloured
COLOURINGS = ("label", "count", "novelty")
NIGHT = re.compile(r"^\d{8}$")
TOKEN_COOKIE = "desomspark_token"
EXTENSION = "desomspark"  # the key of the console's state in ``app.extensions`` (see app.create_app)


# --- what every route works on: set once per application by create_app ---------------------------
def view() -> LakeView:
    return current_app.extensions[EXTENSION]["view"]


def lake() -> Lake:
    return view().lake


def settings():
    return view().cfg


def vocabulary() -> list[tuple[str, str]]:
    """(name, meaning) of the labels the forms offer: the conf's vocabulary, then the lake's own."""
    meanings = settings().labels.vocabulary
    return [(name, meanings.get(name, "")) for name in explore.known_labels(lake(), meanings)]


def form_label() -> str | None:
    """The label a form posted, spelt as the known label it names (None: remove the label).

    A typed name's surrounding spaces are the form's; a name that is not known needs the form's
    "a new label" box (else a UserError: the 400 page, as the command line refuses it).
    """
    label = (request.form.get("label") or "").strip()
    if not label:
        return None
    known = [name for name, _ in vocabulary()]
    return explore.vocabulary_label(label, known, add=request.form.get("add") == "on")


def token() -> str | None:
    return current_app.extensions[EXTENSION]["token"]


def image(
    night: str, exposure_id: str, kind: str, d1_version: str, d1_shape: tuple[int, int]
) -> bytes | None:
    """An exposure's PNG, made once per worker (an LRU cache of the app)."""
    return current_app.extensions[EXTENSION]["images"](night, exposure_id, kind, d1_version, d1_shape)


# --- checks and answers shared by the routes ------------------------------------------------------
def the_cell(data: MapState, x: int, y: int) -> None:
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
    return Response(
        spreadsheet_safe(frame).to_csv(index=False),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


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
    pages = max(1, -(-n_rows // settings().console.page_size))
    if not 1 <= page <= pages:
        abort(404, f"page {page} of {pages}")
    return page, pages


@bp.get("/healthz")
def healthz():
    return {"lake": lake().root, "desom2_version": view().map().d2_version}


@bp.route("/login", methods=["GET", "POST"])
def login():
    supplied = request.values.get("token")
    if supplied is None:
        return render_template("console/login.html")
    if not token() or not hmac.compare_digest(supplied.encode(), token().encode()):
        abort(403, "wrong token")
    response = redirect(url_for(".map_page"), 303)
    response.set_cookie(TOKEN_COOKIE, token(), httponly=True, samesite="Strict")
    return response


@bp.get("/")
def home():
    return redirect(url_for(".map_page"))


@bp.get("/map")
def map_page():
    by = request.args.get("by", "label")
    if by not in COLOURINGS:
        abort(400, f"colour cells by one of {', '.join(COLOURINGS)}, not {by!r}")
    data = view().map()
    labels = view().label_of(data.d2_version)
    if wants_csv():
        return csv(with_labels(data.cells, labels), "cells")

    decisions = view().decisions()

    def render():
        colours = cell_colours(data.cells, labels, by)
        by_cell = {(int(r.cell_x), int(r.cell_y)): r for r in data.cells.itertuples()}
        suggested = {(int(r.cell_x), int(r.cell_y)): r.suggested for r in decisions.suggested.itertuples()}
        return render_template(
            "console/map.html",
            coverage=decisions.coverage(),
            decided=decisions.verdicts["decision"].value_counts().to_dict(),
            suggested=suggested,
            data=data,
            by=by,
            colourings=COLOURINGS,
            colours=colours,
            by_cell=by_cell,
            labels=labels,
            legend=plots.label_colours(labels.values()),
            novelty_range=(data.cells["novelty"].min(), data.cells["novelty"].max()),
            top=int(data.cells["count"].max()),
            bars=cell_bars(data.cells),
            medians=CELL_MEDIANS,
            bar_colours=BAR_COLOURS,
        )

    return view().cached(data, ("map", by, decisions.key), render)


@bp.get("/cell/<int:x>/<int:y>")
def cell_page(x: int, y: int):
    data = view().map()
    the_cell(data, x, y)
    members = data.cell(x, y)
    labels = view().label_of(data.d2_version)
    everything = view().labels(data.d2_version)
    if wants_csv():
        if request.args.get("table") == "history":
            return csv(
                everything[(everything["cell_x"] == x) & (everything["cell_y"] == y)], f"cell_{x}_{y}_labels"
            )
        return csv(members.assign(label=labels.get((x, y))), f"cell_{x}_{y}")
    page, pages = page_number(len(members))

    def render():
        shown = members.iloc[(page - 1) * settings().console.page_size : page * settings().console.page_size]
        history = everything[(everything["cell_x"] == x) & (everything["cell_y"] == y)]
        columns = [k for k in MEMBER_COLUMNS if k in shown and (k != "truth_label" or shown[k].notna().any())]
        return render_template(
            "console/cell.html",
            data=data,
            x=x,
            y=y,
            members=shown,
            n_members=len(members),
            columns=columns,
            units=column_units(data.desom2),
            page=page,
            pages=pages,
            label=labels.get((x, y)),
            known_labels=vocabulary(),
            history=history.iloc[::-1],
            novelty=members["distance"].median(),
            suggestion=decisions.suggestion(x, y),
            verdicts=verdict_of,
        )

    decisions = view().decisions()
    v = decisions.verdicts
    mine = v[(v["cell_x"] == x) & (v["cell_y"] == y)]
    verdict_of = {(r.night, r.exposure_id): r for r in mine.itertuples()}
    # rendered once per cell page and state of the labels (a label anywhere can enter the list of names)
    return view().cached(data, ("cell", x, y, page, len(everything), decisions.key), render)


@bp.post("/cell/<int:x>/<int:y>/label")
def label_page(x: int, y: int):
    data = view().map()
    the_cell(data, x, y)
    explore.label_cell(lake(), data.d2_version, (x, y), form_label(), data.shape)
    return redirect(url_for(".cell_page", x=x, y=y), 303)


@bp.post("/cell/<int:x>/<int:y>/undo")
def undo_page(x: int, y: int):
    data = view().map()
    the_cell(data, x, y)
    explore.undo_label(lake(), data.d2_version, (x, y), data.shape)
    return redirect(url_for(".cell_page", x=x, y=y), 303)


def exposure_row(night: str, exposure_id: str) -> pd.Series:
    rows = (
        lake()
        .read("exposures", nights=[the_night(night)], where=ds.field("exposure_id") == exposure_id)
        .to_pandas()
    )
    if rows.empty:
        abort(404, f"exposure {exposure_id} of night {night} is not in the lake")
    return rows.iloc[0]


@bp.get("/exposure/<night>/<exposure_id>")
def exposure_page(night: str, exposure_id: str):
    data = view().map()
    row = exposure_row(night, exposure_id)
    latents = view().cached(data, ("latents",), lambda: explore.latent_vectors(lake(), data.desom2))
    try:
        near = explore.similar(lake(), data.desom2, exposure_id, k=settings().console.similar, table=latents)
    except UserError:  # not mapped by this model's DESOM-1
        near = pd.DataFrame(columns=["exposure_id", "night", "distance", "cell_x", "cell_y", "label"])
    fields = {k: v for k, v in row.items() if not isinstance(v, (bytes, np.ndarray, list))}
    if wants_csv():
        if request.args.get("table") == "fields":
            return csv(pd.DataFrame([fields]), f"exposure_{exposure_id}")
        return csv(near, f"similar_{exposure_id}")
    assigned = data.members[(data.members["night"] == night) & (data.members["exposure_id"] == exposure_id)]
    cell = assigned.iloc[0] if len(assigned) else None
    history = explore.exposure_label_history(lake(), night, exposure_id)
    return render_template(
        "console/exposure.html",
        units=column_units(data.desom2),
        verdict=view().decisions().of_exposure(night, exposure_id),
        own_history=history.iloc[::-1],
        own_label=history["label"].iloc[-1] if len(history) else None,
        known_labels=vocabulary(),
        data=data,
        night=night,
        exposure_id=exposure_id,
        fields=fields,
        cell=cell,
        similar=near,
        label=view().label_of(data.d2_version).get((int(cell.cell_x), int(cell.cell_y)))
        if cell is not None
        else None,
    )


@bp.post("/exposure/<night>/<exposure_id>/label")
def exposure_label_page(night: str, exposure_id: str):
    explore.label_exposure(lake(), the_night(night), exposure_id, form_label(), view().map().d2_version)
    return redirect(url_for(".exposure_page", night=night, exposure_id=exposure_id), 303)


@bp.post("/exposure/<night>/<exposure_id>/undo")
def exposure_undo_page(night: str, exposure_id: str):
    explore.undo_exposure_label(lake(), the_night(night), exposure_id, view().map().d2_version)
    return redirect(url_for(".exposure_page", night=night, exposure_id=exposure_id), 303)


@bp.get("/next")
def next_page():
    """Which cells to label next (label-next ranking), and the suggested cells to confirm."""
    data, decisions = view().map(), view().decisions()
    if wants_csv():
        return csv(decisions.next_cells, "label_next")
    return render_template(
        "console/next.html",
        data=data,
        next_cells=decisions.next_cells.head(50),
        suggested=decisions.suggested.sort_values("members", ascending=False),
        coverage=decisions.coverage(),
    )


@bp.get("/img/exposure/<night>/<exposure_id>/<kind>.png")
def exposure_png(night: str, exposure_id: str, kind: str):
    if kind not in ("mosaic", "window", "star", "density"):
        abort(404, f"no {kind!r} image")
    data = view().map()
    return png(
        image(the_night(night), exposure_id, kind, data.d1_version, data.d1_shape),
        f"no {kind} image of exposure {exposure_id}",
    )


#: the magnifications of the window page (whole numbers: every image pixel stays a square of screen pixels)
ZOOMS = (1, 2, 4, 8)


@bp.get("/exposure/<night>/<exposure_id>/window")
def window_page(night: str, exposure_id: str):
    """The full-resolution window magnified ``?zoom=`` times, its pixels drawn as squares (no smoothing):
    a trail's width or a donut's ring, pixel by pixel."""
    zoom = request.args.get("zoom", 2, type=int)
    if zoom not in ZOOMS:
        abort(400, f"zoom must be one of {', '.join(map(str, ZOOMS))}")
    data = view().map()
    picture = image(the_night(night), exposure_id, "window", data.d1_version, data.d1_shape)
    if picture is None:
        abort(404, f"no window image of exposure {exposure_id}")
    width, height = struct.unpack(">II", picture[16:24])  # a PNG's IHDR: its size in pixels
    return render_template(
        "console/window.html",
        night=night,
        exposure_id=exposure_id,
        zoom=zoom,
        zooms=ZOOMS,
        width=width * zoom,
        height=height * zoom,
    )


@bp.get("/img/cell/<int:x>/<int:y>/star.png")
def cell_star_png(x: int, y: int):
    data = view().map()
    members = data.cell(x, y)
    if members.empty:
        abort(404, f"cell {x},{y} has no member")
    return png(
        view().cached(data, ("cell-star", x, y), lambda: cell_star(lake(), members)),
        f"no member of cell {x},{y} has PSF stars",
    )


@bp.get("/img/prototypes.png")
def prototypes_png():
    data = view().map()

    def render():
        decoded = data.desom1.extra().get("decoded_prototypes")
        if decoded is None:
            return None
        buffer = io.BytesIO()
        plots.prototype_map(decoded, data.d1_shape, buffer, title=f"DESOM-1 v{data.d1_version} prototypes")
        return buffer.getvalue()

    return png(
        view().cached(data, ("prototypes",), render), f"desom1 v{data.d1_version} has no decoded prototypes"
    )


@bp.get("/prototypes")
def prototypes_page():
    data = view().map()
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
        found = explore.filter_node(lake(), (int(m.group(1)), int(m.group(2))), fraction, data.d1_shape)
        found = found[found["desom1_version"] == str(data.d1_version)]
        if wants_csv():
            return csv(found, "filter")
    return render_template(
        "console/prototypes.html",
        data=data,
        node=node or "",
        min_fraction=min_fraction,
        found=None if found is None else found.head(500),
        n_found=0 if found is None else len(found),
    )


def nights_data(data: MapState):
    labels = view().label_of(data.d2_version)
    members = with_labels(data.members, labels)
    w = settings().watch
    drift = night_drift(members, data.shape[0] * data.shape[1], w.drift_window, w.drift_threshold)
    summary = night_summaries(lake()).merge(
        drift[["night", "divergence", "flagged", "median_novelty"]], on="night", how="left"
    )
    alerts = lake().read("alerts").to_pandas().sort_values("raised_at", ascending=False)
    return drift, summary, alerts


def nights_key(data: MapState) -> tuple:
    return (
        "nights",
        view().labels(data.d2_version).shape[0],
        listing(lake(), "alerts"),
        listing(lake(), "rejects"),
    )


@bp.get("/nights")
def nights_page():
    data = view().map()
    drift, summary, alerts = view().cached(data, nights_key(data), lambda: nights_data(data))
    if wants_csv():
        return csv(alerts, "alerts") if request.args.get("table") == "alerts" else csv(summary, "nights")
    return render_template(
        "console/nights.html",
        data=data,
        summary=summary,
        alerts=alerts.head(200),
        threshold=settings().watch.drift_threshold,
        window=settings().watch.drift_window,
        refresh=settings().console.nights_refresh_seconds,
        stamp=time.strftime("%H:%M:%S"),
    )


@bp.get("/img/nights.png")
def nights_png():
    data = view().map()
    drift, _, _ = view().cached(data, nights_key(data), lambda: nights_data(data))

    def render():
        buffer = io.BytesIO()
        plots.night_drift(drift, settings().watch.drift_threshold, buffer)
        return buffer.getvalue()

    return png(view().cached(data, nights_key(data) + ("png",), render), "no nights", max_age=0)


# --- errors and formats, for every page of the app ------------------------------------------------
@bp.app_errorhandler(400)
@bp.app_errorhandler(403)
@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def error(exc):
    return error_page(exc.code, exc.name, exc.description)


@bp.app_errorhandler(RegistryError)
def registry_error(exc):
    return error_page(503, "MLflow unreachable", str(exc))


@bp.app_errorhandler(UserError)
def user_error(exc):
    return error_page(400, "Bad request", str(exc))


def error_page(code: int, name: str, message: str):
    """An error page that still names the map it was asked of, when the map can be read."""
    try:
        data = view().map()
    except Exception:  # the error may be that the map cannot be read: the page goes without it
        data = None
    return render_template("console/error.html", code=code, name=name, message=message, data=data), code


@bp.app_template_filter("text_colour")
def text_colour(background: str) -> str:
    """The text colour for a cell of colour ``background`` (WCAG AA contrast)."""
    return plots.text_colour(background)


@bp.app_template_filter("num")
def num(value):
    """Numbers for tables: 3 decimals for floats, '' for missing."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    return f"{value:.3f}" if isinstance(value, float) else value
