"""Interruptions, end to end: kill -9 loops, Ctrl-C and SIGTERM, in-doubt chunks, status and
report, --retry-failed, --restart, checkpoints ozbulk must refuse, and a disk that fails.

Every test runs the real `ozbulk` command against the fake API over loopback and asserts DESIGN.md
invariants 1 and 3 on the outcome: every row in exactly one bucket, and the totals of an
interrupted job equal to those of an uninterrupted run, with no finished chunk sent again.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.batcher import Producer, accepted_numbers
from engine.checkpoint import Checkpoint
from engine.errors import CheckpointError
from engine.numbers import Normalizer
from engine.settings import InputSettings
from tests._helpers import (
    GROUP,
    Recorded,
    assert_buckets_add_up,
    assert_every_chunk_once_and_done,
    assert_same_totals,
    cli_env,
    delete_args,
    done_ids,
    garbage,
    newer_schema,
    ozbulk_command,
    read_summary,
    run_in_background,
    spawn,
    text_file,
    torn_pages,
    uninterrupted_totals,
    wait_until,
)

COMMIT_INTERVAL_S = 0.2  # RunSettings.commit_interval: how long a finished chunk may go unrecorded


def chunk_sizes(source: Path) -> list[int]:
    producer = Producer(InputSettings(paths=(str(source),)), Normalizer(), lambda _: None)
    return [len(chunk.numbers) for chunk in producer.chunks()]


def committed_count(checkpoint: Path) -> int:
    """Chunks done in a checkpoint a run is writing (0 while it is being created)."""
    with contextlib.suppress(CheckpointError):
        return len(done_ids(checkpoint))
    return 0


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def status_json(run_cli: Any, checkpoint: str) -> dict[str, Any]:
    result = run_cli("status", checkpoint, "--json")
    assert result.returncode == 0, result.output
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def resume_elsewhere(
    run_cli: Any,
    recording_api: Any,
    source: Path,
    stopped: Recorded,
    args: list[str],
    summary: Path,
) -> tuple[Recorded, dict[str, Any]]:
    """Re-run ``args`` against a new fake API that holds what ``stopped`` still holds (the API
    host is no part of a run's identity); it must finish: the new API and the run's summary."""
    fresh = recording_api(source, numbers=stopped.state.numbers(GROUP))
    resume = [fresh.server.url if word == stopped.server.url else word for word in args]
    resumed = run_cli(*resume)
    assert resumed.returncode == 0, resumed.output
    return fresh, read_summary(summary)


# -- the randomized kill loop ------------------------------------------------------------------

KILL_ROWS = 51_000  # some 50,300 numbers once bad rows and duplicates are out
KILL_CONCURRENCY = 16
KILL_LATENCY_MS = 200
KILLS = 15
KILL_STATE_ROWS = 2_000


@pytest.mark.slow
def test_randomized_kill_loop_finishes_with_exact_totals(
    run_cli, fake_api, recording_api, sample_csv, tmp_path
):
    """≥10 kill -9 at random moments of a 50,000-number run: exact totals, each chunk once."""
    seed = int(os.environ.get("OZBULK_KILL_SEED", time.time_ns() % 1_000_000))
    print(f"kill loop seed {seed} (set OZBULK_KILL_SEED to replay)")
    rng = random.Random(seed)
    source = sample_csv(KILL_ROWS)
    baseline = uninterrupted_totals(run_cli, fake_api, source)
    assert baseline["accepted"] >= 50_000
    total_chunks = baseline["chunks_total"]
    api = recording_api(source, latency_ms=KILL_LATENCY_MS)
    # States every few thousand rows: most resumes start from one, not from the first row.
    args = delete_args(api.server, source, rate=0, concurrency=KILL_CONCURRENCY,
                       checkpoint="c.ckpt", summary_json="s.json",
                       producer_state_rows=KILL_STATE_ROWS)  # fmt: skip
    checkpoint = tmp_path / "c.ckpt"
    chunks_per_s = KILL_CONCURRENCY / (KILL_LATENCY_MS / 1000)
    # What a kill may cost: the requests in flight, plus the answers of one commit interval.
    window_chunks = math.ceil(chunks_per_s * COMMIT_INTERVAL_S) + 1
    bound_per_kill = KILL_CONCURRENCY + window_chunks

    started = time.monotonic()
    done_at_start: list[set[int]] = []
    lost_per_kill: list[int] = []
    kills = resumed_from_state = 0
    while True:
        run = len(done_at_start)
        api.state.run = run
        done_at_start.append(done_ids(checkpoint))
        victim = spawn(tmp_path, args, name=f"run{run}")
        if kills < KILLS:
            if rng.random() < 0.25:
                time.sleep(rng.uniform(0.0, 1.0))  # anywhere: start-up, checkpoint creation...
            else:
                wait_until(
                    lambda: api.state.chunks_of_run(run) or victim.process.poll() is not None,  # noqa: B023
                    what="the first answer of this run",
                )
                # Random, but never so late that the job could finish before the tenth kill.
                left = total_chunks - len(done_ids(checkpoint))
                budget = left / (KILLS - kills + 1) / chunks_per_s
                time.sleep(rng.uniform(0.0, min(0.4, budget)))
            if victim.process.poll() is None:
                victim.signal(signal.SIGKILL)
                kills += 1
        code = victim.wait()
        resumed_from_state += "resuming after line" in victim.output
        if code == 0:
            break
        assert code == -signal.SIGKILL, victim.output
        done_after = done_ids(checkpoint)
        assert done_at_start[run] <= done_after  # nothing committed is ever lost
        lost = set(api.state.chunks_of_run(run)) - done_after  # applied, unrecorded: resent later
        lost_per_kill.append(len(lost))
        assert len(lost) <= bound_per_kill, (run, sorted(lost))
    elapsed = time.monotonic() - started

    assert kills >= KILLS, f"the job finished after {kills} kills"
    assert resumed_from_state >= 2  # the exact totals below hold for resumes from states too
    summary = read_summary(tmp_path / "s.json")
    assert_same_totals(summary, baseline)
    assert api.state.remaining(GROUP) == 0
    rows = assert_every_chunk_once_and_done(checkpoint, total_chunks)
    # No chunk finished before a run started was sent by that run (DESIGN.md invariant 3).
    for run, finished in enumerate(done_at_start):
        assert not finished & set(api.state.chunks_of_run(run)), run
    # A chunk the server received in two runs was resent after a kill: it must be in doubt.
    runs_of: dict[int, set[int]] = {}
    for run, chunk in api.state.applied:
        runs_of.setdefault(chunk, set()).add(run)
    resent = {chunk for chunk, runs in runs_of.items() if len(runs) > 1}
    in_doubt = {row["id"] for row in rows if row["in_doubt"]}
    assert resent <= in_doubt
    assert summary["in_doubt_chunks"] == len(in_doubt)
    report = read_csv(tmp_path / "c.ckpt.report" / "in_doubt.csv")
    assert {int(row["chunk"]) for row in report} == in_doubt
    duplicates = api.server.stats()["duplicate_batches"]
    assert duplicates == len(resent)
    assert duplicates <= bound_per_kill * kills
    print(
        f"kill loop: {kills} kills in {len(done_at_start)} runs, {elapsed:.1f} s; chunks resent "
        f"{duplicates} ({duplicates / kills:.1f} per kill, bound {bound_per_kill}); lost per "
        f"kill {lost_per_kill}; in doubt {len(in_doubt)}; {resumed_from_state} runs resumed "
        "from a producer state"
    )


# -- Ctrl-C and SIGTERM ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_one_signal_drains_commits_and_says_how_to_resume(
    run_cli, fake_api, recording_api, sample_csv, tmp_path, signal_number
):
    """One signal: no new chunk, in-flight ones finish and are committed, exit 130, resumable."""
    source = sample_csv(10_000)
    baseline = uninterrupted_totals(run_cli, fake_api, source)
    slow = recording_api(source, latency_ms=300)
    run, args = run_in_background(tmp_path, slow, source, concurrency=8)
    signalled = run.signal_when(
        signal_number, lambda: slow.state.applied_count() >= 16, "two waves answered"
    )
    assert run.wait(timeout=30) == 130, run.output
    drained_in = time.monotonic() - signalled
    output = run.output
    assert f"{signal_number.name}: finishing the requests in flight" in output
    assert "interrupted" in output
    assert "resume with: ozbulk delete" in output and "--checkpoint c.ckpt" in output
    # Stops taking new chunks: nothing reaches the server once the signal has been handled.
    assert slow.state.arrivals_after(signalled + 0.5) == 0
    assert drained_in < 0.3 + 2.0  # one request's latency, plus exiting
    # Every request in flight finished and was committed: the server applied nothing unrecorded.
    applied = set(slow.state.chunks_of_run(0))
    assert done_ids(tmp_path / "c.ckpt") == applied
    stopped = read_summary(tmp_path / "s.json")
    assert stopped["exit_code"] == 130 and stopped["complete"] is False
    assert stopped["chunks_done"] == len(applied)

    # Resume elsewhere (the API host is no part of a run's identity): nothing is sent twice.
    fast, summary = resume_elsewhere(
        run_cli, recording_api, source, slow, args, tmp_path / "s.json"
    )
    assert_same_totals(summary, baseline)
    assert summary["deleted"] == baseline["deleted"]  # a drained stop applied nothing unrecorded
    # In doubt: none. Every chunk sent before the signal was answered and recorded, and the
    # workers report each send, so chunks that only waited in the buffer are not suspected.
    assert summary["in_doubt_chunks"] == 0
    assert not applied & set(fast.state.chunks_of_run(0))
    assert fast.server.stats()["duplicate_batches"] == 0
    assert fast.state.remaining(GROUP) == 0
    assert_every_chunk_once_and_done(tmp_path / "c.ckpt", baseline["chunks_total"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_a_second_signal_cancels_in_flight_requests_and_the_checkpoint_holds(
    run_cli, fake_api, recording_api, sample_csv, tmp_path, signal_number
):
    """Two signals: exit 130 at once, without waiting for answers; the resume is exact."""
    source = sample_csv(10_000)
    baseline = uninterrupted_totals(run_cli, fake_api, source)
    slow = recording_api(source, latency_ms=2000)
    run, args = run_in_background(tmp_path, slow, source, concurrency=8)
    wait_until(lambda: slow.state.applied_count() >= 8, what="the first wave answered")
    answers_due = time.monotonic() + 2.0  # the second wave left as the first was answered
    time.sleep(0.2)
    run.signal(signal_number)
    time.sleep(0.1)
    run.signal(signal_number)
    assert run.wait(timeout=30) == 130, run.output
    assert time.monotonic() < answers_due  # it did not wait for the answers in flight
    assert "cancelling the requests in flight" in run.output
    committed = done_ids(tmp_path / "c.ckpt")  # opens: consistent
    assert committed <= set(slow.state.chunks_of_run(0))
    assert len(committed) >= 8
    time.sleep(max(0.0, answers_due - time.monotonic()))  # the server is done with them too

    fast, summary = resume_elsewhere(
        run_cli, recording_api, source, slow, args, tmp_path / "s.json"
    )
    assert_same_totals(summary, baseline)
    assert not committed & set(fast.state.chunks_of_run(0))
    # The second wave reached the server and was cancelled unanswered: the server may have
    # applied it, so those chunks were resent in doubt (with whatever the horizon covered).
    in_flight = slow.server.stats()["delete_requests"] - slow.state.applied_count()
    assert in_flight >= 1
    rows = assert_every_chunk_once_and_done(tmp_path / "c.ckpt", baseline["chunks_total"])
    in_doubt = {row["id"] for row in rows if row["in_doubt"]}
    assert len(in_doubt) == summary["in_doubt_chunks"] >= in_flight
    assert set(slow.state.chunks_of_run(0)) - committed <= in_doubt
    assert fast.state.remaining(GROUP) == 0


# -- in-doubt chunks ---------------------------------------------------------------------------


def test_chunks_the_dead_run_applied_come_back_in_doubt_and_not_found(
    run_cli, fake_api, recording_api, sample_csv, tmp_path
):
    """Applied by the server, unheard by a killed client: resent in doubt, not found, listed."""
    source = sample_csv(10_000)
    sizes = chunk_sizes(source)
    baseline = uninterrupted_totals(run_cli, fake_api, source)
    api = recording_api(source, latency_ms=100)
    victim, args = run_in_background(tmp_path, api, source, concurrency=16)
    api.state.kill_after, api.state.kill_pid = 40, victim.process.pid  # killed before answering
    assert victim.wait() == -signal.SIGKILL
    time.sleep(0.3)  # the rest of that wave lands on the server too
    horizon = status_json(run_cli, "c.ckpt")["horizon"]
    unrecorded = set(api.state.chunks_of_run(0)) - done_ids(tmp_path / "c.ckpt")
    assert unrecorded and max(unrecorded) < horizon

    api.state.run = 1
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.output
    summary = read_summary(tmp_path / "s.json")
    assert_same_totals(summary, baseline)
    lost_numbers = sum(sizes[chunk] for chunk in unrecorded)
    assert summary["not_found"] == lost_numbers
    assert summary["deleted"] == baseline["deleted"] - lost_numbers
    assert (summary["chunks_failed"], summary["failed_numbers"]) == (0, 0)
    report = {
        int(row["chunk"]): row for row in read_csv(tmp_path / "c.ckpt.report" / "in_doubt.csv")
    }
    assert unrecorded <= set(report)
    assert all(chunk < horizon for chunk in report)
    for chunk, row in report.items():
        expected = sizes[chunk] if chunk in unrecorded else 0
        assert (row["state"], int(row["not_found"])) == ("done", expected), row
        assert "interruption" in row["reason"]
    assert summary["in_doubt_chunks"] == len(report)
    assert read_csv(tmp_path / "c.ckpt.report" / "failed_chunks.csv") == []


# -- status and report -------------------------------------------------------------------------


def test_status_and_report_tell_where_a_run_stands_and_its_resume_command_works(
    run_cli, fake_api, recording_api, sample_csv, tmp_path
):
    """status (text, --json) after a kill; its resume command finishes; report == run's report."""
    source = sample_csv(10_000)
    baseline = uninterrupted_totals(run_cli, fake_api, source)
    api = recording_api(source, latency_ms=50)
    victim, _ = run_in_background(tmp_path, api, source, concurrency=8)
    victim.signal_when(signal.SIGKILL, lambda: api.state.applied_count() >= 30, "30 chunks applied")
    victim.wait()
    committed = done_ids(tmp_path / "c.ckpt")

    text = run_cli("status", "c.ckpt")
    assert text.returncode == 0, text.output
    host = api.server.url.split("//")[1]
    for expected in (str(source), f"group {GROUP} of user tester", host, "fingerprint",
                     f"{len(committed):,} done", "last write", "resume with  "):  # fmt: skip
        assert expected in text.stdout, (expected, text.stdout)
    info = status_json(run_cli, "c.ckpt")
    assert info["chunks"]["done"] == len(committed)
    assert info["chunks"]["failed"] == 0
    assert info["state"] == "incomplete"
    assert info["inputs"][0]["path"] == str(source)
    assert (info["group_id"], info["user"]) == (GROUP, "tester")
    assert info["settings"]["concurrency"] == 8
    assert info["totals"]["sent"] == 100 * len(committed)
    assert time.time() - info["updated_at"] < 60
    assert len(info["fingerprint"]) == 24

    # The command status prints resumes the run, from any folder.
    words = shlex.split(info["resume_command"])
    assert words[:2] == ["ozbulk", "delete"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = ozbulk_command(*words[1:], "--yes", "--summary-json", str(tmp_path / "s.json"))
    resumed = subprocess.run(command, cwd=elsewhere, env=cli_env(), capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = read_summary(tmp_path / "s.json")
    assert_same_totals(summary, baseline)

    done = status_json(run_cli, "c.ckpt")
    assert done["state"] == "complete"
    assert done["chunks"] == {
        "total": baseline["chunks_total"], "done": baseline["chunks_total"], "failed": 0,
        "remaining": 0, "in_doubt": summary["in_doubt_chunks"],
    }  # fmt: skip
    for key in ("rows", "accepted", "rejected", "duplicates", "sent", "deleted", "not_found",
                "error", "failed_numbers"):  # fmt: skip
        assert done["totals"][key] == summary[key], key

    reported = run_cli("report", "c.ckpt", "--out", "again")
    assert reported.returncode == 0, reported.output
    for name in ("errors.csv", "rejected.csv", "failed_chunks.csv", "in_doubt.csv"):
        # The run wrote its report beside the checkpoint; `ozbulk report` rebuilds the same.
        ran = (tmp_path / "c.ckpt.report" / name).read_bytes()
        assert (tmp_path / "again" / name).read_bytes() == ran, name
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    for key in ("rows", "accepted", "rejected", "duplicates", "chunks_total", "chunks_done",
                "chunks_failed", "sent", "deleted", "not_found", "error", "failed_numbers",
                "in_doubt_chunks", "complete"):  # fmt: skip
        assert again[key] == summary[key], key
    rejected = read_csv(tmp_path / "again" / "rejected.csv")
    assert len(rejected) == summary["rejected"]
    assert all(row["file"] == str(source) and int(row["line"]) > 1 and row["reason"]
               for row in rejected)  # fmt: skip
    assert read_csv(tmp_path / "again" / "errors.csv") == []  # no API error, no failed chunk


# -- --retry-failed and --restart --------------------------------------------------------------


def test_retry_failed_resends_only_the_chunks_that_failed(
    run_cli, fake_api, recording_api, sample_csv, tmp_path
):
    """503s with --max-attempts 1 fail some chunks (exit 1); --retry-failed sends only those."""
    source = sample_csv(10_000)
    baseline = uninterrupted_totals(run_cli, fake_api, source)
    flaky = recording_api(source, fault_rate=0.3, fault_kinds=("http_503",), fault_seed=4)
    args = delete_args(flaky.server, source, rate=0, concurrency=8, checkpoint="c.ckpt",
                       summary_json="s.json", max_attempts=1)  # fmt: skip
    first = run_cli(*args)
    assert first.returncode == 1, first.output
    partial = read_summary(tmp_path / "s.json")
    assert partial["chunks_failed"] > 0 and partial["chunks_done"] > 0
    assert partial["chunks_failed"] + partial["chunks_done"] == partial["chunks_total"]
    assert_buckets_add_up(partial)
    failed_report = read_csv(tmp_path / "c.ckpt.report" / "failed_chunks.csv")
    failed = {int(row["chunk"]) for row in failed_report}
    assert len(failed) == partial["chunks_failed"]
    assert all("503" in row["reason"] and row["attempts"] == "1" for row in failed_report)
    errors = read_csv(tmp_path / "c.ckpt.report" / "errors.csv")
    assert len(errors) == partial["failed_numbers"]
    assert {row["reason"].split(":")[0] for row in errors} == {"chunk failed"}
    assert all(row["file"] == str(source) and row["line"] for row in errors)

    healthy = recording_api(source, numbers=flaky.state.numbers(GROUP))
    retry = [healthy.server.url if word == flaky.server.url else word for word in args]
    retried = run_cli(*retry, "--retry-failed")
    assert retried.returncode == 0, retried.output
    assert sorted(healthy.state.chunks_of_run(0)) == sorted(failed)
    summary = read_summary(tmp_path / "s.json")
    assert_same_totals(summary, baseline)
    assert summary["deleted"] == baseline["deleted"]  # the 503s had applied nothing
    assert healthy.state.remaining(GROUP) == 0
    assert_every_chunk_once_and_done(tmp_path / "c.ckpt", baseline["chunks_total"])
    assert read_csv(tmp_path / "c.ckpt.report" / "failed_chunks.csv") == []
    in_doubt = read_csv(tmp_path / "c.ckpt.report" / "in_doubt.csv")
    assert {int(row["chunk"]) for row in in_doubt} == failed
    assert all("failing in an earlier pass" in row["reason"] for row in in_doubt)


def test_restart_moves_the_old_checkpoint_aside_and_starts_over(
    run_cli, fake_api, recording_api, sample_csv, tmp_path
):
    """--restart keeps the old file (and its WAL) byte for byte under a new name; all is resent."""
    source = sample_csv(5_000)
    api = recording_api(source, latency_ms=100)  # ~1.3 s in all: the kill lands midway
    victim, args = run_in_background(tmp_path, api, source, concurrency=4)
    victim.signal_when(
        signal.SIGKILL, lambda: committed_count(tmp_path / "c.ckpt") >= 10, "10 chunks committed"
    )
    victim.wait()
    old = {path.name: path.read_bytes() for path in tmp_path.glob("c.ckpt*") if path.is_file()}
    assert "c.ckpt-wal" in old  # a killed run leaves its commits in the WAL
    old_done = done_ids(tmp_path / "c.ckpt")
    assert old_done

    api.state.run = 1
    # Everything is sent again, so the numbers the first run deleted come back not found: when
    # the kill lands late (a loaded machine), the first 2,000 may all be among them, which the
    # not-found guard would rightly stop. Re-sending deleted numbers is the point here.
    restarted = run_cli(*args, "--restart", "--allow-not-found")
    assert restarted.returncode == 0, restarted.output
    assert "moved to" in restarted.output
    aside = [path for path in tmp_path.glob("c.ckpt.*.old") if path.is_file()]
    assert len(aside) == 1
    assert aside[0].read_bytes() == old["c.ckpt"]
    assert Path(f"{aside[0]}-wal").read_bytes() == old["c.ckpt-wal"]
    assert done_ids(aside[0]) == old_done  # the old run's record, intact and readable
    summary = read_summary(tmp_path / "s.json")
    assert sorted(api.state.chunks_of_run(1)) == list(range(summary["chunks_total"]))
    assert summary["complete"] is True and summary["in_doubt_chunks"] == 0
    assert summary["deleted"] + summary["not_found"] == summary["accepted"]
    # deleted by the first run (every chunk holds 100 numbers but the last)
    assert summary["not_found"] >= 100 * (len(old_done) - 1)
    assert len(old_done) < summary["chunks_total"]  # the kill did land midway
    assert_buckets_add_up(summary)
    assert api.state.remaining(GROUP) == 0


# -- checkpoints ozbulk must refuse ------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (newer_schema, "written by a newer ozbulk"),
        (garbage, "not a readable ozbulk checkpoint"),
        (text_file, "not a readable ozbulk checkpoint"),
        (torn_pages, "not a readable ozbulk checkpoint"),
    ],
    ids=["newer-schema", "garbage", "not-sqlite", "corrupt"],
)
def test_a_checkpoint_ozbulk_cannot_read_is_refused_and_left_byte_for_byte(
    run_cli, fake_api, sample_csv, tmp_path, make, message
):
    """delete and status refuse it: exit 2, a clear message, nothing sent, not a byte changed."""
    server = fake_api()
    source = sample_csv(1_000)
    make(tmp_path / "c.ckpt")
    before = {path.name: path.read_bytes() for path in tmp_path.glob("c.ckpt*") if path.is_file()}
    refused = run_cli(*delete_args(server, source, rate=0, checkpoint="c.ckpt"))
    assert refused.returncode == 2, refused.output
    assert message in refused.stderr and "left untouched" in refused.stderr
    assert "Traceback" not in refused.output
    status = run_cli("status", "c.ckpt")
    assert status.returncode == 2, status.output
    assert message in status.stderr
    assert server.stats()["requests"] == 0
    assert {
        path.name: path.read_bytes() for path in tmp_path.glob("c.ckpt*") if path.is_file()
    } == before


def test_restart_sets_an_unreadable_checkpoint_aside_and_report_refuses_it(
    run_cli, fake_api, sample_csv, tmp_path
):
    """report refuses a garbage file (exit 2); --restart keeps it aside, unchanged, and runs."""
    server = fake_api()
    source = sample_csv(1_000)
    seeded = server.state.seed(GROUP, accepted_numbers((str(source),)))
    garbage(tmp_path / "c.ckpt")
    original = (tmp_path / "c.ckpt").read_bytes()
    report = run_cli("report", "c.ckpt", "--out", "rep")
    assert report.returncode == 2, report.output
    assert "not a readable ozbulk checkpoint" in report.stderr
    restarted = run_cli(*delete_args(server, source, rate=0, checkpoint="c.ckpt",
                                     summary_json="s.json"), "--restart")  # fmt: skip
    assert restarted.returncode == 0, restarted.output
    (aside,) = tmp_path.glob("c.ckpt.*.old")
    assert aside.read_bytes() == original
    assert read_summary(tmp_path / "s.json")["deleted"] == seeded


# -- disk trouble ------------------------------------------------------------------------------


def test_an_unwritable_checkpoint_folder_stops_before_sending_with_exit_4(
    run_cli, fake_api, sample_csv, tmp_path
):
    """An unwritable checkpoint folder: exit 4, clear message, nothing sent; fixed, it runs."""
    # Tests run as root, whom chmod does not stop: the "folder" is a regular file instead (and
    # /proc, where nobody creates files).
    server = fake_api()
    source = sample_csv(1_000)
    seeded = server.state.seed(GROUP, accepted_numbers((str(source),)))
    (tmp_path / "state").write_text("a file where the folder should be")
    for place in ("state/c.ckpt", "/proc/ozbulk-test.ckpt"):
        refused = run_cli(*delete_args(server, source, rate=0, checkpoint=place))
        assert refused.returncode == 4, refused.output
        assert f"cannot create or write the checkpoint {place}" in refused.stderr
        assert "Traceback" not in refused.output
    assert server.stats()["requests"] == 0
    (tmp_path / "state").unlink()
    (tmp_path / "state").mkdir()
    fixed = run_cli(*delete_args(server, source, rate=0, checkpoint="state/c.ckpt",
                                 summary_json="s.json"))  # fmt: skip
    assert fixed.returncode == 0, fixed.output
    assert read_summary(tmp_path / "s.json")["deleted"] == seeded


def limit_file_size(limit: int) -> Any:
    def apply() -> None:
        # A file may not grow past `limit` bytes: a disk that fills up, for this process only.
        # (Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing it.)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics are Linux's here")
def test_a_checkpoint_that_becomes_unwritable_mid_run_stops_with_exit_4_and_loses_nothing(
    run_cli, fake_api, recording_api, sample_csv, tmp_path
):
    """Disk full mid-run (RLIMIT_FSIZE): exit 4, earlier commits kept, resumes exactly later."""
    # Root ignores file modes, so the checkpoint is made unwritable by capping how large any
    # file of the run may grow: SQLite's next WAL append fails, as on a full disk.
    source = sample_csv(20_000)
    baseline = uninterrupted_totals(run_cli, fake_api, source)
    api = recording_api(source, latency_ms=100)
    args = delete_args(api.server, source, rate=0, concurrency=8, checkpoint="c.ckpt",
                       summary_json="s.json")  # fmt: skip
    run = spawn(tmp_path, args, preexec_fn=limit_file_size(100_000))
    seen: set[int] = set()
    while run.process.poll() is None:
        # Refused while created but not yet committed to: nothing to see yet.
        with contextlib.suppress(CheckpointError):
            seen = max(seen, done_ids(tmp_path / "c.ckpt"), key=len)
        time.sleep(0.05)
    assert run.wait() == 4, run.output
    assert "cannot write the checkpoint" in run.output
    assert "Everything committed before is kept" in run.output
    after = done_ids(tmp_path / "c.ckpt")
    assert seen and seen <= after  # nothing committed before is lost
    assert len(after) < baseline["chunks_total"]  # it did stop midway
    stopped = read_summary(tmp_path / "s.json")
    # The summary tells what the checkpoint holds, not what was merged in memory.
    reader = Checkpoint.read(tmp_path / "c.ckpt")
    committed = reader.sums()
    reader.close()
    assert stopped["chunks_done"] == committed["chunks_done"] == len(after), stopped
    assert (stopped["sent"], stopped["deleted"]) == (committed["sent"], committed["deleted"])

    api.state.run = 1
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.output
    summary = read_summary(tmp_path / "s.json")
    assert_same_totals(summary, baseline)
    assert not after & set(api.state.chunks_of_run(1))
    assert_every_chunk_once_and_done(tmp_path / "c.ckpt", baseline["chunks_total"])
    assert api.state.remaining(GROUP) == 0


def test_a_second_run_on_a_live_checkpoint_is_refused(
    run_cli, fake_api, recording_api, sample_csv, tmp_path
):
    """While one run holds the checkpoint, another is refused (exit 2) and sends nothing."""
    source = sample_csv(5_000)
    baseline = uninterrupted_totals(run_cli, fake_api, source)
    api = recording_api(source, latency_ms=200)
    first, args = run_in_background(tmp_path, api, source, concurrency=4)
    wait_until(lambda: api.state.applied_count() >= 4, what="the first run under way")
    second = run_cli(*args)
    assert second.returncode == 2, second.output
    assert "in use by another ozbulk run" in second.stderr
    assert first.wait() == 0, first.output
    assert api.server.stats()["delete_requests"] == baseline["chunks_total"]  # all from the first
    assert api.server.stats()["duplicate_batches"] == 0
    assert_same_totals(read_summary(tmp_path / "s.json"), baseline)
