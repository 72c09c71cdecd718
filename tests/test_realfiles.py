"""Real archive files and raw frames: gzip streams, processed planes, overscan and amplifiers.

The real files (tests/data/, provenance in its README) are small cut-outs
published with the headers of the full CCD; the simulated raw frames are the
same scenes as the processed ones, read out through two amplifiers with
overscan per CCD HDU (simulate --raw, MegaCam) or one HDU per amplifier
(simulate --raw segments, LSST).
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from desomspark.evaluation.simulate import plan_night, write_exposure
from desomspark.ingest.cutout import cut, normalise
from desomspark.ingest.detect import detect_sources, process_ccd
from desomspark.ingest.fitsio import Reject, read_ccd, read_ccd_and_mask, read_mask, scan_file
from desomspark.ingest.sections import SectionError, parse_section
from desomspark.lake.layout import Lake
from desomspark.lake.schema import REJECT_REASONS
from desomspark.stages.ingest import _ccd_task, ingest, read_and_process

DATA = Path(__file__).parent / "data"
LBC = "lbc_raw_lbcb.20210407.120357.fits"
DECAM_RAW = "decam_raw_c4d_200306_000415_ori.fits.fz"
CALEXP = "decam_calexp_0941420_23.fits"
SDSS = "sdss_frame-i-008108-5-0025.fits"


@pytest.fixture(scope="module")
def archive(spark, tmp_path_factory, small_sim, config):
    """The five real files, plus a simulated exposure as plain FITS and as gzip under a plain .fits name."""
    d = tmp_path_factory.mktemp("archive")
    for name in (LBC, LBC + ".gz", DECAM_RAW, CALEXP, SDSS):
        shutil.copy(DATA / name, d / name)
    spec = plan_night(1, seed=4, cfg=small_sim)[0]
    plain = write_exposure(spec, tmp_path_factory.mktemp("plain"), small_sim)
    shutil.copy(plain, d / "sim_plain.fits")
    with (
        open(plain, "rb") as src,
        gzip.open(d / "sim_gzip_inside.fits", "wb") as dst,
    ):  # gzip content, plain name
        shutil.copyfileobj(src, dst)
    lake = Lake(str(tmp_path_factory.mktemp("archive-lake")))
    summary = ingest(spark, str(d), lake, night="20200305", cfg=config.ingest)
    return lake, summary, d


def test_every_real_file_is_accounted_for(archive):
    lake, summary, d = archive
    exposures = lake.read("exposures").to_pandas()
    rejects = lake.read("rejects").to_pandas()
    files = {p.name for p in d.iterdir()}
    used = {Path(p).name for p in exposures["path"]}
    rejected = {Path(p).name for p in rejects.loc[rejects["hdu_index"].isna(), "path"]}
    assert used | rejected == files and not used & rejected
    assert summary.files == len(files) == summary.ok + summary.partial + summary.rejected
    # the gzip stream (under a plain name) is the same exposure as the plain file: one is a duplicate
    assert "duplicate_exposure" in set(rejects["reason"])


def test_gzip_and_plain_give_identical_rows(archive):
    lake, _, _ = archive
    rejects = lake.read("rejects").to_pandas()
    per_file = {
        name: rejects[rejects["path"].str.endswith(name)]
        .drop(columns="path")
        .sort_values("hdu_index", na_position="first")
        .reset_index(drop=True)
        for name in (LBC, LBC + ".gz")
    }
    assert len(per_file[LBC]) == 5  # 4 CCDs whose sections point outside the cut-out, and the file
    pd.testing.assert_frame_equal(per_file[LBC], per_file[LBC + ".gz"])
    assert set(per_file[LBC]["reason"].dropna()) <= {"bad_section"}


def test_gzip_stream_reads_like_the_plain_file(tmp_path, small_sim, config):
    spec = plan_night(1, seed=4, cfg=small_sim)[0]
    plain = write_exposure(spec, tmp_path, small_sim)
    inside = tmp_path / "renamed.fits"
    with open(plain, "rb") as src, gzip.open(inside, "wb") as dst:
        shutil.copyfileobj(src, dst)
    a, b = scan_file(str(plain)), scan_file(str(inside))
    assert b.file_reject is None and [h.hdu_index for h in a.hdus] == [h.hdu_index for h in b.hdus]
    for hdu in a.hdus:
        np.testing.assert_array_equal(
            read_ccd(str(plain), hdu.hdu_index), read_ccd(str(inside), hdu.hdu_index)
        )
    # a gzip stream cut short is a reject, not a crash
    truncated = tmp_path / "cut.fits.gz"
    truncated.write_bytes(inside.read_bytes()[: inside.stat().st_size // 2])
    scan = scan_file(str(truncated))
    problems = [scan.file_reject] if scan.file_reject else []
    for hdu in scan.hdus:
        try:
            read_ccd(str(truncated), hdu.hdu_index)
        except Reject as exc:
            problems.append(exc)
    assert problems and all(r.reason in ("truncated", "unreadable_data", "bad_header") for r in problems)


def test_decam_raw_ccds_are_all_accounted_for(archive):
    lake, _, _ = archive
    rejects = lake.read("rejects").to_pandas()
    mine = rejects[rejects["path"].str.endswith(DECAM_RAW)]
    hdu_rows = mine[mine["hdu_index"].notna()]
    # 70 CCDs, each a 100x100 cut-out whose DATASEC/BIASSEC describe the full 2-amplifier CCD: the rule is
    # to refuse sections that fall outside the array (bad_section), never to guess
    assert len(hdu_rows) == 70 and set(hdu_rows["reason"]) == {"bad_section"}
    assert sorted(hdu_rows["hdu_index"].astype(int)) == list(range(1, 71))
    assert hdu_rows["detail"].str.contains("outside").all()
    assert len(mine) == 71


def test_calexp_gives_its_image_plane_only(archive):
    lake, _, d = archive
    ccds = lake.read("ccds").to_pandas()
    mine = ccds[ccds["exposure_id"] == "941420"]
    assert list(mine["hdu_index"]) == [1]  # IMAGE; not MASK (2), VARIANCE (3) nor the tables
    assert mine["reject_reason"].isna().all()
    cutouts = lake.read("cutouts").to_pandas()
    flagged = read_mask(str(d / CALEXP), 2, None)
    flagged_bits = read_mask(str(d / CALEXP), 2, scan_file(str(d / CALEXP)).hdus[0].mask_bits)
    assert flagged_bits.sum() < flagged.sum()  # DETECTED is a mask bit, not a flaw
    for row in cutouts[cutouts["exposure_id"] == "941420"].itertuples():
        y, x = int(round(row.y)), int(round(row.x))
        assert not flagged_bits[y - 16 : y + 16, x - 16 : x + 16].any()


def test_sdss_frame_gives_cutouts_and_seeing(archive):
    lake, _, _ = archive
    exposures = lake.read("exposures").to_pandas()
    sdss = exposures[exposures["path"].str.endswith(SDSS)].iloc[0]
    assert sdss["n_cutouts"] > 5
    # the pixel scale comes from the WCS (0.396"): SDSS seeing is 1-2 arcsec
    ccd = lake.read("ccds").to_pandas().query("exposure_id == @sdss.exposure_id").iloc[0]
    assert ccd["fwhm"] / ccd["fwhm_px"] == pytest.approx(0.396, abs=0.002)


def test_mask_plane_keeps_cutouts_off_flagged_pixels(tmp_path, small_sim, config):
    """An LSST-style processed file (IMAGE, MASK with MP_ keys, VARIANCE): no cutout shows a flagged pixel."""
    spec = plan_night(1, seed=8, cfg=small_sim)[0]
    plain = write_exposure(spec, tmp_path, small_sim)
    with fits.open(plain) as hdul:
        image = hdul[1].data.astype(np.float32)
        primary = hdul[0].header.copy()
    mask = np.zeros(image.shape, np.int32)
    mask[:, 200:300] |= 1 << 0  # BAD columns
    mask[image > np.percentile(image, 90)] |= 1 << 5  # DETECTED: a label, not a flaw
    mask_header = fits.Header({"EXTTYPE": "MASK", "MP_BAD": 0, "MP_SAT": 1, "MP_CR": 3, "MP_DETECTED": 5})
    path = tmp_path / "calexp.fits"
    fits.HDUList(
        [
            fits.PrimaryHDU(header=primary),
            fits.ImageHDU(image, fits.Header({"EXTTYPE": "IMAGE"})),
            fits.ImageHDU(mask, mask_header),
            fits.ImageHDU(np.full(image.shape, 50.0, np.float32), fits.Header({"EXTTYPE": "VARIANCE"})),
        ]
    ).writeto(path)
    scan = scan_file(str(path))
    assert [h.hdu_index for h in scan.hdus] == [1] and scan.hdus[0].mask_index == 2
    assert scan.hdus[0].mask_bits == (1 << 0) | (1 << 1) | (1 << 3)
    result = read_and_process(dict(path=str(path), exposure_id="e", **asdict(scan.hdus[0])), config.ingest)
    unmasked = process_ccd(image, "e", 1, config.ingest)
    assert 0 < result.n_sampled
    assert not any(200 - 16 <= x < 300 + 16 for x in np.rint(result.x))
    assert any(200 - 16 <= x < 300 + 16 for x in np.rint(unmasked.x))  # the flagged band had sources


@pytest.mark.parametrize("kind", ["amplifiers", "segments"])
def test_raw_frames_give_the_processed_sources(tmp_path, small_sim, config, kind):
    """The same scene read out raw (amplifiers with overscan, their own gains and bias) and processed.

    ``amplifiers``: two per CCD HDU (MegaCam); ``segments``: one HDU per
    amplifier, 8 per CCD, half of them read flipped (LSST): assembled by DETSEC.
    """
    spec = plan_night(1, seed=3, cfg=small_sim)[0]
    processed = write_exposure(spec, tmp_path, small_sim)
    raw = write_exposure(spec, tmp_path, small_sim, raw=kind)
    a, b = scan_file(str(processed)), scan_file(str(raw))
    assert (
        not b.rejects and len(b.hdus) == len(a.hdus) == small_sim.n_ccds
    )  # one CCD per CCD, not per segment
    if kind == "segments":
        assert all(len(h.segments["segments"]) == 8 and h.raw_layout is None for h in b.hdus)
        assert [h.extname for h in b.hdus] == [h.extname for h in a.hdus]
    else:
        assert all(h.raw_layout is not None for h in b.hdus)
    assert all(h.raw_layout is None and h.segments is None for h in a.hdus)
    assert [(h.height, h.width) for h in a.hdus] == [(h.height, h.width) for h in b.hdus]  # trimmed size
    for ha, hb in zip(a.hdus, b.hdus):
        with fits.open(raw) as hdul:
            raw_pixels = hdul[hb.hdu_index].data.astype(float)
        ia = read_ccd(str(processed), ha.hdu_index)
        ib = (
            read_ccd_and_mask(str(raw), hb.hdu_index, hb.raw_layout, segments=hb.segments)[0] / small_sim.gain
        )
        oa, ba = detect_sources(ia, config.ingest)
        ob, bb = detect_sources(ib, config.ingest)
        # the overscan level (~1000 ADU and more) is gone: the trimmed sky is the processed sky within 1 rms
        assert np.median(raw_pixels) > np.median(ia) - 1000 + 500
        assert abs(bb.globalback - ba.globalback) < ba.globalrms
        # the same sources within 1 px (a few at the threshold may differ)
        d = np.hypot(oa["x"][:, None] - ob["x"][None], oa["y"][:, None] - ob["y"][None]).min(axis=1)
        assert (d < 1.0).mean() >= 0.9, (len(oa), len(ob))
        # and the same cutouts once normalised
        keep = (oa["x"] > 20) & (oa["x"] < ia.shape[1] - 20) & (oa["y"] > 20) & (oa["y"] < ia.shape[0] - 20)
        sa = normalise(cut(ia, oa["x"][keep], oa["y"][keep], 32))
        sb = normalise(cut(ib, oa["x"][keep], oa["y"][keep], 32))
        assert float(np.abs(sa - sb).mean()) < 0.02


def test_overlapping_segments_are_a_bad_section(tmp_path, small_sim):
    """Segments whose DETSEC overlap cannot make a CCD: each is a reject ``bad_section``, the other CCDs
    stand."""
    spec = plan_night(1, seed=3, cfg=small_sim)[0]
    path = write_exposure(spec, tmp_path, small_sim, raw="segments")
    with fits.open(path, mode="update") as hdul:
        hdul[2].header["DETSEC"] = hdul[1].header["DETSEC"]  # CCD 0's second amplifier lands on its first
    scan = scan_file(str(path))
    assert len(scan.hdus) == small_sim.n_ccds - 1
    assert [r.hdu_index for r in scan.rejects] == list(range(1, 9))
    assert {r.reason for r in scan.rejects} == {"bad_section"} and "overlap" in scan.rejects[0].detail


def test_sections_outside_the_array_are_refused():
    assert parse_section("[1:10,1:20]", (20, 10)).shape == (20, 10)
    assert parse_section("[10:1,20:1]", (20, 10)).shape == (20, 10)  # flipped read-out
    for bad in ("[0:10,1:20]", "[1:11,1:20]", "1:10,1:20", "[a:b,c:d]", None, "[1:10]"):
        with pytest.raises(SectionError):
            parse_section(bad, (20, 10))


_section = st.one_of(
    st.builds(lambda a, b, c, d: f"[{a}:{b},{c}:{d}]", *(st.integers(0, 140) for _ in range(4))),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.dictionaries(
        st.sampled_from(["DATASEC", "BIASSEC", "DATASECA", "DATASECB", "BIASSECA", "BIASSECB", "TRIMSEC"]),
        _section,
        max_size=6,
    ),
    gains=st.lists(st.one_of(st.floats(-5, 5), st.text(alphabet="0123456789.-e", max_size=3)), max_size=2),
)
def test_fuzzed_sections_give_a_row_or_a_reject(tmp_path_factory, keys, gains):
    """Any section strings and amplifier layout: the scan and the CCD task never raise."""
    header = fits.Header()
    for key, value in keys.items():
        header[key] = value
    for letter, gain in zip("AB", gains):
        header[f"GAIN{letter}"] = gain
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("sections") / "f.fits"
    fits.HDUList(
        [
            fits.PrimaryHDU(header=fits.Header({"EXPNUM": 9, "MJD-OBS": 61000.3})),
            fits.ImageHDU(rng.normal(1000, 10, (120, 140)).astype(np.float32), header, name="CCD00"),
        ]
    ).writeto(path)
    scan = scan_file(str(path), min_side=16)
    if scan.file_reject is not None:
        assert scan.file_reject.reason in REJECT_REASONS
        return
    from desomspark.config import IngestConfig

    cfg = IngestConfig(min_ccd_side=16, edge_margin=8, window_size=0)
    for hdu in scan.hdus:
        row, _ = _ccd_task(
            dict(path=str(path), night="20251120", exposure_id="9", window=False, **asdict(hdu)), cfg
        )
        assert row["reject_reason"] is None or row["reject_reason"] in REJECT_REASONS
        if hdu.raw_layout is not None and row["reject_reason"] is None:
            assert (row["height"], row["width"]) == (hdu.height, hdu.width)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    segments=st.lists(
        st.dictionaries(st.sampled_from(["DATASEC", "DETSEC", "BIASSEC", "CCDNAME"]), _section, max_size=4),
        min_size=1,
        max_size=3,
    )
)
def test_fuzzed_segments_give_a_row_or_a_reject(tmp_path_factory, segments):
    """Amplifier segments with any sections: every segment HDU ends in a CCD or a reject, nothing raises."""
    rng = np.random.default_rng(0)
    hdus = [fits.PrimaryHDU(header=fits.Header({"EXPNUM": 9, "MJD-OBS": 61000.3}))]
    for i, keys in enumerate(segments):
        hdus.append(
            fits.ImageHDU(
                rng.normal(1000, 10, (70, 90)).astype(np.float32), fits.Header(keys), name=f"Segment{i}"
            )
        )
    path = tmp_path_factory.mktemp("segments") / "f.fits"
    fits.HDUList(hdus).writeto(path)
    scan = scan_file(str(path), min_side=16)
    if scan.file_reject is not None:
        assert scan.file_reject.reason in REJECT_REASONS
        return
    used = [
        s["hdu_index"]
        for h in scan.hdus
        for s in (h.segments or {"segments": [{"hdu_index": h.hdu_index}]})["segments"]
    ]
    assert sorted(used + [r.hdu_index for r in scan.rejects]) == list(range(1, len(segments) + 1))
    from desomspark.config import IngestConfig

    cfg = IngestConfig(min_ccd_side=16, edge_margin=8, window_size=0)
    for hdu in scan.hdus:
        row, _ = _ccd_task(
            dict(path=str(path), night="20251120", exposure_id="9", window=False, **asdict(hdu)), cfg
        )
        assert row["reject_reason"] is None or row["reject_reason"] in REJECT_REASONS


def test_camera_profiles_fill_what_headers_lack(tmp_path, small_sim):
    from desomspark.ingest.camera import load_profiles, profile_for

    assert {"megacam", "decam", "hsc", "lsstcam", "generic"} <= set(load_profiles())
    assert scan_file(str(DATA / DECAM_RAW)).camera == "decam"
    assert scan_file(str(DATA / SDSS)).camera == "generic"  # no profile: the headers alone
    with pytest.raises(ValueError, match="unknown camera"):
        profile_for({}, "hubble")
    # a DECam-named file without pixel scale or CCD position cards: the profile and DETSEC place it
    spec = plan_night(1, seed=2, cfg=small_sim)[0]
    path = write_exposure(spec, tmp_path, small_sim)
    truth = [(h.ccd_row, h.ccd_col) for h in scan_file(str(path)).hdus]
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["INSTRUME"] = "DECam"
        for hdu in hdul[1:]:
            for key in ("PIXSCAL1", "PIXSCAL2", "CCDROW", "CCDCOL"):
                del hdu.header[key]
    scan = scan_file(str(path))
    assert scan.camera == "decam" and {h.pixel_scale for h in scan.hdus} == {0.263}
    assert [(h.ccd_row, h.ccd_col) for h in scan.hdus] == truth
    # --camera overrides the header
    assert scan_file(str(path), camera="megacam").hdus[0].pixel_scale == 0.187
