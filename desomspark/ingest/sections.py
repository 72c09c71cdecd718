"""FITS image sections and raw-frame correction: overscan, gain, trim, amplifiers.

A raw CCD frame holds, per amplifier, the light-sensitive pixels (``DATASEC``)
beside overscan columns (``BIASSEC``) that read the amplifier's bias level.
:func:`amplifier_layout` reads the layout from a header -- one amplifier
(``DATASEC`` + ``BIASSEC``, e.g. LBT/LBC) or two (``DATASECA/B`` +
``BIASSECA/B`` + ``GAINA/B``, e.g. CFHT MegaCam and DECam raw frames) -- and
:func:`correct_raw` turns the raw array into the trimmed, bias-subtracted
CCD image in electrons where the gain is known, in ADU otherwise.

Some cameras (Rubin's LSSTCam, ComCam, LATISS) write each amplifier as an
HDU of its own, a *segment* with its ``DATASEC`` and the ``DETSEC`` where its
pixels go in the CCD (x1 > x2 or y1 > y2: read out flipped).
:func:`segment_of` reads one, :class:`SegmentLayout` holds the segments of a
CCD and :func:`assemble` corrects each and places it: one CCD image.

Sections are FITS strings ``[x1:x2,y1:y2]``: 1-based, inclusive, x the column
(NAXIS1), and x1 > x2 for a flipped read-out.  A section that cannot be
parsed, or that falls outside the array (publishers' cut-outs often keep the
header of the full CCD), raises :class:`SectionError`: the HDU becomes a
reject ``bad_section``, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from desomspark.errors import DesomsparkError

SECTION_PATTERN = re.compile(r"^\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*$")


class SectionError(DesomsparkError, ValueError):
    """A header section that cannot be used on this array."""


@dataclass(frozen=True)
class Section:
    """A rectangle of an array, as 0-based half-open numpy slices (orientation ignored)."""

    rows: slice
    cols: slice

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.stop - self.rows.start, self.cols.stop - self.cols.start


def parse_section(text, shape: tuple[int, int], key: str = "section") -> Section:
    """``[x1:x2,y1:y2]`` -> :class:`Section`, checked against an array of ``shape`` (rows, cols)."""
    match = SECTION_PATTERN.match(str(text)) if text is not None else None
    if match is None:
        raise SectionError(f"{key} = {text!r} is not a FITS section [x1:x2,y1:y2]")
    x1, x2, y1, y2 = (int(v) for v in match.groups())
    if min(x1, x2, y1, y2) < 1:
        raise SectionError(f"{key} = {text} starts below pixel 1")
    (xa, xb), (ya, yb) = sorted((x1, x2)), sorted((y1, y2))
    rows, cols = shape
    if xb > cols or yb > rows:
        raise SectionError(
            f"{key} = {text} falls outside the {cols}x{rows} array (a cut-out with the full CCD's header?)"
        )
    return Section(slice(ya - 1, yb), slice(xa - 1, xb))


@dataclass(frozen=True)
class Amplifier:
    data: str  # DATASEC of the amplifier (raw coordinates)
    bias: str  # BIASSEC: its overscan
    gain: float | None  # e-/ADU


@dataclass(frozen=True)
class RawLayout:
    """How to turn one raw HDU into a CCD image: its amplifiers and the trimmed region."""

    trim: str  # DATASEC of the whole CCD (raw coordinates)
    amplifiers: tuple[Amplifier, ...]

    def to_dict(self) -> dict:
        return {"trim": self.trim, "amplifiers": [vars(a) for a in self.amplifiers]}

    @classmethod
    def from_dict(cls, d: dict | None) -> "RawLayout | None":
        if not d:
            return None
        return cls(d["trim"], tuple(Amplifier(**a) for a in d["amplifiers"]))


def _number(header, key):
    value = header.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def amplifier_layout(header) -> RawLayout | None:
    """The raw layout of an HDU from its header, or None for a processed (already trimmed) image.

    Two amplifiers: ``DATASECA``/``BIASSECA``/``GAINA`` and the same with B
    (``DATASEC``, or the union of the two, is what is kept).  One amplifier:
    ``DATASEC`` and ``BIASSEC`` (gain ``GAIN``).  Without an overscan section
    the image is taken as processed.
    """
    amps = []
    for letter in "ABCD":
        data, bias = header.get(f"DATASEC{letter}"), header.get(f"BIASSEC{letter}")
        if data is None or bias is None:
            break
        amps.append(
            Amplifier(str(data), str(bias), _number(header, f"GAIN{letter}") or _number(header, "GAIN"))
        )
    if amps:
        trim = header.get("DATASEC") or header.get("TRIMSEC")
        return RawLayout(str(trim) if trim is not None else _union(amps), tuple(amps))
    if header.get("BIASSEC") is not None and header.get("DATASEC") is not None:
        return RawLayout(
            str(header["DATASEC"]),
            (Amplifier(str(header["DATASEC"]), str(header["BIASSEC"]), _number(header, "GAIN")),),
        )
    return None


def _union(amps: list[Amplifier]) -> str:
    boxes = [
        [int(v) for v in SECTION_PATTERN.match(a.data).groups()] if SECTION_PATTERN.match(a.data) else None
        for a in amps
    ]
    if any(b is None for b in boxes):
        return amps[0].data  # parse_section reports the bad one
    xs = [v for b in boxes for v in b[:2]]
    ys = [v for b in boxes for v in b[2:]]
    return f"[{min(xs)}:{max(xs)},{min(ys)}:{max(ys)}]"


def check_layout(layout: RawLayout, shape: tuple[int, int]) -> None:
    """Raise :class:`SectionError` unless every section of ``layout`` lies inside an array of ``shape``."""
    trim = parse_section(layout.trim, shape, "DATASEC")
    for amp in layout.amplifiers:
        data = parse_section(amp.data, shape, "amplifier DATASEC")
        bias = parse_section(amp.bias, shape, "BIASSEC")
        if bias.shape[0] != data.shape[0] and bias.shape[1] != data.shape[1]:
            raise SectionError(f"BIASSEC {amp.bias} shares neither rows nor columns with DATASEC {amp.data}")
        if not (
            trim.rows.start <= data.rows.start
            and data.rows.stop <= trim.rows.stop
            and trim.cols.start <= data.cols.start
            and data.cols.stop <= trim.cols.stop
        ):
            raise SectionError(f"amplifier DATASEC {amp.data} is not inside DATASEC {layout.trim}")


def correct_raw(raw: np.ndarray, layout: RawLayout) -> np.ndarray:
    """Overscan-subtracted, gain-corrected and trimmed CCD image (float32).

    Per amplifier, the bias level is the median of the overscan along each
    row (a median, so that a cosmic ray in the overscan does not print a
    stripe) when the overscan runs beside the data (serial overscan), or along
    each column when it runs above it (parallel overscan); it is subtracted
    from the amplifier's data, which is then multiplied by its gain.
    """
    shape = raw.shape
    check_layout(layout, shape)
    image = np.array(raw, dtype=np.float32, copy=True)
    for amp in layout.amplifiers:
        data, bias = parse_section(amp.data, shape), parse_section(amp.bias, shape)
        block = image[data.rows, data.cols]
        overscan = raw[bias.rows, bias.cols].astype(np.float32)
        if bias.shape[0] == data.shape[0]:  # beside the data: one level per row
            level = np.median(overscan, axis=1)[:, None]
        else:  # above or below: one level per column
            level = np.median(overscan, axis=0)[None, :]
        block -= level
        if amp.gain:
            block *= np.float32(amp.gain)
    trim = parse_section(layout.trim, shape)
    return np.ascontiguousarray(image[trim.rows, trim.cols])


@dataclass(frozen=True)
class Segment:
    """One amplifier of a CCD written as its own HDU (LSST raw files)."""

    hdu_index: int
    data: str  # DATASEC, in the segment's own pixels
    bias: str | None  # BIASSEC; None: the serial overscan, every column after DATASEC
    detsec: str  # where the data go in the assembled CCD (flipped when x1 > x2 or y1 > y2)
    gain: float | None  # e-/ADU

    def raw_layout(self, shape: tuple[int, int]) -> RawLayout:
        """The one-amplifier :class:`RawLayout` of this segment, for an array of ``shape``."""
        bias = self.bias
        if bias is None:
            data = parse_section(self.data, shape, "segment DATASEC")
            if data.cols.stop >= shape[1]:
                raise SectionError(
                    f"segment HDU {self.hdu_index} has no BIASSEC and no overscan columns "
                    f"after DATASEC {self.data}"
                )
            bias = f"[{data.cols.stop + 1}:{shape[1]},{data.rows.start + 1}:{data.rows.stop}]"
        return RawLayout(self.data, (Amplifier(self.data, bias, self.gain),))


def segment_of(header, hdu_index: int) -> Segment | None:
    """The :class:`Segment` an HDU header describes (``DATASEC`` and ``DETSEC``), else None."""
    data, detsec = header.get("DATASEC"), header.get("DETSEC")
    if data is None or detsec is None:
        return None
    bias = header.get("BIASSEC")
    return Segment(
        hdu_index, str(data), str(bias) if bias is not None else None, str(detsec), _number(header, "GAIN")
    )


def _box(text: str, key: str) -> tuple[int, int, int, int]:
    match = SECTION_PATTERN.match(str(text))
    if match is None:
        raise SectionError(f"{key} = {text!r} is not a FITS section [x1:x2,y1:y2]")
    return tuple(int(v) for v in match.groups())


@dataclass(frozen=True)
class SegmentLayout:
    """The amplifier segments of one CCD and the CCD they make once assembled."""

    segments: tuple[Segment, ...]

    @property
    def origin(self) -> tuple[int, int]:
        """(row, column), 1-based, of the CCD's first pixel in ``DETSEC`` coordinates."""
        boxes = [_box(s.detsec, "DETSEC") for s in self.segments]
        return min(min(b[2:]) for b in boxes), min(min(b[:2]) for b in boxes)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the assembled CCD: the bounding box of the segments' ``DETSEC``."""
        boxes = [_box(s.detsec, "DETSEC") for s in self.segments]
        y0, x0 = self.origin
        return max(max(b[2:]) for b in boxes) - y0 + 1, max(max(b[:2]) for b in boxes) - x0 + 1

    def check(self, shapes: dict[int, tuple[int, int]]) -> None:
        """Raise :class:`SectionError` unless the segments (HDU index -> array shape) tile the CCD once
        each."""
        rows, cols = self.shape
        covered = np.zeros((rows, cols), np.uint8)
        y0, x0 = self.origin
        for seg in self.segments:
            layout = seg.raw_layout(shapes[seg.hdu_index])
            check_layout(layout, shapes[seg.hdu_index])
            place = parse_section(_shifted(seg.detsec, x0, y0), (rows, cols), "DETSEC")
            if place.shape != parse_section(seg.data, shapes[seg.hdu_index]).shape:
                raise SectionError(
                    f"segment HDU {seg.hdu_index}: DETSEC {seg.detsec} and DATASEC {seg.data} differ in size"
                )
            covered[place.rows, place.cols] += 1
        if covered.max() > 1:
            raise SectionError("amplifier segments overlap in DETSEC")
        if not covered.all():
            raise SectionError(
                f"amplifier segments leave {int((covered == 0).sum())} pixels of the "
                f"{cols}x{rows} CCD uncovered"
            )

    def to_dict(self) -> dict:
        return {"segments": [vars(s) for s in self.segments]}

    @classmethod
    def from_dict(cls, d: dict | None) -> "SegmentLayout | None":
        return cls(tuple(Segment(**s) for s in d["segments"])) if d else None


def _shifted(text: str, x0: int, y0: int) -> str:
    x1, x2, y1, y2 = _box(text, "DETSEC")
    return f"[{x1 - x0 + 1}:{x2 - x0 + 1},{y1 - y0 + 1}:{y2 - y0 + 1}]"


def assemble(raws: dict[int, np.ndarray], layout: SegmentLayout) -> np.ndarray:
    """One CCD image from its segments (HDU index -> raw array): each corrected, flipped as DETSEC says,
    placed."""
    layout.check({i: a.shape for i, a in raws.items()})
    y0, x0 = layout.origin
    image = np.empty(layout.shape, np.float32)
    for seg in layout.segments:
        raw = raws[seg.hdu_index]
        block = correct_raw(raw, seg.raw_layout(raw.shape))
        # a flipped DETSEC (or DATASEC) means the amplifier reads the other way
        dx1, dx2, dy1, dy2 = _box(seg.data, "DATASEC")
        tx1, tx2, ty1, ty2 = _box(seg.detsec, "DETSEC")
        if (dx1 > dx2) != (tx1 > tx2):
            block = block[:, ::-1]
        if (dy1 > dy2) != (ty1 > ty2):
            block = block[::-1, :]
        place = parse_section(_shifted(seg.detsec, x0, y0), image.shape)
        image[place.rows, place.cols] = block
    return image
