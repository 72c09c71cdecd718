"""Camera profiles (``conf/cameras/*.yaml``): what a camera's headers may leave out.

A profile names the camera (``match``: header keys of the primary HDU and
regular expressions, e.g. ``INSTRUME: "^DECam"``) and gives the numbers an
ingest falls back on when a header lacks them: the pixel scale (arcsec /
pixel, for FWHM in arcsec), the saturation level, and how to place a CCD on
the focal plane for the report's mosaics (``ccd_position: detsec``: from the
CCD's ``DETSEC`` when there are no ``CCDROW``/``CCDCOL`` cards), and whether
its raw files hold one HDU per amplifier (``amplifier_hdus``: the segments of
a CCD are assembled by their ``DETSEC``).  Headers
always win over the profile.  A file matching no profile is read with
``generic`` (everything from its headers), and the ingest says so once.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import yaml

from desomspark.config import conf_dir
from desomspark.errors import UserError
from desomspark.ingest.sections import SECTION_PATTERN

_LOG = logging.getLogger(__name__)


GENERIC = "generic"


@dataclass(frozen=True)
class CameraProfile:
    name: str
    match: dict[str, str] = field(default_factory=dict)
    pixel_scale: float | None = None
    saturation: float | None = None
    ccd_position: str = "detsec"
    amplifier_hdus: bool = False  # raw files hold one HDU per amplifier segment, assembled by DETSEC
    # nominal conditions for the effective-exposure-time factors (desomspark.decide.teff): seeing FWHM
    # (arcsec), sky (ADU/s/pixel) and zero point (mag giving 1 ADU/s), the last two per filter
    # ({filter: value}, "*" for any other); missing ones give NaN factors
    fwhm_nominal: float | None = None
    sky_nominal: dict = field(default_factory=dict)
    zero_point_nominal: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)  # decide.rules for this camera's exposures

    def __post_init__(self):
        if self.ccd_position not in ("detsec", "header"):
            raise UserError(f"camera {self.name}: ccd_position must be 'detsec' or 'header'")
        for _key, pattern in self.match.items():
            re.compile(pattern)  # a bad expression fails when the profile is read, not mid-night

    def matches(self, header) -> bool:
        return bool(self.match) and all(
            re.search(pattern, str(header.get(key, ""))) for key, pattern in self.match.items()
        )


@lru_cache(maxsize=4)
def load_profiles(folder: str | None = None) -> dict[str, CameraProfile]:
    """Every profile of ``folder`` (default: ``conf/cameras``), by name."""
    root = Path(folder) if folder else conf_dir() / "cameras"
    profiles = {}
    for path in sorted(root.glob("*.yaml")):
        profile = read_profile(path)
        profiles[profile.name] = profile
    if GENERIC not in profiles:
        profiles[GENERIC] = CameraProfile(GENERIC)
    return profiles


def read_profile(path: Path) -> CameraProfile:
    """One profile file; a YAML error, an unknown key or a wrong value is one UserError naming the file."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"camera profile {path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"camera profile {path}: a YAML mapping was expected")
    known = {f.name for f in fields(CameraProfile)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"camera profile {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    try:
        return CameraProfile(**values)
    except (TypeError, re.error, UserError) as exc:
        raise UserError(f"camera profile {path}: {exc}") from None


def profile_for(header, name: str | None = None) -> CameraProfile:
    """The profile named ``name`` (``--camera``), else the first whose ``match`` fits the header, else
    generic."""
    profiles = load_profiles()
    if name is not None:
        if name not in profiles:
            raise UserError(f"unknown camera {name!r}: known are {', '.join(sorted(profiles))}")
        return profiles[name]
    for profile in profiles.values():
        if profile.matches(header):
            return profile
    return profiles[GENERIC]


def detsec_positions(detsecs: dict[int, str | None]) -> dict[int, tuple[int, int]]:
    """(row, column) of each CCD on the focal plane, ranked from the start of its DETSEC (x, y)."""
    starts = {}
    for index, text in detsecs.items():
        m = SECTION_PATTERN.match(str(text or ""))
        if m:
            x1, x2, y1, y2 = (int(v) for v in m.groups())
            starts[index] = (min(y1, y2), min(x1, x2))
    rows = sorted({y for y, _ in starts.values()})
    cols = sorted({x for _, x in starts.values()})
    return {i: (rows.index(y), cols.index(x)) for i, (y, x) in starts.items()}
