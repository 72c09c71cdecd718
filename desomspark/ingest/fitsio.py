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

import bz2
import datetime
import glob
import gzip
import hashlib
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

import numpy as np
from astropy.io import fits
from astropy.time import Time

from desomspark.errors import DesomsparkError, is_machine_fault
from desomspark.ingest.camera import detsec_positions, profile_for
from desomspark.ingest.cards import Cards
from desomspark.ingest.sections import (
    RawLayout,
    SectionError,
    SegmentLayout,
    amplifier_layout,
    assemble,
    check_layout,
    correct_raw,
    parse_section,
    segment_of,
)
from desomspark.lake.schema import REJECT_REASONS

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fz", ".fits.gz", ".fit.gz", ".fits.bz2", ".fz.gz")

#: magic bytes of the whole-file compressions archives use (the content decides, not the name)
STREAM_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2"}
#: extension types that are not pictures of the sky (LSST/HSC calexp planes, weight maps, ...)
AUXILIARY_PLANES = {
    "MASK",
    "VARIANCE",
    "WEIGHT",
    "INVVAR",
    "WHT",
    "BPM",
    "DQ",
    "ERR",
    "SIGMA",
    "UNCERT",
    "EXPMAP",
}
#: extension names of amplifier segments (LSST raw files: one HDU per amplifier)
SEGMENT_EXTNAME = re.compile(r"^SEGMENT\d+$", re.IGNORECASE)
#: header keys naming the CCD an amplifier segment belongs to (several CCDs may share a file)
SEGMENT_CCD_KEYS = ("CCDNAME", "DETNAME", "CCDSLOT", "DETECTOR")
#: mask planes (MP_<NAME> header keys, LSST convention) that make a pixel unusable
FLAGGED_MASK_PLANES = ("BAD", "SAT", "INTRP", "CR", "EDGE", "NO_DATA", "SUSPECT", "UNMASKEDNAN")


#: the reason of a :class:`Reject` that is the machine's fault: never written, the run stops instead
#: (:class:`desomspark.errors.MachineFault`)
MACHINE_FAULT = "machine_fault"


def reject_for(exc: BaseException, reason: str, detail: str | None = None, **where) -> Reject:
    """The reject ``reason`` for ``exc`` -- or :data:`MACHINE_FAULT` if the machine, not the file, failed."""
    text = detail or f"{type(exc).__name__}: {exc}"
    return Reject(MACHINE_FAULT if is_machine_fault(exc) else reason, text, **where)


class Reject(DesomsparkError):
    """A file or HDU that cannot be used, and the row of ``rejects/`` it becomes.

    Raised where reading fails, kept in a :class:`FileScan` where scanning
    finds a problem: either way :meth:`row` writes it.  ``reason`` is a code
    of ``schema.REJECT_REASONS`` (an unknown code is a bug, refused here);
    ``hdu_index`` and ``extname`` place it in its file, None for the whole
    file.
    """

    def __init__(self, reason: str, detail: str, hdu_index: int | None = None, extname: str | None = None):
        if reason not in REJECT_REASONS and reason != MACHINE_FAULT:
            raise ValueError(f"{reason!r} is not a reject reason of schema.REJECT_REASONS")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:500]  # an astropy message can quote a whole header
        self.hdu_index = hdu_index
        self.extname = extname

    def __reduce__(self):  # scans travel from executors: rebuilt from the fields, not from the message
        return Reject, (self.reason, self.detail, self.hdu_index, self.extname)

    def row(self, night: str | None, path: str) -> dict:
        """The row of ``rejects/`` (schema.REJECTS) for the file at ``path``."""
        return dict(
            night=night,
            path=path,
            hdu_index=self.hdu_index,
            extname=self.extname,
            reason=self.reason,
            detail=self.detail,
        )


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


def stream_compression(head: bytes) -> str | None:
    """``gzip`` or ``bzip2`` when the bytes start like such a stream (whatever the file's name), else None."""
    for magic, kind in STREAM_MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def _raw_open(path: str):
    local = local_path(path)
    if local is not None:
        return open(local, "rb")
    import fsspec

    return fsspec.open(path, "rb").open()


def _decompressing(fh, kind: str | None):
    return gzip.GzipFile(fileobj=fh) if kind == "gzip" else bz2.BZ2File(fh) if kind == "bzip2" else fh


INFLATED_CACHE_FILES = 8  # decompressed files kept per machine (oldest removed first)


def inflated_copy(path: str, kind: str) -> str:
    """A local, decompressed copy of a gzip/bzip2 FITS stream, made once per machine and reused.

    A compressed stream cannot be memory-mapped nor read from the middle:
    reading its 36th CCD means decompressing the 35 before it.  One Spark task
    per HDU would so decompress an exposure ~18 times over; instead the first
    task on a machine writes the whole file once (atomically) to a cache
    folder and every task memory-maps that copy.
    """
    cache = os.path.join(tempfile.gettempdir(), "desomspark-inflated")
    os.makedirs(cache, exist_ok=True)
    stamp = f"{path}|{_size(path)}|{os.path.getmtime(local_path(path)) if local_path(path) else ''}"
    target = os.path.join(cache, hashlib.sha1(stamp.encode()).hexdigest() + ".fits")
    if os.path.exists(target):
        os.utime(target)
        return target
    tmp = f"{target}.{os.getpid()}.part"
    try:
        with _raw_open(path) as fh, _decompressing(fh, kind) as stream, open(tmp, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 22)
    except (EOFError, OSError) as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise reject_for(exc, "truncated", f"the {kind} stream ends early or is damaged: {exc}") from None
    os.replace(tmp, target)
    # keep the cache bounded: a night streams through it
    copies = sorted(
        (os.path.join(cache, f) for f in os.listdir(cache) if f.endswith(".fits")),
        key=lambda f: os.path.getatime(f),
    )
    for old in copies[:-INFLATED_CACHE_FILES]:
        try:
            os.remove(old)
        except OSError:
            pass
    return target


def _open(path: str):
    """``fits.open`` on a local path (memory-mapped) or on an fsspec file object.

    A gzip or bzip2 stream (told by its first bytes) is read from its
    decompressed copy (:func:`inflated_copy`).  Image data come back
    unscaled (raw integers): :func:`read_ccd` applies BZERO/BSCALE itself,
    because astropy cannot memory-map scaled data.
    """
    local = _local_file(path)
    if local is not None:
        return fits.open(
            local, memmap=True, lazy_load_hdus=True, mode="readonly", do_not_scale_image_data=True
        )
    fh = _raw_open(path)
    return fits.open(fh, lazy_load_hdus=True, mode="readonly", do_not_scale_image_data=True)


def _local_file(path: str) -> str | None:
    """A local path to read ``path`` from: itself, or the decompressed copy of a gzip or bzip2
    stream; None for a remote file that is not compressed (read as a stream)."""
    with _raw_open(path) as fh:
        kind = stream_compression(fh.read(4))
    return inflated_copy(path, kind) if kind else local_path(path)


def _size(path: str) -> int:
    local = local_path(path)
    if local is not None:
        return os.path.getsize(local)
    import fsspec

    fs, _, (p,) = fsspec.get_fs_token_paths(path)
    return int(fs.size(p))


def _head(path: str, n: int = 80) -> tuple[bytes, str | None]:
    """The first ``n`` bytes of the FITS content (decompressed where the file is a stream) and the
    compression."""
    with _raw_open(path) as fh:
        kind = stream_compression(fh.read(4))
        fh.seek(0)
        try:
            return _decompressing(fh, kind).read(n), kind
        except (OSError, EOFError) as exc:  # a damaged stream
            raise reject_for(exc, "unreadable_data", f"{kind} stream cannot be read: {exc}") from None


MJD_ZERO = datetime.date(1858, 11, 17)  # the UTC date of MJD 0


def night_of(mjd: float | None = None, date_obs: str | None = None) -> str | None:
    """The observing night (YYYYMMDD) of an exposure.

    The night is the UTC date 12 hours earlier than the exposure start (the
    Rubin ``dayobs`` convention): every exposure of one night, wherever the
    observatory, gets the same date.
    """
    try:
        if mjd is not None and math.isfinite(float(mjd)):
            # a UTC MJD's whole part counts days from MJD 0 (astropy's date, at a thousandth of its cost)
            return (MJD_ZERO + datetime.timedelta(days=math.floor(float(mjd) - 0.5))).strftime("%Y%m%d")
        if date_obs:
            return (Time(str(date_obs), scale="utc") - 0.5).to_datetime().strftime("%Y%m%d")
        return None
    except Exception:  # astropy raises several kinds on a malformed date: the night is then unknown
        return None


def _card(header: "fits.Header | Cards", key: str, kind=str, default=None):
    """Header value ``key`` converted with ``kind``; ``default`` if absent or malformed."""
    value = header.get(key)
    if value is None or isinstance(value, fits.card.Undefined):
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        return default


def file_reason(hdu_reasons: list[str]) -> Reject:
    """The reject of a file none of whose HDUs could be used: their common reason, if they share one."""
    unique = sorted(set(hdu_reasons))
    reason = unique[0] if len(unique) == 1 else "no_usable_ccd"
    return Reject(reason, f"no usable HDU: {len(hdu_reasons)} rejected ({', '.join(unique)})")


@dataclass
class HduInfo:
    hdu_index: int
    extname: str
    height: int
    width: int
    ccd_row: int
    ccd_col: int
    pixel_scale: float | None = None  # arcsec / pixel (PIXSCAL1, PIXSCALE or SECPIX; HDU, else primary)
    saturation: float | None = None  # ADU (SATURATE; HDU, else primary)
    raw_layout: dict | None = None  # sections.RawLayout.to_dict() of a raw frame (overscan, amplifiers)
    mask_index: int | None = None  # the HDU of its mask plane, if the file has one
    mask_bits: int | None = None  # mask bits that flag a pixel (None: any non-zero value)
    segments: dict | None = None  # sections.SegmentLayout.to_dict(): a CCD read out as one HDU per amplifier
    storage: dict | None = None  # PixelStorage.to_dict() of an uncompressed image HDU


#: numpy's name for each FITS BITPIX (FITS data are big-endian)
BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


@dataclass(frozen=True)
class PixelStorage:
    """Where and how an uncompressed image HDU stores its pixels, as the scan read them in its
    header: a CCD task reads them from there without parsing a header again (on a small CCD
    astropy's parsing cost as much as reading the pixels)."""

    header_offset: int  # byte where the HDU's header starts: checked before reading
    data_offset: int  # byte where its data start
    height: int  # NAXIS2 and NAXIS1: the stored array (a raw frame is trimmed after reading)
    width: int
    bitpix: int
    bscale: float = 1.0
    bzero: float = 0.0
    blank: int | None = None  # the integer that marks a pixel without a value

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "PixelStorage | None":
        return None if d is None else cls(**d)

    @classmethod
    def dict_of(cls, hdu, header: Cards, shape: tuple[int, int], bitpix: int) -> dict | None:
        """The storage of a plain image HDU whose header gave ``shape`` and ``bitpix``, as a task
        carries it (None for a tile-compressed one: astropy decompresses it)."""
        info = hdu.fileinfo() or {}
        if isinstance(hdu, fits.CompImageHDU) or "hdrLoc" not in info:
            return None
        return cls(
            header_offset=int(info["hdrLoc"]),
            data_offset=int(info["datLoc"]),
            height=int(shape[0]),
            width=int(shape[1]),
            bitpix=int(bitpix),
            **_scaling(header),
        ).to_dict()


@dataclass
class FileScan:
    """What the first stage learns of a file: its exposure header and image HDUs."""

    path: str
    exposure_id: str | None = None
    night: str | None = None
    meta: dict = field(default_factory=dict)
    hdus: list[HduInfo] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)  # HDU-level
    file_reject: Reject | None = None  # the whole file, if nothing of it is usable
    camera: str | None = None  # the camera profile it was read with
    detsecs: dict = field(default_factory=dict)  # HDU index -> DETSEC, to place CCDs
    amplifier_hdus: bool = False  # the camera writes one HDU per amplifier
    segments: list = field(default_factory=list)  # while scanning: (CCD name, Segment, shape, HduInfo)


def _exposure_id(header: Cards, path: str) -> str:
    expnum = _card(header, "EXPNUM", str)
    if expnum and expnum.strip():
        return expnum.strip()
    name = os.path.basename(urlparse(path).path if "://" in path else path)
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def scan_file(path: str, min_side: int = 128, camera: str | None = None) -> FileScan:
    """Open the headers of ``path`` and list its usable image HDUs.

    ``camera`` names a profile of ``conf/cameras`` (default: chosen from the
    primary header, :func:`camera.profile_for`); it fills in what the headers
    lack (pixel scale, saturation, CCD positions from ``DETSEC``).

    Never raises for bad input: problems become ``rejects`` (HDU-level) or
    ``file_reject`` (the whole file).
    """
    scan = FileScan(path=path)
    local = local_path(path)
    if local is not None and os.path.isdir(local):
        scan.file_reject = Reject("not_a_file", "a directory, not a FITS file")
        return scan
    try:
        size = _size(path)
    except OSError as exc:
        scan.file_reject = reject_for(exc, "not_found", str(exc))
        return scan
    if size == 0:
        scan.file_reject = Reject("empty_file", "0 bytes")
        return scan
    try:
        head, kind = _head(path)
    except Reject as exc:
        scan.file_reject = exc
        return scan
    except OSError as exc:
        scan.file_reject = reject_for(exc, "not_found", str(exc))
        return scan
    if not head.startswith(b"SIMPLE  ="):
        scan.file_reject = Reject(
            "not_fits", f"starts with {head[:20]!r}" + (f" (inside a {kind} stream)" if kind else "")
        )
        return scan
    if kind is None and size < 2880:
        scan.file_reject = Reject("truncated", f"{size} bytes, less than one FITS block")
        return scan
    if kind is not None:
        size = None  # a compressed size says nothing of where the FITS data end
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _open(path) as hdul:
                _scan_hdus(hdul, scan, size, min_side, camera)
    except Reject as exc:
        scan.file_reject = exc
    except Exception as exc:  # astropy raises many kinds on broken headers
        scan.file_reject = reject_for(exc, "bad_header")
    if scan.file_reject is None and not scan.hdus:
        if scan.rejects:
            scan.file_reject = file_reason([r.reason for r in scan.rejects])
        else:
            scan.file_reject = Reject("no_image_hdu", "no 2-D image HDU with data")
    return scan


def _apply_profile(scan: FileScan, profile) -> None:
    """Fill what the headers lack from the camera profile (:class:`camera.CameraProfile`)."""
    scan.camera = profile.name
    scan.meta["camera"] = profile.name
    for hdu in scan.hdus:
        hdu.pixel_scale = hdu.pixel_scale or profile.pixel_scale
        if hdu.saturation is None and hdu.raw_layout is None and hdu.segments is None:
            hdu.saturation = profile.saturation
    if profile.ccd_position == "detsec" and scan.hdus and all(h.ccd_row < 0 for h in scan.hdus):
        places = detsec_positions({h.hdu_index: scan.detsecs.get(h.hdu_index) for h in scan.hdus})
        if len(places) == len(scan.hdus):
            for hdu in scan.hdus:
                hdu.ccd_row, hdu.ccd_col = places[hdu.hdu_index]


def _scan_hdus(hdul, scan: FileScan, size: int, min_side: int, camera: str | None = None) -> None:
    primary = profile = None
    index = 0
    while True:
        try:
            hdu = hdul[index]
        except IndexError:
            break
        except Exception as exc:  # astropy raises many kinds on a broken header
            # a header that cannot be parsed ends the file for us; what came before stands
            if primary is None:
                raise
            scan.rejects.append(Reject("bad_header", f"{type(exc).__name__}: {exc}", index))
            break
        header = Cards(hdu.header)  # every value parsed once (astropy parses one each time it is asked)
        if primary is None:
            primary = header
            scan.exposure_id = _exposure_id(primary, scan.path)
            scan.meta = dict(
                exptime=_card(primary, "EXPTIME", float),
                filter=_card(primary, "FILTER", str),
                mjd_obs=_card(primary, "MJD-OBS", float),
                date_obs=_card(primary, "DATE-OBS", str),
                airmass=_card(primary, "AIRMASS", float),
                object=_card(primary, "OBJECT", str),
                truth_label=_card(primary, "QUALITY", str),
                truth_kind=_card(primary, "QUALKIND", str),
                zero_point=_first_card([primary], ZERO_POINT_KEYS),
            )
            scan.night = night_of(scan.meta["mjd_obs"], scan.meta["date_obs"])
            profile = profile_for(primary, camera)
            scan.amplifier_hdus = profile.amplifier_hdus
        _check_hdu(hdu, header, index, scan, size, min_side, primary)
        index += 1
    if scan.segments:
        _assemble_segments(scan, min_side)
        scan.segments = []  # now in the CCDs' HduInfo.segments: not sent back to the driver twice
    if profile is not None:
        _apply_profile(scan, profile)


def _assemble_segments(scan: FileScan, min_side: int) -> None:
    """One CCD (:class:`HduInfo` with ``segments``) from the amplifier HDUs of each CCD of the file."""
    by_ccd: dict[str, list] = {}
    for ccd, segment, shape, info in scan.segments:
        by_ccd.setdefault(ccd, []).append((segment, shape, info))
    for ccd, members in by_ccd.items():
        layout = SegmentLayout(tuple(m[0] for m in members))
        first = members[0][2]
        try:
            layout.check({m[0].hdu_index: m[1] for m in members})
        except SectionError as exc:
            scan.rejects.extend(
                Reject("bad_section", str(exc), m[0].hdu_index, m[2].extname) for m in members
            )
            continue
        height, width = layout.shape
        if min(height, width) < min_side:
            scan.rejects.extend(
                Reject(
                    "wrong_dimensions",
                    f"assembled CCD {height}x{width} below {min_side} px",
                    m[0].hdu_index,
                    m[2].extname,
                )
                for m in members
            )
            continue
        first.extname = ccd or first.extname
        first.height, first.width = height, width
        first.segments = layout.to_dict()
        scan.hdus.append(first)
    scan.hdus.sort(key=lambda h: h.hdu_index)


VALID_BITPIX = (8, 16, 32, 64, -32, -64)


PIXEL_SCALE_KEYS = ("PIXSCAL1", "PIXSCALE", "SECPIX", "SECPIX1")
#: photometric zero point (mag of 1 ADU/s), where the camera writes one
ZERO_POINT_KEYS = ("MAGZPT", "MAGZERO", "PHOTZP", "ZP")


def _first_card(headers: list[Cards], keys: tuple[str, ...]) -> float | None:
    """The first positive number found under ``keys``, header by header."""
    for header in headers:
        for key in keys:
            value = _card(header, key, float)
            if value is not None and np.isfinite(value) and value > 0:
                return abs(value)
    return None


def plane_type(header: "fits.Header | Cards") -> str:
    """What an image HDU holds: ``EXTTYPE`` (LSST, HSC), else ``EXTNAME``, upper case ('' if neither)."""
    return str(header.get("EXTTYPE") or header.get("EXTNAME") or "").strip().upper()


def flagged_bits(header: Cards) -> int | None:
    """The bits of a mask plane that make a pixel unusable, from its ``MP_*`` keys; None: any non-zero bit."""
    bits = [_card(header, f"MP_{name}", int) for name in FLAGGED_MASK_PLANES]
    bits = [b for b in bits if b is not None and 0 <= b < 63]
    return sum(1 << b for b in set(bits)) if bits else None


def wcs_pixel_scale(header: Cards) -> float | None:
    """arcsec / pixel from a celestial WCS (``CDi_j`` or ``CDELTi``, degrees), or None."""
    cd = [_card(header, k, float) for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")]
    if cd[0] is not None and cd[3] is not None:
        det = abs(cd[0] * cd[3] - (cd[1] or 0.0) * (cd[2] or 0.0))
        return math.sqrt(det) * 3600.0 if det > 0 else None
    cdelt = [_card(header, k, float) for k in ("CDELT1", "CDELT2")]
    if cdelt[0] and cdelt[1] and str(header.get("CUNIT1", "deg")).strip().lower() in ("deg", ""):
        return math.sqrt(abs(cdelt[0] * cdelt[1])) * 3600.0
    return None


def _check_hdu(
    hdu, header: Cards, index: int, scan: FileScan, size: int | None, min_side: int, primary: Cards
) -> None:
    is_image = isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
    if not is_image:
        return  # tables and other extensions carry no pixels: not a CCD
    # for a tile-compressed HDU astropy shows the image header (NAXISn of the image)
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return  # e.g. the primary header of a multi-extension file
    plane = plane_type(header)
    if plane in AUXILIARY_PLANES:  # not a picture of the sky
        if plane == "MASK":
            _attach_mask(scan, header, index)
        return
    extname = str(header.get("EXTNAME") or f"hdu{index}")
    where = dict(hdu_index=index, extname=extname)
    bitpix = header.get("BITPIX")
    if bitpix not in VALID_BITPIX:
        scan.rejects.append(Reject("bad_header", f"BITPIX = {bitpix!r} is not a FITS pixel type", **where))
        return
    shape = stored_shape = tuple(int(header.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1))
    if naxis != 2:
        scan.rejects.append(Reject("wrong_dimensions", f"NAXIS={naxis}, shape {shape}", **where))
        return
    segment = segment_of(header, index) if scan.amplifier_hdus or SEGMENT_EXTNAME.match(extname) else None
    if segment is not None and not _truncated(hdu, size, scan, where):
        # an amplifier of a CCD: assembled with the others once every header is read
        ccd = next((str(header[k]).strip() for k in SEGMENT_CCD_KEYS if header.get(k) is not None), "")
        scan.segments.append((ccd, segment, shape, _hdu_info(header, primary, index, extname, shape)))
        return
    if segment is not None:
        return
    layout = amplifier_layout(header)
    if layout is not None:
        try:
            check_layout(layout, shape)
        except SectionError as exc:
            scan.rejects.append(Reject("bad_section", str(exc), **where))
            return
        shape = parse_section(layout.trim, shape).shape  # the CCD once trimmed
    if min(shape) < min_side:
        scan.rejects.append(Reject("wrong_dimensions", f"shape {shape} below {min_side} px", **where))
        return
    if _truncated(hdu, size, scan, where):
        return
    scan.detsecs[index] = header.get("DETSEC")
    scan.hdus.append(
        _hdu_info(
            header,
            primary,
            index,
            extname,
            shape,
            # a raw frame's SATURATE is in raw ADU, before bias and gain: the corrected image's maximum serves
            saturation=_first_card([header, primary], ("SATURATE",)) if layout is None else None,
            raw_layout=layout.to_dict() if layout is not None else None,
            storage=PixelStorage.dict_of(hdu, header, stored_shape, bitpix),
        )
    )


def _hdu_info(header, primary, index: int, extname: str, shape: tuple[int, int], **more) -> HduInfo:
    """What a CCD task needs of an HDU: where it is, its size, place on the focal plane, pixel scale."""
    return HduInfo(
        hdu_index=index,
        extname=extname,
        height=shape[0],
        width=shape[1],
        ccd_row=_card(header, "CCDROW", int, default=-1),
        ccd_col=_card(header, "CCDCOL", int, default=-1),
        pixel_scale=_first_card([header, primary], PIXEL_SCALE_KEYS) or wcs_pixel_scale(header),
        **more,
    )


def _attach_mask(scan: FileScan, header, index: int) -> None:
    """A ``MASK`` plane is the mask of the image plane just before it, when it has that plane's shape."""
    if not scan.hdus or scan.hdus[-1].mask_index is not None or int(header.get("NAXIS", 0)) != 2:
        return
    last = scan.hdus[-1]
    if (last.height, last.width) == (int(header.get("NAXIS2", 0)), int(header.get("NAXIS1", 0))):
        last.mask_index, last.mask_bits = index, flagged_bits(header)


def _truncated(hdu, size: int | None, scan: FileScan, where: dict) -> bool:
    """Whether the HDU's data run past the end of the file (then it is rejected)."""
    info = hdu.fileinfo() or {}
    end = info.get("datLoc", 0) + info.get("datSpan", 0)
    if size is not None and end > size:
        scan.rejects.append(Reject("truncated", f"data end at byte {end}, file has {size}", **where))
        return True
    return False


def _scaling(header: "fits.Header | Cards") -> dict:
    """BSCALE, BZERO and BLANK (an integer, or None) of an image header."""
    blank = header.get("BLANK")
    return dict(
        bscale=float(header.get("BSCALE", 1.0)),
        bzero=float(header.get("BZERO", 0.0)),
        blank=int(blank) if isinstance(blank, (int, np.integer)) and not isinstance(blank, bool) else None,
    )


def _physical(
    raw: np.ndarray, bscale: float = 1.0, bzero: float = 0.0, blank: int | None = None
) -> np.ndarray:
    """Raw FITS pixels -> physical values (BSCALE * raw + BZERO), native float32, BLANK -> NaN."""
    # one pass makes the native-endian float32 copy sep needs and adds BZERO (the usual
    # unsigned 16-bit data); the float32 loop gives the numbers astype-then-add gave
    data = np.empty(raw.shape, np.float32)
    if bscale == 1.0:
        np.add(raw, bzero, out=data, dtype=np.float32, casting="unsafe")
    else:
        np.multiply(raw, bscale, out=data, dtype=np.float32, casting="unsafe")
        data += np.float32(bzero)
    if raw.dtype.kind in "iu" and blank is not None:
        data[raw == blank] = np.nan
    return data


def read_ccd(path: str, hdu_index: int, raw_layout: dict | None = None) -> np.ndarray:
    """The pixels of HDU ``hdu_index`` of ``path`` as native-endian float32.

    BZERO/BSCALE and tile compression are applied by astropy; big-endian FITS
    data are converted once here because sep accepts native byte order only.
    A raw frame (``raw_layout`` from the scan) is overscan-corrected, scaled by
    its gains and trimmed (:func:`sections.correct_raw`).

    Raises
    ------
    Reject
        ``unreadable_data`` if the pixels cannot be read or decompressed,
        ``wrong_dimensions`` if they are not 2-D, ``bad_section`` for a raw
        layout that does not fit the data.
    """
    return read_ccd_and_mask(path, hdu_index, raw_layout)[0]


def read_mask(path: str, mask_index: int, bits: int | None, raw_layout: dict | None = None) -> np.ndarray:
    """Boolean array of the pixels a mask plane flags (``bits``; None: any non-zero value)."""
    with _reading("mask plane: "):
        with _open(path) as hdul:
            return _flagged(hdul[mask_index], bits, raw_layout)


def _pixels(hdu) -> np.ndarray:
    raw = hdu.data
    if raw is None:
        raise Reject("wrong_dimensions", "HDU has no data")
    if raw.ndim != 2:
        raise Reject("wrong_dimensions", f"data shape {raw.shape}")
    return _physical(raw, **_scaling(hdu.header))


def read_ccd_and_mask(
    path: str,
    hdu_index: int,
    raw_layout: dict | None = None,
    mask_index: int | None = None,
    mask_bits: int | None = None,
    segments: dict | None = None,
    storage: dict | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`read_ccd` and, where the CCD has a mask plane, :func:`read_mask`, from one opening of the file.

    A CCD written as amplifier segments (``segments`` from the scan) is read
    from all of them, each overscan-corrected, and assembled
    (:func:`sections.assemble`).  With ``storage`` (:class:`PixelStorage`,
    from the scan) a plain image HDU of a local file is read where the scan
    found its data, without parsing its header or those before it (on the
    36th CCD of an exposure that parsing cost as much as reading its pixels).
    """
    with _reading():
        if storage is not None and segments is None and mask_index is None:
            image = _read_stored(path, PixelStorage.from_dict(storage))
            if image is not None:
                layout = RawLayout.from_dict(raw_layout)
                return (correct_raw(image, layout) if layout is not None else image), None
        with _open(path) as hdul:
            if segments is not None:
                layout = SegmentLayout.from_dict(segments)
                return assemble(
                    {s.hdu_index: _pixels(hdul[s.hdu_index]) for s in layout.segments}, layout
                ), None
            image = _pixels(hdul[hdu_index])
            layout = RawLayout.from_dict(raw_layout)
            image = correct_raw(image, layout) if layout is not None else image
            mask = _flagged(hdul[mask_index], mask_bits, raw_layout) if mask_index is not None else None
            return image, mask


def _read_stored(path: str, storage: PixelStorage) -> np.ndarray | None:
    """The pixels of the image HDU ``storage`` describes, from a local (or inflated) file; None where
    the file is not local.  Its header's first card is checked, so that a file rewritten since its
    scan is a reject, not wrong pixels."""
    local = _local_file(path)
    if local is None:
        return None
    n = storage.height * storage.width
    with open(local, "rb") as fh:
        fh.seek(storage.header_offset)
        card = fh.read(80)
        if not (card.startswith(b"SIMPLE  =") or card.startswith(b"XTENSION= 'IMAGE")):
            raise Reject(
                "unreadable_data",
                f"no image HDU at byte {storage.header_offset}: the file changed since its scan",
            )
        fh.seek(storage.data_offset)
        raw = np.fromfile(fh, dtype=BITPIX_DTYPES[storage.bitpix], count=n)
    if raw.size < n:
        raise Reject(
            "truncated",
            f"{raw.size} of {n} pixels at byte {storage.data_offset}: the file changed since its scan",
        )
    return _physical(raw.reshape(storage.height, storage.width), storage.bscale, storage.bzero, storage.blank)


def _flagged(hdu, bits: int | None, raw_layout: dict | None) -> np.ndarray:
    values = np.asarray(hdu.data).astype(np.int64)
    flagged = (values & bits) != 0 if bits is not None else values != 0
    layout = RawLayout.from_dict(raw_layout)
    if layout is not None:
        trim = parse_section(layout.trim, flagged.shape)
        flagged = flagged[trim.rows, trim.cols]
    return flagged


class _reading:
    """Context of a pixel read: astropy's warnings hushed, every failure turned into a :class:`Reject`."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self._warnings = warnings.catch_warnings()

    def __enter__(self):
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, kind, exc, tb):
        self._warnings.__exit__(kind, exc, tb)
        if exc is None or isinstance(exc, Reject):
            return False
        if isinstance(exc, SectionError):
            raise Reject("bad_section", str(exc)) from None
        if isinstance(exc, Exception):
            raise reject_for(exc, "unreadable_data", f"{self.prefix}{type(exc).__name__}: {exc}") from None
        return False
