"""Stream the phone column out of CSV files of any size, in constant memory.

Each input is opened once. Its first 64 KiB are read as a sample, from which the compression
(gzip is recognised by its magic bytes, whatever the file's name), the encoding, the delimiter,
the header row and the phone column are found; the sample is then replayed in front of the rest
of the stream, so standard input works as well as a file. A sample that holds fewer than a few
whole lines (a header of ten thousand columns) grows until it does, up to MAX_SAMPLE_BYTES, so
the header is always read whole and the phone column is never guessed from a cut-off row.

Only regular files and standard input are read: a folder, a device (``/dev/zero``), a named pipe
or a symbolic-link loop is refused with what it is (:func:`check_input_path`).

:mod:`csv` parses the records, a thousand at a time, and every cell keeps the physical line its
record starts on, so a reject can be reported as ``file:line``.

Encodings: UTF-8 with or without a BOM, UTF-16 and UTF-32 with a BOM, UTF-16 without one (it has
a NUL beside every ASCII character), and anything else as Latin-1. Bytes that are not valid in
the chosen encoding, even far past the sample, are read as Latin-1 with one warning per file:
never a crash, never a row lost.

What counts as a row: every record except blank ones (no cell holds anything but spaces), the
header and Excel's ``sep=;`` line. A record too short to have the phone column is a row, and is
rejected as empty.

The header is recognised, not assumed: the first record is one when its phone cell is short text
with letters that is neither a number nor a "missing" marker (``n/a``); a first row of junk such
as ``98765-ABCDE`` stays a row, to be rejected and reported.
"""

from __future__ import annotations

import codecs
import csv
import errno
import gc
import gzip
import io
import logging
import os
import re
import shlex
import stat
import sys
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from itertools import islice
from operator import itemgetter
from typing import IO, TYPE_CHECKING, TypeVar

from engine.errors import InputError
from engine.numbers import NULL_MARKERS

if TYPE_CHECKING:
    from _csv import Reader as CsvReader

    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

DELIMITERS = (",", ";", "\t", "|")
SNIFF_BYTES = 64 * 1024
SNIFF_ROWS = 50
# The sample grows (doubling) until it holds this many line breaks: the header and a few rows.
SNIFF_MIN_LINES = 4
# ...but never past this: a first line longer than this is no header (and is read as a row).
MAX_SAMPLE_BYTES = 64 * 1024 * 1024
# Columns whose cells are scored as phone numbers: the first ones, and any whose header names
# a phone (a wide export may put it last).
SCORED_COLUMNS = 64
# Records are parsed and handed on this many at a time: large enough that per-batch work is
# negligible, small enough that a batch (about 2 ms of work) never holds up the event loop the
# producer shares with the workers for long.
BATCH_ROWS = 1024
# A cell this large is certainly not a phone number, but csv's default cap (128 KiB) would abort
# the whole file on it; raising the cap lets the row be rejected with a reason instead.
FIELD_LIMIT = 64 * 1024 * 1024
# A record that spans more lines than this usually means an unbalanced quote swallowed rows.
LONG_RECORD_LINES = 20
MAX_HEADER_CHARS = 64
PHONE_HEADER_WORDS = ("phone", "mobile", "msisdn", "number", "cell", "contact", "tel", "whatsapp")
LATIN1_FALLBACK = "ozbulk-latin1"
# Excel writes (and reads) a first line "sep=;" to name the delimiter.
_SEP_LINE = re.compile(r"sep=([^\r\n])[ \t]*(?:\r\n|\r|\n|$)", re.IGNORECASE)

csv.field_size_limit(FIELD_LIMIT)

Batch = tuple[list[int], list[str | None]]
_T = TypeVar("_T")

# Every gzip stream starts with these two bytes (RFC 1952), whatever its file is named.
GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(head: bytes) -> bool:
    """True if ``head``, the first bytes of a file, begins a gzip stream."""
    return head.startswith(GZIP_MAGIC)


class _FallbackCounter:
    """How many times bytes were read as Latin-1 because the file's encoding could not."""

    uses = 0


def _latin1_fallback(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    _FallbackCounter.uses += 1
    return bytes(error.object[error.start : error.end]).decode("latin-1"), error.end


codecs.register_error(LATIN1_FALLBACK, _latin1_fallback)


@dataclass(frozen=True)
class FileLayout:
    """What was found out about one input file before streaming it."""

    name: str
    encoding: str
    delimiter: str
    column_index: int
    column_label: str
    has_header: bool
    compressed: bool = False
    sep_line: bool = False  # Excel's "sep=;" first line, which names the delimiter


@dataclass(frozen=True, slots=True)
class ReadPosition:
    """How far a file has been read, between two batches: enough to read on from there."""

    records: int  # CSV records read, blank ones and the header included
    skip: int  # records still to skip from there (a header not yet passed)
    line: int  # the last physical line read


class _Replay(io.RawIOBase):
    """A read-only stream that returns ``prefix`` and then whatever ``rest`` holds."""

    def __init__(self, prefix: bytes, rest: IO[bytes] | gzip.GzipFile | None) -> None:
        super().__init__()
        self._prefix = memoryview(prefix)
        self._rest = rest
        self.delivered = 0  # bytes handed out so far: what a progress display measures

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.delivered

    def readinto(self, buffer: WriteableBuffer) -> int:
        target = memoryview(buffer).cast("B")
        if self._prefix:
            size = min(len(target), len(self._prefix))
            target[:size] = self._prefix[:size]
            self._prefix = self._prefix[size:]
            self.delivered += size
            return size
        if self._rest is None:
            return 0
        data = self._rest.read(len(target))
        if not data:
            return 0
        target[: len(data)] = data
        self.delivered += len(data)
        return len(data)

    def close(self) -> None:
        # The stream underneath belongs to whoever opened it (it may be standard input).
        self._rest = None
        self._prefix = memoryview(b"")
        super().close()


def _read_sample(stream: IO[bytes] | gzip.GzipFile, size: int = SNIFF_BYTES) -> bytes:
    """Up to ``size`` bytes from the start, however the stream hands them over (pipes trickle)."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        part = stream.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _line_breaks(sample: bytes) -> int:
    # CR-only files (old Mac exports) have no LF; UTF-16 and UTF-32 keep the byte values.
    return max(sample.count(b"\n"), sample.count(b"\r"))


def _grow_sample(sample: bytes, stream: IO[bytes] | gzip.GzipFile) -> tuple[bytes, bool]:
    """``sample`` extended, doubling, until it holds SNIFF_MIN_LINES lines or the whole stream
    (or MAX_SAMPLE_BYTES): the header row is then whole, however wide. Also: whether the
    sample is the whole stream."""
    complete = len(sample) < SNIFF_BYTES
    while not complete and len(sample) < MAX_SAMPLE_BYTES:
        if _line_breaks(sample) >= SNIFF_MIN_LINES:
            break
        wanted = min(len(sample), MAX_SAMPLE_BYTES - len(sample))
        more = _read_sample(stream, wanted)
        sample += more
        complete = len(more) < wanted
    return sample, complete


def check_input_path(name: str) -> None:
    """Refuse what is not a regular file (or ``-``), saying what it is; reads nothing.

    A named pipe is refused too, though it streams like standard input: ozbulk reads a file
    more than once (the check, the fingerprint that identifies the run, the pass itself, a
    resume), and a pipe gives its data once. Redirecting it to standard input (``- < PIPE``)
    gives the streaming run, clearly marked as one that cannot be resumed.
    """
    if name == "-":
        return
    try:
        info = os.stat(name)
    except OSError as error:
        raise InputError(_stat_failure(name, error), file=name) from None
    mode = info.st_mode
    if stat.S_ISREG(mode):
        if not os.access(name, os.R_OK):
            raise InputError("cannot read it: permission denied", file=name)
        return
    if stat.S_ISDIR(mode):
        what = (
            "is a folder, not a file: give the files in it (for example "
            f"{shlex.quote(os.path.join(name, '*.csv'))})"
        )
    elif stat.S_ISFIFO(mode):
        what = (
            "is a named pipe (FIFO), which can be read only once, and ozbulk reads an input "
            "more than once; save it to a file, or stream it on standard input: - < PIPE"
        )
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = "is a device, not a file of phone numbers"
    elif stat.S_ISSOCK(mode):
        what = "is a socket, not a file"
    else:
        what = "is not a regular file"
    raise InputError(what, file=name)


def _stat_failure(name: str, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "is a symbolic link that loops (it leads back to itself); fix the link"
    if error.errno == errno.ENOENT and os.path.islink(name):
        return f"is a symbolic link to {os.readlink(name)!r}, which does not exist"
    if error.errno == errno.ENOENT:
        return "no such file"
    if error.errno == errno.ENOTDIR:
        return "no such file (a part of its path is a file, not a folder)"
    return f"cannot open: {error.strerror}"


def _refuse_containers(sample: bytes, name: str) -> None:
    if sample.startswith(b"PK\x03\x04"):
        what = "an Excel workbook" if name.lower().endswith((".xlsx", ".xlsm")) else "a ZIP file"
        raise InputError(
            f"is {what}, not CSV text: save it as CSV (Excel: File > Save As > CSV UTF-8) "
            "or unzip it first",
            file=name,
        )
    if sample.startswith(b"\xd0\xcf\x11\xe0"):
        raise InputError(
            "is an old Excel workbook (.xls), not CSV text: save it as CSV UTF-8", file=name
        )


def detect_encoding(sample: bytes, name: str) -> str:
    """Name the codec for a file from its first bytes; Latin-1 when it is not UTF-8."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
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
            "looks like a binary file, not CSV text (it contains NUL bytes); "
            "export the list as CSV",
            file=name,
        )
    try:
        # A multi-byte character may be cut at the sample's end: let the decoder keep it pending.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError as error:
        line = sample.count(b"\n", 0, error.start) + 1
        log.warning("%s: not UTF-8 (line %d); reading it as Latin-1", name, line)
        return "latin-1"
    return "utf-8"


def _is_blank(row: list[str]) -> bool:
    """A blank line (or one of only delimiters and spaces) is not a row: neither counted nor
    rejected."""
    return not any(map(str.strip, row))


def _sample_rows(text: str, delimiter: str, complete: bool) -> list[list[str]]:
    """The first non-blank records of the sample; a record the sample may have cut is left out."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[list[str]] = []
    exhausted = True
    try:
        for row in reader:
            if _is_blank(row):
                continue
            rows.append(row)
            if len(rows) > SNIFF_ROWS:
                exhausted = False
                break
    except csv.Error:
        exhausted = True
    if exhausted and not complete and rows:
        rows.pop()
    return rows[:SNIFF_ROWS]


def _scored_columns(rows: list[list[str]]) -> list[int]:
    """The columns worth scoring: the first SCORED_COLUMNS, and any whose first-row cell names
    a phone (so the phone column of a ten-thousand-column export is found wherever it is)."""
    first = rows[0]
    named = [
        index
        for index in range(SCORED_COLUMNS, len(first))
        if len(first[index]) <= MAX_HEADER_CHARS
        and any(word in first[index].casefold() for word in PHONE_HEADER_WORDS)
    ]
    return list(range(min(max(map(len, rows)), SCORED_COLUMNS))) + named


def _phone_shares(
    rows: list[list[str]], looks_like_phone: Callable[[str], bool]
) -> dict[int, float]:
    """For each scored column, the share of data rows (the first row excepted) that hold a
    phone."""
    body = rows[1:] or rows
    return {
        index: sum(1 for row in body if index < len(row) and looks_like_phone(row[index]))
        / len(body)
        for index in _scored_columns(rows)
    }


def sniff_delimiter(
    text: str,
    complete: bool,
    looks_like_phone: Callable[[str], bool],
    column: str | None = None,
) -> str:
    """Pick the delimiter that splits the sample into a phone column most cleanly.

    Each candidate present in the sample parses it (quotes and all); the winner isolates phone
    numbers in one column best, then splits lines at all, then gives a consistent field count,
    then the most fields. A named ``--column`` found in a candidate's header row wins outright.
    """
    # The comma always competes: a stray ";" in a one-column list must not win by default.
    candidates = [d for d in DELIMITERS if d == "," or d in text]
    if len(candidates) == 1:
        return ","
    wanted = column.strip().casefold() if column and not column.strip().isdigit() else None
    best, best_score = candidates[0], (-1.0, 0.0, 0.0, 0.0, 0.0)
    for delimiter in candidates:
        rows = _sample_rows(text, delimiter, complete)
        if not rows:
            continue
        widths = Counter(map(len, rows))
        width, agreeing = widths.most_common(1)[0]
        named = wanted is not None and any(cell.strip().casefold() == wanted for cell in rows[0])
        phones = max(_phone_shares(rows, looks_like_phone).values(), default=0.0)
        # A delimiter that splits nothing is no delimiter; past 80 % agreement on the field
        # count (short rows happen), more fields is the better sign.
        score = (
            float(named),
            round(phones, 1),
            float(width > 1),
            min(round(agreeing / len(rows), 1), 0.8),
            float(min(width, 64)),
        )
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _is_header_cell(cell: str, looks_like_phone: Callable[[str], bool]) -> bool:
    """A header names a column: short text with letters, not a number, not a "missing" marker."""
    text = cell.strip()
    if not text or len(text) > MAX_HEADER_CHARS or looks_like_phone(text):
        return False
    if text.casefold() in NULL_MARKERS or not any(character.isalpha() for character in text):
        return False
    folded = text.casefold()
    if any(word in folded for word in PHONE_HEADER_WORDS):
        return True
    return sum(character.isdigit() for character in text) <= 2


def choose_column(
    rows: list[list[str]], column: str | None, looks_like_phone: Callable[[str], bool], name: str
) -> tuple[int, str, bool]:
    """Return (index, label, has_header) for the phone column of a file's first rows.

    ``rows`` are whole records (the sample grows until the header is whole); none at all means
    an empty file, or a first line too long to be a header.
    """
    if not rows:
        if column is not None and not column.strip().isdigit():
            raise InputError(
                f"--column {column}: no header row to find it in (the file is empty, or its "
                f"first line is longer than {MAX_SAMPLE_BYTES // (1024 * 1024)} MiB)",
                file=name,
            )
        return 0, "column 1", False
    first = rows[0]

    def header_at(index: int) -> bool:
        return index < len(first) and _is_header_cell(first[index], looks_like_phone)

    def label(index: int, has_header: bool) -> str:
        return f"column {index + 1} {first[index].strip()!r}" if has_header else (
            f"column {index + 1}"
        )  # fmt: skip

    if column is not None and column.strip().isdigit():
        index = int(column) - 1
        if index < 0:
            raise InputError(f"--column {column}: columns are numbered from 1", file=name)
        width = max(map(len, rows))
        if index >= width:
            raise InputError(
                f"--column {column}: the first rows have only {width} column(s)", file=name
            )
        has_header = header_at(index)
        return index, label(index, has_header), has_header
    if column is not None:
        wanted = column.strip().casefold()
        for index, cell in enumerate(first):
            if cell.strip().casefold() == wanted:
                return index, label(index, True), True
        headers = ", ".join(repr(cell.strip()) for cell in first[:12])
        more = f" and {len(first) - 12:,} more" if len(first) > 12 else ""
        raise InputError(
            f"no column named {column!r} in the header row ({headers}{more}); "
            "use --column NAME or a 1-based --column INDEX",
            file=name,
        )
    shares = _phone_shares(rows, looks_like_phone)
    width = max(map(len, rows))
    best = max(shares, key=lambda index: shares[index])
    if shares[best] == 0 and width > 1:
        for index, cell in enumerate(first):
            if any(word in cell.casefold() for word in PHONE_HEADER_WORDS):
                best = index
                break
        else:
            raise InputError(
                f"no column looks like phone numbers among {width}; choose one with --column",
                file=name,
            )
    has_header = header_at(best)
    runners_up = [
        index for index in shares if index != best and shares[index] >= 0.5 * shares[best] > 0
    ]
    if runners_up:
        others = ", ".join(label(index, has_header) for index in runners_up[:3])
        log.warning(
            "%s: %s also looks like phone numbers; using %s (choose with --column)",
            name,
            others,
            label(best, has_header),
        )
    return best, label(best, has_header), has_header


# What reading a file can raise besides InputError: the OS, and gzip on a truncated or corrupt
# stream (EOFError and zlib.error are not OSErrors).
READ_ERRORS = (OSError, EOFError, zlib.error)


def _read_failed(error: BaseException, name: str) -> InputError:
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return InputError(f"read failed: {reason}", file=name)


def _record_starts(rows: list[list[str]], before: int) -> list[int]:
    """The first physical line of each record, when some record spans several lines.

    A record takes one line plus one for every line break inside its quoted fields (``\\r\\n``
    counts once, as the line reader splits it once).
    """
    starts: list[int] = []
    line = before + 1
    for row in rows:
        starts.append(line)
        breaks = 0
        for field in row:
            if "\n" in field or "\r" in field:
                breaks += field.count("\n") + field.count("\r") - field.count("\r\n")
        if breaks >= LONG_RECORD_LINES:
            log.warning(
                "line %d: one record spans %d lines; an unbalanced quote may have joined rows",
                line,
                breaks + 1,
            )
        line += 1 + breaks
    return starts


class CsvSource:
    """One input file's phone column, in batches of ``(lines, cells)``; a missing cell is None."""

    def __init__(
        self, name: str, column: str | None, looks_like_phone: Callable[[str], bool]
    ) -> None:
        self.name = name
        self._column = column
        self._looks_like_phone = looks_like_phone
        self.layout: FileLayout | None = None
        self.position = ReadPosition(0, 0, 0)  # after the last batch read
        self._consumed: Callable[[], int] = lambda: 0

    def inspect(self) -> FileLayout:
        """Open the file, find its layout from the sample, and close it: a check before a run.

        Raises :class:`InputError` for what makes the file unusable (missing, binary, a
        workbook, no phone column). Not for standard input, which cannot be read twice.
        """
        if self.name == "-":
            raise InputError("standard input cannot be inspected before it is read", file="-")
        with ExitStack() as stack:
            try:
                self.layout = self._open(stack)[1]
            except READ_ERRORS as error:
                raise _read_failed(error, self.name) from None
        return self.layout

    def consumed_bytes(self) -> int:
        """Bytes of the file (compressed ones, if it is gzip) the parser has taken so far.

        The share of a file read, as ``pv`` shows it: a progress display that knows the file's
        size can tell how far the run has come without counting the rows first. The text
        decoder's few KiB of read-ahead are counted as taken.
        """
        return self._consumed()

    def cells(self) -> Iterator[tuple[int, str | None]]:
        """Every row as ``(line, cell)``: a convenience over :meth:`batches`."""
        for lines, cells in self.batches():
            yield from zip(lines, cells, strict=True)

    def batches(self, start: ReadPosition | None = None) -> Iterator[Batch]:
        """Every row, as lists of start lines and phone cells, BATCH_ROWS at a time.

        From ``start`` (a :attr:`position` of an earlier read of the same file), the records
        before it are parsed, to keep line numbers exact, but not returned. After each batch,
        :attr:`position` says how far the read has come.
        """
        with ExitStack() as stack:
            try:
                text, layout = self._open(stack)
                self.layout = layout
                reader = csv.reader(text, delimiter=layout.delimiter)
                try:
                    yield from self._batches(reader, layout, start)
                except csv.Error as error:
                    raise InputError(
                        f"unreadable CSV: {error}", file=self.name, line=reader.line_num
                    ) from None
            except READ_ERRORS as error:
                raise _read_failed(error, self.name) from None

    def _open(self, stack: ExitStack) -> tuple[IO[str], FileLayout]:
        name = self.name
        if name == "-":
            if sys.stdin is None:
                raise InputError("there is no standard input to read", file=name)
            raw: IO[bytes] = sys.stdin.buffer
        else:
            # Before open(): opening a named pipe blocks until someone writes to it.
            check_input_path(name)
            try:
                raw = stack.enter_context(open(name, "rb"))  # noqa: SIM115
            except OSError as error:
                raise InputError(f"cannot open: {error.strerror}", file=name) from None
        sample = _read_sample(raw)
        compressed = is_gzip(sample)
        if compressed:
            # The compressed bytes read from the file, for the progress: outer; the unzipped
            # ones the reader takes: replay.
            outer = _Replay(sample, raw)
            unzipped = gzip.GzipFile(fileobj=outer, mode="rb")
            stream: IO[bytes] | gzip.GzipFile = unzipped
            sample = _read_sample(unzipped)
        else:
            stream = raw
        sample, complete = _grow_sample(sample, stream)
        replay = _Replay(sample, stream)
        if not compressed:
            outer = replay
        _refuse_containers(sample, name)
        encoding = detect_encoding(sample, name)
        head = sample.decode(encoding, errors=LATIN1_FALLBACK)
        directive = _SEP_LINE.match(head)
        if directive:
            head = head[directive.end() :]
            delimiter = directive.group(1)
        else:
            delimiter = sniff_delimiter(head, complete, self._looks_like_phone, self._column)
        rows = _sample_rows(head, delimiter, complete)
        index, label, has_header = choose_column(rows, self._column, self._looks_like_phone, name)
        layout = FileLayout(
            name, encoding, delimiter, index, label, has_header, compressed, bool(directive)
        )
        log.info(
            "%s: phone numbers from %s (%s%s, delimiter %r%s)",
            name,
            label,
            "gzip, " if compressed else "",
            encoding,
            delimiter,
            ", header row skipped" if has_header else ", no header row",
        )
        buffered = io.BufferedReader(replay, buffer_size=1 << 20)
        self._consumed = partial(_consumed, outer, replay, buffered)
        text = io.TextIOWrapper(buffered, encoding=encoding, errors=LATIN1_FALLBACK, newline="")
        stack.callback(text.close)
        return text, layout

    def _batches(
        self, reader: CsvReader, layout: FileLayout, start: ReadPosition | None
    ) -> Iterator[Batch]:
        index = layout.column_index
        skip = int(layout.has_header) + int(layout.sep_line)
        fallbacks_before = _FallbackCounter.uses
        warned = False
        last_line = records = rows_seen = 0
        if start is not None and start.records:
            deque(islice(reader, start.records), maxlen=0)  # parsed at C speed, not kept
            if reader.line_num != start.line:
                raise RuntimeError(
                    f"{self.name}: resuming after line {start.line}, but its first "
                    f"{start.records} records end at line {reader.line_num}"
                )
            skip, last_line, records, rows_seen = start.skip, start.line, start.records, 1
        while True:
            # A batch holds a thousand row lists at once. Left to itself, the cyclic garbage
            # collector would scan them several times per batch and promote them to older
            # generations, costing a third of the producer's time; they hold no cycles and are
            # all freed before the collector is switched back on (by whoever had it on).
            collecting = gc.isenabled()
            gc.disable()
            try:
                batch = _read_batch(reader, index, last_line, skip)
            finally:
                if collecting:
                    gc.enable()
            if batch is None:
                break
            if not warned and _FallbackCounter.uses != fallbacks_before:
                # The decoder reads ahead of the parser, so only a lower bound is known.
                warned = True
                log.warning(
                    "%s: bytes that are not valid %s after line %d; read them as Latin-1",
                    self.name,
                    layout.encoding,
                    last_line,
                )
            lines, cells, skip, last_line, count = batch
            records += count
            self.position = ReadPosition(records, skip, last_line)
            rows_seen += len(cells)
            if cells:
                yield lines, cells
        if rows_seen == 0:
            log.warning("%s: no data rows", self.name)


def _consumed(outer: _Replay, inner: _Replay, buffered: io.BufferedIOBase) -> int:
    """Bytes of the file taken by the text layer: what was read, less the 1 MiB buffer's rest.

    For gzip, the compressed bytes read scaled by the share of the unzipped ones taken.
    """
    taken = buffered.tell()
    if inner is outer:
        return taken
    return outer.delivered * taken // inner.delivered if inner.delivered else 0


def _read_batch(
    reader: CsvReader, index: int, last_line: int, skip: int
) -> tuple[list[int], list[str | None], int, int, int] | None:
    """Parse up to BATCH_ROWS records: (start lines, phone cells, records still to skip, last
    line read, records parsed).

    Blank records are left out, and the first ``skip`` others (a ``sep=`` line, the header); a
    record too short for the column gives None.
    """
    rows: list[list[str]] = list(islice(reader, BATCH_ROWS))
    if not rows:
        return None
    end: int = reader.line_num
    if end - last_line == len(rows):
        # Every record took exactly one line: no need to look inside them.
        lines = list(range(last_line + 1, end + 1))
    else:
        lines = _record_starts(rows, last_line)
    cells: list[str | None]
    try:
        cells = list(map(itemgetter(index), rows))
    except IndexError:  # a row too short to have the phone column
        lines, cells, skip = _sift(rows, lines, index, skip)
    else:
        if skip:
            lines, cells, skip = _sift(rows, lines, index, skip)
        elif not all(map(str.strip, cells)):  # type: ignore[arg-type]
            # Some phone cells are blank, so their rows may be blank lines. Only those rows are
            # looked at; list.index finds them at C speed.
            stripped = list(map(str.strip, cells))  # type: ignore[arg-type]
            blank = [p for p in positions(stripped, "") if _is_blank(rows[p])]
            if blank:
                lines, cells = drop(lines, blank), drop(cells, blank)
    return lines, cells, skip, end, len(rows)


def positions(values: list[_T], wanted: _T) -> list[int]:
    """Where ``wanted`` occurs in ``values``, found by list.index at C speed (it is rare)."""
    found: list[int] = []
    start = 0
    try:
        while True:
            start = values.index(wanted, start)
            found.append(start)
            start += 1
    except ValueError:
        return found


def drop(values: list[_T], where: list[int]) -> list[_T]:
    """``values`` without the items at positions ``where`` (ascending), copied in slices."""
    kept: list[_T] = []
    start = 0
    for position in where:
        kept += values[start:position]
        start = position + 1
    kept += values[start:]
    return kept


def _sift(
    rows: list[list[str]], lines: list[int], index: int, skip: int
) -> tuple[list[int], list[str | None], int]:
    """The slow way through a batch: drop blank records and the first ``skip`` others (a
    ``sep=`` line, the header), and mark missing cells."""
    kept_lines: list[int] = []
    cells: list[str | None] = []
    for line, row in zip(lines, rows, strict=True):
        if _is_blank(row):
            continue
        if skip:
            skip -= 1
            continue
        kept_lines.append(line)
        cells.append(row[index] if index < len(row) else None)
    return kept_lines, cells, skip
