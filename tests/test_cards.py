"""The scan's own parsing gives astropy's answers: a header's values parsed once (Cards), card for
card, and the night of an MJD."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from desomspark.ingest.cards import Cards

DATA = Path(__file__).parent / "data"
#: keys the scan asks that these headers lack, and a few they have in another case
ABSENT = ("EXPNUM", "ZP", "MAGZERO", "PIXSCALE", "CCDROW", "MP_BAD", "DETSEC", "exptime", "naxis1")


def _same(cards: Cards, header: fits.Header, key: str) -> None:
    expected, got = header.get(key), cards.get(key)
    assert type(got) is type(expected), (key, got, expected)
    if isinstance(expected, float) and np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == expected, (key, got, expected)


def _check_every_key(path: Path) -> int:
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path) as hdul:
            for hdu in hdul:
                cards = Cards(hdu.header)
                for key in list(dict.fromkeys(hdu.header.keys())) + list(ABSENT):
                    if key in ("COMMENT", "HISTORY", ""):
                        continue
                    _same(cards, hdu.header, key)
                    checked += 1
    return checked


REAL = [
    "decam_calexp_0941420_23.fits",
    "lbc_raw_lbcb.20210407.120357.fits",
    "sdss_frame-i-008108-5-0025.fits",
]


@pytest.mark.parametrize("name", REAL)
def test_real_headers_read_as_astropy_reads_them(name):
    assert _check_every_key(DATA / name) > 50


def test_a_simulated_exposure_reads_as_astropy_reads_it(night_dir):
    assert _check_every_key(sorted(Path(night_dir).glob("*.fits"))[0]) > 50


def test_cards_outside_the_fixed_format_are_left_to_astropy(tmp_path):
    """Long strings, HIERARCH keys, complex, undefined and lower-case-exponent values, doubled quotes,
    duplicates and D exponents: each read as astropy reads it from the file."""
    header = fits.Header()
    header["LONGSTR"] = "a value longer than one card can hold, " * 4
    header["HIERARCH ESO DET CHIP NAME"] = "chip1"
    header["COMPLX"] = complex(1.5, -2.0)
    header["UNDEF"] = None
    header["QUOTED"] = "it's"
    header["BLANKS"] = "  lead and trail   "
    header["LOGIC"] = False
    header["BIG"] = 12345678901234
    header["DUP"] = 1
    header.append(("DUP", 2))
    path = tmp_path / "odd.fits"
    fits.PrimaryHDU(np.zeros((2, 2), np.float32), header).writeto(path)
    raw = bytearray(path.read_bytes())
    # cards astropy would not write: a D exponent, a lower-case exponent, a sign and a bare point
    extra = [
        b"DEXP    =               1.5D+3",
        b"LOWEXP  =               2.5e-1",
        b"PLUS    =                  +42",
    ]
    extra += [b"POINT   =                   5."]
    end = raw.index(b"END" + b" " * 77)
    for card in extra:
        raw[end : end + 80] = card.ljust(80)
        end += 80
    raw[end : end + 80] = b"END".ljust(80)
    path.write_bytes(bytes(raw))
    with fits.open(path) as hdul:
        header = hdul[0].header
        cards = Cards(header)
        keys = ["LONGSTR", "ESO DET CHIP NAME", "COMPLX", "UNDEF", "QUOTED", "BLANKS", "LOGIC", "BIG", "DUP"]
        for key in keys + ["DEXP", "LOWEXP", "PLUS", "POINT", "NAXIS1", "NOSUCH"]:
            _same(cards, header, key)
        assert cards["DEXP"] == 1500.0 and cards["PLUS"] == 42 and cards["LONGSTR"].count("longer") == 4
        assert "NAXIS" in cards and "NOSUCH" not in cards
        with pytest.raises(KeyError):
            cards["NOSUCH"]


def test_the_night_of_an_mjd_is_astropys_utc_date_twelve_hours_earlier():
    from astropy.time import Time

    from desomspark.ingest.fitsio import night_of

    mjds = np.random.default_rng(0).uniform(-600_000, 2_900_000, 2000).tolist()
    mjds += [61000.5, 61000.4999999, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # erfa warns of dubious years far from now
        for mjd in mjds:
            expected = Time(mjd - 0.5, format="mjd", scale="utc").to_datetime().strftime("%Y%m%d")
            assert night_of(mjd) == expected, mjd
    assert night_of(61000.3) == "20251120" and night_of(1e12) is None and night_of(float("nan")) is None
    assert night_of(date_obs="2025-11-21T03:00:00") == "20251120"
