"""Finding and reading FITS exposures, with every failure turned into a reject.

Two entry points, both plain functions so that a test calls them without Spark:

* :func:`scan_file` opens the headers of one file and lists its image HDUs
  (the first Spark stage, one task per file);
* :func:`read_ccd` reads the pixels of one HDU as native float32 (inside the
  per-CCD task).

Paths are local paths or fsspec URLs; ``file://`` URLs are read as local
files so that astropy can memory-map them.
"""
from __future__ import annotations

import glob
import math
import os
import warnings
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np
from astropy.io import fits
from astropy.time import Time

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fz", ".fits.gz")


class Reject(Exception):
    """A file or HDU that cannot be used; ``reason`` is a code of schema.REJECT_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def local_path(path: str) -> str | None:
    """The local filesystem path of ``path`` (plain path or file:// URL), else None."""
    parsed = urlparse(path)
    if parsed.scheme in ("", "file"):
        return parsed.path if parsed.scheme == "file" else path
    if len(parsed.scheme) == 1:  # a Windows drive letter
        return path
    return None


def list_inputs(spec: str) -> list[str]:
    """Expand ``spec`` (a file, a directory, a glob; local or fsspec URL) to sorted files.

    A directory gives the FITS-named entries directly inside it (a FITS-named
    sub-directory or a broken link included: they become rejects, so that
    everything that looks like an input is accounted for).  Raises
    ``FileNotFoundError`` when nothing matches.
    """
    local = local_path(spec)
    if local is not None:
        if os.path.isdir(local):
            names = sorted(os.listdir(local))
            files = [os.path.join(local, n) for n in names if n.lower().endswith(FITS_SUFFIXES)]
        elif any(c in local for c in "*?["):
            files = sorted(p for p in glob.glob(local) if not os.path.isdir(p))
        elif os.path.lexists(local):
            files = [local]
        else:
            files = []
        prefix = "file://" if spec.startswith("file://") else ""
        files = [prefix + os.path.abspath(f) if prefix else os.path.abspath(f) for f in files]
    else:
        import fsspec

        fs, _, paths = fsspec.get_fs_token_paths(spec)
        if len(paths) == 1 and fs.isdir(paths[0]):
            paths = [p for p in fs.ls(paths[0], detail=False) if p.lower().endswith(FITS_SUFFIXES)]
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        files = sorted(f"{protocol}://{p}" if "://" not in p else p for p in paths)
    if not files:
        raise FileNotFoundError(f"no input file matches {spec!r}")
    return files


def _open(path: str):
    """``fits.open`` on a local path (memory-mapped) or on an fsspec file object.

    Image data come back unscaled (raw integers): :func:`read_ccd` applies
    BZERO/BSCALE itself, because astropy cannot memory-map scaled data.
    """
    local = local_path(path)
    if local is not None:
        return fits.open(local, memmap=True, lazy_load_hdus=True, mode="readonly",
                         do_not_scale_image_data=True)
    import fsspec

    fh = fsspec.open(path, "rb").open()
    return fits.open(fh, lazy_load_hdus=True, mode="readonly", do_not_scale_image_data=True)


def _size(path: str) -> int:
    local = local_path(path)
    if local is not None:
        return os.path.getsize(local)
    import fsspec

    fs, _, (p,) = fsspec.get_fs_token_paths(path)
    return int(fs.size(p))


def _head(path: str, n: int = 80) -> bytes:
    local = local_path(path)
    if local is not None:
        with open(local, "rb") as fh:
            return fh.read(n)
    import fsspec

    with fsspec.open(path, "rb") as fh:
        return fh.read(n)


def night_of(mjd: float | None = None, date_obs: str | None = None) -> str | None:
    """The observing night (YYYYMMDD) of an exposure.

    The night is the UTC date 12 hours earlier than the exposure start (the
    Rubin ``dayobs`` convention): every exposure of one night, wherever the
    observatory, gets the same date.
    """
    try:
        if mjd is not None and math.isfinite(float(mjd)):
            t = Time(float(mjd) - 0.5, format="mjd", scale="utc")
        elif date_obs:
            t = Time(str(date_obs), scale="utc") - 0.5
        else:
            return None
        return t.to_datetime().strftime("%Y%m%d")
    except Exception:
        return None


def _card(header: fits.Header, key: str, kind=str, default=None):
    """Header value ``key`` converted with ``kind``; ``default`` if absent or malformed."""
    value = header.get(key)
    if value is None or isinstance(value, fits.card.Undefined):
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        return default


def file_reason(hdu_reasons: list[str]) -> tuple[str, str]:
    """The reject of a file none of whose HDUs could be used: their common reason, if they share one."""
    unique = sorted(set(hdu_reasons))
    reason = unique[0] if len(unique) == 1 else "no_usable_ccd"
    return reason, f"no usable HDU: {len(hdu_reasons)} rejected ({', '.join(unique)})"


@dataclass
class HduInfo:
    hdu_index: int
    extname: str
    height: int
    width: int
    ccd_row: int
    ccd_col: int
    pixel_scale: float | None = None    # arcsec / pixel (PIXSCAL1, PIXSCALE or SECPIX; HDU, else primary)
    saturation: float | None = None     # ADU (SATURATE; HDU, else primary)


@dataclass
class FileScan:
    """What the first stage learns of a file: its exposure header and image HDUs."""

    path: str
    exposure_id: str | None = None
    night: str | None = None
    meta: dict = field(default_factory=dict)
    hdus: list[HduInfo] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)  # HDU-level and file-level
    file_reject: tuple[str, str] | None = None          # (reason, detail) if nothing usable


def _exposure_id(header: fits.Header, path: str) -> str:
    expnum = _card(header, "EXPNUM", str)
    if expnum and expnum.strip():
        return expnum.strip()
    name = os.path.basename(urlparse(path).path if "://" in path else path)
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def scan_file(path: str, min_side: int = 128) -> FileScan:
    """Open the headers of ``path`` and list its usable image HDUs.

    Never raises for bad input: problems become ``rejects`` (HDU-level) or
    ``file_reject`` (the whole file).
    """
    scan = FileScan(path=path)
    local = local_path(path)
    if local is not None and os.path.isdir(local):
        scan.file_reject = ("not_a_file", "a directory, not a FITS file")
        return scan
    try:
        size = _size(path)
    except OSError as exc:
        scan.file_reject = ("not_found", str(exc))
        return scan
    if size == 0:
        scan.file_reject = ("empty_file", "0 bytes")
        return scan
    try:
        head = _head(path)
    except OSError as exc:
        scan.file_reject = ("not_found", str(exc))
        return scan
    if not head.startswith(b"SIMPLE  ="):
        scan.file_reject = ("not_fits", f"starts with {head[:20]!r}")
        return scan
    if size < 2880:
        scan.file_reject = ("truncated", f"{size} bytes, less than one FITS block")
        return scan
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _open(path) as hdul:
                _scan_hdus(hdul, scan, size, min_side)
    except Reject as exc:
        scan.file_reject = (exc.reason, exc.detail)
    except Exception as exc:  # astropy raises many kinds on broken headers
        scan.file_reject = ("bad_header", f"{type(exc).__name__}: {exc}"[:500])
    if scan.file_reject is None and not scan.hdus:
        if scan.rejects:
            scan.file_reject = file_reason([r["reason"] for r in scan.rejects])
        else:
            scan.file_reject = ("no_image_hdu", "no 2-D image HDU with data")
    return scan


def _scan_hdus(hdul, scan: FileScan, size: int, min_side: int) -> None:
    primary = None
    index = 0
    while True:
        try:
            hdu = hdul[index]
        except IndexError:
            break
        except Exception as exc:
            # a header that cannot be parsed ends the file for us; what came before stands
            if primary is None:
                raise
            scan.rejects.append(dict(hdu_index=index, extname=None, reason="bad_header",
                                     detail=f"{type(exc).__name__}: {exc}"[:500]))
            break
        if primary is None:
            primary = hdu.header
            scan.exposure_id = _exposure_id(primary, scan.path)
            scan.meta = dict(
                exptime=_card(primary, "EXPTIME", float), filter=_card(primary, "FILTER", str),
                mjd_obs=_card(primary, "MJD-OBS", float), date_obs=_card(primary, "DATE-OBS", str),
                airmass=_card(primary, "AIRMASS", float), object=_card(primary, "OBJECT", str),
                truth_label=_card(primary, "QUALITY", str), truth_kind=_card(primary, "QUALKIND", str),
                zero_point=_first_card([primary], ZERO_POINT_KEYS))
            scan.night = night_of(scan.meta["mjd_obs"], scan.meta["date_obs"])
        _check_hdu(hdu, index, scan, size, min_side, primary)
        index += 1


VALID_BITPIX = (8, 16, 32, 64, -32, -64)


PIXEL_SCALE_KEYS = ("PIXSCAL1", "PIXSCALE", "SECPIX", "SECPIX1")
#: photometric zero point (mag of 1 ADU/s), where the camera writes one
ZERO_POINT_KEYS = ("MAGZPT", "MAGZERO", "PHOTZP", "ZP")


def _first_card(headers: list[fits.Header], keys: tuple[str, ...]) -> float | None:
    """The first positive number found under ``keys``, header by header."""
    for header in headers:
        for key in keys:
            value = _card(header, key, float)
            if value is not None and np.isfinite(value) and value > 0:
                return abs(value)
    return None


def _check_hdu(hdu, index: int, scan: FileScan, size: int, min_side: int, primary: fits.Header) -> None:
    header = hdu.header
    is_image = isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
    if not is_image:
        return  # tables and other extensions carry no pixels: not a CCD
    # for a tile-compressed HDU astropy shows the image header (NAXISn of the image)
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return  # e.g. the primary header of a multi-extension file
    extname = str(header.get("EXTNAME", f"hdu{index}"))
    reject = dict(hdu_index=index, extname=extname)
    bitpix = header.get("BITPIX")
    if bitpix not in VALID_BITPIX:
        scan.rejects.append(reject | dict(reason="bad_header", detail=f"BITPIX = {bitpix!r} is not a FITS pixel type"))
        return
    shape = tuple(int(header.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1))
    if naxis != 2:
        scan.rejects.append(reject | dict(reason="wrong_dimensions", detail=f"NAXIS={naxis}, shape {shape}"))
        return
    if min(shape) < min_side:
        scan.rejects.append(reject | dict(reason="wrong_dimensions", detail=f"shape {shape} below {min_side} px"))
        return
    info = hdu.fileinfo() or {}
    end = info.get("datLoc", 0) + info.get("datSpan", 0)
    if end > size:
        scan.rejects.append(reject | dict(reason="truncated",
                                          detail=f"data end at byte {end}, file has {size}"))
        return
    scan.hdus.append(HduInfo(
        hdu_index=index, extname=extname, height=shape[0], width=shape[1],
        ccd_row=_card(header, "CCDROW", int, default=-1), ccd_col=_card(header, "CCDCOL", int, default=-1),
        pixel_scale=_first_card([header, primary], PIXEL_SCALE_KEYS),
        saturation=_first_card([header, primary], ("SATURATE",))))


def _physical(raw: np.ndarray, header: fits.Header) -> np.ndarray:
    """Raw FITS pixels -> physical values (BSCALE * raw + BZERO), native float32, BLANK -> NaN."""
    # one pass: the astype makes the native-endian copy sep needs
    data = raw.astype(np.float32, order="C")
    if raw.dtype.kind in "iu":
        blank = header.get("BLANK")
        if isinstance(blank, (int, np.integer)):
            data[raw == blank] = np.nan
    bscale, bzero = float(header.get("BSCALE", 1.0)), float(header.get("BZERO", 0.0))
    if bscale != 1.0:
        data *= np.float32(bscale)
    if bzero != 0.0:
        data += np.float32(bzero)
    return data


def read_ccd(path: str, hdu_index: int) -> np.ndarray:
    """The pixels of HDU ``hdu_index`` of ``path`` as native-endian float32.

    BZERO/BSCALE and tile compression are applied by astropy; big-endian FITS
    data are converted once here because sep accepts native byte order only.

    Raises
    ------
    Reject
        ``unreadable_data`` if the pixels cannot be read or decompressed,
        ``wrong_dimensions`` if they are not 2-D.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _open(path) as hdul:
                hdu = hdul[hdu_index]
                raw = hdu.data
                if raw is None:
                    raise Reject("wrong_dimensions", "HDU has no data")
                if raw.ndim != 2:
                    raise Reject("wrong_dimensions", f"data shape {raw.shape}")
                return _physical(raw, hdu.header)
    except Reject:
        raise
    except Exception as exc:
        raise Reject("unreadable_data", f"{type(exc).__name__}: {exc}"[:500]) from None
