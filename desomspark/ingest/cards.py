"""The values of a FITS header's cards, parsed once: what the scan asks of every HDU.

astropy parses a card's value when it is asked for, and every ``Header.get``
looks up two of astropy's configuration items besides; the scan asks a few
dozen keys of every HDU, and on a 512x512 CCD that cost about as much as
reading its pixels (README, "Measured speed").  :class:`Cards` parses the
cards written in the FITS standard's fixed format (a string, logical, integer
or real value, FITS standard 4.0 section 4.2) once, with one regular
expression, and leaves every other card to astropy: a ``CONTINUE``d string,
a ``HIERARCH`` or record-valued keyword, a complex or undefined value, a
lower-case exponent or a malformed card give what ``Header.get`` gives.
"""

from __future__ import annotations

import re

from astropy.io import fits

# keyword (8 columns), "= ", then a quoted string or a number or logical, then an optional comment
_FIXED = re.compile(
    r"(?P<key>[A-Z0-9_-]{1,8}) *= +"
    r"(?:'(?P<string>(?:[^']|'')*)'"
    r"|(?P<logical>[TF])"
    r"|(?P<int>[+-]?\d+)"
    r"|(?P<real>[+-]?(?:\.\d+|\d+(?:\.\d*)?)(?:[DE][+-]?\d+)?))"
    r" *(?:/.*)?$",
    re.DOTALL,
)
_ABSENT = object()


class Cards:
    """A header's values by keyword, with ``get`` and ``[]`` as :class:`astropy.io.fits.Header` has.

    Parameters
    ----------
    header : astropy.io.fits.Header
        As read from a file; its cards are not modified.
    """

    def __init__(self, header: fits.Header):
        self.header = header
        self.values: dict[str, object] = {}
        self.deferred = False  # a card left to astropy: a keyword not found here may be there
        images = _card_images(header)
        if images is None:
            self.deferred = True
            return
        for image in images:
            if image[8:10] != "= ":
                # commentary cards and CONTINUE have no value indicator; HIERARCH has it elsewhere
                self.deferred |= image.startswith(("HIERARCH", "CONTINUE"))
                continue
            value = _value(image)
            if value is _ABSENT:
                self.deferred = True
                self.values.setdefault(image[:8].rstrip(), _ABSENT)
            else:
                self.values.setdefault(image[:8].rstrip(), value)  # astropy gives the first of duplicates

    def get(self, key: str, default=None):
        """The value of ``key``, else ``default``."""
        value = self.values.get(key.upper(), _ABSENT)
        if value is not _ABSENT:
            return value
        return self.header.get(key, default) if self.deferred else default

    def __getitem__(self, key: str):
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(f"Keyword {key!r} not found.")
        return value

    def __contains__(self, key: str) -> bool:
        return self.get(key, _ABSENT) is not _ABSENT


def _card_images(header: fits.Header) -> list[str] | None:
    """The 80-character images of a header's cards as read, or None if astropy keeps them otherwise."""
    try:
        images = [card._image for card in header._cards]  # not ``card.image``: that verifies each card
    except AttributeError:
        return None
    return None if any(image is None for image in images) else images


def _value(image: str):
    """The value of a fixed-format card image, or ``_ABSENT`` for astropy to parse."""
    match = _FIXED.match(image)
    if match is None:
        return _ABSENT
    if match["string"] is not None:
        if match["string"].rstrip().endswith("&"):
            return _ABSENT  # a long string, CONTINUEd on the next cards
        # astropy un-doubles quotes and strips trailing blanks (conf.strip_header_whitespace)
        return match["string"].replace("''", "'").rstrip()
    if match["logical"] is not None:
        return match["logical"] == "T"
    if match["int"] is not None:
        return int(match["int"])
    return float(match["real"].replace("D", "E"))
