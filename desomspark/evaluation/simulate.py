"""A simulated survey night: MegaCam-like multi-extension FITS with known quality.

Each exposure belongs to one quality class (paper section 2 and Figure 2):

========== =============================================================
Good       Kolmogorov seeing, FWHM 0.5-0.9 arcsec
BT         bad tracking: the PSF smeared along one direction (a/b 1.3-2)
RBT        really bad tracking: long trails
B-Seeing   broad PSF, FWHM 1.5-2.5 arcsec
BadFocus   donuts: the image of the annular pupil, convolved with seeing
BGP        background problems, of one kind: ``gradient`` (gradients and
           fringe-like patterns), ``scattered`` (scattered light),
           ``crowded`` (very crowded field), ``lowexp`` (short exposure)
Streak     good seeing, but one to three satellite or aircraft trails cross
           the focal plane (straight, continuous from CCD to CCD, as wide as
           the PSF): a defect the classical numbers (seeing, star shapes,
           sky) do not see
========== =============================================================

and two defects of the sky between the sources, which no night has unless
asked for (``classes=``, ``simulate --classes``): the paper's classes do not
include them, so they test whether a map finds what it was not built for:

========== =============================================================
Pickup     electronic pickup: a faint sinusoid (0.4-1 sky sigma, period
           5-15 px) added along the serial read-out, so that it runs as
           tilted stripes ("herringbone") across every CCD
AmpGlow    amplifier glow: a bright corner (4-12 sky sigma at the
           amplifier, fading over 40-120 px) at both read-out amplifiers
           of every CCD
========== =============================================================

and, in any class, CCDs may be dead and carry cosmic rays, saturated stars with
bleed trails and hot columns.  PSFs are drawn with GalSim; stars and galaxies
are stamped from PSF (and PSF-convolved galaxy) images drawn once per CCD, at
9 sub-pixel phases, which keeps a full 2048x4612 CCD at about a second.

Data are written as raw survey data are: unsigned 16-bit integers stored as
BITPIX 16 with BZERO 32768, one image HDU per CCD (EXTNAME ``ccd00``...), the
ground truth in the primary header (QUALITY, QUALKIND) and the PSF parameters
in each CCD header.  The same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import galsim
import numpy as np
from astropy.io import fits
from astropy.time import Time

from desomspark.config import SimulateConfig
from desomspark.errors import UserError

_LOG = logging.getLogger(__name__)

CLASSES = ("Good", "BT", "RBT", "B-Seeing", "BadFocus", "BGP", "Streak")
#: defects of the sky between the sources, simulated only on request (``plan_night(classes=...)``)
BACKGROUND_DEFECTS = ("Pickup", "AmpGlow")
KNOWN_CLASSES = CLASSES + BACKGROUND_DEFECTS
BGP_KINDS = ("gradient", "scattered", "crowded", "lowexp")
#: real class mix of ~70k MegaCam exposures (labels of the paper's DESOM-2 cells); BadFocus and the
#: unlabelled 1.3 % share one bin, since bad focus is rare and unlabelled
SURVEY_MIX = {
    "Good": 0.78,
    "RBT": 0.039,
    "BT": 0.036,
    "B-Seeing": 0.069,
    "BGP": 0.067,
    "BadFocus": 0.013,
    "Streak": 0.02,
}
FULL_CCD_PIXELS = 4612 * 2048
FILTERS = ("u", "g", "r", "i", "z")


@dataclass(frozen=True)
class ExposureSpec:
    """What one simulated exposure is: drawn from the seed before any pixel."""

    index: int
    expnum: int
    quality: str
    kind: str  # BGP kind, or "" for the other classes
    seed: int
    mjd: float
    filter: str
    airmass: float
    exptime: float
    fwhm: float  # arcsec, seeing
    trail_length: float  # arcsec, tracking error (0 for none)
    trail_angle: float  # degrees
    donut_radius: float  # arcsec, outer radius of the defocused pupil image (0 for none)


def plan_night(
    n_exposures: int,
    seed: int = 0,
    mix: str = "balanced",
    cfg: SimulateConfig = SimulateConfig(),
    mjd0: float = 61000.3,
    classes: tuple[str, ...] = CLASSES,
) -> list[ExposureSpec]:
    """Draw the class and conditions of every exposure of a night.

    Parameters
    ----------
    n_exposures : int
    seed : int
        The whole night (classes, conditions, pixels) follows from it.
    mix : {"balanced", "survey"}
        ``balanced``: classes in turn (and BGP kinds in turn); ``survey``: the
        real class mix of MegaCam (SURVEY_MIX).
    classes : tuple of str
        The classes the night may hold (default :data:`CLASSES`; any of
        :data:`KNOWN_CLASSES`).  In the survey mix a class outside
        SURVEY_MIX has the share of a rare one (2 %).
    """
    if mix not in ("balanced", "survey"):
        raise UserError(f"mix must be 'balanced' or 'survey', not {mix!r}")
    classes = check_classes(classes)
    rng = np.random.default_rng([seed, 0xD5])
    if mix == "balanced":
        qualities = [classes[i % len(classes)] for i in range(n_exposures)]
    else:
        names = [n for n in SURVEY_MIX if n in classes] + [c for c in classes if c not in SURVEY_MIX]
        p = np.array([SURVEY_MIX.get(n, 0.02) for n in names])
        qualities = list(rng.choice(names, size=n_exposures, p=p / p.sum()))
    specs = []
    n_bgp = 0
    for i, quality in enumerate(qualities):
        kind = ""
        if quality == "BGP":
            kind = BGP_KINDS[n_bgp % len(BGP_KINDS)] if mix == "balanced" else str(rng.choice(BGP_KINDS))
            n_bgp += 1
        fwhm = float(rng.uniform(0.5, 0.9))
        trail = 0.0
        donut = 0.0
        sigma = fwhm / 2.3548
        if quality == "B-Seeing":
            fwhm = float(rng.uniform(1.5, 2.5))
        elif quality == "BT":
            # a box of length L adds L^2/12 to one axis' variance: a/b = sqrt(1 + L^2 / (12 sigma^2))
            elong = rng.uniform(1.4, 2.0)
            trail = float(sigma * math.sqrt(12 * (elong**2 - 1)))
        elif quality == "RBT":
            trail = float(rng.uniform(4.0, 10.0))
        elif quality == "BadFocus":
            donut = float(rng.uniform(1.2, 2.0))
        exptime = cfg.exptime if kind != "lowexp" else float(rng.uniform(5.0, 15.0))
        specs.append(
            ExposureSpec(
                index=i,
                expnum=1_000_000 + seed * 10_000 + i,
                quality=str(quality),
                kind=kind,
                seed=int(rng.integers(2**31)),
                mjd=mjd0 + i * 0.004,
                filter=str(rng.choice(FILTERS)),
                airmass=float(rng.uniform(1.0, 1.6)),
                exptime=exptime,
                fwhm=fwhm,
                trail_length=trail,
                trail_angle=float(rng.uniform(0, 180)),
                donut_radius=donut,
            )
        )
    return specs


def check_classes(classes) -> tuple[str, ...]:
    """``classes`` as a tuple of known class names, or a :class:`UserError` naming the unknown ones."""
    classes = tuple(classes)
    unknown = [c for c in classes if c not in KNOWN_CLASSES]
    if unknown or not classes:
        raise UserError(
            f"unknown simulated class(es) {', '.join(unknown) or '(none given)'}: "
            f"known are {', '.join(KNOWN_CLASSES)}"
        )
    return classes


def make_psf(spec: ExposureSpec, fwhm: float) -> galsim.GSObject:
    """The PSF of an exposure: seeing, then a tracking trail or a defocused pupil."""
    psf = galsim.Kolmogorov(fwhm=fwhm)
    if spec.trail_length > 0:
        trail = galsim.Box(spec.trail_length, 1e-3).rotate(spec.trail_angle * galsim.degrees)
        psf = galsim.Convolve(psf, trail)
    if spec.donut_radius > 0:
        # strong defocus, geometric limit: a uniformly lit image of the annular
        # pupil (central obscuration 0.45), blurred by the seeing
        r_out, r_in = spec.donut_radius, 0.45 * spec.donut_radius
        area_out, area_in = r_out**2, r_in**2
        pupil = galsim.Add(
            galsim.TopHat(r_out, flux=area_out / (area_out - area_in)),
            galsim.TopHat(r_in, flux=-area_in / (area_out - area_in)),
        )
        psf = galsim.Convolve(psf, pupil)
    return psf


def _stamp_size(spec: ExposureSpec, fwhm: float, scale: float) -> int:
    extent = 6 * fwhm + spec.trail_length + 2.5 * spec.donut_radius
    n = int(math.ceil(extent / scale)) | 1
    return max(n, 25)


def _draw_phases(obj: galsim.GSObject, n: int, scale: float, phases: int = 3) -> list[np.ndarray]:
    """Unit-flux images of ``obj`` at ``phases`` x ``phases`` sub-pixel offsets."""
    out = []
    for j in range(phases):
        for i in range(phases):
            off = (i / phases - 0.5 + 0.5 / phases, j / phases - 0.5 + 0.5 / phases)
            im = obj.withFlux(1.0).drawImage(nx=n, ny=n, scale=scale, offset=off).array
            out.append(np.asarray(im, dtype=np.float32))
    return out


def _add_stamps(
    image: np.ndarray,
    stamps: list[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    phases: int = 3,
) -> None:
    """Add ``flux * stamp`` centred on each (x, y), clipped at the edges."""
    h, w = image.shape
    n = stamps[0].shape[0]
    half = n // 2
    ix = np.floor(x + 0.5).astype(int)
    iy = np.floor(y + 0.5).astype(int)
    px = np.clip(((x + 0.5 - ix) * phases).astype(int), 0, phases - 1)
    py = np.clip(((y + 0.5 - iy) * phases).astype(int), 0, phases - 1)
    for cx, cy, sx, sy, f in zip(ix, iy, px, py, flux):
        x0, y0 = cx - half, cy - half
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + n, w), min(y0 + n, h)
        if xa >= xb or ya >= yb:
            continue
        stamp = stamps[sy * phases + sx]
        image[ya:yb, xa:xb] += f * stamp[ya - y0 : yb - y0, xa - x0 : xb - x0]


def _magnitudes(rng: np.random.Generator, n: int, bright: float, faint: float, slope: float) -> np.ndarray:
    """``n`` magnitudes with counts rising as 10^(slope m) between bright and faint."""
    u = rng.uniform(size=n)
    a, b = 10 ** (slope * bright), 10 ** (slope * faint)
    return np.log10(a + u * (b - a)) / slope


def streak_lines(spec: ExposureSpec, cfg: SimulateConfig) -> list[tuple[float, float, float, float]]:
    """The trails of an exposure in focal-plane pixels: (x0, y0, angle, peak in units of sky), one to three.

    Drawn from the exposure's seed alone, so every CCD sees the same lines.
    """
    rng = np.random.default_rng([spec.seed, 0x5A7])
    h, w = cfg.ccd_shape
    rows = int(math.ceil(cfg.n_ccds / cfg.ccd_columns))
    width, height = cfg.ccd_columns * w, rows * h
    return [
        (
            float(rng.uniform(0.2, 0.8) * width),
            float(rng.uniform(0.2, 0.8) * height),
            float(rng.uniform(0, np.pi)),
            float(rng.uniform(0.15, 0.6)),
        )
        for _ in range(int(rng.integers(1, 4)))
    ]


def _add_streaks(
    image: np.ndarray,
    spec: ExposureSpec,
    y_off: int,
    x_off: int,
    sigma_fwhm_px: float,
    sky: float,
    cfg: SimulateConfig,
) -> int:
    """Add the exposure's trails to one CCD (PSF-wide Gaussian profile across the line); how many cross it."""
    h, w = image.shape
    sigma = sigma_fwhm_px / 2.3548
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    crossing = 0
    for x0, y0, angle, peak in streak_lines(spec, cfg):
        d = np.abs((xx + x_off - x0) * np.sin(angle) - (yy + y_off - y0) * np.cos(angle))
        if float(d.min()) > 5 * sigma:
            continue
        image += np.float32(peak * sky) * np.exp(-(d * d) / np.float32(2 * sigma * sigma))
        crossing += 1
    return crossing


def simulate_ccd(spec: ExposureSpec, ccd: int, cfg: SimulateConfig) -> tuple[np.ndarray, fits.Header]:
    """Pixels (uint16) and header cards of one CCD of an exposure.

    The sky (with the exposure's background problem), stars and galaxies
    through the exposure's PSF, streaks, then the detector: noise, bleeding
    saturated stars, cosmic rays, a hot column.  One generator seeded by
    (exposure, CCD) draws everything in that order, so a CCD is the same
    whichever process writes it.
    """
    rng = np.random.default_rng([spec.seed, ccd])
    h, w = cfg.ccd_shape
    ccd_row, ccd_col = divmod(ccd, cfg.ccd_columns)
    hdr = _ccd_header(ccd, cfg)
    if rng.uniform() < cfg.p_dead_ccd:
        hdr["SIMDEAD"] = (True, "simulated dead CCD")
        return np.zeros((h, w), dtype=np.uint16), hdr

    fwhm = spec.fwhm * float(rng.uniform(0.95, 1.05))  # PSF varies a little over the field
    psf = make_psf(spec, fwhm)
    hdr["PSFFWHM"] = (round(fwhm, 4), "simulated seeing FWHM (arcsec)")
    hdr["TRAILLEN"] = (round(spec.trail_length, 4), "simulated tracking trail (arcsec)")
    hdr["TRAILANG"] = (round(spec.trail_angle, 2), "simulated trail angle (deg)")
    hdr["DONUTRAD"] = (round(spec.donut_radius, 4), "simulated defocus donut radius (arcsec)")

    sky = cfg.sky_rate * spec.exptime
    image = _sky(spec, ccd_row, ccd_col, sky, rng, cfg, hdr)
    if spec.quality in BACKGROUND_DEFECTS:
        _add_background_defect(image, spec, ccd, cfg, hdr)
    stars = _add_sources(image, spec, psf, fwhm, rng, cfg)
    if spec.quality == "Streak":
        n_streaks = _add_streaks(image, spec, ccd_row * h, ccd_col * w, fwhm / cfg.pixel_scale, sky, cfg)
        hdr["SIMSTRK"] = (n_streaks, "simulated satellite trails crossing this CCD")
    image = _detector(image, stars, fwhm, spec, rng, cfg, hdr)
    return np.clip(np.rint(image), 0, cfg.saturation).astype(np.uint16), hdr


def _ccd_header(ccd: int, cfg: SimulateConfig) -> fits.Header:
    """The cards every CCD carries: name, focal-plane place, scale and detector constants."""
    h, w = cfg.ccd_shape
    ccd_row, ccd_col = divmod(ccd, cfg.ccd_columns)
    hdr = fits.Header()
    hdr["EXTNAME"] = f"ccd{ccd:02d}"
    hdr["CCDNUM"] = (ccd, "CCD number")
    hdr["CCDROW"] = (ccd_row, "focal-plane row of the CCD")
    hdr["CCDCOL"] = (ccd_col, "focal-plane column of the CCD")
    hdr["DETSEC"] = f"[{ccd_col * w + 1}:{(ccd_col + 1) * w},{ccd_row * h + 1}:{(ccd_row + 1) * h}]"
    hdr["PIXSCAL1"] = (cfg.pixel_scale, "arcsec / pixel")
    hdr["PIXSCAL2"] = (cfg.pixel_scale, "arcsec / pixel")
    hdr["SATURATE"] = (cfg.saturation, "ADU")
    hdr["GAIN"] = (cfg.gain, "e-/ADU")
    hdr["RDNOISE"] = (cfg.read_noise, "e-")
    return hdr


def _sky(
    spec: ExposureSpec,
    ccd_row: int,
    ccd_col: int,
    sky: float,
    rng: np.random.Generator,
    cfg: SimulateConfig,
    hdr: fits.Header,
) -> np.ndarray:
    """The sky level in ADU, with a gradient and fringes or a scattered-light glow for those kinds."""
    h, w = cfg.ccd_shape
    image = np.full((h, w), sky, dtype=np.float32)
    if spec.kind not in ("gradient", "scattered"):
        return image
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if spec.kind == "gradient":
        amp = sky * rng.uniform(1.0, 2.5)
        ang = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(ang) * xx / w + np.sin(ang) * yy / h
        period = rng.uniform(80, 200)
        fringes = np.sin(2 * np.pi * (xx * np.cos(ang + 1) + yy * np.sin(ang + 1)) / period)
        image += amp * ramp + 0.25 * sky * fringes
        hdr["SIMBGP"] = "gradient"
    else:
        # a glow centred off the focal plane, continuous from CCD to CCD
        gx = (ccd_col * w + xx) - (cfg.ccd_columns * w) * 1.1
        gy = (ccd_row * h + yy) - (4 * h) * 0.5
        r = np.hypot(gx, gy) / (cfg.ccd_columns * w)
        image += sky * rng.uniform(2.0, 4.0) * np.exp(-(((r - 0.35) / 0.12) ** 2))
        hdr["SIMBGP"] = "scattered"
    return image


def sky_sigma(sky: float, cfg: SimulateConfig) -> float:
    """The noise of a sky level (ADU): photons and read noise, in ADU."""
    return math.sqrt(sky * cfg.gain + cfg.read_noise**2) / cfg.gain


def _add_background_defect(
    image: np.ndarray, spec: ExposureSpec, ccd: int, cfg: SimulateConfig, hdr: fits.Header
) -> None:
    """Add a :data:`BACKGROUND_DEFECTS` pattern to a CCD's sky (before the photon noise).

    Drawn from its own generator of (exposure, CCD), so that the classes of
    :data:`CLASSES` keep every draw they had before these classes existed.
    """
    rng = np.random.default_rng([spec.seed, ccd, 0xB6])
    h, w = image.shape
    sigma = sky_sigma(float(image.mean()), cfg)
    if spec.quality == "Pickup":
        # a sinusoid in read-out time: the serial register reads a row, then the next, so a period
        # that does not divide the row length tilts the stripes from row to row
        amp, period = rng.uniform(0.4, 1.0) * sigma, rng.uniform(5.0, 15.0)
        k = np.arange(h * w, dtype=np.float64).reshape(h, w)
        image += (amp * np.sin(2 * np.pi * k / period + rng.uniform(0, 2 * np.pi))).astype(np.float32)
        hdr["SIMPICK"] = (round(float(period), 3), "simulated pickup period (pixels)")
    else:
        # both amplifiers read from the bottom corners (as raw_frame splits the CCD)
        peak, scale = rng.uniform(4.0, 12.0) * sigma, rng.uniform(40.0, 120.0)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        for x_amp in (0.0, w - 1.0):
            image += (peak * np.exp(-np.hypot(xx - x_amp, yy) / scale)).astype(np.float32)
        hdr["SIMGLOW"] = (round(float(scale), 2), "simulated amplifier glow scale (pixels)")


def _add_sources(
    image: np.ndarray, spec: ExposureSpec, psf, fwhm: float, rng: np.random.Generator, cfg: SimulateConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add stars and galaxies through the PSF; returns the stars' (x, y, flux) for the detector's bleeding."""
    h, w = cfg.ccd_shape
    scale = cfg.pixel_scale
    area = h * w / FULL_CCD_PIXELS
    crowd = 8.0 if spec.kind == "crowded" else 1.0
    n_star = rng.poisson(cfg.star_density * area * crowd)
    n_gal = rng.poisson(cfg.galaxy_density * area)
    zp_flux = spec.exptime  # ADU of a zero-point-magnitude... per magnitude below
    stamp_n = _stamp_size(spec, fwhm, scale)

    # stars
    sx, sy = rng.uniform(-10, w + 10, n_star), rng.uniform(-10, h + 10, n_star)
    smag = _magnitudes(rng, n_star, cfg.mag_bright, cfg.mag_limit, 0.25)
    sflux = zp_flux * 10 ** (-0.4 * (smag - cfg.zero_point))
    _add_stamps(image, _draw_phases(psf, stamp_n, scale), sx, sy, sflux.astype(np.float32))

    # galaxies: a few PSF-convolved templates of varied size and shape
    n_templates = 6
    gal_stamps = []
    gal_n = max(stamp_n, 41) | 1
    for _ in range(n_templates):
        hlr = float(rng.uniform(0.3, 1.2))
        gal = galsim.Exponential(half_light_radius=hlr).shear(
            q=float(rng.uniform(0.3, 1.0)), beta=float(rng.uniform(0, 180)) * galsim.degrees
        )
        gal_stamps.append(_draw_phases(galsim.Convolve(gal, psf), gal_n, scale, phases=1)[0])
    gx_, gy_ = rng.uniform(-10, w + 10, n_gal), rng.uniform(-10, h + 10, n_gal)
    gmag = _magnitudes(rng, n_gal, 18.0, cfg.mag_limit, 0.35)
    gflux = (zp_flux * 10 ** (-0.4 * (gmag - cfg.zero_point))).astype(np.float32)
    which = rng.integers(n_templates, size=n_gal)
    for t in range(n_templates):
        sel = which == t
        _add_stamps(image, [gal_stamps[t]], gx_[sel], gy_[sel], gflux[sel], phases=1)
    return sx, sy, sflux


def _detector(
    image: np.ndarray,
    stars: tuple[np.ndarray, np.ndarray, np.ndarray],
    fwhm: float,
    spec: ExposureSpec,
    rng: np.random.Generator,
    cfg: SimulateConfig,
    hdr: fits.Header,
) -> np.ndarray:
    """What the detector adds: photon and read noise, saturated stars bleeding, cosmic rays, a hot column."""
    h, w = cfg.ccd_shape
    # photon and read noise, in electrons
    electrons = rng.poisson(np.clip(image, 0, None) * cfg.gain).astype(np.float32)
    electrons += rng.normal(0.0, cfg.read_noise, size=image.shape).astype(np.float32)
    image = electrons / cfg.gain

    # saturated stars bleed along columns
    sat = cfg.saturation
    for x0, y0, f in zip(*stars):
        peak = f / (2 * np.pi * (fwhm / cfg.pixel_scale / 2.3548) ** 2)
        if peak > 2 * sat and 0 <= x0 < w and 0 <= y0 < h:
            length = int(min(h // 4, 20 * np.log2(peak / sat)))
            xi, yi = int(x0), int(y0)
            image[max(yi - length, 0) : min(yi + length, h), max(xi - 1, 0) : min(xi + 2, w)] = sat
    # cosmic rays: short bright tracks
    n_cr = rng.poisson(cfg.cosmic_rays_per_mpx * h * w / 1e6 * spec.exptime / 300.0 + 1)
    for _ in range(n_cr):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        ln, ang = rng.uniform(1, 12), rng.uniform(0, np.pi)
        t = np.linspace(0, ln, int(ln) + 2)
        xs = np.clip((x0 + t * np.cos(ang)).astype(int), 0, w - 1)
        ys = np.clip((y0 + t * np.sin(ang)).astype(int), 0, h - 1)
        image[ys, xs] += rng.uniform(2000, 20000)
    if rng.uniform() < cfg.p_hot_column:
        col = int(rng.integers(w))
        image[:, col] += rng.uniform(500, 5000)
        hdr["SIMHOTC"] = (col, "simulated hot column")
    return image


def _primary_header(spec: ExposureSpec, cfg: SimulateConfig) -> fits.Header:
    hdr = fits.Header()
    t = Time(spec.mjd, format="mjd", scale="utc")
    hdr["EXPNUM"] = (spec.expnum, "exposure number")
    hdr["OBJECT"] = f"SIMFIELD{spec.index % 7:02d}"
    hdr["FILTER"] = spec.filter
    hdr["EXPTIME"] = (round(spec.exptime, 3), "s")
    hdr["MJD-OBS"] = (round(spec.mjd, 8), "start of exposure (UTC)")
    hdr["DATE-OBS"] = t.isot
    hdr["AIRMASS"] = round(spec.airmass, 4)
    hdr["MAGZPT"] = (cfg.zero_point, "mag giving 1 ADU/s")
    hdr["NEXTEND"] = cfg.n_ccds
    hdr["TELESCOP"] = "SIMULATED"
    hdr["INSTRUME"] = "desomspark-sim"
    hdr["QUALITY"] = (spec.quality, "simulated ground truth class")
    hdr["QUALKIND"] = (spec.kind, "simulated BGP kind")
    hdr["SIMSEED"] = (spec.seed, "simulation seed of this exposure")
    hdr["SIMFWHM"] = (round(spec.fwhm, 4), "simulated seeing (arcsec)")
    return hdr


#: columns of serial overscan on each side of a raw CCD (MegaCam: 32)
OVERSCAN = 32


def raw_frame(
    pixels: np.ndarray, hdr: fits.Header, spec: ExposureSpec, ccd: int, cfg: SimulateConfig
) -> tuple[np.ndarray, fits.Header]:
    """The raw read-out of a simulated CCD, as a MegaCam raw frame: two amplifiers, each with overscan.

    The CCD's left half is read by amplifier A, the right half by B; each
    amplifier has its own gain (e-/ADU, ``GAINA``/``GAINB``) and bias level,
    which drifts by a few ADU along the rows, and writes ``OVERSCAN``
    columns of bias (with read noise) on its own side: ``BIASSECA`` left,
    ``BIASSECB`` right.  ``DATASEC`` is the whole light-sensitive area.  The
    electrons are those of the processed frame (its ADU x ``cfg.gain``), so
    the same scene can be read both ways.
    """
    rng = np.random.default_rng([spec.seed, ccd, 0xB1A5])
    h, w = pixels.shape
    half = w // 2
    electrons = pixels.astype(np.float64) * cfg.gain
    raw = np.empty((h, w + 2 * OVERSCAN), dtype=np.float64)
    rows = np.arange(h)[:, None]
    for amp, cols, over in (
        ("A", slice(0, half), slice(0, OVERSCAN)),
        ("B", slice(half, w), slice(OVERSCAN + w, w + 2 * OVERSCAN)),
    ):
        gain = float(rng.uniform(1.3, 1.9))
        bias = (
            float(rng.uniform(900.0, 1600.0)) + float(rng.uniform(-4, 4)) * rows / h
        )  # drifts along the rows
        shifted = slice(cols.start + OVERSCAN, cols.stop + OVERSCAN)
        raw[:, shifted] = electrons[:, cols] / gain + bias
        raw[:, over] = bias + rng.normal(0.0, cfg.read_noise / gain, size=(h, OVERSCAN))
        first, last = shifted.start + 1, shifted.stop
        hdr[f"DATASEC{amp}"] = f"[{first}:{last},1:{h}]"
        hdr[f"BIASSEC{amp}"] = f"[{over.start + 1}:{over.stop},1:{h}]"
        hdr[f"GAIN{amp}"] = (round(gain, 4), f"e-/ADU of amplifier {amp}")
    hdr["DATASEC"] = f"[{OVERSCAN + 1}:{OVERSCAN + w},1:{h}]"
    hdr["SATURATE"] = (cfg.saturation, "ADU (raw)")
    return np.clip(np.rint(raw), 0, 65535).astype(np.uint16), hdr


#: LSST-like segments: prescan columns before the data, serial overscan after, parallel overscan above
PRESCAN, SEGMENT_OVERSCAN, PARALLEL_OVERSCAN = 3, 16, 8


def segment_frames(
    pixels: np.ndarray,
    hdr: fits.Header,
    spec: ExposureSpec,
    ccd: int,
    cfg: SimulateConfig,
    grid: tuple[int, int] = (2, 4),
) -> list[tuple[np.ndarray, fits.Header]]:
    """The raw read-out of a simulated CCD as LSST writes it: one HDU per amplifier segment.

    The CCD is cut into ``grid`` (rows, columns) amplifiers.  Each segment
    holds ``PRESCAN`` columns, its data (``DATASEC``), ``SEGMENT_OVERSCAN``
    columns of serial overscan and ``PARALLEL_OVERSCAN`` rows of parallel
    overscan, with no ``BIASSEC`` card (as LSST raw files); its own gain and
    bias level; and the data read from the amplifier's corner, so that the
    top row of amplifiers is flipped in y and every other column in x --
    ``DETSEC`` says so (x1 > x2, y1 > y2).  Each segment names its CCD
    (``CCDNAME``).
    """
    rng = np.random.default_rng([spec.seed, ccd, 0x5E6])
    h, w = pixels.shape
    rows, cols = grid
    sh, sw = h // rows, w // cols
    electrons = pixels.astype(np.float64) * cfg.gain
    frames = []
    for r in range(rows):
        for c in range(cols):
            gain = float(rng.uniform(1.3, 1.9))
            bias = float(rng.uniform(15000.0, 25000.0))
            block = electrons[r * sh : (r + 1) * sh, c * sw : (c + 1) * sw]
            flip_y, flip_x = r == rows - 1 and rows > 1, c % 2 == 1
            read = block[:: -1 if flip_y else 1, :: -1 if flip_x else 1]
            raw = bias + rng.normal(
                0.0, cfg.read_noise / gain, size=(sh + PARALLEL_OVERSCAN, PRESCAN + sw + SEGMENT_OVERSCAN)
            )
            raw[:sh, PRESCAN : PRESCAN + sw] += read / gain
            x1, x2 = c * sw + 1, (c + 1) * sw
            y1, y2 = r * sh + 1, (r + 1) * sh
            seg = hdr.copy()
            seg["EXTNAME"] = f"Segment{r}{c}"
            seg["CCDNAME"] = hdr["EXTNAME"]
            seg["DATASEC"] = f"[{PRESCAN + 1}:{PRESCAN + sw},1:{sh}]"
            seg["DETSEC"] = (
                f"[{x2 if flip_x else x1}:{x1 if flip_x else x2},"
                f"{y2 if flip_y else y1}:{y1 if flip_y else y2}]"
            )
            seg["DETSIZE"] = f"[1:{w},1:{h}]"
            seg["GAIN"] = (round(gain, 4), "e-/ADU")
            frames.append((np.clip(np.rint(raw), 0, 65535).astype(np.uint16), seg))
    return frames


RAW_KINDS = ("amplifiers", "segments")


def exposure_filename(spec: ExposureSpec, compress: bool, raw: bool | str = False) -> str:
    return f"sim{spec.expnum}" + ("_raw" if raw else "") + ".fits" + (".fz" if compress else "")


def write_exposure(
    spec: ExposureSpec,
    out_dir: str | os.PathLike,
    cfg: SimulateConfig,
    compress: bool = False,
    raw: bool | str = False,
) -> Path:
    """Simulate one exposure and write it as a multi-extension FITS file.

    ``raw``: as the camera reads it out, ``"amplifiers"`` (or True) two
    amplifiers with overscan per CCD HDU (:func:`raw_frame`, MegaCam),
    ``"segments"`` one HDU per amplifier (:func:`segment_frames`, LSST).
    """
    if raw and raw is not True and raw not in RAW_KINDS:
        raise UserError(f"raw must be one of {RAW_KINDS}, not {raw!r}")
    hdus: list[fits.hdu.base.ExtensionHDU | fits.PrimaryHDU] = [
        fits.PrimaryHDU(header=_primary_header(spec, cfg))
    ]
    for ccd in range(cfg.n_ccds):
        data, hdr = simulate_ccd(spec, ccd, cfg)
        if raw == "segments":
            frames = segment_frames(data, hdr, spec, ccd, cfg)
        elif raw:
            frames = [raw_frame(data, hdr, spec, ccd, cfg)]
        else:
            frames = [(data, hdr)]
        for data, hdr in frames:
            if compress:
                hdus.append(fits.CompImageHDU(data=data, header=hdr, compression_type="RICE_1"))
            else:
                hdus.append(fits.ImageHDU(data=data, header=hdr))
    path = Path(out_dir) / exposure_filename(spec, compress, raw)
    tmp = path.with_name(path.name + ".part")
    fits.HDUList(hdus).writeto(tmp, overwrite=True)
    os.replace(tmp, path)  # a reader never sees half a file
    return path


def _write_one(args):
    spec, out_dir, cfg, compress, raw = args
    return write_exposure(spec, out_dir, cfg, compress, raw)


def _progress(done: int, total: int) -> None:
    """A progress bar on a terminal; a line per quarter in a log."""
    if sys.stderr.isatty():
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\rsimulate [{'#' * filled}{'.' * (width - filled)}] {done}/{total} exposures")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    elif done == total or done * 4 // total != (done - 1) * 4 // total:
        _LOG.info(f"simulate: {done}/{total} exposures")


def simulate_night(
    out_dir: str | os.PathLike,
    n_exposures: int,
    cfg: SimulateConfig = SimulateConfig(),
    seed: int = 0,
    mix: str = "balanced",
    compress: bool = False,
    raw: bool | str = False,
    processes: int | None = None,
    progress: bool = True,
    mjd0: float = 61000.3,
    classes: tuple[str, ...] = CLASSES,
) -> list[Path]:
    """Write ``n_exposures`` simulated exposures and ``truth.csv`` into ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
    n_exposures : int
    cfg : SimulateConfig
        Camera and sky (``n_ccds`` and ``ccd_shape`` make small exposures for tests).
    seed : int
        Same seed, same bytes.
    mix : {"balanced", "survey"}
    compress : bool
        Rice-compress every CCD (``.fits.fz``).
    raw : bool or {"amplifiers", "segments"}
        Write raw frames: two amplifiers with overscan per CCD HDU
        (:func:`raw_frame`), or one HDU per amplifier (:func:`segment_frames`).
    processes : int, optional
        Worker processes (default: the machine's cores).
    mjd0 : float
        MJD of the night's first exposure (the default falls in night 20251120).
    classes : tuple of str
        The classes the night may hold (:func:`plan_night`).

    Returns
    -------
    list of Path
        The files written, in exposure order.
    """
    if n_exposures < 1:
        raise UserError("--exposures must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = plan_night(n_exposures, seed=seed, mix=mix, cfg=cfg, mjd0=mjd0, classes=classes)
    processes = processes or os.cpu_count() or 1
    jobs = [(s, out, cfg, compress, raw) for s in specs]
    paths: list[Path] = []
    if processes == 1 or n_exposures == 1:
        for i, job in enumerate(jobs):
            paths.append(_write_one(job))
            if progress:
                _progress(i + 1, n_exposures)
    else:
        with ProcessPoolExecutor(max_workers=min(processes, n_exposures)) as pool:
            for i, path in enumerate(pool.map(_write_one, jobs)):
                paths.append(path)
                if progress:
                    _progress(i + 1, n_exposures)
    with open(out / "truth.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["exposure_id", "file", "quality", "kind", "fwhm", "trail_length", "donut_radius", "exptime"]
        )
        for s, p in zip(specs, paths):
            writer.writerow(
                [
                    str(s.expnum),
                    p.name,
                    s.quality,
                    s.kind,
                    f"{s.fwhm:.4f}",
                    f"{s.trail_length:.4f}",
                    f"{s.donut_radius:.4f}",
                    f"{s.exptime:.3f}",
                ]
            )
    return paths


def small_config(cfg: SimulateConfig, n_ccds: int, shape: tuple[int, int]) -> SimulateConfig:
    """``cfg`` with another camera size (tests and demos)."""
    return replace(
        cfg,
        n_ccds=n_ccds,
        ccd_shape=tuple(shape),
        ccd_columns=min(cfg.ccd_columns, max(1, int(math.ceil(math.sqrt(n_ccds))))),
    )
