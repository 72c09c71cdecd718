"""Ingest through a real local Spark session: bad files become rejects, nothing is lost or doubled."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from desomspark.evaluation.simulate import simulate_night
from desomspark.ingest.cutout import decode_pixels
from desomspark.ingest.detect import process_ccd
from desomspark.ingest.fitsio import read_ccd, scan_file
from desomspark.lake.layout import Lake
from desomspark.stages.ingest import ingest, read_and_process

NIGHT = "20251120"  # the simulator's MJD 61000.3 falls in this night


def _mef(path, images, primary=None):
    hdus = [fits.PrimaryHDU(header=primary)] + [
        fits.ImageHDU(im, name=f"ccd{i:02d}") for i, im in enumerate(images)
    ]
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.fixture(scope="module")
def mixed_night(tmp_path_factory, night_dir):
    """6 good simulated exposures plus one file of each kind of trouble."""
    d = tmp_path_factory.mktemp("mixed")
    good = sorted(night_dir.glob("*.fits"))[:6]
    for p in good:
        shutil.copy(p, d / p.name)
    primary = fits.getheader(good[0], 0)
    shape = (512, 512)
    rng = np.random.default_rng(0)
    expected = {}
    # a corrupt header: starts like FITS, then garbage
    (d / "corrupt.fits").write_bytes(
        b"SIMPLE  =                    T" + bytes(rng.integers(0, 256, 5000, dtype=np.uint8))
    )
    expected["corrupt.fits"] = "bad_header"
    # truncated inside the first CCD's data
    raw = good[0].read_bytes()
    (d / "truncated.fits").write_bytes(raw[: 2880 * 4 + 100_000])
    expected["truncated.fits"] = "truncated"
    (d / "empty.fits").write_bytes(b"")
    expected["empty.fits"] = "empty_file"
    (d / "notes.fits").write_text("observing log, not an image\n" * 50)
    expected["notes.fits"] = "not_fits"
    h = primary.copy()
    h["EXPNUM"] = 77001
    _mef(d / "allnan.fits", [np.full(shape, np.nan, np.float32)] * 2, h)
    expected["allnan.fits"] = "all_nan"
    h = primary.copy()
    h["EXPNUM"] = 77002
    fits.HDUList(
        [
            fits.PrimaryHDU(header=h),
            fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.arange(3.0))]),
        ]
    ).writeto(d / "table.fits")
    expected["table.fits"] = "no_image_hdu"
    h = primary.copy()
    h["EXPNUM"] = 77003
    _mef(d / "cube.fits", [np.zeros((3, 256, 256), np.float32)], h)
    expected["cube.fits"] = "wrong_dimensions"
    # one NaN CCD among good ones: usable, status partial
    with fits.open(good[1]) as src:
        images = [hdu.data.astype(np.float32) for hdu in src[1:]]
    images[2][:] = np.nan
    h = primary.copy()
    h["EXPNUM"] = 77004
    _mef(d / "partial.fits", images, h)
    return d, expected


@pytest.fixture(scope="module")
def ingested(spark, mixed_night, tmp_path_factory, config):
    d, expected = mixed_night
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    summary = ingest(spark, str(d), lake, cfg=config.ingest)
    return lake, summary, d, expected


def _sorted(table: pd.DataFrame, keys):
    return table.sort_values(keys).reset_index(drop=True)


def test_every_file_accounted_for(ingested):
    lake, summary, d, expected = ingested
    inputs = {str(p) for p in d.iterdir()}
    exposures = lake.read("exposures").to_pandas()
    rejects = lake.read("rejects").to_pandas()
    file_rejects = rejects[rejects["hdu_index"].isna()]
    assert set(exposures["path"]).isdisjoint(file_rejects["path"])
    assert set(exposures["path"]) | set(file_rejects["path"]) == inputs
    assert len(file_rejects) == len(set(file_rejects["path"]))
    assert summary.files == len(inputs) == summary.ok + summary.partial + summary.rejected
    assert (summary.ok, summary.partial, summary.rejected) == (6, 1, len(expected))


def test_reject_reasons(ingested):
    lake, _, d, expected = ingested
    rejects = lake.read("rejects").to_pandas()
    file_rejects = rejects[rejects["hdu_index"].isna()].set_index("path")["reason"]
    got = {p.split("/")[-1]: r for p, r in file_rejects.items()}
    assert got == expected
    assert (rejects["night"] == NIGHT).all()  # rejects without a date join the run's night
    partial = rejects[rejects["path"].str.endswith("partial.fits")]
    assert list(partial["reason"]) == ["all_nan"] and list(partial["extname"]) == ["CCD02"]
    exposures = lake.read("exposures").to_pandas().set_index("exposure_id")
    assert exposures.loc["77004", "status"] == "partial"
    assert exposures.loc["77004", "n_ccds_rejected"] == 1 and exposures.loc["77004", "n_ccds_used"] == 3


def test_cutouts_and_weights(ingested):
    lake, _, _, _ = ingested
    cutouts = lake.read("cutouts")
    pixels = decode_pixels(cutouts.column("pixels"))
    assert pixels.shape == (cutouts.num_rows, 32, 32) and cutouts.num_rows > 100
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert np.allclose(pixels.max(axis=(1, 2)), 1.0)  # min-max scaled per cutout
    ccds = lake.read("ccds").to_pandas()
    c = cutouts.drop(["pixels"]).to_pandas().merge(ccds, on=["night", "exposure_id", "hdu_index"])
    np.testing.assert_allclose(c["weight"], c["n_detected"] / c["n_sampled"], rtol=1e-6)
    assert (ccds.loc[ccds["reject_reason"].isna(), "n_sampled"] <= 100).all()
    per_ccd = c.groupby(["exposure_id", "hdu_index"]).size()
    used = ccds[ccds["n_sampled"] > 0].set_index(["exposure_id", "hdu_index"])["n_sampled"]
    assert per_ccd.sort_index().tolist() == used.sort_index().tolist()
    # a cutout sits on its source: the centre of the stamp is brighter than its border
    centre = pixels[:, 14:18, 14:18].mean(axis=(1, 2))
    border = np.concatenate(
        [pixels[:, :3].reshape(len(pixels), -1), pixels[:, -3:].reshape(len(pixels), -1)], 1
    )
    assert np.median(centre) > np.median(border.mean(1)) + 0.2
    exposures = lake.read("exposures").to_pandas()
    assert exposures["truth_label"].notna().all()
    assert exposures.set_index("exposure_id")["n_cutouts"].sum() == cutouts.num_rows


def test_lake_holds_what_the_ccd_function_gives(ingested, config):
    """The Arrow path from a CCD task to Parquet changes nothing: one CCD's rows equal process_ccd's
    output."""
    lake = ingested[0]
    table = lake.read("cutouts").to_pandas()
    exposures = lake.read("exposures").to_pandas().set_index("exposure_id")
    (exposure_id, hdu_index), rows = next(iter(table.groupby(["exposure_id", "hdu_index"])))
    path = exposures.loc[exposure_id, "path"]
    hdu = next(h for h in scan_file(path).hdus if h.hdu_index == hdu_index)
    result = read_and_process(dict(path=path, exposure_id=exposure_id, **asdict(hdu)), config.ingest)
    rows = rows.sort_values("source_index")
    assert rows["source_index"].tolist() == result.source_index.tolist()
    np.testing.assert_array_equal(rows["x"].to_numpy(), result.x)
    np.testing.assert_array_equal(rows["flux"].to_numpy(), result.flux)
    assert [bytes(p) for p in rows["pixels"]] == list(result.pixels)


def test_quality_numbers_are_in_the_tables(ingested):
    """Each used CCD and each exposure carries the classical numbers, measured with the header's pixel
    scale."""
    lake, _, d, _ = ingested
    exposures = lake.read("exposures").to_pandas().set_index("exposure_id")
    ccds = lake.read("ccds").to_pandas()
    truth = {
        str(fits.getval(p, "EXPNUM")): (fits.getval(p, "QUALITY"), fits.getval(p, "SIMFWHM"))
        for p in sorted(d.glob("sim*.fits"))
    }
    live = ccds[ccds["reject_reason"].isna() & ~ccds["dead"]]
    assert (live["n_stars"] > 0).mean() > 0.6 and live["background_structure"].notna().all()
    assert (live["fwhm"] / live["fwhm_px"]).dropna().round(4).eq(0.187).all()  # PIXSCAL1 of the simulator
    for exposure, (quality, seeing) in truth.items():
        row = exposures.loc[exposure]
        assert row["sky"] == pytest.approx(live.loc[live["exposure_id"] == exposure, "background"].median())
        assert (
            row["detections_per_ccd"] > 0 and np.isfinite(row["depth"]) and row["depth"] > 15
        )  # MAGZPT applied (instrumental would be < 0)
        if quality in ("Good", "B-Seeing"):
            assert row["fwhm"] == pytest.approx(seeing, rel=0.15), exposure
    # rejected HDUs carry no numbers
    assert ccds.loc[ccds["reject_reason"].notna(), "fwhm"].isna().all()


def test_rerun_gives_identical_tables(spark, ingested, config):
    lake, _, d, _ = ingested
    before = {t: lake.read(t).to_pandas() for t in ("exposures", "ccds", "cutouts", "rejects")}
    ingest(spark, str(d), lake, cfg=config.ingest)
    keys = {
        "exposures": ["exposure_id"],
        "ccds": ["exposure_id", "hdu_index"],
        "cutouts": ["exposure_id", "hdu_index", "source_index"],
        "rejects": ["path", "hdu_index"],
    }
    for table, k in keys.items():
        after = lake.read(table).to_pandas()
        assert len(after) == len(before[table]), table
        pd.testing.assert_frame_equal(_sorted(after, k), _sorted(before[table], k), check_like=True)


def test_file_url_and_night_override(spark, night_dir, tmp_path, config):
    lake = Lake(str(tmp_path / "lake"))
    summary = ingest(spark, f"file://{night_dir}/sim*.fits", lake, night="20260101", cfg=config.ingest)
    assert summary.ok == 12 and summary.nights == ["20260101"]
    assert lake.nights("cutouts") == ["20260101"]
    direct = lake.read("cutouts").to_pandas()
    assert direct["exposure_id"].nunique() == 12


def test_compressed_gives_the_same_cutouts(tmp_path, small_sim, config):
    one = replace(small_sim, n_ccds=2)
    plain = simulate_night(tmp_path / "p", 1, one, seed=3, progress=False)[0]
    rice = simulate_night(tmp_path / "z", 1, one, seed=3, compress=True, progress=False)[0]
    assert [h.hdu_index for h in scan_file(str(rice)).hdus] == [
        h.hdu_index for h in scan_file(str(plain)).hdus
    ]
    for hdu in (1, 2):
        a = process_ccd(read_ccd(str(plain), hdu), "x", hdu, config.ingest)
        b = process_ccd(read_ccd(str(rice), hdu), "x", hdu, config.ingest)
        assert a.n_detected == b.n_detected > 0 and a.pixels == b.pixels


def test_sampling_is_without_replacement_and_repeatable(night_dir, config):
    image = read_ccd(str(sorted(night_dir.glob("*.fits"))[0]), 1)
    cfg = replace(config.ingest, max_per_ccd=10)
    a = process_ccd(image, "e1", 1, cfg)
    b = process_ccd(image, "e1", 1, cfg)
    c = process_ccd(image, "e2", 1, cfg)
    assert a.n_detected > 10 and a.n_sampled == 10
    assert len(set(a.source_index.tolist())) == 10
    assert a.source_index.tolist() == b.source_index.tolist()
    assert a.source_index.tolist() != c.source_index.tolist()
    m = cfg.edge_margin
    assert (a.x >= m).all() and (a.x <= image.shape[1] - 1 - m).all()


def test_dead_ccds_are_flagged():
    flat = process_ccd(np.full((256, 256), 1000.0, np.float32), "e", 1)
    assert flat.dead and flat.reject_reason is None and flat.n_sampled == 0
    nan = process_ccd(np.full((256, 256), np.nan, np.float32), "e", 1)
    assert nan.dead and nan.reject_reason == "all_nan"


def test_command_line_exit_status(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.fits").write_text("nothing here")
    lake = tmp_path / "lake"

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "desomspark.cli", "ingest", *a],
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = run("--input", str(bad), "--lake", str(lake), "--master", "local[1]")
    assert done.returncode == 1
    assert "no usable exposure" in done.stderr
    # the summary names the rejected file and its reason, not just a count
    assert "rejected a.fits: not_fits" in done.stdout, done.stdout
    rejects = Lake(str(lake)).read("rejects").to_pandas()
    assert rejects["reason"].tolist() == ["not_fits"]
    # no header to date it and no --night: the night the run started in, a YYYYMMDD string like any other
    assert rejects["night"].str.fullmatch(r"\d{8}").all()
    # quiet by default: none of Spark's start-up warnings, no MLflow INFO lines
    assert not [
        line for line in done.stderr.splitlines() if " WARN " in line or "log4j" in line or "INFO" in line
    ]
    verbose = run("--input", str(bad), "--lake", str(lake), "--master", "local[1]", "-v")
    assert verbose.returncode == 1 and "log4j" in verbose.stderr
    # nothing to read: one line, answered before Spark starts
    missing = run("--input", str(tmp_path / "nowhere/*.fits"), "--lake", str(lake))
    assert missing.returncode == 1 and "no input file matches" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert run("--input", str(bad), "--lake", str(lake), "--night", "2025-11-20").returncode == 2


def test_a_trail_is_cut_out_along_its_length(config):
    """A satellite trail weighs by its length: cut out every 32 px along it, however sep splits it.

    A bright trail is one or two long detections: tiles along them (flux NaN,
    source_index past the catalogue).  A faint one is deblended into pieces
    of ~50 px, each a detection with its own cutout.  A star field gets no tile.
    """
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    sky = rng.normal(1000.0, 10.0, (512, 512)).astype(np.float32)
    for x0, y0 in rng.uniform(40, 470, (40, 2)):  # round stars
        sky += 800.0 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5**2))
    stars = process_ccd(sky.copy(), "t", 0, config.ingest)
    assert np.isnan(stars.flux).sum() == 0 and stars.qa["trail_length"] == 0.0
    angle = np.deg2rad(30.0)
    distance = (xx - 256) * np.sin(angle) - (yy - 256) * np.cos(angle)
    for peak in (3000.0, 300.0):
        trailed = process_ccd(sky + peak * np.exp(-(distance**2) / (2 * 1.5**2)), "t", 0, config.ingest)
        offset = np.abs((trailed.x - 256) * np.sin(angle) - (trailed.y - 256) * np.cos(angle))
        tiles = np.isnan(trailed.flux)
        # ~440 px of the line lie inside the cutout margins: a dozen cutouts along it
        assert (offset < 3.0).sum() >= 10, (peak, (offset < 3.0).sum())
        # tiles follow the piece's major axis: on the line within a quarter cutout, most of them (a
        # star merged into a piece tilts its axis, and the tiles at its ends drift off)
        assert not tiles.any() or (offset[tiles] < 8.0).mean() >= 0.75
        if peak == 3000.0:
            # the CCD's trail_length number: the 591 px the line runs across the CCD as sep's
            # second moments measure it, which stars merged into the line stretch (968 px here)
            assert 450.0 < trailed.qa["trail_length"] < 1200.0, trailed.qa["trail_length"]
            assert tiles.sum() >= 8
            assert (trailed.source_index[tiles] > trailed.source_index[~tiles].max()).all()
    # the detector's own lines run along the columns (a hot column, a saturated star's bleed, a
    # line at the CCD's edge): no tiles, or every good exposure with a bleed would look trailed
    hot = sky.copy()
    hot[:, 300] += 3000.0
    hot[100:400, 150:152] += 60000.0
    hot[:, 10:13] += 300.0
    detector_lines = process_ccd(hot, "t", 0, config.ingest)
    assert np.isnan(detector_lines.flux).sum() == 0 and detector_lines.qa["trail_length"] == 0.0
    # a sky trail is tiled at any angle: 10 degrees off the columns, and 1 degree off them, where
    # the PSF spreads it over the columns beside it (a hot column's light is in one column)
    for off_columns in (10.0, 1.0):
        tilted = (xx - 256) * np.cos(np.deg2rad(off_columns)) - (yy - 256) * np.sin(np.deg2rad(off_columns))
        trailed = process_ccd(hot + 3000.0 * np.exp(-(tilted**2) / (2 * 1.5**2)), "t", 0, config.ingest)
        assert np.isnan(trailed.flux).sum() >= 8, off_columns
        assert trailed.qa["trail_length"] >= 400.0, off_columns


def test_lines_along_the_columns_are_the_skys_only_when_a_psf_spread_them():
    """Each column-aligned line is measured across itself, row by row: a trail a degree off the
    columns is the sky's, a line one or two columns wide, a flat band, a saturated line and a
    line at the CCD's edge are not."""
    from desomspark.ingest.detect import LinePixels, sky_lines

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:400, 0:600].astype(np.float32)
    residual = rng.normal(0.0, 10.0, yy.shape).astype(np.float32)

    def psf_line(x0, degrees_off, sigma=1.2):
        d = (xx - x0) * np.cos(np.deg2rad(degrees_off)) - (yy - 200) * np.sin(np.deg2rad(degrees_off))
        return 200.0 * np.exp(-(d**2) / (2 * sigma**2))

    residual += psf_line(100, 1.0) + psf_line(500, 0.0, sigma=0.9)
    residual[:, 200] += 200.0  # a hot column
    residual[:, 300:302] += 200.0  # a defect two columns wide
    residual[:, 380:392] += 50.0  # a flat band twelve columns wide
    residual[:, 450] += 200.0  # a saturated line (flagged below)
    residual[:, 20] += 200.0  # at the edge
    theta = np.deg2rad([89.0, 90.0, 90.0, 90.0, 90.0, 90.0, 90.0])
    lines = np.zeros(7, dtype=[("x", float), ("y", float), ("a", float), ("theta", float)])
    lines["x"] = [100, 500, 200, 300.5, 385.5, 450, 20]
    lines["y"], lines["a"], lines["theta"] = 200.0, 100.0, theta
    saturated = np.zeros(7, bool)
    saturated[5] = True
    sky = sky_lines(lines, np.arange(7), LinePixels(residual, 10.0, saturated, edge_margin=37))
    assert sky.tolist() == [True, True, False, False, False, False, False]


def test_a_column_tolerance_outside_0_to_90_degrees_is_refused():
    from desomspark.config import IngestConfig
    from desomspark.errors import UserError

    with pytest.raises(UserError, match="trail_column_tolerance"):
        IngestConfig(trail_column_tolerance=95.0)


def _extract_with_stack(residual, stack, cfg):
    """sep.extract with the project's parameters at a fixed pixel stack (the ingest before issue 28)."""
    import sep

    from desomspark.ingest.detect import gaussian_kernel

    sep.set_extract_pixstack(stack)
    try:
        return sep.extract(
            residual,
            cfg.detect_thresh,
            err=1.0,
            minarea=cfg.min_area,
            filter_kernel=gaussian_kernel(cfg.filter_fwhm, cfg.filter_size),
            filter_type="conv",
            deblend_nthresh=cfg.deblend_nthresh,
            deblend_cont=cfg.deblend_cont,
            clean=cfg.clean,
        )
    finally:
        sep.set_extract_pixstack(300_000)


def test_a_crowded_ccd_grows_the_pixel_stack_and_finds_the_same_sources(config):
    """sep starts from its default stack; a CCD that fills it is extracted again with a larger one.

    A smooth glow with stars on it puts ~590 k pixels above the threshold in one object (a nebula,
    a galaxy's halo, scattered light): sep's default 300 k stack overflows, the grown one gives
    exactly the catalogue of a fixed 5 M stack (the ingest before), and the stack is back at the
    default afterwards.  Past ``ingest.max_pixstack`` the CCD is a ``too_crowded`` reject.
    """
    import sep

    from desomspark.ingest import detect

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:800, 0:800].astype(np.float32)
    image = 10.0 * np.exp(-((xx - 400) ** 2 + (yy - 400) ** 2) / (2 * 300.0**2))
    for x0, y0 in rng.uniform(20, 780, (30, 2)):
        image += 50.0 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5**2))
    image = image.astype(np.float32)
    with pytest.raises(Exception, match="pixel buffer full"):
        _extract_with_stack(image, 300_000, config.ingest)
    before = _extract_with_stack(image, 5_000_000, config.ingest)
    c = config.ingest
    grown = detect.extract_growing(
        image,
        c.max_pixstack,
        thresh=c.detect_thresh,
        err=1.0,
        minarea=c.min_area,
        filter_kernel=detect.gaussian_kernel(c.filter_fwhm, c.filter_size),
        filter_type="conv",
        deblend_nthresh=c.deblend_nthresh,
        deblend_cont=c.deblend_cont,
        clean=c.clean,
    )
    assert len(grown) == len(before) == 30
    for column in ("x", "y", "flux", "npix", "a", "b"):
        np.testing.assert_array_equal(grown[column], before[column])
    assert sep.get_extract_pixstack() == detect.DEFAULT_PIXSTACK == 300_000
    with pytest.raises(detect.TooCrowded, match="max_pixstack"):
        detect.extract_growing(image, 400_000, thresh=c.detect_thresh, err=1.0, minarea=c.min_area)
    assert sep.get_extract_pixstack() == 300_000
    # in the ingest a CCD past the cap is a reject with that reason, not a crash
    stars = rng.normal(1000.0, 10.0, (512, 512)).astype(np.float32)
    stars[100:120, 100:120] += 5000.0
    capped = process_ccd(stars, "crowded", 1, replace(c, max_pixstack=100))
    assert capped.reject_reason == "too_crowded" and "max_pixstack" in capped.reject_detail
    assert capped.n_sampled == 0
    assert process_ccd(stars, "crowded", 1, c).reject_reason is None


@pytest.mark.parametrize("quality", ["RBT", "Good", "BGP"])
def test_the_default_stack_gives_the_cutouts_of_the_old_5m_stack(config, quality):
    """Trailed, ordinary and crowded-background simulated CCDs: the same sources and cutouts whether
    sep starts from its default stack (now) or from 5 M pixels on every call (before)."""
    from desomspark.evaluation.simulate import plan_night, simulate_ccd, small_config
    from desomspark.ingest import detect

    sim = small_config(config.simulate, 1, (1024, 1024))
    spec = next(s for s in plan_night(40, seed=5, cfg=sim) if s.quality == quality)
    image, _ = simulate_ccd(spec, 0, sim)
    now = process_ccd(image, "e", 1, config.ingest)
    detect.DEFAULT_PIXSTACK = 5_000_000
    try:
        before = process_ccd(image, "e", 1, config.ingest)
    finally:
        detect.DEFAULT_PIXSTACK = 300_000
    assert now.n_detected == before.n_detected > 0
    np.testing.assert_array_equal(now.source_index, before.source_index)
    assert now.pixels == before.pixels


def test_the_summary_names_rejected_files_and_exposures_without_cutouts():
    from desomspark.stages.ingest import IngestSummary

    rejected = tuple((f"f{i:02d}.fits", "truncated", "ends at byte 2880") for i in range(12))
    summary = IngestSummary(
        files=14,
        ok=1,
        partial=1,
        rejected=12,
        ccds=8,
        dead_ccds=0,
        cutouts=100,
        nights=["20251120"],
        rejected_files=rejected,
        no_cutouts=("calexp42",),
    )
    lines = summary.lines()
    assert lines[0] == summary.line()
    assert lines[1] == "  rejected f00.fits: truncated (ends at byte 2880)"
    assert sum(line.startswith("  rejected ") for line in lines) == IngestSummary.SHOWN
    assert any("and 2 more rejected files" in line and "rejects/" in line for line in lines)
    assert lines[-1] == "  no cutout (nothing for the map to sort): calexp42"


def test_a_ccd_read_where_the_scan_found_its_data_equals_the_walked_read(tmp_path, night_dir):
    """The scan records where each plain image HDU keeps its pixels and how they scale
    (:class:`PixelStorage`), so a CCD is read without parsing a header: the pixels are the same,
    for a plain file, its gzip copy, BZERO-scaled 16-bit data, BLANK and BSCALE, 8-bit to 64-bit;
    a tile-compressed HDU has no storage (astropy decompresses it); a file rewritten or cut
    short since its scan is a reject, not wrong pixels."""
    import dataclasses
    import gzip

    from desomspark.ingest.fitsio import PixelStorage, Reject, read_ccd_and_mask

    plain = sorted(night_dir.glob("*.fits"))[0]
    zipped = tmp_path / (plain.name + ".gz")
    zipped.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
    rng = np.random.default_rng(0)
    kinds = tmp_path / "kinds.fits"
    hdus = [fits.PrimaryHDU()]
    for dtype in (np.uint8, np.int16, np.int32, np.int64, np.float32, np.float64):
        hdus.append(fits.ImageHDU((rng.random((40, 48)) * 100).astype(dtype), name=np.dtype(dtype).name))
    scaled = fits.ImageHDU(rng.integers(-5, 100, (40, 48)).astype(np.int16), name="scaled")
    scaled.header.update(BSCALE=0.5, BZERO=10.0, BLANK=-5)
    hdus.append(scaled)
    fits.HDUList(hdus).writeto(kinds)
    for path in (str(plain), str(zipped), str(kinds)):
        scanned = scan_file(path, 32).hdus
        assert scanned and all(h.storage is not None for h in scanned)
        for h in scanned:
            walked, _ = read_ccd_and_mask(path, h.hdu_index)
            direct, _ = read_ccd_and_mask(path, h.hdu_index, storage=h.storage)
            assert direct.dtype == np.float32 and np.array_equal(walked, direct, equal_nan=True)
    assert np.isnan(
        read_ccd_and_mask(str(kinds), 7, storage=scan_file(str(kinds), 32).hdus[-1].storage)[0]
    ).any()
    with fits.open(plain, do_not_scale_image_data=True) as src:  # stored as int16 + BZERO: uint16
        assert src[1].data.dtype.kind == "i" and src[1].header.get("BZERO") == 32768
    compressed = tmp_path / "rice.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.ones((64, 64), np.float32), name="c")]).writeto(
        compressed
    )
    assert [h.storage for h in scan_file(str(compressed), 32).hdus] == [None]
    stored = PixelStorage.from_dict(scan_file(str(plain)).hdus[1].storage)
    moved = dataclasses.replace(stored, header_offset=stored.header_offset + 80)  # inside a header
    with pytest.raises(Reject) as err:
        read_ccd_and_mask(str(plain), 2, storage=moved.to_dict())
    assert err.value.reason == "unreadable_data"
    cut_short = tmp_path / "cut.fits"
    cut_short.write_bytes(plain.read_bytes()[: stored.data_offset + 1000])
    with pytest.raises(Reject) as err:
        read_ccd_and_mask(str(cut_short), 2, storage=stored.to_dict())
    assert err.value.reason == "truncated"


def test_ccd_tasks_are_sliced_to_keep_cores_busy_and_task_costs_small():
    from desomspark.stages.ingest import PIXELS_PER_SLICE, SLICES_PER_CORE, n_slices

    full = [dict(height=4612, width=2048)] * 144
    small = [dict(height=512, width=512)] * 40
    assert n_slices(full, cores=1) == -(-144 * 4612 * 2048 // PIXELS_PER_SLICE) > SLICES_PER_CORE
    assert n_slices(full, cores=16) == 16 * SLICES_PER_CORE  # every core gets a few tasks
    assert n_slices(full, cores=64) == 144  # never more tasks than CCDs
    assert n_slices(small, cores=2) == 2 * SLICES_PER_CORE  # 5 small CCDs a task, not 1
    assert n_slices(small[:3], cores=2) == 3  # never more tasks than CCDs
    assert n_slices(full * 40, cores=4) == -(-40 * 144 * 4612 * 2048 // PIXELS_PER_SLICE)


def test_an_exposure_id_is_unique_in_the_lake_whatever_night_its_file_claims(
    spark, night_dir, tmp_path, config
):
    files = sorted(night_dir.glob("*.fits"))[:2]
    first = tmp_path / "first"
    first.mkdir()
    for f in files:
        shutil.copy(f, first / f.name)
    lake = Lake(str(tmp_path / "lake"))
    assert ingest(spark, str(first), lake, cfg=config.ingest).ok == 2
    again = ingest(spark, str(files[0]), lake, night="20251121", cfg=config.ingest)
    assert again.ok == 0 and again.rejected == 1
    ((name, reason, detail),) = again.rejected_files
    assert reason == "duplicate_exposure" and "night 20251120" in detail
    assert lake.read("exposures", nights=["20251121"]).num_rows == 0
    # the night that holds them, run again, replaces its own rows: no duplicates, none rejected
    rerun = ingest(spark, str(first), lake, cfg=config.ingest)
    assert rerun.ok == 2 and rerun.rejected == 0
    assert sorted(lake.read("exposures").column("night").to_pylist()) == [NIGHT, NIGHT]


def test_an_undated_file_takes_the_runs_night():
    """--night places every file, undated ones too; without it an undated file is a reject filed
    under the night most of the run's files claim (else the night the run started in)."""
    from desomspark.ingest.fitsio import FileScan, HduInfo
    from desomspark.stages.ingest import plan_night

    def scan(path, exposure_id, night):
        hdu = HduInfo(hdu_index=1, extname="ccd00", height=512, width=512, ccd_row=0, ccd_col=0)
        return FileScan(path=path, exposure_id=exposure_id, night=night, hdus=[hdu], meta={"camera": "sim"})

    undated = scan("/in/undated.fits", "9", None)
    exposures, _, rejects = plan_night([scan("/in/a.fits", "1", "20251120"), undated], night="20251122")
    assert rejects == [] and {e["night"] for e in exposures} == {"20251122"}
    scans = [scan("/in/a.fits", "1", "20251120"), scan("/in/c.fits", "3", "20251120")]
    scans += [scan("/in/b.fits", "2", "20251121"), scan("/in/undated.fits", "9", None)]
    _, _, rejects = plan_night(scans, night=None)
    ((row,),) = [[r for r in rejects if r["path"] == "/in/undated.fits"]]
    assert row["night"] == "20251120" and row["reason"] == "bad_header" and "--night" in row["detail"]


def test_a_thumbnail_is_the_mean_of_each_block():
    """block_mean sums strided slices: the numbers of a reshaped mean, the ragged edge left out."""
    from desomspark.ingest.detect import block_mean

    rng = np.random.default_rng(8)
    for shape, factor in (((512, 512), 4), ((301, 205), 37), ((6, 6), 1)):
        image = rng.normal(1000.0, 10.0, shape).astype(np.float32)
        h, w = (shape[0] // factor) * factor, (shape[1] // factor) * factor
        expected = image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
        got = block_mean(image, factor)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_cutouts_clip_levels_are_numpys_percentiles_bit_for_bit():
    """row_percentiles sorts each row and interpolates as numpy does: the same float64 numbers as
    np.percentile, for any row length, ties, and percentiles at the ends or between two values."""
    from desomspark.ingest.cutout import row_percentiles

    rng = np.random.default_rng(9)
    for trial in range(200):
        n, rows = int(rng.integers(1, 1500)), int(rng.integers(1, 40))
        values = (rng.normal(0.0, 1.0, (rows, n)) * 10 ** rng.uniform(-3, 5)).astype(np.float32)
        if trial % 3 == 0:
            values = np.round(values)  # ties
        q = (1.0, 95.0) if trial % 2 else tuple(rng.uniform(0.0, 100.0, 2))
        q = (0.0, 100.0) if trial % 7 == 0 else q
        expected, got = np.percentile(values, q, axis=1), row_percentiles(values, q)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), (n, rows, q)
