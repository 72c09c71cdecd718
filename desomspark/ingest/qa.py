"""Classical image-quality numbers, from the sep catalogue the ingest already made.

Survey operators judge an exposure by a handful of numbers: seeing (PSF FWHM),
the shape of the stars (elongation a/b, ellipticity 1 - b/a), the sky level
and noise, how flat the background is, how many sources were found, how many
saturated, how deep the image goes, how correlated the sky noise is
(electronic pickup, fringes) and how long the trails crossing it are
(satellites).  :func:`ccd_qa` measures them on one CCD from the detections
and background of :func:`detect.detect_sources` (no second detection pass;
the trails' length comes from :func:`detect.trails`); :func:`exposure_qa`
combines the CCDs of an exposure.
They are stored in ``ccds/`` and ``exposures/``, shown in the report and
``export``, used by ``evaluate`` as the classical baseline, and offered to
DESOM-2 as extra inputs (:data:`QA_FEATURES`).

PSF stars
---------
Bright (isophotal S/N >= 20), unsaturated, isolated (no other detection
within 12 px), away from the CCD edges; of the brightest 256 of those, the
brightest 64 among the smaller half by half-light radius (cost: the half-light
radius and the FWHM below are the expensive measures), rid of cosmic-ray-like
sources sharper than a PSF; then the
*stellar locus*: galaxies are larger than the PSF, so the stars are the
sources whose half-light radius is within 20 % of the half-sample mode of the
smallest third.  Their

* FWHM is measured directly as the diameter of the area above half the peak
  (2 sqrt(A / pi)), on a 4x sub-sampled stamp, with no assumption on the
  profile (Kolmogorov seeing, a trail or a donut alike), less the broadening
  by the pixel and the interpolation;
* elongation and ellipticity come from their second moments in a circular
  Gaussian window of twice the PSF's half-light radius, which, unlike
  isophotal moments, do not depend on the detection threshold.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import sep

from desomspark.ingest.cutout import cut

#: per-exposure numbers a classical baseline (and DESOM-2's extra inputs) use
QA_FEATURES = (
    "fwhm",
    "elongation_median",
    "elongation_p90",
    "detections_per_ccd",
    "sky",
    "sky_rms",
    "sky_spread",
    "background_structure",
    "noise_correlation",
    "trail_length",
    "depth",
)

#: numbers that are 0 on most exposures and large on a few (the length of the trails): compared on
#: log(1 + value), or the few longest trails would set the scale by which a short one is judged
LOG_SCALED = frozenset({"trail_length"})

#: per-CCD numbers (columns of ``ccds/``)
CCD_QA_COLUMNS = (
    "n_stars",
    "fwhm_px",
    "fwhm",
    "elongation_median",
    "elongation_p90",
    "ellipticity_median",
    "background_structure",
    "noise_correlation",
    "trail_length",
    "n_saturated",
    "flux_sn10",
)

MIN_SNR = 20.0
ISOLATION_PX = 12.0
EDGE_PX = 16
LOCUS_TOLERANCE = 0.2
SUBSAMPLE = 4
SATURATION_FRACTION = 0.8
MIN_FWHM_PX = 1.5
RING_STEP = 0.5  # px: the rings of the half-maximum area's core radius (:func:`_core_radius`)
STACK_SIDE = 33  # pixels of a CCD's stacked star (its PSF stars' median), centred on its middle pixel
NOISE_SAMPLE = 1 << 14  # sky pixels (at most) that measure the noise correlation
NOISE_CLIP = 3.0  # a pixel beyond this many rms (a source, a cosmic ray) is not sky
MAX_MEASURED = 64  # PSF-star candidates whose FWHM is measured (the brightest of the smaller half)
MEASURED_FOR_SIZE = 4 * MAX_MEASURED  # the brightest candidates whose half-light radius is measured


def half_sample_mode(values: np.ndarray) -> float:
    """Robust mode of a sample (Bickel's half-sample mode): the densest half, halved until 2 values remain."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    while len(v) > 3:
        half = (len(v) + 1) // 2
        widths = v[half - 1 :] - v[: len(v) - half + 1]
        start = int(np.argmin(widths))
        v = v[start : start + half]
    if len(v) == 3:
        return float(
            v[:2].mean() if v[1] - v[0] < v[2] - v[1] else v[1:].mean() if v[1] - v[0] > v[2] - v[1] else v[1]
        )
    return float(v.mean()) if len(v) else float("nan")


def half_max_fwhm(stamps: np.ndarray, dx: np.ndarray, dy: np.ndarray, crop: bool = True) -> np.ndarray:
    """FWHM (px) of each star: the diameter of the area above half its peak, on a sub-sampled stamp.

    ``dx, dy`` are each centroid's offset from the stamp's central pixel.
    The stamp is bilinearly sub-sampled ``SUBSAMPLE`` times, the peak taken
    as the sub-sampled maximum near the centre, and only the connected area
    around the centre is counted (a neighbour's wing does not add to it).

    With ``crop`` every star is first measured on the central half of its
    stamp, where a star's half-maximum area lies; the few whose area reaches
    further (a donut, a trail) are measured again on the whole stamp.  Both
    give the same numbers (tested): the crop leaves out only sub-pixels that
    cannot change them, and costs half.
    """
    n, side, _ = stamps.shape
    if n == 0:
        return np.zeros(0)
    grid = _FineGrid(side)
    # rings run out to the batch's farthest sub-pixel, whichever part of the stamp is measured
    n_rings = len(np.arange(0.0, grid.farthest(dx, dy), RING_STEP))
    area, todo = np.zeros(n), np.ones(n, bool)
    if crop:
        reach = (side - 1) / 4.0 + 1.5  # px from the centre
        # a sub-pixel within reach - 0.5 px of the centroid (itself within half a pixel of the
        # centre) lies inside the crop: the rings out to reach - 1 px are whole there
        whole = min(int((reach - 1.0) / RING_STEP) - 1, n_rings - 1)
        inner = np.flatnonzero(np.abs(grid.offset) < reach)
        area, found = _half_max_area(stamps, dx, dy, grid.part(inner), n_rings, whole)
        todo = ~found
    if todo.any():
        area[todo] = _half_max_area(stamps[todo], dx[todo], dy[todo], grid, n_rings, n_rings - 1)[0]
    measured = 2.0 * np.sqrt(area / np.pi)
    # the pixel (variance 1/12 px^2) and the bilinear interpolation (1/6 px^2) broaden
    # the profile: removed in quadrature as a Gaussian of variance 1/4 px^2
    return np.sqrt(np.clip(measured**2 - (2.3548 * 0.5) ** 2, 0.0, None))


class _FineGrid:
    """The ``SUBSAMPLE`` x sub-pixel grid of a ``side``-pixel stamp (or a central part of it): each
    sub-pixel's offset from the stamp's centre (px) and its bilinear weights (pixel ``i0`` and the next)."""

    def __init__(self, side: int, index: np.ndarray | None = None):
        fine = (np.arange(side * SUBSAMPLE) + 0.5) / SUBSAMPLE - 0.5
        i0 = np.clip(np.floor(fine).astype(int), 0, side - 2)
        index = np.arange(fine.size) if index is None else index
        self.side = side
        self.i0 = i0[index]
        self.t = (fine - i0).astype(np.float32)[index]
        # float32 radii: half the memory traffic of float64
        self.offset = (fine - (side - 1) / 2.0).astype(np.float32)[index]

    def part(self, index: np.ndarray) -> "_FineGrid":
        """The sub-grid of the sub-pixels ``index`` (along each axis)."""
        return _FineGrid(self.side, index)

    def upsampled(self, stamps: np.ndarray) -> np.ndarray:
        """The stamps bilinearly interpolated on the grid (along y, then x)."""
        i0, t = self.i0, self.t
        rows = stamps[:, i0, :] * (1 - t)[None, :, None] + stamps[:, i0 + 1, :] * t[None, :, None]
        return rows[:, :, i0] * (1 - t)[None, None, :] + rows[:, :, i0 + 1] * t[None, None, :]

    def radius(self, dx: np.ndarray, dy: np.ndarray, at: np.ndarray | None = None) -> np.ndarray:
        """Each sub-pixel's distance (px) from each centroid; ``at`` picks sub-pixels of the grid."""
        offset = self.offset if at is None else self.offset[at]
        # squared once per row and column, summed per sub-pixel: a fifth of np.hypot's cost
        x2 = np.square(offset[None, :] - dx.astype(np.float32)[:, None])
        y2 = np.square(offset[None, :] - dy.astype(np.float32)[:, None])
        return np.sqrt(x2[:, None, :] + y2[:, :, None])

    def farthest(self, dx: np.ndarray, dy: np.ndarray) -> float:
        """The largest :meth:`radius` over the stamps: at a corner of the grid."""
        return float(self.radius(dx, dy, at=np.array([0, self.offset.size - 1])).max())


def _half_max_area(
    stamps: np.ndarray, dx: np.ndarray, dy: np.ndarray, grid: _FineGrid, n_rings: int, whole: int
) -> tuple[np.ndarray, np.ndarray]:
    """(area above half the peak within the core radius (px^2), whether the core radius was found
    among the first ``whole`` rings) of each star, on the sub-pixels of ``grid``."""
    up = grid.upsampled(stamps)
    r = grid.radius(dx, dy)
    # the peak lies within 1.5 px of the centroid, itself within half a pixel of the centre
    near = np.flatnonzero(np.abs(grid.offset) < 2.0)
    core = np.ix_(np.arange(len(stamps)), near, near)
    peak = np.where(r[core] < 1.5, up[core], -np.inf).max(axis=(1, 2))
    above = up >= 0.5 * peak[:, None, None]
    # the half-maximum area of a star is compact around it: count within the
    # largest radius at which the ring is still mostly above half maximum
    radius, found = _core_radius(above, r, n_rings, whole)
    return (above & (r < radius)).sum(axis=(1, 2)) / SUBSAMPLE**2, found


def _core_radius(above: np.ndarray, r: np.ndarray, n_rings: int, whole: int) -> tuple[np.ndarray, np.ndarray]:
    """Per stamp, the first radius (px) at which less than half of a ring lies above half maximum,
    looked for among rings 1 to ``whole`` (those the sub-pixels cover entirely), and whether found.

    Rings are ``RING_STEP`` wide from ``RING_STEP`` out; the ``n_rings``-th and beyond are one.
    Without a ring below half, the radius is that of the last ring.  Counted for all stamps at once
    with one ``bincount`` over (stamp, ring) instead of a mask per ring.
    """
    n = len(above)
    ring = (r / RING_STEP).astype(np.intp)  # r >= 0: truncation is floor
    np.minimum(ring, n_rings, out=ring)
    ring += np.arange(0, n * (n_rings + 1), n_rings + 1)[:, None, None]
    flat = ring.ravel()
    pixels = np.bincount(flat, minlength=n * (n_rings + 1)).reshape(n, n_rings + 1)[:, 1 : whole + 1]
    inside = np.bincount(flat[above.ravel()], minlength=n * (n_rings + 1))
    frac = inside.reshape(n, n_rings + 1)[:, 1 : whole + 1] / np.maximum(pixels, 1)
    low = frac < 0.5
    found = low.any(axis=1)
    first = low.argmax(axis=1) + 1  # the ring's index (from 1)
    radius = np.where(found, first * RING_STEP + RING_STEP / 2, (n_rings - 1) * RING_STEP)
    return radius[:, None, None], found


def stacked_star(stamps: np.ndarray) -> np.ndarray:
    """The stacked star of a CCD: the median of its PSF stars' stamps, each scaled to unit flux.

    The stamps are centred on each star's nearest pixel; the stack is cut (or padded with zeros)
    to :data:`STACK_SIDE` pixels around its middle and scaled to a peak of 1: the PSF an
    astronomer checks first (trailed, donut or soft), from the stars the FWHM was measured on.
    """
    flux = stamps.sum(axis=(1, 2))
    keep = flux > 0
    stack = np.median(stamps[keep] / flux[keep, None, None], axis=0) if keep.any() else stamps[0] * 0
    side, half = stack.shape[0], STACK_SIDE // 2
    take = min(side // 2, half)
    out = np.zeros((STACK_SIDE, STACK_SIDE), np.float32)
    mid = side // 2
    out[half - take : half + take + 1, half - take : half + take + 1] = stack[
        mid - take : mid + take + 1, mid - take : mid + take + 1
    ]
    peak = out.max()
    return out / peak if peak > 0 else out


def decode_stack(blob: bytes | None) -> np.ndarray | None:
    """A stored stacked star (``ccds.psf_stack``, float16) as a STACK_SIDE x STACK_SIDE array."""
    if not blob:
        return None
    return np.frombuffer(blob, dtype=np.float16).astype(np.float32).reshape(STACK_SIDE, STACK_SIDE)


def windowed_shape(
    stamps: np.ndarray, dx: np.ndarray, dy: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """(a/b, 1 - b/a) of each star from second moments in a circular Gaussian window of ``sigma`` px."""
    side = stamps.shape[1]
    c = np.arange(side) - (side - 1) / 2.0
    yy, xx = np.meshgrid(c, c, indexing="ij")
    x = xx[None] - dx[:, None, None]
    y = yy[None] - dy[:, None, None]
    w = np.exp(-(x**2 + y**2) / (2 * sigma**2)) * np.clip(stamps, 0, None)
    total = w.sum(axis=(1, 2))
    total = np.where(total > 0, total, 1.0)
    ixx, iyy, ixy = (
        (w * x * x).sum(axis=(1, 2)) / total,
        (w * y * y).sum(axis=(1, 2)) / total,
        (w * x * y).sum(axis=(1, 2)) / total,
    )
    mean = (ixx + iyy) / 2
    root = np.sqrt(((ixx - iyy) / 2) ** 2 + ixy**2)
    a2, b2 = mean + root, np.clip(mean - root, 1e-6, None)
    ratio = np.sqrt(a2 / b2)
    return ratio, 1.0 - 1.0 / ratio


def ccd_qa(
    image: np.ndarray,
    objects: np.ndarray,
    bkg: sep.Background,
    mesh_size: int,
    pixel_scale: float | None,
    saturation: float | None,
    residual: np.ndarray | None = None,
) -> dict[str, float]:
    """The classical quality numbers of one CCD (see the module docstring).

    Parameters
    ----------
    image : ndarray (H, W)
        The CCD, native float32 without NaN (as :func:`detect.detect_sources` saw it).
    objects, bkg
        sep's catalogue and background of ``image``.
    mesh_size : int
        The background mesh (``back_size``): the background map is sampled once per mesh.
    pixel_scale : float, optional
        arcsec per pixel; without it ``fwhm`` (arcsec) is NaN and only ``fwhm_px`` is known.
    saturation : float, optional
        ADU at which the detector saturates; default: the image's maximum.
    residual : ndarray (H, W), optional
        ``image`` less its background, when detection made it already (else made here).

    Returns
    -------
    dict
        The keys of :data:`CCD_QA_COLUMNS` (NaN where no PSF star was found) and ``psf_stack``,
        the :func:`stacked_star` as float16 bytes (None without PSF stars).
    """
    rms = float(bkg.globalrms)
    if residual is None:
        residual = image.copy()
        bkg.subfrom(residual)
    # the background map at each mesh centre, without making the full-size map
    centres = (slice(mesh_size // 2, None, mesh_size), slice(mesh_size // 2, None, mesh_size))
    mesh = image[centres] - residual[centres]
    out = dict.fromkeys(CCD_QA_COLUMNS, float("nan"))
    out["n_stars"] = 0
    out["psf_stack"] = None
    out["background_structure"] = float(np.std(mesh) / rms) if rms > 0 else float("nan")
    out["noise_correlation"] = noise_correlation(residual, rms)
    saturated = saturated_peaks(image, objects, saturation)
    out["n_saturated"] = int(saturated.sum())
    idx, half = _isolated_bright(image.shape, objects, saturated, rms)
    if idx.size < 3:
        return out
    stars = _psf_stars(residual, objects, idx, half)
    if stars is None:
        return out
    fwhm, stamps, dx, dy, mode = stars
    fwhm_px = float(np.median(fwhm))
    ratio, ellipticity = windowed_shape(stamps, dx, dy, sigma=max(2.0 * mode, 1.0))
    out.update(
        n_stars=int(fwhm.size),
        fwhm_px=fwhm_px,
        fwhm=fwhm_px * pixel_scale if pixel_scale else float("nan"),
        elongation_median=float(np.median(ratio)),
        elongation_p90=float(np.percentile(ratio, 90)),
        ellipticity_median=float(np.median(ellipticity)),
        # a point source at S/N 10 in an optimal (Gaussian) aperture: 10 rms sqrt(4 pi) sigma
        flux_sn10=10.0 * rms * math.sqrt(4 * math.pi) * fwhm_px / 2.3548,
        psf_stack=stacked_star(stamps).astype(np.float16).tobytes(),
    )
    return out


def noise_correlation(residual: np.ndarray, rms: float) -> float:
    """How much neighbouring sky pixels agree beyond white noise: sqrt(rho_x^2 + rho_y^2).

    rho is the correlation of a pixel with its right (x) or upper (y)
    neighbour, sum(a b) / sqrt(sum(a^2) sum(b^2)) over pairs whose pixels both
    lie within ``NOISE_CLIP`` rms of the background (sky, not sources).  White
    noise gives ~0 (1 / sqrt(pairs), a few 1e-3, of sampling noise); electronic
    pickup, fringes and any pattern finer than the background mesh but wider
    than a pixel raise it, while the per-star numbers and the background mesh
    do not see them.  Rows are sampled in pairs, at most :data:`NOISE_SAMPLE`
    pixels, so a full CCD costs what a small one does (~0.3 ms): moments, not
    medians, since the clip already keeps the sources out.
    """
    h, w = residual.shape
    if rms <= 0 or h < 2 or w < 2:
        return float("nan")
    stride = max(2, -(-h * w // NOISE_SAMPLE))
    lower = residual[0 : h - 1 : stride, : w - w % 2]
    upper = residual[1:h:stride, : w - w % 2][: len(lower)]
    limit = NOISE_CLIP * rms
    rho = []
    for a, b in ((lower[:, 0::2], lower[:, 1::2]), (lower, upper)):
        sky = (np.abs(a) < limit) & (np.abs(b) < limit)
        if sky.sum() < 100:
            return float("nan")
        a, b = a[sky].astype(np.float64), b[sky].astype(np.float64)
        a -= a.mean()
        b -= b.mean()
        norm = math.sqrt(float(a @ a) * float(b @ b))
        rho.append(float(a @ b) / norm if norm > 0 else 0.0)
    return float(np.hypot(*rho))


def saturated_peaks(image: np.ndarray, objects: np.ndarray, saturation: float | None) -> np.ndarray:
    """Whether each source's peak pixel reaches saturation (ADU; default: the image's maximum)."""
    saturation = float(saturation) if saturation else float(image.max())
    h, w = image.shape
    xp = np.clip(objects["xpeak"], 0, w - 1)
    yp = np.clip(objects["ypeak"], 0, h - 1)
    return image[yp, xp] >= SATURATION_FRACTION * saturation


def _isolated_bright(
    shape: tuple[int, int], objects: np.ndarray, saturated: np.ndarray, rms: float
) -> tuple[np.ndarray, int]:
    """The PSF star candidates: bright, unsaturated, isolated, away from the edge; and the stamp half-size."""
    h, w = shape
    n = len(objects)
    if n == 0:
        return np.zeros(0, int), 8
    from scipy import spatial  # here: reading the lake's QA columns should not pay scipy's import

    x, y = objects["x"], objects["y"]
    snr = objects["flux"] / (rms * np.sqrt(np.maximum(objects["npix"], 1))) if rms > 0 else np.zeros(n)
    nearest = (
        spatial.cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)[0][:, 1]
        if n > 1
        else np.full(n, np.inf)
    )
    # stamp, aperture and isolation scale with the source size (seeing of 0.5" or 2.5", donuts)
    bright = (snr >= MIN_SNR) & ~saturated
    size = float(np.median(np.sqrt(objects["a"][bright] * objects["b"][bright]))) if bright.any() else 2.0
    half = int(np.clip(np.ceil(4 * size), 8, 32))
    margin = EDGE_PX + half
    inside = (x >= margin) & (x <= w - 1 - margin) & (y >= margin) & (y <= h - 1 - margin)
    return np.flatnonzero(bright & (nearest >= max(ISOLATION_PX, half)) & inside), half


def _psf_stars(residual: np.ndarray, objects: np.ndarray, idx: np.ndarray, half: int):
    """The candidates that are PSF stars: (FWHM px, stamps, sub-pixel offsets dx, dy, locus radius),
    or None where fewer than three are."""
    x, y = objects["x"], objects["y"]
    # the brightest few hundred are enough to find the smaller half among: a crowded CCD has
    # a thousand candidates, and the half-light radius of each costs as much as its detection
    idx = idx[np.argsort(-objects["flux"][idx], kind="stable")[:MEASURED_FOR_SIZE]]
    r50, _ = sep.flux_radius(residual, x[idx], y[idx], np.full(idx.size, float(half)), 0.5, subpix=5)
    # stars are the smallest sources: the half-light FWHM (the costly part) is measured on the
    # brightest MAX_MEASURED of the smaller half only
    finite = np.isfinite(r50) & (r50 > 0)
    idx, r50 = idx[finite], r50[finite]
    small = r50 <= np.median(r50) if idx.size > 2 * MAX_MEASURED else np.ones(idx.size, bool)
    idx, r50 = idx[small], r50[small]
    brightest = np.argsort(-objects["flux"][idx], kind="stable")[:MAX_MEASURED]
    idx, r50 = idx[brightest], r50[brightest]
    stamps = cut(residual, x[idx], y[idx], 2 * half + 1)  # centred on the nearest pixel
    dx, dy = x[idx] - np.rint(x[idx]), y[idx] - np.rint(y[idx])
    fwhm = half_max_fwhm(stamps, dx, dy)
    # a PSF is sampled (FWHM >= 1.5 px) and as concentrated as a PSF: cosmic rays, hot
    # pixels and sources hit by them are sharper than their half-light radius allows
    concentration = fwhm / np.where(r50 > 0, r50, np.nan)
    psf_like = np.isfinite(r50) & (fwhm >= MIN_FWHM_PX) & (concentration >= 1.4)
    r50, fwhm, stamps, dx, dy = r50[psf_like], fwhm[psf_like], stamps[psf_like], dx[psf_like], dy[psf_like]
    if r50.size < 3:
        return None
    # the stellar locus: stars are the smallest sources; galaxies, even when they
    # outnumber them, are larger.  The mode of the smallest third finds them.
    mode = half_sample_mode(np.sort(r50)[: max(3, r50.size // 3)])
    stars = np.abs(r50 - mode) <= LOCUS_TOLERANCE * mode
    if stars.sum() < 3:
        return None
    return fwhm[stars], stamps[stars], dx[stars], dy[stars], mode


#: per-exposure numbers (columns of ``exposures/``), from :func:`exposure_qa`
EXPOSURE_QA_COLUMNS = (
    "fwhm",
    "fwhm_px",
    "elongation_median",
    "elongation_p90",
    "ellipticity_median",
    "detections_per_ccd",
    "sky",
    "sky_rms",
    "sky_spread",
    "background_structure",
    "noise_correlation",
    "trail_length",
    "n_saturated",
    "depth",
)


def weighted_median(values, weights) -> float:
    """Median of ``values`` with ``weights``, ignoring NaN values and non-positive weights."""
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    ok = np.isfinite(v) & np.isfinite(w) & (w > 0)
    if not ok.any():
        return float("nan")
    v, w = v[ok], w[ok]
    order = np.argsort(v)
    cumulative = np.cumsum(w[order])
    return float(v[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def exposure_qa(ccds, exptime: float | None, zero_point: float | None = None) -> dict[str, float]:
    """The quality numbers of one exposure from the ``ccds`` rows of its used, live CCDs.

    Star-based numbers are medians of the CCD values weighted by each CCD's
    number of PSF stars; sky numbers are medians over CCDs, and
    ``sky_spread`` is how much the sky differs from CCD to CCD (std / median
    rms: a gradient or scattered light across the focal plane).
    """
    out = dict.fromkeys(EXPOSURE_QA_COLUMNS, float("nan"))
    out["n_saturated"] = 0
    live = ccds[ccds["reject_reason"].isna() & ~ccds["dead"].astype(bool)]
    if live.empty:
        return out
    stars = live["n_stars"].fillna(0).to_numpy()
    for column in ("fwhm", "fwhm_px", "elongation_median", "elongation_p90", "ellipticity_median"):
        out[column] = weighted_median(live[column], stars)
    sky, rms = live["background"].to_numpy(float), live["background_rms"].to_numpy(float)
    out.update(
        detections_per_ccd=float(live["n_detected"].mean()),
        sky=float(np.median(sky)),
        sky_rms=float(np.median(rms)),
        sky_spread=float(np.std(sky) / np.median(rms)) if np.median(rms) > 0 else float("nan"),
        background_structure=_median(live["background_structure"]),
        noise_correlation=_median(live["noise_correlation"]),
        # a trail crosses a few CCDs of many: the mean keeps it where a median would lose it
        trail_length=_mean(live["trail_length"]),
        n_saturated=int(live["n_saturated"].fillna(0).sum()),
    )
    flux = weighted_median(live["flux_sn10"], stars)
    if exptime and exptime > 0 and np.isfinite(flux) and flux > 0:
        out["depth"] = float((zero_point or 0.0) - 2.5 * np.log10(flux / exptime))
    return out


def _median(column) -> float:
    """Median ignoring NaN (NaN when every value is, or the column predates the lake's schema)."""
    values = np.asarray(column, dtype=float)
    return float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")


def _mean(column) -> float:
    """Mean ignoring NaN (NaN when every value is, or the column predates the lake's schema)."""
    values = np.asarray(column, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def robust_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: (median, IQR / 1.349 -- the std of a Gaussian -- or the std, or 1), ignoring NaN."""
    q = np.asarray(values, dtype=np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        median = np.nanmedian(q, axis=0)
        iqr = np.nanpercentile(q, 75, axis=0) - np.nanpercentile(q, 25, axis=0)
        sd = np.nanstd(q, axis=0)
    spread = np.where(iqr > 0, iqr / 1.349, np.where(sd > 0, sd, 1.0))
    return np.where(np.isfinite(median), median, 0.0), np.where(np.isfinite(spread), spread, 1.0)


def compared(values: np.ndarray, names) -> np.ndarray:
    """Quality numbers (columns ``names``) as they are compared and standardised: log(1 + value) for
    the :data:`LOG_SCALED` ones (negative values count as 0), the others as they are."""
    out = np.array(values, dtype=np.float64)
    for k, name in enumerate(names):
        if name in LOG_SCALED:
            out[:, k] = np.log1p(np.clip(out[:, k], 0.0, None))
    return out


def compared_z(table, reference=None, names: tuple[str, ...] = QA_FEATURES) -> np.ndarray:
    """The quality numbers ``names`` of ``table`` (a DataFrame) as the classical baseline compares
    them: :func:`compared`, then :func:`standardise` by ``reference``'s median and spread (default:
    ``table``'s own), a missing number at the median."""

    def values(frame) -> np.ndarray:
        return compared(frame[list(names)].to_numpy(dtype=float), names)

    return standardise(values(table), reference=None if reference is None else values(reference))


def standardise(values: np.ndarray, clip: float = 10.0, reference: np.ndarray | None = None) -> np.ndarray:
    """Robust z-scores of each column (:func:`robust_scale` of ``reference``, default ``values``
    itself), clipped to +-``clip``, NaN -> 0 (the median)."""
    center, spread = robust_scale(values if reference is None else reference)
    z = np.clip((np.asarray(values, dtype=np.float64) - center) / spread, -clip, clip)
    return np.where(np.isnan(z), 0.0, z)
