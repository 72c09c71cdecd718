"""One CCD: background, sources, a sample of them, and their cutouts.

:func:`process_ccd` is the whole per-CCD work of the ingest, as a plain
function over a numpy image, so that tests run it without Spark and the
benchmark times exactly what a Spark task does.

Detection follows the original SExtractor run (README, "Decisions"): background in
64-px boxes with a 3x3 median filter, a 7x7 Gaussian filter of FWHM 3 px
*convolved* with the image (SExtractor's filtering, not sep's default matched
filter), threshold 2 sigma of the global background RMS, 5 connected pixels,
32 deblending levels with minimum contrast 0, cleaning on.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import sep

from desomspark.config import IngestConfig
from desomspark.ingest.cutout import cut, encode_pixels, normalise
from desomspark.ingest.qa import CCD_QA_COLUMNS, ccd_qa, saturated_peaks
from desomspark.lake.schema import CUTOUT_SIZE

# sep allocates its pixel stack on every extract call, so a large stack for all CCDs
# costs more than detection on most of them (README, "Measured speed"): start from
# sep's default and grow it only for the crowded or trailed CCD that fills it.
DEFAULT_PIXSTACK = sep.get_extract_pixstack()
PIXSTACK_GROWTH = 4
sep.set_sub_object_limit(8192)  # deblending a long trail: a limit, not an allocation per call


class TooCrowded(RuntimeError):
    """More pixels above the threshold than ``ingest.max_pixstack`` allows (a reject ``too_crowded``)."""


THUMBNAIL_MAX_SIDE = 128


def gaussian_kernel(fwhm: float, size: int) -> np.ndarray:
    """``size`` x ``size`` Gaussian filter of the given FWHM (pixels), made as SExtractor's are.

    SExtractor's ``gauss_3.0_7x7.conv`` is, to its last printed digit, a
    unit-peak Gaussian with sigma = FWHM / 2.35 averaged over 10 x 10
    sub-pixels and rounded to 6 decimals.  A point-sampled Gaussian differs by
    a few per cent and changes which faint sources pass the threshold and how
    trails are deblended.
    """
    sigma = fwhm / 2.35  # SExtractor's rounded constant, not 2 sqrt(2 ln 2)
    sub = (np.arange(10) + 0.5) / 10 - 0.5
    x = (np.arange(size) - (size - 1) / 2.0)[:, None] + sub[None, :]
    one_d = np.exp(-(x**2) / (2.0 * sigma**2)).mean(axis=1)
    return np.round(np.outer(one_d, one_d), 6).astype(np.float32)


def sample_seed(exposure_id: str, hdu_index: int) -> int:
    """A seed fixed by (exposure, CCD): the same sources are sampled on every run."""
    return zlib.crc32(f"{exposure_id}/{hdu_index}".encode())


@dataclass
class CcdResult:
    """What one CCD gives: its ``ccds`` row fields and its cutouts (columns)."""

    n_detected: int = 0
    n_sampled: int = 0
    background: float = float("nan")
    background_rms: float = float("nan")
    dead: bool = False
    reject_reason: str | None = None
    reject_detail: str | None = None
    thumbnail: bytes = b""
    thumbnail_shape: tuple[int, int] = (0, 0)
    window: bytes = b""
    window_shape: tuple[int, int] = (0, 0)
    source_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    x: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    flux: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    pixels: list[bytes] = field(default_factory=list)
    #: the classical quality numbers of :func:`qa.ccd_qa` (NaN for a dead CCD)
    qa: dict = field(
        default_factory=lambda: (
            {c: float("nan") for c in CCD_QA_COLUMNS} | {"n_stars": 0, "n_saturated": 0, "psf_stack": None}
        )
    )

    @property
    def weight(self) -> float:
        """Detections each cutout stands for (paper section 5.2)."""
        return self.n_detected / self.n_sampled if self.n_sampled else 0.0


def detect_sources(
    image: np.ndarray, cfg: IngestConfig, kernel: np.ndarray | None = None, mask: np.ndarray | None = None
) -> tuple[np.ndarray, sep.Background]:
    """sep background and source catalogue of a native float32 image without NaN (see :func:`detect`)."""
    objects, bkg, _ = detect(image, cfg, kernel, mask)
    return objects, bkg


def detect(
    image: np.ndarray, cfg: IngestConfig, kernel: np.ndarray | None = None, mask: np.ndarray | None = None
) -> tuple[np.ndarray, sep.Background, np.ndarray]:
    """sep background, source catalogue and background-subtracted image of a native float32 image
    without NaN.

    ``kernel`` replaces the Gaussian filter built from ``cfg`` (e.g. a
    SExtractor ``.conv`` file's numbers); ``mask`` (True = flagged pixel)
    keeps pixels out of the background and of detection.
    """
    if kernel is None:
        kernel = gaussian_kernel(cfg.filter_fwhm, cfg.filter_size)
    bkg = sep.Background(
        image, mask=mask, bw=cfg.back_size, bh=cfg.back_size, fw=cfg.back_filter_size, fh=cfg.back_filter_size
    )
    # subtracted line by line in place: the same numbers as image - bkg.back(), without a
    # full-size background array (8x faster on a 2048x4612 CCD)
    residual = image.copy()
    bkg.subfrom(residual)
    # SExtractor without a weight map thresholds at DETECT_THRESH x the global RMS
    objects = extract_growing(
        residual,
        cfg.max_pixstack,
        thresh=cfg.detect_thresh,
        err=bkg.globalrms,
        mask=mask,
        minarea=cfg.min_area,
        filter_kernel=np.asarray(kernel, dtype=np.float32),
        filter_type="conv",
        deblend_nthresh=cfg.deblend_nthresh,
        deblend_cont=cfg.deblend_cont,
        clean=cfg.clean,
        clean_param=cfg.clean_param,
    )
    return objects, bkg, residual


def extract_growing(residual: np.ndarray, max_pixstack: int, **kwargs) -> np.ndarray:
    """``sep.extract`` with sep's default pixel stack, grown x4 and retried while sep reports it full.

    The stack goes back to the default afterwards, so the next CCD pays only
    for what it needs.  Raises :class:`TooCrowded` past ``max_pixstack``.
    """
    stack = min(DEFAULT_PIXSTACK, max_pixstack)
    try:
        while True:
            sep.set_extract_pixstack(stack)
            try:
                return sep.extract(residual, **kwargs)
            except Exception as exc:  # sep raises a bare Exception; its text says which limit
                if "pixel buffer full" not in str(exc):
                    raise
                if stack >= max_pixstack:
                    raise TooCrowded(
                        f"more than {max_pixstack:,} pixels above the threshold (ingest.max_pixstack)"
                    ) from None
                stack = min(stack * PIXSTACK_GROWTH, max_pixstack)
    finally:
        sep.set_extract_pixstack(DEFAULT_PIXSTACK)


def flagged_in_windows(mask: np.ndarray, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Number of flagged pixels in the ``size`` x ``size`` cutout window of each source (summed-area
    table)."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    half = size // 2
    x0 = np.clip(np.rint(x).astype(int) - half, 0, mask.shape[1])
    y0 = np.clip(np.rint(y).astype(int) - half, 0, mask.shape[0])
    x1, y1 = np.clip(x0 + size, 0, mask.shape[1]), np.clip(y0 + size, 0, mask.shape[0])
    return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]


def trails(
    objects: np.ndarray,
    size: int,
    min_elongation: float,
    column_tolerance: float = 0.0,
    pixels: "LinePixels | None" = None,
) -> np.ndarray:
    """Indices of the detections that are trails.

    A satellite trail crossing a CCD is one detection of thousands of pixels
    (or a few, after deblending).  Trails are the detections at least
    ``min_elongation`` times longer than wide and longer than two cutouts
    (``size``): for a uniform line of length L the second-moment semi-axis
    ``a`` is L/sqrt(12), so the line runs sqrt(3) a on each side of its
    centroid.

    The detector draws lines along its readout columns too (a saturated
    star's bleed, a hot column, the CCD's edge), on good exposures as often
    as on bad ones.  A line within ``column_tolerance`` degrees of the
    columns is a trail only when ``pixels`` show it is the sky's
    (:func:`sky_lines`); without ``pixels`` none of them is.
    """
    if min_elongation <= 0 or len(objects) == 0:
        return np.zeros(0, np.int64)
    a, b = objects["a"].astype(float), objects["b"].astype(float)
    # sep's theta: radians from the x axis (the rows), in [-pi/2, pi/2]; a column is at +-pi/2
    along_columns = np.abs(np.cos(objects["theta"].astype(float))) < np.sin(np.radians(column_tolerance))
    long_thin = (a >= min_elongation * np.maximum(b, 1e-3)) & (trail_half_length(a) >= size)
    suspects = np.flatnonzero(long_thin & along_columns)
    long_thin[suspects] = False
    if pixels is not None and suspects.size:
        long_thin[suspects[sky_lines(objects, suspects, pixels)]] = True
    return np.flatnonzero(long_thin)


@dataclass(frozen=True)
class LinePixels:
    """What tells a line of the sky from one of the detector along the readout columns."""

    residual: np.ndarray  # the CCD less its background
    rms: float  # the background's noise
    saturated: np.ndarray  # per detection of the catalogue: its peak reaches saturation
    edge_margin: int  # px from the CCD's left and right edges


#: across a sky trail, the PSF spreads its light: with a FWHM of 2 px or more, a line centred on a
#: column or between two keeps at least this fraction of its peak on both neighbouring columns
#: (a hot column keeps none, a bleed or a defect two columns wide none on one side)
PSF_NEIGHBOUR_FRACTION = 0.2
#: ... and two pixels out it has fallen below this fraction (a band of background is flat)
PSF_FALL_FRACTION = 0.9
#: a line's light, median along its length, at least this many background rms
LINE_MIN_RMS = 1.0


def sky_lines(objects: np.ndarray, index: np.ndarray, pixels: LinePixels) -> np.ndarray:
    """Which of the column-aligned detections ``index`` of ``objects`` are lines of the sky
    (satellite trails).

    The detector's own are a saturated star's bleed (its peak saturates), a
    hot or bad column (one pixel wide: the columns beside it hold none of
    its light, where a sky trail's light is spread by the PSF over them), or
    the CCD's edge (within ``edge_margin``, where nothing is cut out either).
    A detection whose light does not run along it (a blob whose moments
    happen to be elongated), or runs as a flat band (a background
    gradient), is no line at all.  Each line is followed row by row, so a
    trail a degree or two off the columns is measured along itself.
    """
    w = pixels.residual.shape[1]
    x = objects["x"][index]
    sky = ~pixels.saturated[index] & (x >= pixels.edge_margin) & (x <= w - 1 - pixels.edge_margin)
    for i in np.flatnonzero(sky):
        across = _across_line(pixels.residual, objects[index[i]])
        c = 2 + int(np.argmax(across[2:5]))  # the line's column, within a pixel of its centroid
        light = across[c]
        sky[i] = (
            light >= LINE_MIN_RMS * pixels.rms
            and min(across[c - 1], across[c + 1]) >= PSF_NEIGHBOUR_FRACTION * light
            and max(across[c - 2], across[c + 2]) <= PSF_FALL_FRACTION * light
        )
    return sky


def _across_line(residual: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Median of ``residual`` -3 to 3 px across a column-aligned ``line`` (in x), over its rows."""
    h, w = residual.shape
    theta = float(line["theta"])
    reach = trail_half_length(line["a"]) * abs(math.sin(theta))
    rows = np.arange(max(0, int(line["y"] - reach)), min(h, int(line["y"] + reach) + 1))
    # the line's x on each row: within the column tolerance sin(theta) is far from 0
    x = line["x"] + (rows - line["y"]) * math.cos(theta) / math.sin(theta)
    cols = np.clip(np.rint(x).astype(np.intp)[:, None] + np.arange(-3, 4)[None, :], 0, w - 1)
    return np.median(residual[rows[:, None], cols], axis=0)


def trail_half_length(a: np.ndarray) -> np.ndarray:
    """Half the length of a uniform line whose second-moment semi-axis is ``a``: sqrt(3) a."""
    return np.sqrt(3.0) * np.asarray(a, dtype=float)


def trail_length(objects: np.ndarray, index: np.ndarray) -> float:
    """Total length (px) of the trails ``index`` of ``objects``: the CCD's ``trail_length`` number."""
    return float(2.0 * trail_half_length(objects["a"][index]).sum()) if len(index) else 0.0


def trail_tiles(objects: np.ndarray, size: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Extra cutout centres every ``size`` pixels along the trails ``index`` (:func:`trails`).

    Sampled as one source among a hundred, a trail barely moves the
    exposure's histo-vector, while it spoils a strip of the CCD: it is tiled
    along its major axis instead.

    Returns
    -------
    x, y : ndarray
        Tile centres (the centroid itself, already a detection, excluded).
    """
    half_length = trail_half_length(objects["a"])
    xs, ys = [], []
    for i in index:
        n = int(half_length[i] // size)
        steps = size * np.concatenate([np.arange(-n, 0), np.arange(1, n + 1)])
        xs.append(objects["x"][i] + steps * np.cos(objects["theta"][i]))
        ys.append(objects["y"][i] + steps * np.sin(objects["theta"][i]))
    if not xs:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys)


def _stretch(image: np.ndarray, level: float, rms: float) -> np.ndarray:
    """uint8 display stretch: sky at ~25, asinh above it (faint and bright sources both visible)."""
    rms = rms if np.isfinite(rms) and rms > 0 else 1.0
    level = level if np.isfinite(level) else 0.0
    stretched = np.arcsinh((image - level) / (3.0 * rms)) / np.arcsinh(100.0)
    return np.clip(25 + 230 * stretched, 0, 255).astype(np.uint8)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block of ``image`` (the ragged edge left out).

    Summed as ``factor`` strided row slices, then column slices, in float32:
    the same numbers as a reshape and ``mean(axis=(1, 3))`` to float32
    rounding, at a tenth of the cost on a small CCD (a 4-D reduction walks the
    pixels in the wrong order).
    """
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    rows = np.array(image[0:h:factor, :w], dtype=np.float32)
    for i in range(1, factor):
        rows += image[i:h:factor, :w]
    small = rows[:, 0:w:factor].copy()
    for j in range(1, factor):
        small += rows[:, j:w:factor]
    return small / np.float32(factor * factor)


def thumbnail(
    image: np.ndarray, level: float, rms: float, max_side: int = THUMBNAIL_MAX_SIDE
) -> tuple[bytes, tuple[int, int]]:
    """Block-averaged uint8 view of a whole CCD, for focal-plane mosaics."""
    factor = max(1, int(np.ceil(max(image.shape) / max_side)))
    q = _stretch(block_mean(image, factor), level, rms)
    return q.tobytes(), q.shape


def window(image: np.ndarray, level: float, rms: float, side: int) -> tuple[bytes, tuple[int, int]]:
    """The central ``side`` x ``side`` pixels of a CCD at full resolution (uint8, same stretch)."""
    h, w = image.shape
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    q = _stretch(image[y0 : y0 + side, x0 : x0 + side], level, rms)
    return q.tobytes(), q.shape


def _views(result: CcdResult, image: np.ndarray, level: float, rms: float, window_size: int) -> None:
    result.thumbnail, result.thumbnail_shape = thumbnail(image, level, rms)
    if window_size > 0:
        result.window, result.window_shape = window(image, level, rms, window_size)


def process_ccd(
    image: np.ndarray,
    exposure_id: str,
    hdu_index: int,
    cfg: IngestConfig = IngestConfig(),
    keep_window: bool = False,
    pixel_scale: float | None = None,
    saturation: float | None = None,
    mask: np.ndarray | None = None,
) -> CcdResult:
    """Detect, sample and cut out the sources of one CCD.

    Parameters
    ----------
    image : ndarray (H, W)
        The CCD as read from FITS (any float dtype; NaN allowed).
    exposure_id, hdu_index
        Seed the sampling, so that a re-run picks the same sources.
    cfg : IngestConfig
    keep_window : bool
        Also keep the central ``cfg.window_size`` pixels at full resolution.
    pixel_scale, saturation : float, optional
        arcsec per pixel and saturation level (ADU), from the header, for the
        quality numbers (:func:`qa.ccd_qa`).
    mask : ndarray of bool (H, W), optional
        Pixels a mask plane flags (bad, saturated, cosmic ray, edge): kept
        out of the background and of detection, and no cutout overlaps one.

    Returns
    -------
    CcdResult
        ``dead`` for a constant, all-NaN or source-less CCD;
        ``reject_reason`` set when the CCD cannot be used at all.
    """
    result = CcdResult()
    image, mask = fill_flagged(image, mask)
    if image is None:
        result.dead, result.reject_reason, result.reject_detail = True, "all_nan", "every pixel is NaN"
        return result
    window = cfg.window_size if keep_window else 0
    if float(image.max()) == float(image.min()):
        value = float(image.flat[0])
        result.dead = True
        result.background, result.background_rms = value, 0.0
        _views(result, image, value, 1.0, window)
        return result
    try:
        objects, bkg, residual = detect(image, cfg, mask=mask)
    except TooCrowded as exc:
        result.reject_reason, result.reject_detail = "too_crowded", str(exc)
        return result
    result.background, result.background_rms = float(bkg.globalback), float(bkg.globalrms)
    _views(result, image, result.background, result.background_rms, window)
    result.qa = ccd_qa(image, objects, bkg, cfg.back_size, pixel_scale, saturation, residual)
    saturated = saturated_peaks(image, objects, saturation)
    pixels = LinePixels(residual, float(bkg.globalrms), saturated, cfg.edge_margin)
    lines = trails(objects, CUTOUT_SIZE, cfg.trail_elongation, cfg.trail_column_tolerance, pixels)
    result.qa["trail_length"] = trail_length(objects, lines)
    x, y, flux, inside = _candidates(objects, image.shape, cfg, mask, lines)
    result.n_detected = int(inside.size)
    if inside.size == 0:
        result.dead = True
        return result
    rng = np.random.default_rng(sample_seed(exposure_id, hdu_index))
    n = min(cfg.max_per_ccd, inside.size)
    chosen = np.sort(rng.choice(inside, size=n, replace=False))  # without replacement (paper §5.2)
    stamps = normalise(cut(image, x[chosen], y[chosen], CUTOUT_SIZE), tuple(cfg.clip_percentiles))
    result.n_sampled = n
    result.source_index = chosen.astype(np.int32)
    result.x = x[chosen].astype(np.float32)
    result.y = y[chosen].astype(np.float32)
    result.flux = flux[chosen].astype(np.float32)
    result.pixels = encode_pixels(stamps)
    return result


def fill_flagged(image: np.ndarray, mask: np.ndarray | None):
    """(native float32 image with NaN and flagged pixels set to the median of the others, the mask
    or None when it flags nothing); the image is None when no pixel is usable."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    finite = np.isfinite(image)
    if mask is not None:
        mask = np.ascontiguousarray(mask, dtype=bool)
        finite &= ~mask
    if not finite.any():
        return None, None
    if finite.all():  # the common case: no median of millions of pixels to pay for
        return image, None
    median = np.float32(np.median(image[finite]))
    return np.where(finite, image, median), (mask if mask is not None and mask.any() else None)


def _candidates(
    objects: np.ndarray, shape: tuple[int, int], cfg: IngestConfig, mask: np.ndarray | None, lines: np.ndarray
):
    """Where cutouts may be cut: (x, y, flux, indices of the usable ones) over sources then the tiles
    along the trails ``lines``."""
    h, w = shape
    m = cfg.edge_margin
    # sources first, then the trail tiles: a tile's source_index is past the catalogue's end
    tile_x, tile_y = trail_tiles(objects, CUTOUT_SIZE, lines)
    x = np.concatenate([objects["x"], tile_x])
    y = np.concatenate([objects["y"], tile_y])
    flux = np.concatenate([objects["flux"], np.full(tile_x.size, np.nan)])
    inside = np.flatnonzero((x >= m) & (x <= w - 1 - m) & (y >= m) & (y <= h - 1 - m))
    if mask is not None and inside.size:
        # a cutout must not show a flagged pixel: count them in each source's window
        inside = inside[flagged_in_windows(mask, x[inside], y[inside], CUTOUT_SIZE) == 0]
    return x, y, flux, inside
