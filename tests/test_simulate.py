"""The simulator writes real survey-like FITS, and each class shows its property in the pixels."""

from __future__ import annotations

import csv
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import sep
from astropy.io import fits

from desomspark.errors import UserError
from desomspark.evaluation.simulate import CLASSES, plan_night, simulate_ccd, simulate_night
from desomspark.ingest.detect import detect_sources

HEADER_KEYS = ("EXPNUM", "EXPTIME", "FILTER", "MJD-OBS", "DATE-OBS", "AIRMASS", "OBJECT", "QUALITY")


def test_files_open_with_headers_and_detections(night_dir, config):
    files = sorted(night_dir.glob("*.fits"))
    assert len(files) == 12
    truth = list(csv.DictReader(open(night_dir / "truth.csv")))
    assert [t["file"] for t in truth] == [f.name for f in files]
    assert {t["quality"] for t in truth} == set(CLASSES)
    with fits.open(files[0]) as hdul:
        assert len(hdul) == 1 + 4
        for key in HEADER_KEYS:
            assert key in hdul[0].header, key
        ccd = hdul[1]
        assert ccd.header["EXTNAME"] == "ccd00"
        assert ccd.header["BITPIX"] == 16 and ccd.header["BZERO"] == 32768  # raw survey storage
        assert "PSFFWHM" in ccd.header
        data = ccd.data.astype(np.float32)
    assert data.shape == (512, 512)
    objects, _ = detect_sources(data, config.ingest)
    assert len(objects) > 10


def test_same_seed_same_bytes(tmp_path, small_sim):
    one = replace(small_sim, n_ccds=2)
    a = simulate_night(tmp_path / "a", 2, one, seed=11, processes=1, progress=False)
    b = simulate_night(tmp_path / "b", 2, one, seed=11, processes=2, progress=False)
    c = simulate_night(tmp_path / "c", 2, one, seed=12, processes=1, progress=False)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    za = simulate_night(tmp_path / "za", 1, one, seed=11, compress=True, processes=1, progress=False)
    zb = simulate_night(tmp_path / "zb", 1, one, seed=11, compress=True, processes=1, progress=False)
    assert za[0].name.endswith(".fits.fz") and za[0].read_bytes() == zb[0].read_bytes()
    with fits.open(za[0]) as z, fits.open(a[0]) as plain:
        assert isinstance(z[1], fits.CompImageHDU)
        np.testing.assert_array_equal(z[1].data, plain[1].data)  # Rice is lossless on integers


# --- each class, measured on the image ---------------------------------------


@pytest.fixture(scope="module")
def class_images(small_sim):
    """One 1024x1024 CCD of the first exposure of each class (and BGP kind) of a balanced night."""
    cfg = replace(small_sim, ccd_shape=(1024, 1024), p_hot_column=0.0)
    specs = plan_night(28, seed=5, mix="balanced", cfg=cfg)  # 4 BGP: every kind
    images = {}
    for spec in specs:
        key = spec.quality if spec.quality != "BGP" else f"BGP/{spec.kind}"
        if key not in images:
            data, _ = simulate_ccd(spec, 1, cfg)
            images[key] = data.astype(np.float32)
    return images


def _bright_stars(image, config, min_snr=100.0):
    objects, bkg = detect_sources(image, config.ingest)
    snr = objects["flux"] / (bkg.globalrms * np.sqrt(np.maximum(objects["npix"], 1)))
    keep = (snr > min_snr) & (objects["peak"] < 40000) & (objects["flag"] == 0)
    return objects[keep], bkg


def test_tracking_errors_elongate_stars(class_images, config):
    elong = {}
    for name in ("Good", "BT", "RBT"):
        stars, _ = _bright_stars(class_images[name], config)
        assert len(stars) >= 10, name
        elong[name] = float(np.median(stars["a"] / stars["b"]))
    assert elong["Good"] < 1.25
    assert elong["BT"] > elong["Good"] + 0.15
    assert elong["RBT"] > elong["BT"] + 1.0


def test_bad_seeing_broadens_stars(class_images, config):
    fwhm = {}
    for name in ("Good", "B-Seeing"):
        image = class_images[name]
        stars, bkg = _bright_stars(image, config)
        radius, _ = sep.flux_radius(
            image - bkg.back(), stars["x"], stars["y"], 6.0 * stars["a"], 0.5, subpix=5
        )
        fwhm[name] = 2 * float(np.median(radius)) * 0.187  # half-light diameter, arcsec
    assert fwhm["B-Seeing"] > 1.5 * fwhm["Good"]


def _stacked_profile(image, stars, half=12):
    stack = []
    for x, y in zip(stars["x"], stars["y"]):
        ix, iy = int(round(x)), int(round(y))
        if half <= ix < image.shape[1] - half and half <= iy < image.shape[0] - half:
            stamp = image[iy - half : iy + half + 1, ix - half : ix + half + 1]
            stack.append((stamp - np.median(image)) / stamp.max())
    return np.median(stack, axis=0)


def test_bad_focus_stars_have_a_central_dip(class_images, config):
    ratios = {}
    for name in ("Good", "BadFocus"):
        stars, _ = _bright_stars(class_images[name], config, min_snr=50)
        profile = _stacked_profile(class_images[name], stars)
        c = profile.shape[0] // 2
        yy, xx = np.indices(profile.shape)
        r = np.hypot(yy - c, xx - c)
        ring = max(profile[(r >= k) & (r < k + 1)].mean() for k in range(1, 10))
        ratios[name] = profile[c - 1 : c + 2, c - 1 : c + 2].mean() / ring
    assert ratios["Good"] > 0.9  # centre is the peak
    assert ratios["BadFocus"] < 0.8  # a donut: the ring outshines the centre


def test_low_exposure_gives_fewer_detections(class_images, config):
    good, _ = detect_sources(class_images["Good"], config.ingest)
    low, _ = detect_sources(class_images["BGP/lowexp"], config.ingest)
    assert len(low) < 0.5 * len(good)


def test_background_problems_show_in_the_background(class_images, config):
    _, good = detect_sources(class_images["Good"], config.ingest)
    for kind in ("gradient", "scattered"):
        _, bkg = detect_sources(class_images[f"BGP/{kind}"], config.ingest)
        back = bkg.back()
        # the sky map varies across the CCD far more than a good sky does
        assert np.ptp(back) > 10 * np.ptp(good.back()), kind
    crowded, _ = detect_sources(class_images["BGP/crowded"], config.ingest)
    normal, _ = detect_sources(class_images["Good"], config.ingest)
    assert len(crowded) > 2 * len(normal)


def test_satellite_trails_cross_ccds_as_straight_lines(small_sim):
    """A Streak exposure's trails come from the exposure alone: continuous from CCD to CCD."""
    from desomspark.evaluation.simulate import streak_lines

    cfg = replace(small_sim, p_hot_column=0.0, p_dead_ccd=0.0)
    spec = next(s for s in plan_night(14, seed=3, mix="balanced", cfg=cfg) if s.quality == "Streak")
    lines = streak_lines(spec, cfg)
    assert 1 <= len(lines) <= 3 and lines == streak_lines(spec, cfg)
    crossed = 0
    h, w = cfg.ccd_shape
    for ccd in range(cfg.n_ccds):
        data, header = simulate_ccd(spec, ccd, cfg)
        crossed += header["SIMSTRK"] > 0
        row, col = divmod(ccd, cfg.ccd_columns)
        for x0, y0, angle, peak in lines:
            # sample the line inside this CCD: it is brighter than the sky by about its peak
            t = np.linspace(-4 * max(h, w), 4 * max(h, w), 20000)
            xs, ys = x0 + t * np.cos(angle) - col * w, y0 + t * np.sin(angle) - row * h
            inside = (xs >= 2) & (xs < w - 2) & (ys >= 2) & (ys < h - 2)
            if inside.sum() > 200:
                on = np.median(data[ys[inside].astype(int), xs[inside].astype(int)])
                assert on > cfg.sky_rate * spec.exptime * (1 + 0.5 * peak)
    assert crossed >= 1


def test_dead_ccd_is_constant(small_sim):
    cfg = replace(small_sim, p_dead_ccd=1.0)
    data, header = simulate_ccd(plan_night(1, seed=1, cfg=cfg)[0], 0, cfg)
    assert header["SIMDEAD"] and data.min() == data.max()


def test_survey_mix_follows_the_real_class_mix(small_sim):
    specs = plan_night(2000, seed=3, mix="survey", cfg=small_sim)
    good = sum(s.quality == "Good" for s in specs) / len(specs)
    assert 0.74 < good < 0.82


def test_command_line_writes_a_night(tmp_path):
    out = tmp_path / "night"
    cmd = [
        sys.executable,
        "-m",
        "desomspark.cli",
        "simulate",
        "--out",
        str(out),
        "--exposures",
        "3",
        "--ccds",
        "2",
        "--ccd-shape",
        "256",
        "256",
        "--mix",
        "survey",
        "--seed",
        "4",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(list(out.glob("*.fits"))) == 3 and (out / "truth.csv").exists()
    bad = subprocess.run(cmd[:-2] + ["--mix", "weird"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    # --classes: only the classes asked for, the background defects among them; an unknown one is refused
    asked = subprocess.run(cmd + ["--classes", "Pickup,AmpGlow"], capture_output=True, text=True, timeout=120)
    assert asked.returncode == 0, asked.stderr
    with open(out / "truth.csv", newline="") as fh:
        assert {row["quality"] for row in csv.DictReader(fh)} <= {"Pickup", "AmpGlow"}
    unknown = subprocess.run(cmd + ["--classes", "Good,Fringe"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode != 0 and "unknown simulated class(es) Fringe" in unknown.stderr


def test_background_defects_live_between_the_sources(small_sim, config):
    """Pickup: correlated stripes that per-star numbers do not see; AmpGlow: bright amplifier corners."""
    from desomspark.evaluation.simulate import KNOWN_CLASSES, sky_sigma
    from desomspark.ingest.qa import noise_correlation

    cfg = replace(small_sim, ccd_shape=(512, 512), p_hot_column=0.0, p_dead_ccd=0.0)
    specs = plan_night(len(KNOWN_CLASSES), seed=9, cfg=cfg, classes=KNOWN_CLASSES)
    assert [s.quality for s in specs] == list(KNOWN_CLASSES)
    images = {s.quality: simulate_ccd(s, 0, cfg) for s in specs}
    correlation = {}
    for name, (data, _) in images.items():
        objects, bkg = detect_sources(data.astype(np.float32), config.ingest)
        correlation[name] = noise_correlation(data.astype(np.float32) - bkg.back(), bkg.globalrms)
    assert correlation["Pickup"] > 0.1 > max(correlation[c] for c in ("Good", "BT", "B-Seeing", "AmpGlow"))
    glow, header = images["AmpGlow"]
    sigma = sky_sigma(cfg.sky_rate * specs[0].exptime, cfg)
    corner = np.median(glow[:8, :8].astype(float))
    assert corner - np.median(glow[200:300, 200:300].astype(float)) > 3 * sigma, header["SIMGLOW"]
    assert "SIMPICK" in images["Pickup"][1] and "SIMGLOW" not in images["Good"][1]


def test_a_night_of_the_paper_classes_is_unchanged_by_the_defect_classes(small_sim):
    """The defects draw from their own generator: a Good exposure is the same in either night plan."""
    from desomspark.evaluation.simulate import KNOWN_CLASSES, check_classes

    cfg = replace(small_sim, ccd_shape=(128, 128))
    plain = plan_night(7, seed=4, cfg=cfg)
    assert [s.quality for s in plain] == list(CLASSES)
    assert plan_night(7, seed=4, cfg=cfg, classes=KNOWN_CLASSES)[:7] == plain
    with pytest.raises(UserError, match="unknown simulated class.*Fringe"):
        check_classes(["Good", "Fringe"])
