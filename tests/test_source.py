"""engine.source: encodings, delimiters, quoting, headers, columns, compression, line numbers."""

from __future__ import annotations

import codecs
import gzip
import io
import logging
import sys
from pathlib import Path

import pytest

from engine import source as source_module
from engine.errors import InputError
from engine.numbers import Normalizer
from engine.plan import _estimate_rows
from engine.source import BATCH_ROWS, SNIFF_BYTES, CsvSource, detect_encoding

LOOKS_LIKE_PHONE = Normalizer("IN").looks_like_phone


def read(path: Path | str, column: str | None = None) -> list[tuple[int, str | None]]:
    return list(CsvSource(str(path), column, LOOKS_LIKE_PHONE).cells())


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


TEXT = "name,phone,city\nJosé,9876543210,Pune\nRenée,+91 98765 43211,Delhi\n"
EXPECTED = [(2, "9876543210"), (3, "+91 98765 43211")]


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("utf-8", TEXT.encode("utf-8")),
        ("utf-8-sig", codecs.BOM_UTF8 + TEXT.encode("utf-8")),
        ("utf-16", TEXT.encode("utf-16-le").join([codecs.BOM_UTF16_LE, b""])),
        ("utf-16", codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be")),
        ("utf-16-le", TEXT.encode("utf-16-le")),
        ("utf-16-be", TEXT.encode("utf-16-be")),
        ("utf-32", TEXT.encode("utf-32")),
        ("latin-1", TEXT.encode("latin-1")),
    ],
)
def test_every_supported_encoding_reads_the_same_rows(tmp_path, encoding, data):
    """UTF-8 (BOM or not), UTF-16 LE/BE (BOM or not), UTF-32 and Latin-1 all read alike."""
    source = CsvSource(str(write(tmp_path, "in.csv", data)), None, LOOKS_LIKE_PHONE)
    assert list(source.cells()) == EXPECTED
    assert source.layout is not None and source.layout.encoding == encoding


def test_excel_unicode_text_is_tab_separated_utf16_with_crlf(tmp_path):
    """Excel's "Unicode text" export (UTF-16LE with BOM, tabs, CRLF) is read with its header."""
    text = "Name\tMobile No\tNote\r\nA\t98765 43210\tx, y\r\nB\t09876543211\t\r\n"
    path = write(tmp_path, "export.txt", codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    source = CsvSource(str(path), None, LOOKS_LIKE_PHONE)
    assert list(source.cells()) == [(2, "98765 43210"), (3, "09876543211")]
    assert source.layout is not None
    assert (source.layout.delimiter, source.layout.column_label) == ("\t", "column 2 'Mobile No'")


def test_latin1_file_is_read_with_a_warning(tmp_path, caplog):
    """A file that is not UTF-8 is read as Latin-1, with one warning naming the file."""
    path = write(tmp_path, "latin.csv", TEXT.encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        assert read(path) == EXPECTED
    assert "latin.csv: not UTF-8" in caplog.text


def test_non_utf8_byte_after_the_sample_is_read_as_latin1_with_a_warning(tmp_path, caplog):
    """A Latin-1 byte far past the first 64 KiB warns once, and loses no row."""
    rows = [f"name {i},98{i:08d}\n" for i in range(12_000)]
    head = ("name,phone\n" + "".join(rows)).encode()
    assert len(head) > SNIFF_BYTES
    tail = "Zoë,9999999999\nÅsa,9999999998\n".encode("latin-1")
    path = write(tmp_path, "late.csv", head + tail)
    with caplog.at_level(logging.WARNING):
        cells = read(path)
    assert len(cells) == 12_002
    assert cells[-2:] == [(12_002, "9999999999"), (12_003, "9999999998")]
    warnings = [r for r in caplog.records if "not valid utf-8" in r.getMessage()]
    assert len(warnings) == 1 and "late.csv" in warnings[0].getMessage()


def test_invalid_utf8_in_the_middle_of_a_name_never_crashes(tmp_path):
    """Stray bytes 0x80-0xFF anywhere (names, phone cells) are decoded, never raised."""
    data = b"name,phone\n\xff\xfe\x80,9876543210\nok,98765\xe943210\n"
    cells = read(write(tmp_path, "mixed.csv", data))
    assert cells == [(2, "9876543210"), (3, "98765é43210")]


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_is_sniffed_even_when_other_candidates_appear_in_names(tmp_path, delimiter):
    """The delimiter that isolates the phone column wins over others inside quoted names."""
    others = "".join(d for d in ",;\t|" if d != delimiter)
    lines = [delimiter.join(["name", "phone", "note"])]
    for i in range(20):
        lines.append(delimiter.join([f'"Doe{others} J{i}"', f"98765432{i:02d}", f'"a{others}b"']))
    source = CsvSource(
        str(write(tmp_path, "d.csv", ("\n".join(lines) + "\n").encode())), None, LOOKS_LIKE_PHONE
    )
    cells = list(source.cells())
    assert source.layout is not None and source.layout.delimiter == delimiter
    assert cells[0] == (2, "9876543200") and len(cells) == 20


def test_semicolon_file_with_decimal_commas(tmp_path):
    """A European export (';' delimiter, ',' in amounts) splits on ';'."""
    data = b"Name;Telefon;Betrag\nA;9876543210;1,50\nB;9876543211;2,75\nC;9876543212;0,10\n"
    assert read(write(tmp_path, "eu.csv", data)) == [
        (2, "9876543210"),
        (3, "9876543211"),
        (4, "9876543212"),
    ]


def test_excel_sep_line_names_the_delimiter_and_is_not_a_row(tmp_path):
    """A first line "sep=;" sets the delimiter and is skipped; line numbers stay physical."""
    data = b"sep=;\r\nName;Phone\r\nDoe, J;9876543210\r\nRoe, K;9876543211\r\n"
    source = CsvSource(str(write(tmp_path, "sep.csv", data)), None, LOOKS_LIKE_PHONE)
    assert list(source.cells()) == [(3, "9876543210"), (4, "9876543211")]
    assert source.layout is not None and source.layout.delimiter == ";"


def test_quoted_fields_with_newlines_keep_the_line_where_each_record_starts(tmp_path):
    """Records spanning lines (quoted newlines, CRLF or LF inside) report their first line."""
    data = (
        b'name,phone,note\r\n"Doe, John",9876543210,"multi\nline\r\nnote"\r\n'
        b"B,9876543211,x\r\n"
        b'"C\rD",9876543212,y\r\n'
        b'"E",9876543213,""""\r\n'
    )
    assert read(write(tmp_path, "q.csv", data)) == [
        (2, "9876543210"),
        (5, "9876543211"),
        (6, "9876543212"),
        (8, "9876543213"),
    ]


def test_line_numbers_stay_exact_across_batches_with_multiline_records(tmp_path):
    """Thousands of records, some spanning lines, each keep their physical start line."""
    lines: list[str] = ["phone,note"]
    expected: list[tuple[int, str]] = []
    physical = 2
    for i in range(BATCH_ROWS * 2 + 100):
        phone = f"9{i:09d}"
        note = "two\nlines" if i % 97 == 0 else "one"
        lines.append(f'{phone},"{note}"')
        expected.append((physical, phone))
        physical += 1 + note.count("\n")
    path = write(tmp_path, "many.csv", ("\n".join(lines) + "\n").encode())
    assert read(path) == expected


def test_crlf_split_across_the_decoder_chunk_boundary_counts_as_one_line(tmp_path):
    """A CRLF whose CR ends one 8 KiB read and whose LF starts the next is one line break."""
    for offset in range(8186, 8196):
        first = "phone,pad\n"
        pad = "x" * (offset - len(first) - len("9876543210,") - 1)
        data = f"{first}9876543210,{pad}\r\n9876543211,y\r\n9876543212,z\r\n".encode()
        cells = read(write(tmp_path, f"crlf{offset}.csv", data))
        assert cells == [(2, "9876543210"), (3, "9876543211"), (4, "9876543212")], offset


def test_old_mac_line_endings(tmp_path):
    """Lines ended by a bare CR are lines."""
    assert read(write(tmp_path, "cr.csv", b"phone\r9876543210\r9876543211\r")) == [
        (2, "9876543210"),
        (3, "9876543211"),
    ]


def test_blank_lines_and_delimiter_only_rows_are_not_rows(tmp_path):
    """Empty lines, spaces, and ',,' rows are skipped; a row missing only its phone counts."""
    data = b"phone,name\n\n9876543210,a\n,,\n  \n \t , \n9876543211,b\n,c\n"
    assert read(write(tmp_path, "blank.csv", data)) == [
        (3, "9876543210"),
        (7, "9876543211"),
        (8, ""),
    ]


def test_blank_rows_are_skipped_in_every_batch_not_only_the_first(tmp_path, monkeypatch):
    """Delimiter-only and space-only rows are dropped wherever a batch boundary falls."""
    monkeypatch.setattr("engine.source.BATCH_ROWS", 3)
    data = b"phone,name\n9876543210,a\n9876543211,b\n,,\n  ,\n9876543212,c\n,d\n , \n"
    assert read(write(tmp_path, "blank.csv", data)) == [
        (2, "9876543210"),
        (3, "9876543211"),
        (6, "9876543212"),
        (7, ""),
    ]


def test_rows_too_short_for_the_column_give_none(tmp_path):
    """A row with fewer cells than the phone column's index yields None (rejected later)."""
    data = b"name,phone\nA,9876543210\nB\nC,9876543211\n"
    assert read(write(tmp_path, "short.csv", data)) == [
        (2, "9876543210"),
        (3, None),
        (4, "9876543211"),
    ]


def test_file_without_header_starts_at_line_one(tmp_path):
    """When the first row holds a phone number, it is data, not a header."""
    source = CsvSource(
        str(write(tmp_path, "n.csv", b"9876543210\n9876543211\n")), None, LOOKS_LIKE_PHONE
    )
    assert list(source.cells()) == [(1, "9876543210"), (2, "9876543211")]
    assert source.layout is not None and not source.layout.has_header


@pytest.mark.parametrize("first", ["n/a", "98765-ABCDE", "9.19E+11", "12345", ""])
def test_a_junk_first_row_is_data_not_a_header(tmp_path, first):
    """A first cell that is a bad value (n/a, digits with junk) is a row to reject, not a header."""
    data = f"{first}\n9876543210\n9876543211\n".encode()
    cells = read(write(tmp_path, "j.csv", data))
    assert cells[-2:] == [(2, "9876543210"), (3, "9876543211")]
    assert len(cells) == (3 if first else 2)


def test_column_by_header_name_is_case_insensitive(tmp_path, caplog):
    """--column mobile picks 'MOBILE', and the log line names the column picked."""
    data = b"Name, MOBILE ,Alt\nA,9876543210,9876500000\n"
    with caplog.at_level(logging.INFO):
        assert read(write(tmp_path, "c.csv", data), column="mobile") == [(2, "9876543210")]
    assert "column 2 'MOBILE'" in caplog.text


def test_column_by_one_based_index(tmp_path):
    """--column 3 picks the third column, header or not."""
    data = b"Name,Mobile,Alt\nA,9876543210,9876500000\n"
    assert read(write(tmp_path, "c.csv", data), column="3") == [(2, "9876500000")]
    assert read(write(tmp_path, "d.csv", b"A,9876543210,9876500000\n"), column="3") == [
        (1, "9876500000")
    ]


def test_unknown_column_name_is_an_input_error_listing_the_headers(tmp_path):
    """A --column name that is not in the header row says which columns there are."""
    path = write(tmp_path, "c.csv", b"Name,Mobile\nA,9876543210\n")
    with pytest.raises(InputError, match=r"no column named 'phone'.*'Name', 'Mobile'"):
        read(path, column="phone")
    with pytest.raises(InputError, match="numbered from 1"):
        read(path, column="0")
    with pytest.raises(InputError, match=r"--column 3: the first rows have only 2 column"):
        read(path, column="3")


def test_auto_pick_chooses_the_phone_column_and_says_so(tmp_path, caplog):
    """Without --column the column holding phone numbers is picked and logged by name."""
    data = b"id,name,contact,amount\n1,A,98765 43210,100\n2,B,9876543211,200\n3,C,,300\n"
    with caplog.at_level(logging.INFO):
        cells = read(write(tmp_path, "auto.csv", data))
    assert cells == [(2, "98765 43210"), (3, "9876543211"), (4, "")]
    assert "auto.csv: phone numbers from column 3 'contact'" in caplog.text


def test_two_phone_like_columns_warn_about_the_other(tmp_path, caplog):
    """When two columns hold phone numbers, the first is used and the other is named."""
    data = b"mobile,alternate\n9876543210,9876500000\n9876543211,9876500001\n"
    with caplog.at_level(logging.WARNING):
        assert read(write(tmp_path, "two.csv", data))[0] == (2, "9876543210")
    assert "column 2 'alternate' also looks like phone numbers" in caplog.text


def test_no_phone_column_is_an_input_error(tmp_path):
    """A multi-column file with no phone-like column and no phone header asks for --column."""
    path = write(tmp_path, "none.csv", b"a,b\nx,y\nz,w\n")
    with pytest.raises(InputError, match="choose one with --column"):
        read(path)


def test_only_bad_rows_in_one_column_are_all_read(tmp_path):
    """A one-column file of junk still yields every row (to be rejected), after its header."""
    data = b"phone\nabc\n123\n9.19E+11\n\nn/a\n"
    assert read(write(tmp_path, "bad.csv", data)) == [
        (2, "abc"),
        (3, "123"),
        (4, "9.19E+11"),
        (6, "n/a"),
    ]


def test_gzip_is_recognised_by_content_whatever_the_name(tmp_path):
    """.gz files are decompressed on the fly, and so is a gzip file named .csv."""
    payload = gzip.compress(TEXT.encode())
    for name in ("a.csv.gz", "b.csv"):
        source = CsvSource(str(write(tmp_path, name, payload)), None, LOOKS_LIKE_PHONE)
        assert list(source.cells()) == EXPECTED
        assert source.layout is not None and source.layout.compressed


def test_the_plan_estimates_a_gzip_named_csv_from_its_unzipped_lines(tmp_path):
    """The plan's row estimate knows gzip by content too: lines measured unzipped, 4:1 assumed."""
    text = "phone\n" + "".join(f"98765{index:05d}\n" for index in range(500))
    path = write(tmp_path, "b.csv", gzip.compress(text.encode()))
    line_length = len(text) / text.count("\n")
    assert _estimate_rows((str(path),)) == int(path.stat().st_size * 4.0 / line_length)


def test_large_gzip_streams_past_the_sample(tmp_path):
    """A gzip input larger than the sample reads every row."""
    text = "phone\n" + "".join(f"9{i:09d}\n" for i in range(30_000))
    path = write(tmp_path, "big.csv.gz", gzip.compress(text.encode()))
    cells = read(path)
    assert len(cells) == 30_000 and cells[-1] == (30_001, "9000029999")


def test_truncated_gzip_is_an_input_error(tmp_path):
    """A .gz cut short ends in an InputError naming the file, not a traceback."""
    text = "phone\n" + "".join(f"9{i:09d}\n" for i in range(50_000))
    payload = gzip.compress(text.encode())
    path = write(tmp_path, "cut.csv.gz", payload[: len(payload) // 2])
    with pytest.raises(InputError, match=r"cut\.csv\.gz: read failed"):
        read(path)


def test_corrupt_gzip_is_an_input_error(tmp_path):
    """Garbage after a gzip magic number is an InputError."""
    path = write(tmp_path, "bad.gz", b"\x1f\x8b\x08\x00" + b"\xff" * 200)
    with pytest.raises(InputError, match=r"bad\.gz"):
        read(path)


def test_missing_file_is_an_input_error(tmp_path):
    """A path that does not exist is refused as such."""
    with pytest.raises(InputError, match=r"nope\.csv: no such file"):
        read(tmp_path / "nope.csv")


def test_binary_file_is_an_input_error(tmp_path):
    """Random bytes with NULs are refused as binary."""
    data = bytes(range(256)) * 40
    with pytest.raises(InputError, match="binary file"):
        read(write(tmp_path, "x.bin", data))


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("book.xlsx", b"PK\x03\x04" + bytes(200), "Excel workbook"),
        ("list.zip", b"PK\x03\x04" + bytes(200), "ZIP file"),
        ("old.xls", b"\xd0\xcf\x11\xe0" + bytes(200), r"old Excel workbook \(.xls\)"),
    ],
)
def test_workbooks_and_archives_are_refused_with_the_fix(tmp_path, name, data, match):
    """An Excel workbook or a zip is refused with how to export CSV."""
    with pytest.raises(InputError, match=match):
        read(write(tmp_path, name, data))


def test_empty_and_header_only_files_have_no_rows(tmp_path, caplog):
    """An empty file and a header-only file read zero rows, with a warning."""
    with caplog.at_level(logging.WARNING):
        assert read(write(tmp_path, "e.csv", b"")) == []
        assert read(write(tmp_path, "h.csv", b"phone\r\n")) == []
    assert "e.csv: no data rows" in caplog.text and "h.csv: no data rows" in caplog.text


def test_a_single_ten_megabyte_line_is_one_row(tmp_path):
    """One 10 MB line without a newline is one (huge) cell, not an error or a header."""
    path = write(tmp_path, "huge.csv", b"9" * (10 * 1024 * 1024))
    cells = read(path)
    assert len(cells) == 1 and cells[0][0] == 1 and len(cells[0][1] or "") == 10 * 1024 * 1024


def test_standard_input_is_read_through_the_same_sniffing(monkeypatch):
    """'-' reads standard input's bytes, sample and all, like a file."""

    class Stdin:
        buffer = io.BufferedReader(io.BytesIO(gzip.compress(TEXT.encode())))  # type: ignore[arg-type]

    monkeypatch.setattr(sys, "stdin", Stdin())
    assert read("-") == EXPECTED


def test_batches_and_cells_agree_and_batches_are_bounded(tmp_path):
    """batches() yields aligned lists of at most BATCH_ROWS; cells() is the same rows flat."""
    text = "phone\n" + "".join(f"9{i:09d}\n" for i in range(BATCH_ROWS * 2 + 7))
    path = str(write(tmp_path, "b.csv", text.encode()))
    batches = list(CsvSource(path, None, LOOKS_LIKE_PHONE).batches())
    assert all(len(lines) == len(cells) <= BATCH_ROWS for lines, cells in batches)
    flat = [pair for lines, cells in batches for pair in zip(lines, cells, strict=True)]
    assert flat == read(path)


def test_inspect_finds_the_layout_without_reading_the_rows(tmp_path):
    """inspect() reports the layout (or the InputError) from the sample alone."""
    layout = CsvSource(
        str(write(tmp_path, "i.csv", b"Name;Phone\nA;9876543210\n")), None, LOOKS_LIKE_PHONE
    ).inspect()
    assert (layout.delimiter, layout.column_index, layout.has_header) == (";", 1, True)
    with pytest.raises(InputError, match="binary"):
        CsvSource(str(write(tmp_path, "b.bin", bytes(1000))), None, LOOKS_LIKE_PHONE).inspect()


def test_detect_encoding_keeps_a_multibyte_character_cut_by_the_sample():
    """A UTF-8 character split at the sample's end does not make the file Latin-1."""
    sample = ("x" * 10 + "é").encode()[:-1]
    assert detect_encoding(sample, "f.csv") == "utf-8"


# -- headers wider than the sample ------------------------------------------------------------


def wide_file(tmp_path: Path, columns: int, rows: int = 20, *, compress: bool = False) -> Path:
    header = ",".join([f"field_{index}" for index in range(columns - 1)] + ["Mobile"])
    lines = [header] + [",".join(["7"] * (columns - 1) + [f"98765{n:05d}"]) for n in range(rows)]
    data = ("\n".join(lines) + "\n").encode()
    return write(tmp_path, "wide.csv.gz" if compress else "wide.csv",
                 gzip.compress(data) if compress else data)  # fmt: skip


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("column", [None, "mobile", "10000"])
def test_a_header_longer_than_the_sample_is_read_whole(tmp_path, column, compress):
    """10,000 columns, the phone last, the header past 64 KiB: found by name, index or header."""
    path = wide_file(tmp_path, 10_000, compress=compress)
    source = CsvSource(str(path), column, LOOKS_LIKE_PHONE)
    cells = list(source.cells())
    assert cells == [(n + 2, f"98765{n:05d}") for n in range(20)]
    assert source.layout is not None and source.layout.column_index == 9_999
    assert source.layout.has_header


def test_a_named_column_missing_from_a_wide_header_is_an_error(tmp_path):
    """--column that the whole header lacks: an error naming some headers and how many more."""
    path = wide_file(tmp_path, 10_000)
    with pytest.raises(InputError, match=r"no column named 'phone'.*and 9,988 more"):
        CsvSource(str(path), "phone", LOOKS_LIKE_PHONE).inspect()


def test_a_file_of_one_huge_line_is_sampled_whole_not_beyond_the_cap(tmp_path, monkeypatch):
    """The sample grows only to MAX_SAMPLE_BYTES; a first line longer is a row, not a header,
    and a --column name then has no header to be found in."""
    monkeypatch.setattr(source_module, "MAX_SAMPLE_BYTES", 256 * 1024)
    path = write(tmp_path, "long.csv", b"phone," + b"x" * (512 * 1024) + b"\n9876543210,1\n")
    cells = list(CsvSource(str(path), None, LOOKS_LIKE_PHONE).cells())
    assert [line for line, _ in cells] == [1, 2]
    with pytest.raises(InputError, match="no header row to find it in"):
        CsvSource(str(path), "phone", LOOKS_LIKE_PHONE).inspect()
