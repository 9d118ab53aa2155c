"""Turn a cell into the number the API takes, or reject it with a reason.

A number is carried through the engine as an ``int`` of its E.164 digits (919876543210): compact,
exact, and cheap to deduplicate. It becomes text only when a request body is built, in the form
``--number-format`` names:

* ``digits`` (default): country code and national number, no ``+`` (``919876543210``). It is the
  form the API reference's own example sends, it names the country without relying on the
  server's guess, and it survives proxies and spreadsheets that mangle a leading ``+``.
* ``e164``: ``+919876543210``, the form the server answers with.
* ``national``: ``9876543210``; the server assumes +91, so only for Indian numbers.

Indian mobile numbers, the bulk of every block list, take a fast path of plain string operations;
everything else is decided by the ``phonenumbers`` library.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import phonenumbers

from engine.settings import NumberFormat

_STRIP = str.maketrans("", "", " -.()\t\u00a0\u202f'\"/")
_SCIENTIFIC = re.compile(r"^[0-9]+(\.[0-9]+)?[eE][+]?[0-9]+$")
_EXTENSION = re.compile(r"(ext\.?|x|#|extension)\s*[0-9]+$", re.IGNORECASE)
MIN_DIGITS = 8
MAX_DIGITS = 15


class Rejected(Exception):
    """A cell that cannot be sent; ``reason`` is what the report shows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Normalizer:
    """Normalize cells for one country into E.164 integers."""

    def __init__(self, country: str = "IN") -> None:
        self.country = country.upper()
        code = phonenumbers.country_code_for_region(self.country)
        if not code:
            from engine.errors import UsageError

            raise UsageError(f"--country {country!r} is not a region code phonenumbers knows")
        self.country_code = code
        self._prefix = str(code)
        self._fast_india = self.country == "IN"

    def normalize(self, cell: str | None) -> int:
        """Return the number as an int of its E.164 digits, or raise :class:`Rejected`."""
        if cell is None:
            raise Rejected("row has no such column")
        digits = cell.translate(_STRIP)
        if self._fast_india:
            national = _indian_mobile(digits)
            if national is not None:
                return 910000000000 + national
        return self._slow(cell, digits)

    def looks_like_phone(self, cell: str) -> bool:
        try:
            self.normalize(cell)
        except Rejected:
            return False
        return True

    def _slow(self, cell: str, digits: str) -> int:
        text = cell.strip()
        if not text:
            raise Rejected("empty")
        if _SCIENTIFIC.match(text.replace(",", ".")):
            raise Rejected("Excel scientific notation: the digits are lost; re-export as text")
        if _EXTENSION.search(text):
            raise Rejected("has an extension")
        plus = digits.startswith("+")
        bare = digits[1:] if plus else digits
        if not (bare.isascii() and bare.isdigit()):
            raise Rejected("contains letters or symbols")
        if len(bare) < MIN_DIGITS:
            raise Rejected(f"too short ({len(bare)} digits)")
        if len(bare) > MAX_DIGITS + 4:
            raise Rejected(f"too long ({len(bare)} digits)")
        if not plus and bare.startswith("00"):
            plus, bare = True, bare[2:]
        if not plus and bare.startswith(self._prefix) and len(bare) > 10:
            plus = True
        try:
            parsed = phonenumbers.parse(("+" if plus else "") + bare, self.country)
        except phonenumbers.NumberParseException:
            raise Rejected("not a phone number") from None
        if not phonenumbers.is_valid_number(parsed):
            length = len(str(parsed.national_number))
            if length < 7:
                raise Rejected(f"too short ({len(bare)} digits)")
            if length > 12:
                raise Rejected(f"too long ({len(bare)} digits)")
            region = phonenumbers.region_code_for_number(parsed) or "any country"
            raise Rejected(f"not a valid number for {region}")
        return int(f"{parsed.country_code}{parsed.national_number}")


def _indian_mobile(digits: str) -> int | None:
    """The 10-digit national number of an Indian mobile written any common way, else None."""
    size = len(digits)
    if size == 10:
        national = digits
    elif size == 13 and digits.startswith("+91"):
        national = digits[3:]
    elif size == 12 and digits.startswith("91"):
        national = digits[2:]
    elif size == 11 and digits.startswith("0"):
        national = digits[1:]
    elif size == 14 and digits.startswith("0091"):
        national = digits[4:]
    else:
        return None
    if national[0] in "6789" and national.isdigit() and national.isascii():
        return int(national)
    return None


def formatter(number_format: NumberFormat, country_code: int) -> Callable[[int], str]:
    """Return the function that writes an E.164 int in the request body's form."""
    if number_format == "e164":
        return lambda number: f"+{number}"
    if number_format == "national":
        cut = len(str(country_code))
        return lambda number: str(number)[cut:]
    return str
