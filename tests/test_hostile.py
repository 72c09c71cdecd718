"""Hostile input: every bad file, link or folder becomes a reject, the rest of the night is processed.

The corpus is made here, on disk, from a good simulated night; then a
property-based test throws mutated and truncated FITS bytes at the per-file
scan and the per-HDU reader, which must never raise past their reject path.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import asdict

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from desomspark.config import IngestConfig
from desomspark.evaluation.simulate import simulate_night
from desomspark.ingest.fitsio import Reject, read_ccd, scan_file
from desomspark.lake.layout import Lake
from desomspark.lake.schema import REJECT_REASONS
from desomspark.stages.ingest import _ccd_task, ingest


def _card(key: str, value: str) -> bytes:
    return f"{key:<8}= {value:>20}".ljust(80).encode()


def _replace_card(raw: bytes, key: str, value: str, start: int = 0) -> bytes:
    at = raw.index(f"{key:<8}=".encode(), start)
    return raw[:at] + _card(key, value) + raw[at + 80 :]


def _image_file(path, data, header=None):
    fits.HDUList([fits.PrimaryHDU(header=header), fits.ImageHDU(data, name="CCD00")]).writeto(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, night_dir, small_sim):
    """Four good exposures plus one of each kind of hostility; returns (dir,
    {name: expected reason or None})."""
    d = tmp_path_factory.mktemp("hostile")
    good = sorted(night_dir.glob("*.fits"))[:4]
    for p in good:
        shutil.copy(p, d / p.name)
    primary = fits.getheader(good[0], 0)
    expected: dict[str, str | None] = {p.name: None for p in good}

    def header(expnum):
        h = primary.copy()
        h["EXPNUM"] = expnum
        return h

    raw = good[0].read_bytes()
    # truncated in the middle of an HDU's data: the CCDs before the cut are used (status partial)
    (d / "cut_mid_hdu.fits").write_bytes(_replace_card(raw, "EXPNUM", "88000")[: len(raw) // 2 + 1234])
    expected["cut_mid_hdu.fits"] = None
    # a header that claims a 4 TB image over a few blocks of data
    buf = io.BytesIO()
    _image_file(buf, np.zeros((256, 256), np.float32), header(88001))
    small = buf.getvalue()
    ext = small.index(b"XTENSION")
    huge = _replace_card(_replace_card(small, "NAXIS1", "1048576", ext), "NAXIS2", "1048576", ext)
    (d / "terabytes.fits").write_bytes(huge)
    expected["terabytes.fits"] = "truncated"
    # BITPIX that FITS does not have
    (d / "bitpix7.fits").write_bytes(_replace_card(small, "BITPIX", "7", ext).replace(b"88001", b"88002"))
    expected["bitpix7.fits"] = "bad_header"
    # a 3-D cube and a table-only file
    fits.HDUList(
        [fits.PrimaryHDU(header=header(88003)), fits.ImageHDU(np.zeros((3, 256, 256), np.float32))]
    ).writeto(d / "cube.fits")
    expected["cube.fits"] = "wrong_dimensions"
    fits.HDUList(
        [
            fits.PrimaryHDU(header=header(88004)),
            fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E", array=np.arange(5.0))]),
        ]
    ).writeto(d / "table_only.fits")
    expected["table_only.fits"] = "no_image_hdu"
    # a good exposure whose header strings carry HTML and a non-ASCII byte: processed, strings kept as text
    scripted = raw.replace(
        primary.cards["OBJECT"].image.encode(),
        _card("OBJECT", "'<script>x()</script>'").replace(b"x()", b"x\xe9)"),
        1,
    )
    scripted = _replace_card(scripted, "EXPNUM", "88005")
    (d / "scripted.fits").write_bytes(scripted)
    expected["scripted.fits"] = None
    # tile-compressed, with the second CCD's tiles overwritten by garbage: that CCD is rejected, the rest used
    packed_dir = tmp_path_factory.mktemp("packed")
    (packed,) = simulate_night(packed_dir, 1, small_sim, seed=99, compress=True, progress=False, processes=1)
    with fits.open(packed) as hdul:
        offset, size = hdul[2]._data_offset, hdul[2]._data_size
    data = bytearray(packed.read_bytes())
    data[offset + 64 : offset + size - 64] = (
        np.random.default_rng(1).integers(0, 256, size - 128, dtype=np.uint8).tobytes()
    )
    data = bytes(data)
    (d / "corrupt_tiles.fits.fz").write_bytes(_replace_card(data, "EXPNUM", "88006"))
    expected["corrupt_tiles.fits.fz"] = None  # partial: its other CCDs are fine
    # a symbolic link to itself, and an empty folder with a FITS name
    os.symlink("loop.fits", d / "loop.fits")
    expected["loop.fits"] = "not_found"
    (d / "empty_dir.fits").mkdir()
    expected["empty_dir.fits"] = "not_a_file"
    return d, expected


def test_every_hostile_input_is_a_reject_and_the_rest_is_processed(spark, corpus, tmp_path, config):
    d, expected = corpus
    lake = Lake(str(tmp_path / "lake"))
    summary = ingest(spark, str(d), lake, cfg=config.ingest)
    exposures = lake.read("exposures").to_pandas()
    rejects = lake.read("rejects").to_pandas()
    by_file = rejects[rejects["hdu_index"].isna()].set_index("path")["reason"]
    got = {os.path.basename(p): r for p, r in by_file.items()}
    assert got == {name: reason for name, reason in expected.items() if reason}
    processed = {os.path.basename(p) for p in exposures["path"]}
    assert processed == {name for name, reason in expected.items() if reason is None}
    assert summary.files == len(expected) == summary.ok + summary.partial + summary.rejected
    assert set(rejects["reason"]) <= set(REJECT_REASONS)
    cut = rejects[rejects["path"].str.endswith("cut_mid_hdu.fits")]
    assert set(cut["reason"]) == {"truncated"} and cut["hdu_index"].notna().all()
    # the corrupt tiles cost one CCD, not the exposure
    tiles = exposures[exposures["path"].str.endswith("corrupt_tiles.fits.fz")].iloc[0]
    assert tiles["status"] == "partial" and tiles["n_ccds_rejected"] >= 1 and tiles["n_ccds_used"] >= 1
    hdu_rejects = rejects[
        rejects["path"].str.endswith("corrupt_tiles.fits.fz") & rejects["hdu_index"].notna()
    ]
    assert set(hdu_rejects["reason"]) == {"unreadable_data"}
    # the HTML in the header is kept as a string (the report escapes it), the odd byte does not stop the file
    obj = exposures.loc[exposures["path"].str.endswith("scripted.fits"), "object"].iloc[0]
    assert obj.startswith("<script>x") and obj.endswith("</script>")


def test_an_empty_folder_as_input_is_a_clear_error(tmp_path):
    from desomspark.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["ingest", "--input", str(tmp_path / "empty"), "--lake", str(tmp_path / "lake")]) == 1


def _tiny_fits() -> bytes:
    rng = np.random.default_rng(0)
    image = (1000 + rng.normal(0, 10, (96, 96))).astype(np.int16)
    image[40:44, 40:44] += 500
    buf = io.BytesIO()
    hdr = fits.Header({"EXPNUM": 5, "MJD-OBS": 61000.3})
    fits.HDUList([fits.PrimaryHDU(header=hdr), fits.ImageHDU(image, name="CCD00")]).writeto(buf)
    return buf.getvalue()


TINY = _tiny_fits()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flips=st.lists(st.tuples(st.integers(0, len(TINY) - 1), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.integers(0, len(TINY))),
    header_bias=st.booleans(),
)
def test_fuzzed_fits_never_escapes_the_reject_path(tmp_path_factory, flips, cut, header_bias):
    data = bytearray(TINY)
    for offset, value in flips:
        # half the time aim at the headers (first 2 blocks of each HDU), where parsing happens
        at = offset % 5760 if header_bias else offset
        data[at] = value
    if cut is not None:
        data = data[:cut]
    path = tmp_path_factory.mktemp("fuzz") / "f.fits"
    path.write_bytes(bytes(data))
    scan = scan_file(str(path), min_side=64)  # must not raise
    if scan.file_reject is not None:
        assert scan.file_reject.reason in REJECT_REASONS
        return
    cfg = IngestConfig(min_ccd_side=64, edge_margin=20)
    for hdu in scan.hdus:
        try:
            image = read_ccd(str(path), hdu.hdu_index)
            assert image.ndim == 2 and image.dtype == np.float32
        except Reject as exc:
            assert exc.reason in REJECT_REASONS
        row, _ = _ccd_task(
            dict(path=str(path), night="20251120", exposure_id="5", window=True, **asdict(hdu)), cfg
        )
        assert row["reject_reason"] is None or row["reject_reason"] in REJECT_REASONS
