"""Every row is accounted for: rows = accepted + rejected + duplicates, over generated messy CSVs.

Hypothesis writes files the way people's tools do (UTF-8 with or without BOM, UTF-16, Latin-1;
any delimiter; minimal or full quoting; notes with embedded newlines; CRLF or LF; blank and
delimiter-only lines; junk cells; the same number spelled differently; .gz) and checks, against
an oracle built while writing them, that the producer reads exactly the rows written, rejects
exactly the bad ones at the right file and line, keeps the first of each number, and cuts chunks
of at most ``batch_size`` that never repeat a number.
"""

from __future__ import annotations

import csv
import gzip
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.source
from engine.batcher import Producer
from engine.numbers import Normalizer, Rejected
from engine.records import Reject
from engine.settings import InputSettings

NORMALIZER = Normalizer("IN")
SPELLINGS = (
    "{n}",
    "+91 {a} {b}",
    "0{n}",
    "91-{a}-{b}",
    "({a}) {b}",
    "{a}.{b}",
    "0091{n}",
    "+91{n}",
    " {n} ",
)
JUNK = (
    "",
    " ",
    "n/a",
    "abc",
    "98765-ABCDE",
    "9.19E+11",
    "12345",
    "987654321",
    "98765432101",
    "+91 98765 43210 ext 12",
    "5555555555",
    "#N/A",
    "x" * 120,
)
LATIN1_NAMES = ("José", "Zoë", "Ana", "Bob", "Renée", "Li")


@dataclass
class Row:
    cell: str | None  # None: the row is too short to have the phone column
    name: str
    note: str


@dataclass
class Blank:
    text: str  # a blank line or a line of delimiters and spaces


@st.composite
def phone_cells(draw: st.DrawFn, earlier: list[int]) -> str:
    kind = draw(st.sampled_from(["new", "new", "new", "duplicate", "junk"]))
    if kind == "junk" or (kind == "duplicate" and not earlier):
        return draw(st.sampled_from(JUNK))
    if kind == "duplicate":
        national = draw(st.sampled_from(earlier))
    else:
        national = draw(st.integers(6_000_000_000, 9_999_999_999))
        earlier.append(national)
    text = str(national)
    return draw(st.sampled_from(SPELLINGS)).format(n=text, a=text[:5], b=text[5:])


@st.composite
def messy_files(draw: st.DrawFn) -> dict[str, object]:
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    header = draw(st.booleans())
    phone_index = draw(st.integers(0, 2))
    earlier: list[int] = []
    records: list[Row | Blank] = []
    for position in range(draw(st.integers(0, 60))):
        if position and draw(st.integers(0, 5)) == 0:
            blank = draw(st.sampled_from(["", "  ", delimiter * 2, f" {delimiter} "]))
            records.append(Blank(blank))
            continue
        cell: str | None = draw(phone_cells(earlier))
        if not header and not any(isinstance(r, Row) for r in records):
            # Without a header, a first row like "abc" is indistinguishable from one.
            cell = f"9{position:09d}"
        elif phone_index and draw(st.integers(0, 14)) == 0:
            cell = None
        note = draw(st.sampled_from(["", "ok", f"a{delimiter}b", "two\nlines", 'say "hi"']))
        records.append(Row(cell, draw(st.sampled_from(LATIN1_NAMES)), note))
    return {
        "encoding": encoding,
        "delimiter": delimiter,
        "quoting": quoting,
        "newline": newline,
        "header": header,
        "phone_index": phone_index,
        "records": records,
        "gzip": draw(st.booleans()),
    }


def _line_breaks(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def write_file(path: Path, spec: dict[str, object]) -> list[tuple[int, str | None]]:
    """Write the file; return each data row's (physical start line, phone cell)."""
    out = io.StringIO()
    writer = csv.writer(
        out,
        delimiter=str(spec["delimiter"]),
        quoting=spec["quoting"],  # type: ignore[arg-type]
        lineterminator=str(spec["newline"]),
    )
    phone_index = int(spec["phone_index"])  # type: ignore[call-overload]
    if spec["header"]:
        writer.writerow([*["name", "note", "x"][:phone_index], "Phone", "note", "tag"])
    rows: list[tuple[int, str | None]] = []
    for record in spec["records"]:  # type: ignore[attr-defined]
        start = _line_breaks(out.getvalue()) + 1
        if isinstance(record, Blank):
            out.write(record.text + str(spec["newline"]))
            continue
        cells = [record.name, record.note, "x"][:phone_index]
        if record.cell is not None:
            cells += [record.cell, record.note, "t"]
        writer.writerow(cells)
        rows.append((start, record.cell))
    data = out.getvalue().encode(str(spec["encoding"]))
    path.write_bytes(gzip.compress(data) if spec["gzip"] else data)
    return rows


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(messy_files(), min_size=1, max_size=3),
    st.integers(1, 100),
    st.integers(2, 40),
    st.booleans(),
)
def test_rows_read_equal_accepted_plus_rejected_plus_duplicates(
    specs, batch_size, batch_rows, by_name
):
    """Counts add up; rejects name the right file and line; chunks are bounded and distinct."""
    with (
        tempfile.TemporaryDirectory() as folder,
        mock.patch.object(engine.source, "BATCH_ROWS", batch_rows),
    ):
        paths: list[str] = []
        expected_rows: list[tuple[int, int, str | None]] = []
        for index, spec in enumerate(specs):
            path = Path(folder) / f"in{index}.csv"
            rows = write_file(path, spec)
            paths.append(str(path))
            expected_rows += [(index, line, cell) for line, cell in rows]
        # One column setting serves every file only when they agree on it: use the name when all
        # have a header, else the index when all put the phone at the same place, else detect.
        same_index = len({spec["phone_index"] for spec in specs}) == 1
        all_headers = all(spec["header"] for spec in specs)
        column: str | None = None
        if by_name and all_headers:
            column = "phone"
        elif same_index:
            column = str(int(specs[0]["phone_index"]) + 1)
        elif not all_headers:
            return  # detection needs a header to be exact when the phone column holds junk

        rejects: list[Reject] = []
        settings_ = InputSettings(paths=tuple(paths), column=column, batch_size=batch_size)
        producer = Producer(settings_, NORMALIZER, rejects.append)
        chunks = list(producer.chunks())

    expected_accepted: list[tuple[int, int, int]] = []
    expected_rejects: list[tuple[int, int, str, str]] = []
    seen: set[int] = set()
    duplicates = 0
    for file, line, cell in expected_rows:
        try:
            number = NORMALIZER.normalize(cell)
        except Rejected as rejected:
            expected_rejects.append((file, line, (cell or "")[:80], rejected.reason))
            continue
        if number in seen:
            duplicates += 1
        else:
            seen.add(number)
            expected_accepted.append((number, file, line))

    counts = producer.counts
    assert counts.finished
    assert counts.rows == len(expected_rows)
    assert counts.rows == counts.accepted + counts.rejected + counts.duplicates
    assert [(r.file, r.line, r.raw, r.reason) for r in rejects] == expected_rejects
    assert counts.duplicates == duplicates
    got = [
        triple
        for chunk in chunks
        for triple in zip(chunk.numbers, chunk.files, chunk.lines, strict=True)
    ]
    assert got == expected_accepted
    assert all(0 < len(chunk.numbers) <= batch_size for chunk in chunks)
    assert [chunk.id for chunk in chunks] == list(range(len(chunks))) == list(range(counts.chunks))
    numbers = [number for number, _, _ in got]
    assert len(numbers) == len(set(numbers))
