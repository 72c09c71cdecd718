"""Effective-exposure-time factors, as DES (Neilsen et al. 2016) and Rubin define them.

``teff = transparency^2 x seeing_factor x sky_factor`` with

* ``seeing_factor = (FWHM_nominal / FWHM)^2``
* ``sky_factor = sky_nominal / sky``, both in ADU/s/pixel (the sky level divided by EXPTIME)
* ``transparency = 10^(-0.4 (zp_nominal - zp))`` from the header zero point (NaN without one;
  ``teff`` then takes it as 1 and says so in the verdict's reason)

A factor of 1 is an exposure as good as the camera's nominal conditions; 0.5 needs twice the time.
The nominal values come from the camera profile (``conf/cameras/*.yaml``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TEFF_COLUMNS = ["seeing_factor", "sky_factor", "transparency", "teff"]


def per_filter(values: dict[str, float], filters: pd.Series) -> np.ndarray:
    """A nominal value per row from a ``{filter: value}`` mapping (``"*"``: any other filter)."""
    fallback = values.get("*", np.nan)
    return np.array([values.get(str(f), fallback) for f in filters], dtype=float)


def teff_factors(
    fwhm: np.ndarray,
    sky: np.ndarray,
    exptime: np.ndarray,
    zero_point: np.ndarray,
    fwhm_nominal: np.ndarray,
    sky_nominal: np.ndarray,
    zero_point_nominal: np.ndarray,
) -> pd.DataFrame:
    """The four factors for arrays of exposures (or CCDs): NaN where an input or a nominal is missing.

    Parameters
    ----------
    fwhm : array of float
        Seeing FWHM, in the unit of ``fwhm_nominal`` (arcsec).
    sky, exptime : array of float
        Sky level (ADU per pixel) and exposure time (s).
    zero_point : array of float
        Header zero point (mag giving 1 ADU/s), NaN where the header has none.
    fwhm_nominal, sky_nominal, zero_point_nominal : array of float
        The camera's nominal values (arcsec, ADU/s/pixel, mag).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        fwhm = np.asarray(fwhm, dtype=float)
        seeing = (np.asarray(fwhm_nominal, dtype=float) / np.where(fwhm > 0, fwhm, np.nan)) ** 2
        rate = np.asarray(sky, dtype=float) / np.where(np.asarray(exptime, dtype=float) > 0, exptime, np.nan)
        sky_factor = np.asarray(sky_nominal, dtype=float) / np.where(rate > 0, rate, np.nan)
        delta = np.asarray(zero_point_nominal, dtype=float) - np.asarray(zero_point, dtype=float)
        transparency = 10 ** (-0.4 * delta)
    teff = np.where(np.isfinite(transparency), transparency, 1.0) ** 2 * seeing * sky_factor
    return pd.DataFrame(
        {"seeing_factor": seeing, "sky_factor": sky_factor, "transparency": transparency, "teff": teff}
    )
