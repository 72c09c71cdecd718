"""``desomspark report``: a static HTML site of the map, for the astronomers who label it.

The site is one folder: ``index.html`` plus PNGs under ``img/``, linked
relatively, so it opens from disk, a web server or an archive alike.  It shows

* the DESOM-2 map as a grid of buttons (count and label per cell); clicking a
  cell opens its gallery: nine random members drawn from the thumbnails that
  ingest stored (focal-plane mosaic + one CCD at full resolution, paper
  Figures 11-18), its label and the list of its members;
* the DESOM-1 prototype map (Figure 6), the DESOM-2 map by label and by count
  (Figure 10, and by true class on simulated data), four exposures' density
  maps and histo-vectors (Figure 8);
* one summary line per night.

Every string that comes from a FITS header, a path or a label is escaped
(:func:`html.escape`): a header is input from outside and must show as text.
"""

from __future__ import annotations

import html
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from desomspark.errors import UserError
from desomspark.lake.layout import Lake
from desomspark.lake.queries import current_labels, exposure_views, night_summaries
from desomspark.serve import plots
from desomspark.serve.drift import ccd_health, night_drift
from desomspark.serve.mapstate import (
    CELL_MEDIANS,
    MEMBER_COLUMNS,
    MapState,
    cell_bars,
    labelled,
    read_map_state,
)

_LOG = logging.getLogger(__name__)


GALLERY_SIZE = 9
MAX_LISTED = 500  # members listed per cell in the page; `desomspark export` has them all


def _e(value) -> str:
    """Escape anything for HTML text or attribute ('' for missing)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value), quote=True)


def _seeing(member) -> str:
    """FWHM and elongation for a gallery caption ('' where no PSF star was measured)."""
    fwhm, elong = getattr(member, "fwhm", np.nan), getattr(member, "elongation_median", np.nan)
    if fwhm is None or not np.isfinite(fwhm):
        return ""
    return f'{fwhm:.2f}" e{elong:.2f}'


def _colour(label: str | None, count: int, top: int, named: dict[str, str]) -> str:
    """A labelled cell in its label's colour (``named``: :func:`plots.label_colours`), others grey by
    count."""
    if label:
        return named[label]
    shade = 0.95 - 0.45 * count / max(1, top)
    return plots.css_colour_hls(220 / 360, shade, 0.15)


def _table(frame: pd.DataFrame, columns: list[str], cls: str = "") -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>"
        for row in frame[columns].itertuples(index=False)
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table.map { border-collapse: collapse; }
table.map td { padding: 1px; }
button.cell { width: 7em; min-height: 3.2em; border: 1px solid #888; font-size: 0.7em; cursor: pointer;
  padding: 0 0 2px; vertical-align: top; }
button.cell img { display: block; width: 100%; image-rendering: pixelated; background: #3060a0; }
button.cell span.track { display: block; height: 4px; margin: 1px 3px 0; background: #fff; }
button.cell span.bar { display: block; height: 4px; }
button.cell.empty { visibility: hidden; }
table.list { border-collapse: collapse; font-size: 0.8em; }
table.list td, table.list th { border: 1px solid #ccc; padding: 2px 6px; }
section.gallery { border-top: 2px solid #446; margin-top: 1em; }
img { max-width: 100%; }
"""

SCRIPT = """
for (const button of document.querySelectorAll('button.cell')) {
  button.addEventListener('click', () => {
    for (const g of document.querySelectorAll('section.gallery')) g.hidden = true;
    const gallery = document.getElementById(button.dataset.gallery);
    gallery.hidden = false;
    history.replaceState(null, '', '#' + button.id);
    gallery.scrollIntoView();
  });
}
if (location.hash) { const b = document.querySelector(location.hash); if (b) b.click(); }
"""


def map_state(lake: Lake, cfg) -> MapState:
    """The champion map with every member's current label (a cell labelled after the last assign shows it)."""
    state = read_map_state(lake, cfg)
    if state.members.empty:
        raise UserError(
            f"no exposure of {lake.root} is assigned by desom2 v{state.d2_version}: run assign first"
        )
    return labelled(state, current_labels(lake, state.d2_version))


def write_report(lake: Lake, cfg, out: str | Path, seed: int = 0) -> Path:
    """Write the site for the champion DESOM-2 into ``out``; returns the path of ``index.html``."""
    out = Path(out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    state = map_state(lake, cfg)
    in_cell = state.cell_members()
    rng = np.random.default_rng(seed)
    galleries = {
        key: group.iloc[np.sort(rng.choice(len(group), size=min(GALLERY_SIZE, len(group)), replace=False))]
        for key, group in in_cell.items()
    }
    # Figure 8: the most populated cells' first exposures
    examples = [
        in_cell[(int(c.cell_x), int(c.cell_y))]["exposure_id"].iloc[0]
        for c in state.cells.sort_values("count", ascending=False).head(4).itertuples()
    ]
    central = set(state.cells["central_exposure"].dropna())
    views = exposure_views(
        lake, sorted({e for g in galleries.values() for e in g["exposure_id"]} | set(examples) | central)
    )
    for c in state.cells.itertuples():  # each cell drawn on the map by its most central member
        mosaic = views.get(c.central_exposure, {}).get("mosaic")
        if mosaic is not None:
            (out / "img" / f"central_{int(c.cell_x)}_{int(c.cell_y)}.png").write_bytes(plots.png(mosaic))
    figures = _figures(lake, state, examples, views, out)
    sections = [
        _cell_section(lake, state, x, y, pick, in_cell[(x, y)], views, out)
        for (x, y), pick in galleries.items()
    ]
    nights = night_summaries(lake)
    flagged = _nights_page(lake, state, cfg, out)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>desomspark report</title><style>{STYLE}</style></head>
<body>
<h1>Exposures on the DESOM-2 map</h1>
<p>desom2 v{_e(state.d2_version)} on desom1 v{_e(state.d1_version)} &middot; {len(state.members)} exposures in
{len(state.cells)} cells &middot; lake <code>{_e(lake.root)}</code> &middot; written {stamp}</p>
<h2>The map</h2>
<p>Each button is a cell (x to the right, y down): the focal plane of its most central member (the
exposure nearest its prototype), its number of exposures, its label, and bars of its members' median
{", ".join(f"{what}{f' ({unit})' if unit else ''}" for _, what, unit in CELL_MEDIANS)}, each from the
map's lowest cell median (short) to its highest (full; values in the tooltips). Click one to see it.</p>
<table class="map">{_map_grid(state)}</table>
<div id="galleries">{"".join(sections)}</div>
<h2>Nights</h2>
<p><a href="nights.html">Nights over time</a>: label fractions, novelty, drift from the nights before
({flagged} flagged), CCD health.</p>
{_table(nights, list(nights.columns), "list nights")}
<h2>Figures</h2>
{"".join(_figure(t, src) for t, src in figures)}
<script>{SCRIPT}</script>
</body></html>
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    _LOG.info(
        f"report: {len(state.cells)} cells, {len(state.members)} exposures, {len(nights)} nights -> {index}"
    )
    return index


def _figure(caption: str, src: str) -> str:
    return f'<figure><img src="{src}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _nights_page(lake: Lake, state: MapState, cfg, out: Path) -> int:
    """Write ``nights.html``: drift per night (figure and table) and CCD health; returns the flagged
    nights."""
    c = cfg.watch
    drift = night_drift(state.members, state.shape[0] * state.shape[1], c.drift_window, c.drift_threshold)
    plots.night_drift(drift, c.drift_threshold, out / "img" / "nights.png")
    health = ccd_health(lake)
    shown = drift.assign(
        divergence=drift["divergence"].round(3),
        median_novelty=drift["median_novelty"].round(3),
        flagged=drift["flagged"].map({True: "FLAGGED", False: ""}),
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>desomspark nights</title><style>{STYLE}</style></head>
<body>
<h1>Nights on the DESOM-2 map</h1>
<p><a href="index.html">The map</a> &middot; desom2 v{_e(state.d2_version)} &middot; a night is flagged when
the
Jensen-Shannon divergence of its cells from the {c.drift_window} nights before it exceeds {c.drift_threshold}
(conf <code>watch.drift_window</code>, <code>watch.drift_threshold</code>).</p>
<figure><img src="img/nights.png" alt="label fractions, divergence and novelty per night"></figure>
{_table(shown, list(shown.columns), "list nights")}
<h2>CCD health</h2>
<p>Per night and CCD (HDU): median detections, sky (ADU), FWHM (arcsec) and the share of its rows
rejected.</p>
{_table(health.round(3), list(health.columns), "list CCDs")}
</body></html>
"""
    (out / "nights.html").write_text(page, encoding="utf-8")
    return int(drift["flagged"].sum())


def _figures(
    lake: Lake, state: MapState, examples: list[str], views: dict, out: Path
) -> list[tuple[str, str]]:
    """The paper's figures for this map, written under ``out/img``: (caption, relative path)."""
    figures = []
    decoded = state.desom1.extra().get("decoded_prototypes")
    if decoded is not None:
        plots.prototype_map(
            decoded,
            state.d1_shape,
            out / "img" / "prototype_map.png",
            title=f"DESOM-1 v{state.d1_version} prototypes",
        )
        figures.append(("DESOM-1 prototypes (Figure 6)", "img/prototype_map.png"))
    plots.desom2_map(state.cells, state.shape, out / "img" / "desom2_labels.png", by="label")
    figures.append(("DESOM-2 map by expert label and count (Figure 10)", "img/desom2_labels.png"))
    if state.cells["truth"].notna().any():
        plots.desom2_map(state.cells, state.shape, out / "img" / "desom2_truth.png", by="truth")
        figures.append(("DESOM-2 map by majority true class (simulated data)", "img/desom2_truth.png"))
    vectors = lake.read("histovectors", where=ds.field("exposure_id").isin(examples)).to_pandas()
    vectors = vectors[vectors["desom1_version"] == str(state.d1_version)].drop_duplicates("exposure_id")
    if len(vectors):
        truth = state.members.drop_duplicates("exposure_id").set_index("exposure_id")["truth_label"]
        plots.histovector_figure(
            [
                {
                    "exposure_id": f"{r.exposure_id} ({truth.get(r.exposure_id) or ''})",
                    "window": views.get(r.exposure_id, {}).get("window"),
                    "counts": r.counts,
                }
                for r in vectors.itertuples()
            ],
            state.d1_shape,
            out / "img" / "histovectors.png",
        )
        figures.append(
            ("Full-resolution windows, density maps and histo-vectors (Figure 8)", "img/histovectors.png")
        )
    return figures


def _cell_section(
    lake: Lake,
    state: MapState,
    x: int,
    y: int,
    pick: pd.DataFrame,
    listed: pd.DataFrame,
    views: dict,
    out: Path,
) -> str:
    """A cell's hidden section: its gallery (written under ``out/img``), label and member table."""
    cell = state.cells[(state.cells.cell_x == x) & (state.cells.cell_y == y)].iloc[0]
    name = f"img/cell_{x}_{y}.png"
    plots.cell_gallery(
        [
            {
                "caption": f"{r.exposure_id} {r.truth_label or ''} {_seeing(r)}".strip(),
                "mosaic": views.get(r.exposure_id, {}).get("mosaic", np.full((2, 2), np.nan)),
                "window": views.get(r.exposure_id, {}).get("window"),
            }
            for r in pick.itertuples()
        ],
        out / name,
        title=f"cell ({x}, {y}): {len(pick)} of {int(cell['count'])} exposures",
    )
    columns = [c for c in MEMBER_COLUMNS if c in listed and (c != "truth_label" or listed[c].notna().any())]
    more = (
        f"<p>... and {len(listed) - MAX_LISTED} more: <code>desomspark export</code> lists every one.</p>"
        if len(listed) > MAX_LISTED
        else ""
    )
    return (
        f'<section class="gallery" id="gallery-{x}-{y}" hidden><h3>Cell ({x}, {y})</h3>'
        f'<p>Label: <b class="label">{_e(cell["label"]) or "(none)"}</b> &middot; {int(cell["count"])} '
        f"exposures"
        f" &middot; label it: <code>desomspark label --lake {_e(lake.root)} --cell {x},{y} --label "
        f"NAME</code></p>"
        f'<img src="{name}" alt="gallery of cell ({x}, {y})">'
        f"{_table(listed.head(MAX_LISTED), columns, 'list members')}{more}</section>"
    )


def _map_grid(state: MapState) -> str:
    """The map as table rows of buttons, one per cell, coloured by label and count."""
    top = int(state.cells["count"].max())
    by_cell = {(int(c.cell_x), int(c.cell_y)): c for c in state.cells.itertuples()}
    named = plots.label_colours(label for label in state.cells["label"] if isinstance(label, str))
    bars = cell_bars(state.cells)
    grid = []
    for y in range(state.shape[0]):
        tds = []
        for x in range(state.shape[1]):
            c = by_cell.get((x, y))
            if c is None:
                tds.append('<td><button class="cell empty" disabled></button></td>')
                continue
            label = c.label if isinstance(c.label, str) else None
            colour = _colour(label, c.count, top, named)
            bar_spans = "".join(
                f'<span class="track" title="{_e(tip)}"><span class="bar" style="width:{width}%;'
                f'background:{bar}"></span></span>'
                for width, bar, tip in bars[(x, y)]
            )
            tds.append(
                f'<td><button class="cell" id="cell-{x}-{y}" data-gallery="gallery-{x}-{y}" '
                f'style="background:{colour};color:{plots.text_colour(colour)}" title="cell ({x}, {y})">'
                f'<img src="img/central_{x}_{y}.png" alt="">'
                f"<b>{c.count}</b> {_e(label)}{bar_spans}</button></td>"
            )
        grid.append("<tr>" + "".join(tds) + "</tr>")
    return "".join(grid)
