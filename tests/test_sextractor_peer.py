"""Detection agrees with the original pipeline's detector, SExtractor 2.25 (Debian's source-extractor).

SExtractor runs on the same CCD with the original pipeline's settings (README, "Pipeline").
With our own Gaussian filter (built like SExtractor's, see
``detect.gaussian_kernel``) >= 99 % of SExtractor's sources are found within
1 px; given SExtractor's own filter file, the two lists are identical.

Extended shapes are the exception: on long trails (RBT) and donuts
(BadFocus) both place the shared sources within 1e-4 px, but their
deblenders split a few of them differently (pieces 6-20 px apart), at every
DEBLEND_MINCONT tried (0, 0.001, 0.005); agreement there is 94-100 %
depending on the field, and the tests hold it to >= 95 % (donuts) and
>= 90 % (trails).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from tools import require_tool

from desomspark.evaluation.simulate import plan_night, simulate_ccd
from desomspark.ingest.detect import detect_sources

SEXTRACTOR = shutil.which("source-extractor") or shutil.which("sex")


@pytest.fixture(autouse=True)
def _sextractor_installed():
    require_tool(
        SEXTRACTOR is not None, "source-extractor is not on PATH (scripts/install_test_tools.sh installs it)"
    )


CONV = Path("/usr/share/source-extractor/gauss_3.0_7x7.conv")


def _sextractor(image: np.ndarray, workdir: Path, cfg) -> np.ndarray:
    fits.PrimaryHDU(image).writeto(workdir / "ccd.fits", overwrite=True)
    (workdir / "xy.param").write_text("X_IMAGE\nY_IMAGE\n")
    conv = CONV if CONV.exists() else workdir / "gauss.conv"
    if not CONV.exists():
        from desomspark.ingest.detect import gaussian_kernel

        k = gaussian_kernel(cfg.filter_fwhm, cfg.filter_size)
        conv.write_text("CONV NORM\n" + "\n".join(" ".join(f"{v:.6f}" for v in row) for row in k) + "\n")
    args = [
        SEXTRACTOR,
        str(workdir / "ccd.fits"),
        "-c",
        "/dev/null",
        "-CATALOG_NAME",
        str(workdir / "cat.txt"),
        "-CATALOG_TYPE",
        "ASCII",
        "-PARAMETERS_NAME",
        str(workdir / "xy.param"),
        "-DETECT_THRESH",
        str(cfg.detect_thresh),
        "-ANALYSIS_THRESH",
        str(cfg.detect_thresh),
        "-DETECT_MINAREA",
        str(cfg.min_area),
        "-FILTER",
        "Y",
        "-FILTER_NAME",
        str(conv),
        "-DEBLEND_NTHRESH",
        str(cfg.deblend_nthresh),
        "-DEBLEND_MINCONT",
        str(cfg.deblend_cont),
        "-CLEAN",
        "Y" if cfg.clean else "N",
        "-CLEAN_PARAM",
        str(cfg.clean_param),
        "-BACK_SIZE",
        str(cfg.back_size),
        "-BACK_FILTERSIZE",
        str(cfg.back_filter_size),
        "-SATUR_LEVEL",
        "1e9",
        "-MEMORY_PIXSTACK",
        "5000000",
        "-MEMORY_OBJSTACK",
        "20000",
        "-VERBOSE_TYPE",
        "QUIET",
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=workdir)
    assert done.returncode == 0, done.stderr
    xy = np.loadtxt(workdir / "cat.txt", ndmin=2)
    return xy[:, :2] - 1.0  # SExtractor counts pixels from 1


def _matched(a: np.ndarray, b: np.ndarray, tol: float = 1.0) -> np.ndarray:
    """For each point of ``a``, whether a point of ``b`` lies within ``tol`` px."""
    d = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    return d.min(axis=1) <= tol


@pytest.fixture(scope="module")
def ccds(small_sim):
    """One 1024x1024 CCD of each PSF class."""
    cfg = replace(small_sim, ccd_shape=(1024, 1024))
    specs = plan_night(6, seed=21, cfg=cfg)
    return {s.quality: simulate_ccd(s, 0, cfg)[0].astype(np.float32) for s in specs}


@pytest.mark.parametrize(
    "quality,agreement", [("Good", 0.99), ("BT", 0.99), ("B-Seeing", 0.99), ("BadFocus", 0.95), ("RBT", 0.90)]
)
def test_sep_finds_what_sextractor_finds(ccds, quality, agreement, tmp_path, config):
    image = ccds[quality]
    reference = _sextractor(image, tmp_path, config.ingest)
    assert len(reference) > 50
    objects, _ = detect_sources(image, config.ingest)
    ours = np.c_[objects["x"], objects["y"]]
    assert _matched(reference, ours).mean() >= agreement
    assert abs(len(ours) - len(reference)) <= 0.02 * len(reference)


def test_configured_alike_they_agree_on_every_source(ccds, tmp_path, config):
    require_tool(CONV.exists(), f"SExtractor's filter file {CONV} is not installed")
    image = ccds["Good"]
    reference = _sextractor(image, tmp_path, config.ingest)
    kernel = np.loadtxt(CONV, skiprows=2, max_rows=7)
    objects, _ = detect_sources(image, config.ingest, kernel=kernel)
    ours = np.c_[objects["x"], objects["y"]]
    assert len(ours) == len(reference)
    assert _matched(reference, ours).all() and _matched(ours, reference).all()
