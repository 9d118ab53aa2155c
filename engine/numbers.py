"""Turn a cell into the number the API takes, or reject it with a reason.

A number is carried through the engine as an ``int`` of its E.164 digits (919876543210): compact,
exact, and cheap to deduplicate. It becomes text only when a request body is built, in the form
``--number-format`` names:

* ``digits`` (default): country code and national number, no ``+`` (``919876543210``). It is the
  form the API reference's own example sends, it names the country without relying on the
  server's guess, and it survives proxies and spreadsheets that mangle a leading ``+``.
* ``e164``: ``+919876543210``, the form the server answers with.
* ``national``: ``9876543210``; the server assumes +91, so only for Indian numbers.

Indian mobile numbers, the bulk of every block list, take a fast path of plain string operations
(:func:`indian_mobile`, and :meth:`Normalizer.normalize_batch` for a whole batch, written one way
or several); everything else is decided by the ``phonenumbers`` library, which also names what is
wrong.

Every reason starts with one of a few words, so a report can be grouped by it: ``empty``,
``letters``, ``symbol``, ``too short``, ``too long``, ``not valid``, ``Excel scientific
notation``, ``extension``, ``several numbers``, ``unknown country code``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import orjson

from engine.errors import UsageError
from engine.settings import NumberFormat

if TYPE_CHECKING:
    import phonenumbers

# 910000000000 + national: the E.164 int of a 10-digit Indian national number.
_INDIA_OFFSET = 91 * 10**10
# Separators people put inside numbers, removed before the digits are read. The zero-width and
# directional marks arrive with numbers copied from web pages and chat apps.
_SEPARATORS = " -.()\t\u00a0\u202f\u2007\u2009'\"/\u2010\u2011\u2012\u2013\u2014\u2212"
_INVISIBLE = "\u200b\u200c\u200d\u200e\u200f\u2060\ufeff"
_STRIP = str.maketrans("", "", _SEPARATORS + _INVISIBLE + "[]")
_SCIENTIFIC = re.compile(r"^[+-]?[0-9]+([.,][0-9]*)?[eE][+]?[0-9]+$")
_FLOAT_ZERO = re.compile(r"^(\+?[0-9]{6,})\.0+$")
_EXTENSION = re.compile(r"(?:;\s*ext=|ext(?:ension|n)?\.?|x|#)\s*:?\s*([0-9]{1,7})$", re.IGNORECASE)
_SEVERAL = re.compile(r"\s*(?:[/,;|&\n]|\bor\b|\band\b)\s*", re.IGNORECASE)
_GROUPED = re.compile(r"^\+?[0-9]{1,3}(?:,[0-9]{2,3})+$")
# Longer than any phone number written any way (E.164's 15 digits, "00", spaces, punctuation):
# such a cell is rejected at once, without running regular expressions over megabytes.
MAX_CELL_CHARS = 48
# E.164 allows 15 digits; "00" or a national "0" in front may add two more.
MAX_DIGITS = 17
MIN_DIGITS = 3
NULL_MARKERS = frozenset(
    ("n/a", "na", "#n/a", "null", "none", "nil", "nan", "-", "--", "unknown", "#value!", "#ref!")
)


class Rejected(Exception):
    """A cell that cannot be sent; ``reason`` is what the report shows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def indian_mobile(cell: str) -> int:
    """The E.164 int of an Indian mobile number written a common way, else -1.

    Accepts ``9876543210``, ``09876543210``, ``919876543210``, ``+919876543210``,
    ``00919876543210``, with spaces, dashes, dots or brackets anywhere. -1 means "not decided
    here", never "invalid": the slow path then decides, and explains a rejection.
    """
    digits = cell
    if not digits.isdigit():
        # str.replace returns its argument untouched when there is nothing to replace, and a chain
        # of them is several times faster than str.translate on these short strings.
        digits = cell.replace(" ", "").replace("-", "")
        if not digits.isdigit():
            digits = digits.replace("(", "").replace(")", "").replace(".", "")
            if digits[:1] == "+" and digits[1:].isdigit():
                # int() reads "+91..." as 91...; the length check below still applies.
                if len(digits) == 13 and digits[1:3] == "91" and digits[3] in "6789":
                    return int(digits) if digits.isascii() else -1
                return -1
            if not digits.isdigit():
                return -1
    if not digits.isascii():
        return -1
    size = len(digits)
    if size == 10:
        if digits[0] in "6789":
            return _INDIA_OFFSET + int(digits)
    elif size == 12:
        if digits[2] in "6789" and digits[:2] == "91":
            return int(digits)
    elif size == 11:
        if digits[1] in "6789" and digits[0] == "0":
            return _INDIA_OFFSET + int(digits)
    elif size == 14 and digits[4] in "6789" and digits[:4] == "0091":
        return int(digits)
    return -1


# For a batch whose cells all have one length: the prefix every cell must start with, and
# whether int() of the cell is already the E.164 int (else the national number is added to 91).
_UNIFORM = {10: ("", False), 11: ("0", False), 12: ("91", True), 13: ("+91", True),
            14: ("0091", True)}  # fmt: skip


def _uniform_indian_mobiles(cells: Sequence[str | None]) -> list[int] | None:
    """Normalize a batch of Indian mobiles all written the same plain way, in C-speed steps.

    Each step (lengths, prefixes, digits, first national digit) runs over the whole batch inside
    the interpreter's C code; one Python call per batch instead of one per cell. None when any
    cell differs: the caller then goes cell by cell.
    """
    count = len(cells)
    if not count:
        return None
    try:
        # Five cells of different lengths tell a mixed batch apart before any full pass.
        size = len(cells[0])  # type: ignore[arg-type]
        for probe in (count // 4, count // 2, 3 * count // 4, count - 1):
            if len(cells[probe]) != size:  # type: ignore[arg-type]
                return None
        lengths = set(map(len, cells))  # type: ignore[arg-type]
    except TypeError:  # a missing cell (None)
        return None
    if len(lengths) != 1:
        return None
    (size,) = lengths
    shape = _UNIFORM.get(size)
    if shape is None:
        return None
    prefix, is_e164 = shape
    joined = "".join(cells)  # type: ignore[arg-type]
    for position, character in enumerate(prefix):
        if joined[position::size] != character * count:
            return None
    if joined[len(prefix) :: size].strip("6789"):
        return None
    digits = joined.replace("+", "") if prefix.startswith("+") else joined
    if len(digits) != len(joined) - count * prefix.count("+"):
        return None  # a "+" somewhere else than in front
    if not (digits.isdigit() and digits.isascii()):
        return None
    if is_e164:
        return list(map(int, cells))  # type: ignore[arg-type]
    return [_INDIA_OFFSET + number for number in map(int, cells)]  # type: ignore[arg-type]


# The mixed-batch path lays every cleaned cell out right-aligned in a row of this many bytes (the
# longest prefix, "0091", and ten national digits), so that each character of a number is at a
# fixed column and one strided slice reads that column for the whole batch.
_WIDTH = 14
_ROW = _WIDTH + 1  # and the "\n" between rows
_RIGHT_ALIGNED = b"%%%ds" % _WIDTH
# What a row that is not an Indian mobile is overwritten with before int() reads the batch; its
# number is then replaced by -1.
_FILLER = b"  916000000000"
# The five prefixes as their four columns read, and the third column told by the fourth.
_PREFIX_COLUMNS = frozenset((b"    ", b"   0", b"  91", b" +91", b"0091"))
_NINE_BEFORE_ONE = bytes.maketrans(b"01", b" 9")


def _mixed_indian_mobiles(cells: Sequence[str | None]) -> list[int] | None:
    """:func:`indian_mobile` of every cell, for a batch written several ways, in C-speed steps.

    Exactly ``list(map(indian_mobile, cells))`` (-1 for a missing cell), or None when a cell
    holds a line break or the batch is mostly something else (the caller then goes cell by
    cell). The cells are cleaned as one text
    (removing " -()." at once decides the same as :func:`indian_mobile`'s two rounds), each
    written right-aligned into a row of ``_WIDTH`` bytes, and checked column by column for the
    whole batch; the few rows that fail are found with C-speed searches and answered -1.
    """
    count = len(cells)
    if not count:
        return []
    try:
        joined = "\n".join(cells)  # type: ignore[arg-type]
    except TypeError:  # a missing cell (None): "" is undecided too
        joined = "\n".join(["" if cell is None else cell for cell in cells])
    # One byte per character from here on: a non-ASCII one (a Devanagari digit, a superscript, a
    # no-break space) becomes "?", which no check below accepts, as indian_mobile accepts none.
    lines = joined.encode("ascii", "replace").translate(None, b" -().").split(b"\n")
    if len(lines) != count:
        return None  # a cell with a line break of its own
    layout = b"\n".join([_RIGHT_ALIGNED] * count)
    rows = layout % tuple(lines)
    undecided: set[int] = set()
    if len(rows) != _ROW * count - 1:
        # A line too long for any Indian mobile would shift every row after it.
        undecided.update(position for position, line in enumerate(lines) if len(line) > _WIDTH)
        for position in undecided:
            lines[position] = b""
        rows = layout % tuple(lines)
    bad_nationals = _bad_nationals(rows, count)
    if bad_nationals is None:
        return None
    bad_prefixes = _bad_prefixes(rows, count)
    if bad_prefixes is None:
        return None
    undecided.update(bad_nationals, bad_prefixes)
    table = bytearray(rows)
    # Every good row now reads "  91", " +91" or "0091" before its national number: int() takes
    # each whole row, leading spaces and a leading "+" included, as its E.164 number.
    table[2::_ROW] = b"9" * count
    table[3::_ROW] = b"1" * count
    for position in undecided:
        table[position * _ROW : position * _ROW + _WIDTH] = _FILLER
    # Split as bytes: a bytearray's pieces are bytearrays, slower to make and to read.
    numbers = list(map(int, bytes(table).split(b"\n")))
    for position in undecided:
        numbers[position] = -1
    return numbers


def _most_undecided(count: int) -> int:
    """How many bad rows (or bytes) a batch of ``count`` may hold and still be read whole.

    A batch with more is mostly something else (names, another country's numbers): looking for
    each bad one would cost more than going cell by cell.
    """
    return count // 8 + 8


def _bad_prefixes(rows: bytes, count: int) -> set[int] | None:
    """Rows whose four prefix columns are none of "", "0", "91", "+91", "0091" right-aligned.

    Spaces only pad a row on the left (cleaning removed every space inside a cell), so a column
    of spaces means the columns left of it are spaces too; with that, four column checks pin the
    five prefixes, and a row that fails one of them is found by looking at each row's prefix.
    None when there are too many of them.
    """
    first, second, third, fourth = (rows[column::_ROW] for column in range(4))
    if (
        not fourth.translate(None, b" 01")
        and third == fourth.translate(_NINE_BEFORE_ONE)
        and not second.translate(None, b" +0")
        and first == second.replace(b"+", b" ")
    ):
        return set()
    bad = {
        position
        for position in range(count)
        if rows[position * _ROW : position * _ROW + 4] not in _PREFIX_COLUMNS
    }
    return None if len(bad) > _most_undecided(count) else bad


def _bad_nationals(rows: bytes, count: int) -> set[int] | None:
    """Rows whose last ten columns are not ASCII digits starting 6-9 (an Indian mobile).

    A short cell is padded with spaces on the left, so its first national column is a space:
    spaces further right need no search of their own. None when too many bytes are bad.
    """
    leading = rows[4::_ROW]
    rest = b"".join([rows[column::_ROW] for column in range(5, _WIDTH)])
    searches = (
        (leading, leading.translate(None, b"6789")),
        (rest, rest.translate(None, b" 0123456789")),
    )
    if sum(len(unwanted) for _columns, unwanted in searches) > _most_undecided(count):
        return None
    bad: set[int] = set()
    for columns, unwanted in searches:
        for value in set(unwanted):
            # A C-speed search per unwanted byte instead of a Python step per row: a batch holds
            # a few bad cells among a thousand numbers.
            needle = bytes((value,))
            found = columns.find(needle)
            while found >= 0:
                bad.add(found % count)
                found = columns.find(needle, found + 1)
    return bad


_INDIA = 91
# At most this many remembered slow-path decisions (a few MB): enough for a file's repeated junk,
# bounded for a file whose every bad cell differs.
_DECIDED_CELLS = 10_000


def _region_code(region: str) -> int:
    import phonenumbers

    code: int = phonenumbers.country_code_for_region(region)
    return code


class Normalizer:
    """Normalize cells for one country into E.164 integers."""

    def __init__(self, country: str = "IN") -> None:
        self.country = country.upper()
        # phonenumbers (30 ms to import) is loaded only when a cell or a country needs it: a file
        # of plain Indian mobiles never does.
        code = _INDIA if self.country == "IN" else _region_code(self.country)
        if not code:
            raise UsageError(
                f"--country {country!r} is not a region code phonenumbers knows; "
                "use a two-letter code such as IN, US, GB"
            )
        self.country_code: int = code
        self._prefix = str(code)
        self._fast_india = self.country == "IN"
        # What the slow path decided for each short cell it has seen (the number, or the reason it
        # was rejected): the junk in a file ("", "n/a", "#N/A", "-") is mostly a few values
        # repeated, and deciding one again costs 10-20 µs of regular expressions and phonenumbers.
        self._decided: dict[str, int | str] = {}

    def normalize(self, cell: str | None) -> int:
        """Return the number as an int of its E.164 digits, or raise :class:`Rejected`."""
        if cell is None:
            raise Rejected("empty: the row has no such column")
        if self._fast_india:
            number = indian_mobile(cell)
            if number >= 0:
                return number
        return self._slow(cell)

    def normalize_batch(
        self, cells: Sequence[str | None]
    ) -> tuple[list[int], list[tuple[int, str]]]:
        """Normalize many cells: accepted numbers in order, and (position, reason) of rejects."""
        if self._fast_india:
            uniform = _uniform_indian_mobiles(cells)
            if uniform is not None:
                return uniform, []
            mixed = _mixed_indian_mobiles(cells)
            if mixed is not None:
                numbers = mixed
            else:
                numbers = [-1 if cell is None else indian_mobile(cell) for cell in cells]
            if -1 not in numbers:
                return numbers, []
        else:
            numbers = [-1] * len(cells)
        # Only the few cells the fast path left undecided are visited; list.index finds them at C
        # speed, and the decided ones are copied over in slices.
        accepted: list[int] = []
        rejects: list[tuple[int, str]] = []
        start = 0
        while True:
            try:
                position = numbers.index(-1, start)
            except ValueError:
                break
            accepted += numbers[start:position]
            decided = self._decide(cells[position])
            if isinstance(decided, int):
                accepted.append(decided)
            else:
                rejects.append((position, decided))
            start = position + 1
        accepted += numbers[start:]
        return accepted, rejects

    def _decide(self, cell: str | None) -> int | str:
        """The slow path's number for a cell, or the reason it is rejected; remembered."""
        if cell is None:
            return "empty: the row has no such column"
        decided = self._decided.get(cell)
        if decided is None:
            try:
                decided = self._slow(cell)
            except Rejected as rejected:
                decided = rejected.reason
            if len(cell) <= MAX_CELL_CHARS and len(self._decided) < _DECIDED_CELLS:
                self._decided[cell] = decided
        return decided

    def looks_like_phone(self, cell: str) -> bool:
        """True when the cell would be accepted: used to find the phone column."""
        try:
            self.normalize(cell)
        except Rejected:
            return False
        return True

    def _slow(self, cell: str) -> int:
        """Decide a cell the fast path could not, naming the first thing wrong with it."""
        original = cell.strip()
        if not original:
            raise Rejected("empty")
        if len(original) > MAX_CELL_CHARS:
            if any(character.isalpha() for character in original[: 2 * MAX_CELL_CHARS]):
                raise Rejected("letters: not a phone number")
            raise Rejected(f"too long: {len(original)} characters, not a phone number")
        if original.casefold() in NULL_MARKERS:
            raise Rejected(f"empty: {original!r} marks a missing value")
        if original[:4].casefold() == "tel:":
            original = original[4:].strip()  # an RFC 3966 link copied from a web page
        original = original.strip(",; ")  # a separator left over from a hand-made list
        parts = [part for part in _SEVERAL.split(original) if part and part.strip()]
        if len(parts) > 1 and sum(map(self.looks_like_phone, parts)) > 1:
            # One row, one verdict: two numbers in a cell cannot both be accounted for.
            raise Rejected(f"several numbers: {len(parts)} in one cell; put each on its own row")
        if _GROUPED.match(original):
            original = original.replace(",", "")  # 98,76,543,210: Excel's digit grouping
        if _SCIENTIFIC.match(original.replace(" ", "")):
            raise Rejected(
                "Excel scientific notation: the digits are lost; re-export the column as text"
            )
        extension = _EXTENSION.search(original)
        if extension and sum(ch.isdigit() for ch in original[: extension.start()]) >= 6:
            raise Rejected(
                f"extension: {original[extension.start() :].strip()!r} cannot be blocked; "
                "remove it to block the main number"
            )
        zero = _FLOAT_ZERO.match(original)
        if zero:
            original = zero.group(1)  # 9876543210.0: a float column written by pandas or a DB
        if original.startswith("="):
            original = original[1:]  # Excel's ="09876543210", written to keep a leading zero
        text = original.translate(_STRIP)
        plus = text.startswith("+")
        digits = text[1:] if plus else text
        if not digits.isdecimal():
            for character in digits:
                if character.isalpha():
                    raise Rejected("letters: not a phone number")
            for character in digits:
                if not character.isdecimal():
                    raise Rejected(f"symbol {character!r}: not a phone number")
            raise Rejected(f"symbol {original!r}: not a phone number")  # only separators
        if not digits.isascii():
            # Devanagari, Arabic-Indic or full-width digits: the same number in other glyphs.
            digits = "".join(str(unicodedata.decimal(character)) for character in digits)
        if len(digits) > MAX_DIGITS:
            raise Rejected(f"too long: {len(digits)} digits")
        if len(digits) < MIN_DIGITS:
            raise Rejected(f"too short: {_digits(len(digits))}")
        if not plus and digits.startswith("00"):
            return self._parse("+" + digits[2:], len(digits))
        if not plus and digits.startswith(self._prefix) and len(digits) > 10:
            # The country code without its "+", the form the API itself uses; a national number
            # that merely starts with the same digits is tried second.
            try:
                return self._parse("+" + digits, len(digits))
            except Rejected:
                try:
                    return self._parse(digits, len(digits))
                except Rejected:
                    pass
            return self._parse("+" + digits, len(digits))
        return self._parse(("+" if plus else "") + digits, len(digits))

    def _parse(self, text: str, digit_count: int) -> int:
        import phonenumbers

        try:
            parsed = phonenumbers.parse(text, self.country)
        except phonenumbers.NumberParseException as error:
            kind = error.error_type
            if kind == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
                raise Rejected("unknown country code: no country uses this prefix") from None
            if kind == phonenumbers.NumberParseException.TOO_LONG:
                raise Rejected(f"too long: {digit_count} digits") from None
            if kind in (
                phonenumbers.NumberParseException.TOO_SHORT_NSN,
                phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD,
            ):
                raise Rejected(f"too short: {_digits(digit_count)}") from None
            raise Rejected("not valid: not a phone number") from None
        if phonenumbers.is_valid_number(parsed):
            # The national significant number keeps Italy's leading zero (+39 06...), which
            # national_number, an int, drops.
            national = phonenumbers.national_significant_number(parsed)
            return int(f"{parsed.country_code}{national}")
        raise Rejected(_invalid_reason(parsed))


def _invalid_reason(parsed: phonenumbers.PhoneNumber) -> str:
    """Say why a parsed number is not valid: its length for its country, or its range."""
    import phonenumbers

    code = parsed.country_code or 0
    region = phonenumbers.region_code_for_country_code(code)
    national = phonenumbers.national_significant_number(parsed)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region) if region else None
    lengths: set[int] = set()
    if metadata is not None:
        for description in (metadata.mobile, metadata.fixed_line):
            if description is not None and description.possible_length:
                lengths.update(length for length in description.possible_length if length > 0)
        if not lengths and metadata.general_desc is not None:
            lengths.update(metadata.general_desc.possible_length or ())
    name = region if region and region != "001" else f"+{code}"
    if lengths:
        have = f"{len(national)} digits after +{code}, {name} numbers have {_lengths_text(lengths)}"
        if len(national) < min(lengths):
            return f"too short: {have}"
        if len(national) > max(lengths):
            return f"too long: {have}"
    return f"not valid for {name}: no {name} number starts this way"


def _digits(count: int) -> str:
    return "1 digit" if count == 1 else f"{count} digits"


def _lengths_text(unordered: set[int]) -> str:
    lengths = sorted(unordered)
    if len(lengths) == 1:
        return str(lengths[0])
    if lengths == list(range(lengths[0], lengths[-1] + 1)):
        return f"{lengths[0]} to {lengths[-1]}"
    return ", ".join(map(str, lengths[:-1])) + f" or {lengths[-1]}"


def numbers_json(numbers: Iterable[int], write: Callable[[int], str]) -> bytes:
    """The request's JSON array of ``numbers``, each written by ``write`` (see formatter)."""
    if write is str and (values := list(numbers)):
        # The default form, digits: the integers encoded as JSON, then quoted, in C. A number
        # has no comma in it; a third of the time of a hundred str() calls and their list.
        return b'["' + orjson.dumps(values)[1:-1].replace(b",", b'","') + b'"]'
    return orjson.dumps(list(map(write, numbers)))


def formatter(number_format: NumberFormat, country_code: int) -> Callable[[int], str]:
    """Return the function that writes an E.164 int in the request body's form."""
    if number_format == "e164":
        return lambda number: f"+{number}"
    if number_format == "national":
        cut = len(str(country_code))
        return lambda number: str(number)[cut:]
    return str
