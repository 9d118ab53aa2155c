"""`ozbulk status` and `ozbulk report`, from a checkpoint alone: what they show and write."""

from __future__ import annotations

import ast
import csv
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.checkpoint import DONE, FAILED, SCHEMA_VERSION, Checkpoint, ChunkRecord, fingerprint
from engine.collector import RESENT_AFTER_INTERRUPTION
from engine.errors import CheckpointError, ExitCode
from engine.files import spreadsheet_safe
from engine.pipeline import StopControl, exit_code_for
from engine.records import InputCounts, Reject, Totals
from engine.report import REPORT_FILES, write_report
from engine.status import describe, render, resume_command, show_status, write_report_for
from engine.summary import PassFigures, Summary, result_line
from engine.telemetry_report import summarize_checkpoint
from tests._helpers import IDENTITY

SETTINGS: dict[str, Any] = {
    "host": "api.example:443", "base_url": "https://api.example", "path": "/ca_apis/x",
    "auth": "token", "rate": 5.0, "concurrency": 4, "inputs": ["numbers.csv"],
    "group_id": 1, "user": "tester", "checkpoint": "c.ckpt",
}  # fmt: skip
INPUT = {"rows": 520, "accepted": 500, "rejected": 12, "duplicates": 8, "chunks": 5}


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A checkpoint of a 5-chunk run: 2 done (one with API errors, one in doubt), 1 failed."""
    path = tmp_path / "c.ckpt"
    checkpoint = Checkpoint.for_run(path, IDENTITY, SETTINGS)
    checkpoint.record(
        [
            ChunkRecord(0, DONE, 100, 98, 2, 90, 1, False, "",
                        [("919800000001", 0, 3), ("+919800000002", 0, 4)]),
            ChunkRecord(1, DONE, 100, 100, 0, 40, 1, True, RESENT_AFTER_INTERRUPTION, []),
            ChunkRecord(2, FAILED, 100, 0, 0, 0, 8, False, "HTTP 503 Service Unavailable",
                        [(f"9198000002{n:02d}", 0, 200 + n) for n in range(100)]),
        ],
        [Reject(0, 7, "12ab", "letters"), Reject(0, 9, "9.19E+11", "scientific notation")],
        {"requests": 17, "retries": 9, "passes": 2},
        input_counts={**INPUT, "finished": False},
    )  # fmt: skip
    checkpoint.close()
    return path


def read(path: Path) -> Checkpoint:
    return Checkpoint.read(path)


# -- the summary ---------------------------------------------------------------------------------


def test_the_summary_from_a_checkpoint_counts_every_bucket(path: Path) -> None:
    """Totals come from the chunk rows; not_found = sent - deleted - error; counters carried."""
    checkpoint = read(path)
    summary = Summary.of_checkpoint(checkpoint).to_json()
    checkpoint.close()
    assert (summary["chunks_done"], summary["chunks_failed"]) == (2, 1)
    assert (summary["sent"], summary["deleted"], summary["error"]) == (200, 130, 2)
    assert summary["not_found"] == 68
    assert summary["failed_numbers"] == 100
    assert summary["in_doubt_chunks"] == 1
    assert (summary["requests"], summary["retries"], summary["passes"]) == (17, 9, 2)
    assert summary["rows"] == 520 and summary["input_read_completely"] is False
    assert summary["chunks_total"] is None and summary["chunks_remaining"] is None
    assert summary["complete"] is False
    assert summary["fingerprint"] == fingerprint(IDENTITY)


def test_once_the_input_was_read_to_its_end_the_chunks_remaining_are_known(path: Path) -> None:
    """A finished reading gives chunks_total and what remains (failed ones included)."""
    checkpoint = Checkpoint.for_run(path, IDENTITY, SETTINGS)
    checkpoint.record([], [], {}, input_counts={**INPUT, "finished": True})
    summary = Summary.of_checkpoint(checkpoint).to_json()
    assert (summary["chunks_total"], summary["chunks_remaining"]) == (5, 3)
    checkpoint.record(
        [ChunkRecord(n, DONE, 100, 100, 0, 100, 1, False, "", []) for n in (2, 3, 4)], [], {}
    )
    summary = Summary.of_checkpoint(checkpoint).to_json()
    checkpoint.close()
    assert (summary["chunks_remaining"], summary["complete"]) == (0, True)


def _live(counts: InputCounts, totals: Totals, checkpoint: Checkpoint | None = None) -> Summary:
    """A live run's summary of these counts and totals, with the fixture's counters."""
    counters = {"requests": 17, "retries": 9, "rate_limited": 0, "token_refreshes": 0,
                "passes": 2, "server_limit": None}  # fmt: skip
    return Summary.of_run(
        counts, totals, counters,
        this_pass=PassFigures(chunks_skipped=0, unrecorded_chunks=0, paused_by_server_s=0.0,
                              elapsed_s=1.5),
        checkpoint="c.ckpt" if checkpoint is None else str(checkpoint.path),
        fingerprint=fingerprint(IDENTITY),
        telemetry={} if checkpoint is None else summarize_checkpoint(checkpoint),
    )  # fmt: skip


def test_a_live_summary_and_one_from_the_checkpoint_agree_on_every_figure_they_share(
    path: Path,
) -> None:
    """The same run, summed by its collector or read back from its checkpoint: one JSON."""
    checkpoint = read(path)
    stored = Summary.of_checkpoint(checkpoint)
    live = _live(InputCounts(**INPUT), stored.totals, checkpoint)
    checkpoint.close()
    a, b = live.to_json(), stored.to_json()
    assert {key: a[key] for key in a.keys() & b.keys()} == {
        key: b[key] for key in a.keys() & b.keys()
    }
    assert a.keys() - b.keys() == {"chunks_skipped", "unrecorded_chunks", "paused_by_server_s",
                                   "elapsed_s"}  # fmt: skip
    assert b.keys() - a.keys() == {"input_read_completely", "chunks_remaining"}


def test_a_run_whose_every_chunk_is_done_is_complete_however_its_pass_ended() -> None:
    """complete: the input read to its end and every chunk done, as `ozbulk status` says of the
    same checkpoint; a stop or an error after the last chunk changes the exit code only."""
    counts = InputCounts(rows=200, accepted=200, chunks=2, finished=True)
    totals = Totals(chunks_done=2, sent=200, success=200, deleted=150)
    stopped = StopControl(requests=1, reason="SIGINT")
    summary = _live(counts, totals)
    assert exit_code_for(summary, None, stopped) == ExitCode.INTERRUPTED
    ended = summary.ended(ExitCode.INTERRUPTED, "SIGINT")
    assert ended.complete and ended.to_json()["complete"] is True
    assert (ended.to_json()["exit_code"], ended.to_json()["stopped_by"]) == (130, "SIGINT")
    assert result_line(ended) == "exit 130: interrupted: re-run the same command to resume"
    assert exit_code_for(summary, None, StopControl()) == ExitCode.OK
    unread = _live(InputCounts(rows=200, accepted=200, chunks=2), totals)
    assert not unread.complete and unread.to_json()["chunks_total"] is None
    failed = _live(counts, Totals(chunks_done=1, chunks_failed=1, sent=100, failed_numbers=100))
    assert not failed.complete and exit_code_for(failed, None, None) == ExitCode.FAILED_CHUNKS


def test_an_input_without_a_number_is_never_complete(path: Path) -> None:
    """Read to its end with no chunk at all: refused ("nothing to send"), not done; the run's
    summary and `ozbulk status` both say so."""
    empty = InputCounts(rows=3, rejected=3, finished=True)
    assert _live(empty, Totals()).to_json()["complete"] is False
    checkpoint = Checkpoint.for_run(path.with_name("empty.ckpt"), IDENTITY, SETTINGS)
    read = {"rows": 3, "accepted": 0, "rejected": 3, "duplicates": 0, "chunks": 0}
    checkpoint.record([], [], {}, input_counts={**read, "finished": True})
    info = describe(checkpoint)
    assert Summary.of_checkpoint(checkpoint).to_json()["complete"] is False
    checkpoint.close()
    assert info["state"] == "incomplete" and info["chunks"]["remaining"] == 0


# -- status --------------------------------------------------------------------------------------


def test_status_describes_the_run_its_progress_and_how_to_resume(path: Path) -> None:
    """Inputs, group, user, host, settings, fingerprint, chunks, totals, last write, command."""
    checkpoint = read(path)
    info = describe(checkpoint)
    checkpoint.close()
    assert info["inputs"] == IDENTITY["inputs"]
    assert (info["group_id"], info["user"], info["host"]) == (1, "tester", "api.example:443")
    assert info["settings"]["concurrency"] == 4
    assert info["fingerprint"] == fingerprint(IDENTITY)
    assert info["chunks"] == {"total": None, "done": 2, "failed": 1, "remaining": None,
                              "in_doubt": 1}  # fmt: skip
    assert info["totals"]["not_found"] == 68 and info["totals"]["rejected"] == 12
    assert info["state"] == "incomplete, with failed chunks"
    assert info["last_write"] and info["updated_ago_s"] < 60
    assert info["schema_version"] == SCHEMA_VERSION
    text = render(info)
    for expected in ("/data/numbers.csv", "group 1 of user tester at api.example:443",
                     "2 done, 1 failed", "remaining unknown", "1 in doubt", "68 not in the group",
                     "100 in failed chunks", "resume with  ozbulk delete"):  # fmt: skip
        assert expected in text, expected


def test_status_json_is_machine_readable(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one JSON object with the same figures."""
    assert show_status(path, as_json=True) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["chunks"]["done"] == 2
    assert info["resume_command"].startswith("ozbulk delete /data/numbers.csv")


def test_the_resume_command_carries_every_flag_that_decides_the_chunks(tmp_path: Path) -> None:
    """Column, country, format, batch size, auth, path, rate, concurrency, absolute checkpoint."""
    identity = {**IDENTITY, "column": "Mobile", "country": "AE", "number_format": "e164",
                "batch_size": 50}  # fmt: skip
    command = resume_command(identity, SETTINGS, tmp_path / "c.ckpt")
    words = shlex.split(command)
    assert words[:3] == ["ozbulk", "delete", "/data/numbers.csv"]
    pairs = dict(zip(words[3::2], words[4::2], strict=True))
    assert pairs == {
        "--group-id": "1", "--user": "tester", "--auth": "token",
        "--base-url": "https://api.example", "--path": "/ca_apis/x", "--column": "Mobile",
        "--country": "AE", "--number-format": "e164", "--batch-size": "50", "--rate": "5",
        "--concurrency": "4", "--checkpoint": str(tmp_path / "c.ckpt"),
    }  # fmt: skip
    plain = {**SETTINGS, "auth": "apikey", "rate": None, "path": "/ca_apis/deleteBlockNumberGroup"}
    defaults = shlex.split(resume_command(IDENTITY, plain))
    for absent in ("--auth", "--path", "--column", "--country", "--number-format", "--batch-size"):
        assert absent not in defaults
    assert defaults[defaults.index("--rate") + 1] == "0"


def test_a_run_from_standard_input_has_no_resume_command() -> None:
    """Standard input cannot be read twice: status says so instead of a command that fails."""
    identity = {**IDENTITY, "inputs": [{"path": "-", "run": "x"}]}
    assert resume_command(identity, SETTINGS).startswith("(none: this run read standard input")


# -- report ----------------------------------------------------------------------------------------


def test_the_report_names_every_number_without_a_verdict_of_its_own(path: Path) -> None:
    """errors.csv: API errors and failed chunks' numbers with file and line; and the others."""
    out = path.parent / "report"
    checkpoint = read(path)
    write_report(checkpoint, {"any": "summary"}, out)
    checkpoint.close()
    assert sorted(entry.name for entry in out.iterdir()) == sorted(REPORT_FILES)
    assert json.loads((out / "summary.json").read_text()) == {"any": "summary"}
    errors = read_csv(out / "errors.csv")
    assert errors[0] == ["number", "file", "line", "reason", "chunk"]
    assert errors[1:3] == [
        ["919800000001", "/data/numbers.csv", "3", "listed in error by the API", "0"],
        ["+919800000002", "/data/numbers.csv", "4", "listed in error by the API", "0"],
    ]
    assert len(errors) == 1 + 2 + 100
    assert errors[3] == ["919800000200", "/data/numbers.csv", "200",
                         "chunk failed: HTTP 503 Service Unavailable", "2"]  # fmt: skip
    assert read_csv(out / "rejected.csv") == [
        ["file", "line", "raw", "reason"],
        ["/data/numbers.csv", "7", "12ab", "letters"],
        ["/data/numbers.csv", "9", "9.19E+11", "scientific notation"],
    ]
    assert read_csv(out / "failed_chunks.csv") == [
        ["chunk", "numbers", "attempts", "first_file", "first_line", "reason"],
        ["2", "100", "8", "/data/numbers.csv", "200", "HTTP 503 Service Unavailable"],
    ]
    assert read_csv(out / "in_doubt.csv") == [
        ["chunk", "state", "sent", "deleted", "not_found", "error", "reason"],
        ["1", "done", "100", "40", "60", "0", RESENT_AFTER_INTERRUPTION],
    ]


def test_rewriting_a_report_replaces_it_whole_and_leaves_no_temporary_file(path: Path) -> None:
    """The report command over an earlier report: same names, new content, nothing half-done."""
    out = path.parent / "report"
    out.mkdir()
    (out / "errors.csv").write_text("stale\n")
    assert write_report_for(path, out) == 0
    assert read_csv(out / "errors.csv")[0] == ["number", "file", "line", "reason", "chunk"]
    assert sorted(entry.name for entry in out.iterdir()) == sorted(REPORT_FILES)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chunks_done"] == 2 and summary["not_found"] == 68


def test_status_and_report_refuse_a_missing_checkpoint(tmp_path: Path) -> None:
    """No file: a CheckpointError (exit 2) naming the path, not a traceback."""
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        show_status(tmp_path / "nothing.ckpt", as_json=False)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        write_report_for(tmp_path / "nothing.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_writes_the_numbers_not_found(run_cli, fake_api, sample_csv, tmp_path: Path) -> None:
    """not_found.csv: every number of a chunk that deleted none, marked exact; for a chunk that
    deleted some, its candidates with how many of them were not found."""
    from engine.batcher import accepted_numbers
    from tests._helpers import GROUP, delete_args

    source = sample_csv(450)
    numbers = list(accepted_numbers((str(source),)))
    server = fake_api()
    # chunk 0: all in the group; chunk 1: 60 of 100; chunks 2 and later: none
    server.state.seed(GROUP, numbers[:100] + numbers[100:160])
    result = run_cli(*delete_args(server, source, checkpoint="c.ckpt"))
    assert result.returncode == 0, result.output
    report = run_cli("report", "c.ckpt", "--out", "rep")
    assert report.returncode == 0, report.output
    with (tmp_path / "rep" / "not_found.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    by_chunk: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_chunk.setdefault(row["chunk"], []).append(row)
    assert "0" not in by_chunk
    partial = by_chunk["1"]
    assert len(partial) == 100 and {row["chunk_not_found"] for row in partial} == {"40"}
    assert {row["exact"] for row in partial} == {"False"}
    exact = [row for chunk, rows_ in by_chunk.items() if chunk not in ("0", "1") for row in rows_]
    assert {row["exact"] for row in exact} == {"True"}
    assert {row["number"] for row in exact} == {n.lstrip("+") for n in numbers[200:]}
    assert all(row["file"] == str(source) and int(row["line"]) > 1 for row in rows)


# -- a spreadsheet reads the CSV files -----------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("+91 98765 43210", "'+91 98765 43210"),
        ("-1+2", "'-1+2"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("+919876543210", "+919876543210"),
        ("-5", "-5"),
        ("919876543210", "919876543210"),
        ("9.19E+11", "9.19E+11"),
        ("a=1", "a=1"),
        (42, 42),
        ("", ""),
    ],
)
def test_formula_cells_are_quoted_and_plain_numbers_left_readable(cell: Any, written: Any) -> None:
    """Text a spreadsheet would run gets a leading apostrophe; a signed plain number does not."""
    assert spreadsheet_safe(cell) == written


def test_every_report_csv_quotes_formula_cells_from_any_source(tmp_path: Path) -> None:
    """Input file names, raw cells, server reasons and numbers: all pass the same guard."""
    path = tmp_path / "c.ckpt"
    identity = {**IDENTITY, "inputs": [{"path": "=cmd|' /C calc'!A0.csv"}]}
    checkpoint = Checkpoint.for_run(path, identity, SETTINGS)
    evil = '=HYPERLINK("http://evil.example")'
    checkpoint.record(
        [
            ChunkRecord(0, DONE, 100, 99, 1, 99, 1, True, "@resent", [(evil, 0, 3)]),
            ChunkRecord(1, FAILED, 100, 0, 0, 0, 8, False, f"HTTP 500 {evil}",
                        [("+919800000001", 0, 5)]),
        ],
        [Reject(0, 7, evil, "letters")],
        {},
    )  # fmt: skip
    write_report(checkpoint, Summary.of_checkpoint(checkpoint).to_json(), tmp_path / "out")
    checkpoint.close()
    cells = [
        cell
        for name in REPORT_FILES
        if name.endswith(".csv")
        for row in read_csv(tmp_path / "out" / name)
        for cell in row
    ]
    assert not [cell for cell in cells if cell.startswith(("=", "@"))], cells
    assert "'=cmd|' /C calc'!A0.csv" in cells and f"'{evil}" in cells and "'@resent" in cells
    assert "+919800000001" in cells  # a phone number stays as the input had it


def _imported_by(module: str) -> set[str]:
    """Every engine module a module's source imports, at its top or inside a function."""
    source = Path(engine.__file__).parent / f"{module}.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {name for name in names if name.startswith("engine")}


def test_the_summary_imports_no_stage_and_the_demo_no_command_line() -> None:
    """engine.summary reads plain records (no pipeline, client or workers), and the demo prints
    through it, so engine.demo and engine.cli no longer import each other."""
    assert not _imported_by("summary") & {"engine.pipeline", "engine.client", "engine.workers"}
    assert "engine.summary" in _imported_by("demo")
    assert "engine.cli" not in _imported_by("demo")


def _terminal(columns: int) -> tuple[Any, int]:
    """A pseudo-terminal ``columns`` wide: its writable end as a file, and the reading end."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    return os.fdopen(follower, "w"), leader


def _read_all(leader: int) -> str:
    """Everything written to the terminal so far (a pty hands it over in pieces)."""
    import os
    import select

    data = b""
    while select.select([leader], [], [], 0.2)[0]:
        data += os.read(leader, 1 << 16)
    return data.decode()


def test_the_summary_fits_an_80_column_terminal_and_stays_whole_when_piped() -> None:
    """Lines longer than the terminal wrap under their value, never inside a word or a path;
    the resume command is never wrapped; output that is not a terminal is left as it is."""
    import io
    import os

    from engine.summary import fit_to_terminal, print_summary

    path = "/srv/exports/2026-12/cleanup-run.ckpt.report/"
    text = "\n".join([
        "ozbulk summary",
        "  latency admitted  n=1,234,567 p50 1.181 ms, p90 1.671, p95 4.334, p99 8.063, max 8.063",
        f"  report       {path} (summary.json, errors.csv, rejected.csv, failed_chunks.csv)",
        "  short        line",
    ])  # fmt: skip
    terminal, leader = _terminal(80)
    try:
        fitted = fit_to_terminal(text, terminal).splitlines()
        assert max(map(len, fitted)) <= 80 < max(map(len, text.splitlines()))
        assert fitted[0] == "ozbulk summary" and fitted[-1] == "  short        line"
        assert fitted[2].startswith(" " * 20) and not fitted[2].startswith(" " * 21)  # value col
        assert path in "\n".join(fitted)  # a path is never broken
        assert " ".join(" ".join(fitted).split()) == " ".join(text.split())  # no word lost
        resume = "resume with: ozbulk delete " + " ".join(["numbers.csv"] * 10)
        summary = Summary.of_run(
            InputCounts(rows=1, accepted=1, chunks=1, finished=True), Totals(),
            {"requests": 0, "retries": 0, "rate_limited": 0, "token_refreshes": 0, "passes": 1,
             "server_limit": None},
            this_pass=PassFigures(0, 0, 0.0, 0.0), checkpoint="c", fingerprint="f", telemetry={},
        )  # fmt: skip
        print_summary(summary, resume=resume, out=terminal)
        terminal.flush()
        shown = _read_all(leader).replace("\r\n", "\n").splitlines()
        assert resume in shown and max(map(len, shown[:-2])) <= 80
    finally:
        terminal.close()
        os.close(leader)
    piped = io.StringIO()
    assert fit_to_terminal(text, piped) == text
