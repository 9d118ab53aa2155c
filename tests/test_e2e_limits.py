"""The server's limit through the real CLI: learned, logged, kept in the checkpoint, resumed from.

Per-minute and hourly shapes are covered on virtual time (tests/test_limits.py) and in real time
by ``python -m benchmarks --only limits``; here a per-second limit keeps the real runs short.
"""

from __future__ import annotations

import signal
import time

import pytest

from engine.batcher import accepted_numbers
from engine.checkpoint import Checkpoint
from tests._helpers import GROUP, delete_args, read_summary, spawn, wait_until

LIMIT = 20  # requests a second


@pytest.mark.slow
def test_a_learned_limit_is_kept_shown_and_resumed_from(run_cli, fake_api, sample_csv, tmp_path):
    """--rate auto against 20 a second, refused in the body: the limit is learned and logged,
    kept in the checkpoint, shown by status; a resume starts at it and is never refused."""
    server = fake_api(rate_limit=LIMIT, rate_limit_style="body")
    source = sample_csv(4000)
    server.state.seed(GROUP, accepted_numbers((str(source),)))
    args = delete_args(server, source, concurrency=8, batch_size=10, checkpoint="c.ckpt",
                       summary_json="s.json")  # fmt: skip
    assert "--rate" not in args  # the default is what a newcomer gets
    first = spawn(tmp_path, args)
    wait_until(lambda: server.stats()["rate_limited"] >= 1, timeout=60, what="a refusal")
    refused_at = time.monotonic()
    first.signal_when(
        signal.SIGINT, lambda: time.monotonic() - refused_at > 4, "a few seconds at the limit"
    )
    assert first.wait(timeout=30) == 130, first.output
    assert f"server limit ≈ {LIMIT} a second, sliding window" in first.output
    stopped = read_summary(tmp_path / "s.json")
    assert stopped["server_limit"].startswith(f"{LIMIT} a second, sliding window, learned ")

    checkpoint = Checkpoint.read(tmp_path / "c.ckpt")
    try:
        kept = checkpoint.meta("counters")["server_limit"]
    finally:
        checkpoint.close()
    assert (kept["quota"], kept["window"], kept["fixed"]) == (LIMIT, 1.0, False)
    status = run_cli("status", "c.ckpt")
    assert status.returncode == 0, status.output
    assert f"server limit {LIMIT} a second, sliding window, learned" in status.stdout

    time.sleep(1.1)  # the server's one-second window forgets the first pass
    before = server.stats()["rate_limited"]
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.output
    assert f"server limit {LIMIT} a second, sliding window (learned by an earlier pass)" in (
        resumed.output
    )
    assert server.stats()["rate_limited"] == before  # started at the limit: nothing refused
    assert server.state.remaining(GROUP) == 0


def test_rate_units_reach_the_plan_and_config_show(run_cli, sample_csv):
    """--rate 300/min is shown as the user wrote it, with its per-second pace."""
    source = sample_csv(10)
    shown = run_cli("config", "show", str(source), "--user", "u", "--group-id", "1",
                    "--rate", "300/min")  # fmt: skip
    assert shown.returncode == 0, shown.output
    assert "300/min (5/s)" in shown.stdout
    plan = run_cli("delete", str(source), "--user", "u", "--group-id", "1", "--rate", "18000/h",
                   "--base-url", "http://127.0.0.1:9", "--dry-run")  # fmt: skip
    assert plan.returncode == 0, plan.output
    assert "at most 18000 an hour (5/s)" in plan.output


def test_a_wrong_rate_unit_is_one_line(run_cli, sample_csv):
    """--rate 5/week is refused before anything is sent, in one line that shows the forms."""
    source = sample_csv(10)
    result = run_cli("delete", str(source), "--user", "u", "--group-id", "1", "--rate", "5/week",
                     "--base-url", "http://127.0.0.1:9", "--yes")  # fmt: skip
    assert result.returncode == 2
    assert "--rate has an unknown unit 'week'" in result.stderr
    assert "300/min" in result.stderr
    assert "Traceback" not in result.output
