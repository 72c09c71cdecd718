"""Pictures astronomers look at (matplotlib, PNG)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import io

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def mosaic(images: np.ndarray, map_shape: tuple[int, int], gap: int = 1) -> np.ndarray:
    """Tile (rows*cols, h, w) images into one array, node (0, 0) at the top left, NaN gaps."""
    rows, cols = map_shape
    n, h, w = images.shape
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float32)
    for k in range(min(n, rows * cols)):
        r, c = divmod(k, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = images[k]
    return out


def prototype_map(
    decoded: np.ndarray, map_shape: tuple[int, int], path, title: str = "DESOM-1 prototypes"
) -> str:
    """The decoded prototypes as a map (paper Figure 6); returns ``path``."""
    tiles = np.asarray(decoded).reshape(len(decoded), *np.asarray(decoded).shape[-2:])
    image = mosaic(tiles, map_shape)
    rows, cols = map_shape
    fig, ax = plt.subplots(figsize=(max(4, cols * 0.4), max(4, rows * 0.4)), dpi=100)
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.set_xticks([(c + 0.5) * image.shape[1] / cols for c in range(0, cols, 5)], range(0, cols, 5))
    ax.set_yticks([(r + 0.5) * image.shape[0] / rows for r in range(0, rows, 5)], range(0, rows, 5))
    ax.set_xlabel("node column")
    ax.set_ylabel("node row")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def histovector_png(counts: np.ndarray, map_shape: tuple[int, int]) -> bytes:
    """An exposure's histo-vector on the DESOM-1 grid as a PNG with axes and a colour bar: the
    share of its weighted detections on each node (node (0, 0) top left, as the prototypes)."""
    share = np.asarray(counts, dtype=float).reshape(map_shape)
    share = share / share.sum() if share.sum() > 0 else share
    rows, cols = map_shape
    fig, ax = plt.subplots(figsize=(4.2, 3.4), dpi=100)
    shown = ax.imshow(share, cmap="viridis", vmin=0, interpolation="nearest")
    ax.set_xticks(range(0, cols, 5))
    ax.set_yticks(range(0, rows, 5))
    ax.set_xlabel("DESOM-1 node column")
    ax.set_ylabel("node row")
    fig.colorbar(shown, ax=ax, label="share of the exposure's detections")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def css_colour(value: float, cmap: str) -> str:
    """A CSS colour (``#rrggbb``) for ``value`` in [0, 1] on a matplotlib colour map."""
    return _hex(plt.get_cmap(cmap)(float(np.clip(value, 0, 1))))


def css_colour_hls(hue: float, lightness: float, saturation: float) -> str:
    """A CSS colour (``#rrggbb``) from hue, lightness and saturation in [0, 1]."""
    import colorsys

    return _hex(colorsys.hls_to_rgb(hue, lightness, saturation))


def label_colours(labels) -> dict[str, str]:
    """A distinct light CSS colour per label name (tab10, in name order): the same on a map and its legend."""
    palette = plt.get_cmap("tab10").colors
    return {
        name: _hex(0.55 * np.asarray(palette[i % 10]) + 0.45) for i, name in enumerate(sorted(set(labels)))
    }


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(v * 255)):02x}" for v in list(rgb)[:3])


def luminance(css: str) -> float:
    """WCAG 2 relative luminance of a ``#rrggbb`` colour."""
    rgb = np.array([int(css[i : i + 2], 16) for i in (1, 3, 5)]) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def contrast_ratio(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two ``#rrggbb`` colours (1 to 21; AA text needs 4.5)."""
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def text_colour(background: str) -> str:
    """Black or white, whichever reads better on ``background`` (never below 4.58:1)."""
    return max(("#000000", "#ffffff"), key=lambda text: contrast_ratio(text, background))


def star_png(stack: np.ndarray, zoom: int = 4) -> bytes:
    """A stacked star (peak 1) as a PNG, ``zoom`` screen pixels per CCD pixel, on a square-root
    stretch so that the wings (a trail, a donut's ring) show beside the core."""
    shown = np.sqrt(np.clip(np.asarray(stack, dtype=float), 0.0, 1.0))
    return png(np.kron(shown, np.ones((zoom, zoom))), vmin=0, vmax=1)


def with_scale_bar(image: np.ndarray, arcsec_per_px: float | None) -> np.ndarray:
    """A uint8 sky image with a scale bar and its length in arcsec drawn in its lower left corner
    (the longest of 30, 10, 5, 2 or 1 arcsec that fits a quarter of the width); unchanged
    without a pixel scale."""
    from PIL import Image, ImageDraw

    if not arcsec_per_px or not np.isfinite(arcsec_per_px) or arcsec_per_px <= 0:
        return image
    h, w = image.shape
    fits = [a for a in (30, 10, 5, 2, 1) if a / arcsec_per_px <= w / 4]
    if not fits or h < 24:
        return image
    arcsec, length = fits[0], int(round(fits[0] / arcsec_per_px))
    canvas = Image.fromarray(np.asarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([6, h - 12, 10 + length, h - 6], fill=0)  # a dark edge: readable on sky and star
    draw.rectangle([8, h - 10, 8 + length, h - 8], fill=255)
    draw.text((8, h - 24), f'{arcsec}"', fill=255, stroke_width=1, stroke_fill=0)
    return np.asarray(canvas)


def png(image: np.ndarray, vmin: float = 0, vmax: float = 255, cmap: str = "gray") -> bytes:
    """An image as PNG bytes, one pixel per value (NaN holes in the gallery's blue), without a figure."""
    from PIL import Image

    scale = plt.get_cmap(cmap).with_extremes(bad="#3060a0")
    normed = (np.ma.masked_invalid(np.asarray(image, dtype=float)) - vmin) / (vmax - vmin)
    rgba = scale(normed, bytes=True)
    buffer = io.BytesIO()
    Image.fromarray(rgba[..., :3]).save(buffer, format="PNG")
    return buffer.getvalue()


def _show(ax, image, title: str = "") -> None:
    cmap = plt.get_cmap("gray").with_extremes(
        bad="#3060a0"
    )  # holes (rejected CCDs, gaps) in blue, not black sky
    ax.imshow(np.ma.masked_invalid(image), cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def histovector_figure(examples: list[dict], map_shape: tuple[int, int], path) -> str:
    """Paper Figure 8: per exposure, a full-resolution window, its DESOM-1 density map and its histo-vector.

    ``examples``: dicts with ``exposure_id``, ``window`` (uint8 2-D array or None) and ``counts``
    (the histo-vector, ``rows * cols`` values).
    """
    rows, cols = map_shape
    fig, axes = plt.subplots(
        len(examples),
        3,
        figsize=(11, 3.2 * len(examples)),
        dpi=90,
        gridspec_kw={"width_ratios": [1, 1, 2]},
        squeeze=False,
    )
    for (a_win, a_map, a_hist), ex in zip(axes, examples):
        counts = np.asarray(ex["counts"], dtype=float)
        window = ex.get("window")
        _show(a_win, window if window is not None else np.full((2, 2), np.nan), f"{ex['exposure_id']}")
        im = a_map.imshow(counts.reshape(rows, cols), cmap="viridis", interpolation="nearest")
        a_map.set_title("density on DESOM-1", fontsize=8)
        a_map.set_xlabel("node column", fontsize=7)
        a_map.set_ylabel("node row", fontsize=7)
        fig.colorbar(im, ax=a_map, fraction=0.046, pad=0.04)
        a_hist.bar(np.arange(counts.size), counts, width=1.0, color="k")
        a_hist.set_xlim(0, counts.size)
        a_hist.set_xlabel("DESOM-1 node index", fontsize=7)
        a_hist.set_ylabel("detections", fontsize=7)
        a_hist.set_title("histo-vector", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def desom2_map(cells: pd.DataFrame, map_shape: tuple[int, int], path, by: str = "class") -> str:
    """Paper Figure 10: the DESOM-2 map coloured by each cell's majority ``by`` value, and by count.

    ``cells``: one row per occupied cell with ``cell_x``, ``cell_y``, ``count`` and ``by``
    (e.g. the majority true class, or the expert label; null = none).
    """
    rows, cols = map_shape
    count = np.zeros((rows, cols))
    names = sorted({str(v) for v in cells[by].dropna()})
    code = np.full((rows, cols), np.nan)
    for r in cells.itertuples():
        count[r.cell_y, r.cell_x] = r.count
        value = getattr(r, by)
        if isinstance(value, str):
            code[r.cell_y, r.cell_x] = names.index(value)
    fig, (a_cls, a_cnt) = plt.subplots(1, 2, figsize=(11, 5), dpi=90)
    palette = plt.get_cmap("tab10", max(1, len(names)))
    a_cls.imshow(
        np.ma.masked_invalid(code),
        cmap=palette,
        vmin=-0.5,
        vmax=max(1, len(names)) - 0.5,
        interpolation="nearest",
    )
    a_cls.set_title(f"DESOM-2 cells by {by}")
    if names:
        a_cls.legend(
            handles=[plt.Rectangle((0, 0), 1, 1, color=palette(k)) for k in range(len(names))],
            labels=names,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            fontsize=8,
        )
    else:
        a_cls.text(0.5, 0.5, f"no cell has a {by} yet", ha="center", va="center", transform=a_cls.transAxes)
    im = a_cnt.imshow(count, cmap="Greys", interpolation="nearest")
    for y in range(rows):
        for x in range(cols):
            if count[y, x] > 0:
                a_cnt.text(
                    x,
                    y,
                    f"{int(count[y, x])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if count[y, x] > count.max() / 2 else "black",
                )
    a_cnt.set_title("exposures per cell")
    fig.colorbar(im, ax=a_cnt, fraction=0.046, pad=0.04)
    for ax in (a_cls, a_cnt):
        ax.set_xlabel("cell x")
        ax.set_ylabel("cell y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def cell_gallery(members: list[dict], path, title: str) -> str:
    """Paper Figures 11-18: up to nine exposures of one cell, each as its focal-plane
    mosaic beside one CCD's full-resolution window.

    ``members``: dicts with ``caption``, ``mosaic`` (2-D array) and ``window`` (2-D array or None).
    """
    n = max(1, len(members))
    grid = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / grid))
    fig, axes = plt.subplots(rows, 2 * grid, figsize=(3.4 * grid, 1.9 * rows + 0.5), dpi=90, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, m in enumerate(members):
        r, c = divmod(k, grid)
        _show(axes[r, 2 * c], m["mosaic"], m["caption"])
        window = m.get("window")
        _show(
            axes[r, 2 * c + 1],
            window if window is not None else np.full((2, 2), np.nan),
            f"{window.shape[0]}x{window.shape[1]} window" if window is not None else "no window",
        )
        axes[r, 2 * c].axis("on")
        axes[r, 2 * c + 1].axis("on")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def night_drift(drift: pd.DataFrame, threshold: float, path) -> str:
    """Per night: label fractions (stacked bars), and the divergence from the reference window with
    the median novelty; flagged nights marked in red.  ``drift`` is :func:`drift.night_drift`'s table.
    """
    nights = list(drift["night"])
    x = np.arange(len(nights))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.5 * len(nights) + 2), 6), dpi=90, sharex=True)
    bottom_of = np.zeros(len(nights))
    for column in [c for c in drift.columns if c.startswith("label:")]:
        values = drift[column].fillna(0).to_numpy()
        top.bar(x, values, bottom=bottom_of, label=column.removeprefix("label:"))
        bottom_of += values
    top.set_ylabel("share of exposures")
    top.legend(fontsize=7, ncol=4, loc="upper left", bbox_to_anchor=(0, 1.25))
    bottom.plot(x, drift["divergence"], "o-", color="black", label="divergence from the reference nights")
    bottom.axhline(threshold, color="grey", linestyle="--", linewidth=1)
    flagged = drift["flagged"].to_numpy(bool)
    bottom.plot(x[flagged], drift["divergence"][flagged], "o", color="red", markersize=10, label="flagged")
    bottom.set_ylabel("Jensen-Shannon divergence")
    bottom.set_ylim(0, 1)
    novelty = bottom.twinx()
    novelty.plot(x, drift["median_novelty"], "s:", color="tab:blue", label="median novelty")
    novelty.set_ylabel("median novelty", color="tab:blue")
    bottom.legend(fontsize=7, loc="upper left")
    bottom.set_xticks(x, nights, rotation=60, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
