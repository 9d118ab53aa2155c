"""The foundation's end-to-end promises: the real CLI against the fake API over loopback.

The helpers the interruption tests share (the recording fake API, the CLI as a killable
subprocess, the checks of DESIGN.md's invariants 1 and 3) live in tests/_helpers.py.
"""

from __future__ import annotations

import json
import signal

from engine.batcher import accepted_numbers
from tests._helpers import (
    GROUP,
    assert_buckets_add_up,
    assert_every_chunk_once_and_done,
    assert_same_totals,
    delete_args,
    done_ids,
    read_summary,
    run_in_background,
    uninterrupted_totals,
)

# -- the foundation's end-to-end tests ------------------------------------------------------


def test_an_invalid_group_id_stops_at_the_first_answer_and_stays_resumable(
    run_cli, fake_api, sample_csv, tmp_path
):
    """ "Invalid group id": exit 3 after at most one wave of requests; the same command resumes."""
    server = fake_api(group_id=GROUP + 1)  # the account has no group GROUP (yet)
    source = sample_csv(5_000)
    args = delete_args(server, source, rate=0, concurrency=8, checkpoint="c.ckpt",
                       summary_json="s.json")  # fmt: skip
    stopped = run_cli(*args)
    assert stopped.returncode == 3, stopped.output
    assert "Invalid group id" in stopped.stderr and "--group-id" in stopped.stderr
    assert "Traceback" not in stopped.output
    assert server.stats()["delete_requests"] <= 8  # one wave at most, no thousands of doomed calls
    status = run_cli("status", "c.ckpt", "--json")
    assert status.returncode == 0, status.output
    assert json.loads(status.stdout)["chunks"]["done"] == 0
    seeded = server.state.seed(GROUP, accepted_numbers((str(source),)))
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.output
    summary = read_summary(tmp_path / "s.json")
    assert summary["deleted"] == seeded == summary["accepted"]
    assert server.state.remaining(GROUP) == 0
    assert_buckets_add_up(summary)


def test_a_checkpoint_of_another_input_is_refused_saying_what_differs(
    run_cli, fake_api, sample_csv, tmp_path
):
    """Other file, changed content, other batch size: exit 2, what differs, nothing sent."""
    server = fake_api()
    first = sample_csv(1_000, name="first.csv")
    second = sample_csv(1_000, name="second.csv", seed=8)
    server.state.seed(GROUP, accepted_numbers((str(first),)))
    done = run_cli(*delete_args(server, first, rate=0, checkpoint="c.ckpt"))
    assert done.returncode == 0, done.output
    checkpoint_bytes = (tmp_path / "c.ckpt").read_bytes()
    requests = server.stats()["requests"]

    other_file = run_cli(*delete_args(server, second, rate=0, checkpoint="c.ckpt"))
    assert other_file.returncode == 2, other_file.output
    assert "belongs to another run" in other_file.stderr
    assert str(first) in other_file.stderr and str(second) in other_file.stderr
    assert "--restart" in other_file.stderr

    with first.open("a") as handle:
        handle.write("9876512345\n")
    changed = run_cli(*delete_args(server, first, rate=0, checkpoint="c.ckpt"))
    assert changed.returncode == 2, changed.output
    assert "input file content changed" in changed.stderr

    first.write_bytes(first.read_bytes()[: -len("9876512345\n")])
    other_batch = run_cli(*delete_args(server, first, rate=0, checkpoint="c.ckpt", batch_size=50))
    assert other_batch.returncode == 2, other_batch.output
    assert "batch_size: 100 -> 50" in other_batch.stderr

    assert server.stats()["requests"] == requests
    assert (tmp_path / "c.ckpt").read_bytes() == checkpoint_bytes
    assert "Traceback" not in other_file.output + changed.output + other_batch.output


def test_a_run_killed_midway_finishes_on_rerun_with_the_uninterrupted_totals(
    run_cli, fake_api, recording_api, sample_csv, tmp_path
):
    """SIGKILL mid-run, then the same command: exit 0, group empty, same totals, no chunk lost."""
    source = sample_csv(20_000)
    baseline = uninterrupted_totals(run_cli, fake_api, source)
    api = recording_api(source, latency_ms=40)
    victim, args = run_in_background(tmp_path, api, source, concurrency=8)
    victim.signal_when(signal.SIGKILL, lambda: api.state.applied_count() >= 40, "40 chunks applied")
    assert victim.wait() == -signal.SIGKILL
    finished_before = done_ids(tmp_path / "c.ckpt")
    assert 0 < len(finished_before) < baseline["chunks_total"]

    api.state.run = 1
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.output
    summary = read_summary(tmp_path / "s.json")
    assert_same_totals(summary, baseline)
    assert api.state.remaining(GROUP) == 0
    assert not finished_before & set(api.state.chunks_of_run(1))  # finished chunks not resent
    assert_every_chunk_once_and_done(tmp_path / "c.ckpt", baseline["chunks_total"])
