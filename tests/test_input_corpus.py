"""A corpus of messy inputs, made here: none crashes; each is a clear InputError or adds up.

The same files then go through the real ``ozbulk delete`` against the fake API: exit 2 with the
reason on one line and no traceback, or exit 0 with totals that add up.
"""

from __future__ import annotations

import codecs
import gzip
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.batcher import Producer, accepted_numbers
from engine.errors import InputError
from engine.numbers import Normalizer
from engine.records import Reject
from engine.settings import InputSettings
from tests._helpers import GROUP, delete_args

MOBILES = [f"9{n:09d}" for n in range(876543210, 876543210 + 300)]


def _rows(count: int, spell: Callable[[str], str] = str) -> str:
    return "".join(f"customer {i},{spell(MOBILES[i % len(MOBILES)])},x\n" for i in range(count))


def _spellings() -> str:
    forms = [
        "{n}", "+91 {a} {b}", "0{n}", "91-{a}-{b}", "({a}) {b}", "{a}.{b}", "0091 {a} {b}",
        "+91-{a}-{b}", "{a} {b}", "+91 (0) {a} {b}", "'{n}", "{n}.0",
    ]  # fmt: skip
    lines = ["name,mobile"]
    for index, form in enumerate(forms):
        n = MOBILES[index]
        lines.append(f'x{index},"{form.format(n=n, a=n[:5], b=n[5:])}"')
    return "\n".join(lines) + "\n"


def _corpus() -> dict[str, bytes]:
    header = "name,phone,note\n"
    rows = _rows(50)
    rng = random.Random(20)
    latin_late = (header + _rows(7_000)).encode() + "Zoë Ñuñez,9876543999,café\n".encode("latin-1")
    return {
        "utf8.csv": (header + rows).encode(),
        "utf8-bom.csv": codecs.BOM_UTF8 + (header + rows).encode(),
        "excel-unicode.txt": codecs.BOM_UTF16_LE
        + (header + rows).replace(",", "\t").replace("\n", "\r\n").encode("utf-16-le"),
        "utf16-be.csv": codecs.BOM_UTF16_BE + (header + rows).encode("utf-16-be"),
        "utf16-le-no-bom.csv": (header + rows).encode("utf-16-le"),
        "latin1.csv": (header + "José,9876543210,café\nRenée,9876543211,crème\n").encode("latin-1"),
        "latin1-after-64k.csv": latin_late,
        "crlf.csv": (header + rows).replace("\n", "\r\n").encode(),
        "cr-only.csv": (header + rows).replace("\n", "\r").encode(),
        "semicolon.csv": (header + rows).replace(",", ";").encode(),
        "pipe.csv": (header + rows).replace(",", "|").encode(),
        "quoted-multiline.csv": (
            header + '"Doe, John",9876543210,"line one\nline two"\n'
            '"A ""quoted"" name",+91 98765 43211,"a,b;c|d"\n'
        ).encode(),
        "no-header.csv": _rows(20).encode(),
        "spellings.csv": _spellings().encode(),
        "duplicates.csv": (header + _rows(400)).encode(),
        "blank-lines.csv": (header + "\n,,\n  \n" + rows + "\n\n").encode(),
        "gzip.csv.gz": gzip.compress((header + rows).encode()),
        "empty.csv": b"",
        "header-only.csv": header.encode(),
        "binary.bin": rng.randbytes(20_000) + bytes(100),
        "binary-no-nul.bin": bytes(rng.choice(range(1, 256)) for _ in range(20_000)),
        "one-10mb-line.csv": b"9" * (10 * 1024 * 1024),
        "only-bad-rows.csv": (
            b"phone\nabc\n12345\n9.19E+11\n\nn/a\n+91 98765 43210 ext 7\n98765432101\n"
        ),
        "nul-after-sample.csv": (header + _rows(4_000)).encode() + b"\x00\x00,98765\x0043210,x\n",
        "unbalanced-quote.csv": (header + 'A,9876543210,"never closed\n' + rows).encode(),
        "workbook.xlsx": b"PK\x03\x04" + bytes(300),
        "truncated.csv.gz": gzip.compress((header + _rows(20_000)).encode())[:5_000],
    }


# What each input must do: "error" (an InputError) or the exact number of data rows it holds.
OUTCOMES: dict[str, str | int] = {
    "utf8.csv": 50,
    "utf8-bom.csv": 50,
    "excel-unicode.txt": 50,
    "utf16-be.csv": 50,
    "utf16-le-no-bom.csv": 50,
    "latin1.csv": 2,
    "latin1-after-64k.csv": 7_001,
    "crlf.csv": 50,
    "cr-only.csv": 50,
    "semicolon.csv": 50,
    "pipe.csv": 50,
    "quoted-multiline.csv": 2,
    "no-header.csv": 20,
    "spellings.csv": 12,
    "duplicates.csv": 400,
    "blank-lines.csv": 50,
    "gzip.csv.gz": 50,
    "empty.csv": 0,
    "header-only.csv": 0,
    "binary.bin": "error",
    "binary-no-nul.bin": "any",  # an InputError or rows that add up: either is fine
    "one-10mb-line.csv": 1,
    "only-bad-rows.csv": 6,
    "nul-after-sample.csv": 4_001,
    "unbalanced-quote.csv": 1,
    "workbook.xlsx": "error",
    "truncated.csv.gz": "error",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, data in _corpus().items():
        (folder / name).write_bytes(data)
    return folder


def test_corpus_lists_every_outcome():
    """Every file in the corpus has an expected outcome, and vice versa."""
    assert set(_corpus()) == set(OUTCOMES)


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_no_input_crashes_the_producer(corpus, name):
    """Each messy file either raises a clear InputError or reads rows whose buckets add up."""
    rejects: list[Reject] = []
    producer = Producer(InputSettings(paths=(str(corpus / name),)), Normalizer(), rejects.append)
    expected = OUTCOMES[name]
    if expected == "error":
        with pytest.raises(InputError) as caught:
            list(producer.chunks())
        assert name in str(caught.value) and "\n" not in str(caught.value)
        return
    try:
        chunks = list(producer.chunks())
    except InputError as error:
        assert expected == "any", error  # random bytes may parse, or may have no phone column
        assert name in str(error) and "\n" not in str(error)
        return
    counts = producer.counts
    assert counts.finished
    if expected != "any":
        assert counts.rows == expected
    assert counts.rows == counts.accepted + counts.rejected + counts.duplicates
    assert counts.rejected == len(rejects)
    assert all(0 < len(chunk.numbers) <= 100 for chunk in chunks)
    numbers = [number for chunk in chunks for number in chunk.numbers]
    assert len(numbers) == len(set(numbers)) == counts.accepted
    assert all(reject.line > 0 for reject in rejects)


def test_every_spelling_in_the_corpus_is_one_accepted_number(corpus):
    """The spellings file's twelve ways of writing numbers are all accepted."""
    producer = Producer(
        InputSettings(paths=(str(corpus / "spellings.csv"),)), Normalizer(), lambda _: None
    )
    numbers = [n for chunk in producer.chunks() for n in chunk.numbers]
    assert numbers == [910000000000 + int(m) for m in MOBILES[:12]]


def test_only_bad_rows_are_all_rejected_with_their_lines(corpus):
    """A file of junk rejects every row, each at its own line, with a reason."""
    rejects: list[Reject] = []
    producer = Producer(
        InputSettings(paths=(str(corpus / "only-bad-rows.csv"),)), Normalizer(), rejects.append
    )
    assert list(producer.chunks()) == []
    assert [r.line for r in rejects] == [2, 3, 4, 6, 7, 8]
    assert [r.reason.split(":")[0] for r in rejects] == [
        "letters", "too short", "Excel scientific notation", "empty", "extension", "too long",
    ]  # fmt: skip


def test_unbalanced_quote_swallows_rows_but_warns(corpus, caplog):
    """An unclosed quote joins the rest of the file into one record, and the log says where."""
    producer = Producer(
        InputSettings(paths=(str(corpus / "unbalanced-quote.csv"),)), Normalizer(), lambda _: None
    )
    list(producer.chunks())
    assert producer.counts.rows == 1
    assert "line 2: one record spans" in caplog.text


def test_several_inputs_in_one_run_count_each_row_once(corpus):
    """Many files at once: rows are the sum of each file's rows; duplicates across them drop."""
    names = ["utf8.csv", "excel-unicode.txt", "gzip.csv.gz", "latin1-after-64k.csv", "empty.csv"]
    producer = Producer(
        InputSettings(paths=tuple(str(corpus / name) for name in names)),
        Normalizer(),
        lambda _: None,
    )
    list(producer.chunks())
    counts = producer.counts
    assert counts.rows == sum(int(OUTCOMES[name]) for name in names)
    assert counts.rows == counts.accepted + counts.rejected + counts.duplicates
    assert counts.accepted == 301  # the 300 mobiles of the corpus, plus 9876543999


# -- through the real command line ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("binary.bin", "looks like a binary file"),
        ("workbook.xlsx", "is an Excel workbook"),
        ("truncated.csv.gz", "read failed"),
    ],
)
def test_cli_refuses_unusable_input_with_exit_2_and_one_line(
    run_cli, fake_api, corpus, name, reason
):
    """ozbulk delete on an unusable file exits 2; the reason is on one line; no traceback."""
    server = fake_api()
    result = run_cli(*delete_args(server, corpus / name, rate=0))
    assert result.returncode == 2, result.output
    assert "Traceback" not in result.output
    assert any(name in line and reason in line for line in result.output.splitlines())


@pytest.mark.parametrize(
    "names",
    [
        ["excel-unicode.txt"],
        ["latin1-after-64k.csv", "gzip.csv.gz", "semicolon.csv"],
        ["only-bad-rows.csv", "empty.csv", "header-only.csv", "one-10mb-line.csv", "gzip.csv.gz"],
        ["quoted-multiline.csv", "spellings.csv", "duplicates.csv", "cr-only.csv"],
    ],
)
def test_cli_runs_messy_inputs_to_totals_that_add_up(run_cli, fake_api, corpus, tmp_path, names):
    """ozbulk delete over messy files exits 0; rows = accepted + rejected + duplicates."""
    server = fake_api()
    paths = [corpus / name for name in names]
    seeded = server.state.seed(GROUP, accepted_numbers(tuple(map(str, paths))))
    result = run_cli(*delete_args(server, *paths, rate=0, summary_json="s.json"))
    # Inputs without a single phone number end with exit 2 ("nothing to send"), not "complete".
    assert result.returncode == (0 if seeded else 2), result.output
    assert "Traceback" not in result.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["rows"] == sum(int(OUTCOMES[name]) for name in names)
    assert summary["rows"] == summary["accepted"] + summary["rejected"] + summary["duplicates"]
    assert summary["accepted"] == summary["deleted"] == seeded
    assert server.state.remaining(GROUP) == 0
    rejected_csv = Path(summary["report"]) / "rejected.csv"
    if not rejected_csv.is_absolute():
        rejected_csv = tmp_path / rejected_csv
    assert len(rejected_csv.read_text().splitlines()) == 1 + summary["rejected"]


def test_cli_input_without_a_single_number_is_exit_2_with_the_counts(
    run_cli, fake_api, corpus, tmp_path
):
    """Inputs that yield no number to send: exit 2, the counts and where the reasons are."""
    server = fake_api()
    names = ["only-bad-rows.csv", "empty.csv", "header-only.csv", "one-10mb-line.csv"]
    result = run_cli(*delete_args(server, *(corpus / name for name in names), rate=0))
    assert result.returncode == 2, result.output
    rows = sum(int(OUTCOMES[name]) for name in names)
    assert f"the input holds no phone number to send: {rows} rows read, {rows} rejected" in (
        result.output
    )
    assert "Traceback" not in result.output and "resume with" not in result.output
    assert server.stats()["requests"] == 0
    report = tmp_path / "ozbulk-tester-1.ckpt.report" / "rejected.csv"
    assert len(report.read_text().splitlines()) == 1 + rows
    empty = run_cli(*delete_args(server, corpus / "empty.csv", rate=0, dry_run=True))
    assert empty.returncode == 2, empty.output
    assert "the input holds no data rows" in empty.output


def test_cli_reads_standard_input_with_the_same_sniffing(run_cli, fake_api, tmp_path):
    """'-' reads a semicolon CSV with CRLF from stdin; its rows add up like a file's."""
    server = fake_api()
    text = "Name;Mobile\r\nA;98765 43210\r\nB;abc\r\nC;+91 98765 43210\r\n\r\nD;09876543211\r\n"
    result = run_cli(*delete_args(server, "-", rate=0, summary_json="s.json"), input=text)
    assert result.returncode == 0, result.output
    summary = json.loads((tmp_path / "s.json").read_text())
    counts = [summary[key] for key in ("rows", "accepted", "rejected", "duplicates")]
    assert counts == [4, 2, 1, 1]
