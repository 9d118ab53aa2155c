"""Stream the phone column out of CSV files of any size, in constant memory.

Each file is read through one buffered binary stream: its first bytes are peeked to find the
encoding and the delimiter, then :mod:`csv` parses records lazily. Every cell keeps the physical
line its record starts on, so a reject can be reported as ``file:line``.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import IO, Any

from engine.errors import InputError

log = logging.getLogger(__name__)

DELIMITERS = (",", ";", "\t", "|")
SNIFF_BYTES = 64 * 1024
SNIFF_ROWS = 50
# A cell this large is certainly not a phone number, but csv's default cap (128 KiB) would abort
# the whole file on it; raising the cap lets the row be rejected with a reason instead.
FIELD_LIMIT = 64 * 1024 * 1024
PHONE_HEADER_WORDS = ("phone", "mobile", "msisdn", "number", "cell", "contact")

csv.field_size_limit(FIELD_LIMIT)


@dataclass(frozen=True)
class FileLayout:
    """What was found out about one input file before streaming it."""

    name: str
    encoding: str
    delimiter: str
    column_index: int
    column_label: str
    has_header: bool


def _open_binary(name: str) -> IO[bytes]:
    if name == "-":
        return sys.stdin.buffer
    try:
        raw: IO[bytes] = open(name, "rb", buffering=0)  # noqa: SIM115 - closed by the caller
    except OSError as error:
        raise InputError(f"cannot open: {error.strerror}", file=name) from None
    if name.endswith(".gz"):
        raw = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    return io.BufferedReader(raw, buffer_size=1 << 20)  # type: ignore[type-var]


def detect_encoding(sample: bytes, name: str) -> str:
    """Name the codec for a file from its first bytes; Latin-1 when it is not UTF-8."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if b"\x00" in sample:
        # UTF-16 without a BOM puts a NUL beside every ASCII character.
        even, odd = sample[0::2], sample[1::2]
        if odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.1 * len(even):
            return "utf-16-le"
        if even.count(0) > 0.4 * len(even) and odd.count(0) < 0.1 * len(odd):
            return "utf-16-be"
        raise InputError(
            "looks like a binary file, not CSV text (it contains NUL bytes)", file=name
        )
    try:
        # A multi-byte character may be cut at the sample's end: let the decoder keep it pending.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        log.warning("%s: not UTF-8; reading it as Latin-1", name)
        return "latin-1"
    return "utf-8"


def sniff_delimiter(lines: list[str]) -> str:
    """Pick the candidate that appears most consistently across the first lines."""
    lines = [line for line in lines if line.strip()]
    best, best_score = ",", 0.0
    for candidate in DELIMITERS:
        counts = [line.count(candidate) for line in lines]
        present = sum(1 for count in counts if count)
        if not present:
            continue
        score = present / len(lines) * 1000 + min(counts)
        if score > best_score:
            best, best_score = candidate, score
    return best


def _choose_column(
    rows: list[list[str]], column: str | None, looks_like_phone: Callable[[str], bool], name: str
) -> tuple[int, str, bool]:
    """Return (index, label, has_header) for the phone column."""
    if not rows:
        return 0, "column 1", False
    first = rows[0]

    def is_header_cell(index: int) -> bool:
        cell = first[index] if index < len(first) else ""
        return bool(cell.strip()) and not looks_like_phone(cell) and not cell.strip().isdigit()

    if column is not None and column.strip().isdigit():
        index = int(column) - 1
        if index < 0:
            raise InputError(f"--column {column}: columns are numbered from 1", file=name)
        has_header = is_header_cell(index)
        label = first[index] if has_header else f"column {index + 1}"
        return index, label, has_header
    if column is not None:
        wanted = column.strip().casefold()
        for index, cell in enumerate(first):
            if cell.strip().casefold() == wanted:
                return index, cell.strip(), True
        headers = ", ".join(repr(cell.strip()) for cell in first[:12])
        raise InputError(
            f"no column named {column!r} in the header row ({headers}); "
            "use --column NAME or a 1-based --column INDEX",
            file=name,
        )
    width = max(len(row) for row in rows)
    body = rows[1:] or rows
    scores = [
        sum(1 for row in body if i < len(row) and looks_like_phone(row[i])) for i in range(width)
    ]
    best = max(range(width), key=lambda i: scores[i])
    if scores[best] == 0 and width > 1:
        for index, cell in enumerate(first):
            if any(word in cell.casefold() for word in PHONE_HEADER_WORDS):
                best = index
                break
        else:
            raise InputError(
                f"no column looks like phone numbers among {width}; choose one with --column",
                file=name,
            )
    has_header = is_header_cell(best)
    label = first[best].strip() if has_header else f"column {best + 1}"
    return best, label, has_header


class CsvSource:
    """One input file's phone column, as ``(line, cell)`` pairs; ``cell`` is None if missing."""

    def __init__(
        self, name: str, column: str | None, looks_like_phone: Callable[[str], bool]
    ) -> None:
        self.name = name
        self._column = column
        self._looks_like_phone = looks_like_phone
        self.layout: FileLayout | None = None
        self.bytes_read = 0

    def cells(self) -> Iterator[tuple[int, str | None]]:
        binary = _open_binary(self.name)
        try:
            yield from self._cells(binary)
        except csv.Error as error:
            raise InputError(f"unreadable CSV: {error}", file=self.name) from None
        except OSError as error:
            raise InputError(f"read failed: {error}", file=self.name) from None
        finally:
            if binary is not sys.stdin.buffer:
                binary.close()

    def _cells(self, binary: IO[bytes]) -> Iterator[tuple[int, str | None]]:
        sample = binary.peek(SNIFF_BYTES)[:SNIFF_BYTES]  # type: ignore[attr-defined]
        encoding = detect_encoding(sample, self.name)
        text = io.TextIOWrapper(binary, encoding=encoding, errors="replace", newline="")
        head_lines = sample.decode(encoding, errors="replace").splitlines()[:SNIFF_ROWS]
        if len(head_lines) > 1 and not sample.endswith((b"\n", b"\r")):
            head_lines = head_lines[:-1]  # the last one may be cut short by the sample
        delimiter = sniff_delimiter(head_lines)
        reader = csv.reader(text, delimiter=delimiter)
        head: list[tuple[int, list[str]]] = []
        last = 0
        for row in reader:
            start, last = last + 1, reader.line_num
            if not _is_blank(row):
                head.append((start, row))
            if len(head) >= SNIFF_ROWS:
                break
        index, label, has_header = _choose_column(
            [row for _, row in head], self._column, self._looks_like_phone, self.name
        )
        self.layout = FileLayout(self.name, encoding, delimiter, index, label, has_header)
        log.info(
            "%s: phone numbers from %s (%s, delimiter %r%s)",
            self.name,
            label,
            encoding,
            delimiter,
            ", header row skipped" if has_header else "",
        )
        rest = self._records(reader, last)
        records = chain(head[1:] if has_header else head, rest)
        for start, row in records:
            yield start, row[index] if index < len(row) else None

    @staticmethod
    def _records(reader: Any, last: int) -> Iterator[tuple[int, list[str]]]:
        for row in reader:
            start, last = last + 1, reader.line_num
            if not _is_blank(row):
                yield start, row


def _is_blank(row: list[str]) -> bool:
    """A blank line is not a row: it is neither counted nor rejected."""
    return not row or (len(row) == 1 and not row[0].strip())
