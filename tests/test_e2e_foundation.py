"""The foundation's end-to-end promises: the real CLI against the fake API over loopback.

Also home of the helpers the interruption tests share: a fake account that notes which chunk
each request carried (and in which run), the CLI as a killable subprocess, and the checks of
DESIGN.md's invariants 1 (every row in exactly one bucket) and 3 (an interrupted job finishes
with the totals of an uninterrupted one, no finished chunk sent again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.batcher import Producer, accepted_numbers
from engine.checkpoint import DONE, Checkpoint
from engine.mock import MockConfig, MockState, ThreadedMockServer, canonicalise
from engine.numbers import Normalizer
from engine.settings import InputSettings
from tests.conftest import API_KEY, GROUP, USER, CliResult, cli_env, delete_args, ozbulk_command

# -- helpers shared with test_e2e_resume.py ---------------------------------------------------


def chunk_ids(source: Path) -> dict[str, int]:
    """The chunk id of every chunk of ``source``, keyed by its first number in `+` form."""
    producer = Producer(InputSettings(paths=(str(source),)), Normalizer(), lambda _: None)
    return {f"+{chunk.numbers[0]}": chunk.id for chunk in producer.chunks()}


class RecordingState(MockState):
    """The fake account, also noting each applied delete's chunk and run, and when calls arrive.

    ``kill_after``: once that many deletes have been applied, SIGKILL ``kill_pid`` before
    answering, so the client dies with work the server did and the client never heard of.
    """

    def __init__(self, config: MockConfig, chunk_of: dict[str, int]) -> None:
        super().__init__(config)
        self.chunk_of = chunk_of
        self.run = 0
        self.applied: list[tuple[int, int]] = []  # (run, chunk id)
        self.arrivals: list[float] = []  # time.monotonic() of every API call
        self.kill_pid: int | None = None
        self.kill_after: int | None = None
        self._notes = threading.Lock()

    def admit(self, path: str) -> bool:
        with self._notes:
            self.arrivals.append(time.monotonic())
        return super().admit(path)

    def delete(
        self, body: bytes, *, api_key: str | None = None, authorization: str | None = None
    ) -> dict[str, Any]:
        answer = super().delete(body, api_key=api_key, authorization=authorization)
        if answer.get("status") != "success":
            return answer
        first = canonicalise(answer["input"]["blockNumbers"][0]) or ""
        with self._notes:
            self.applied.append((self.run, self.chunk_of.get(first, -1)))
            if (
                self.kill_pid is not None
                and self.kill_after is not None
                and len(self.applied) >= self.kill_after
            ):
                os.kill(self.kill_pid, signal.SIGKILL)
                self.kill_pid = None
        return answer

    def chunks_of_run(self, run: int) -> list[int]:
        with self._notes:
            return [chunk for number, chunk in self.applied if number == run]

    def applied_count(self) -> int:
        with self._notes:
            return len(self.applied)

    def arrivals_after(self, moment: float) -> int:
        with self._notes:
            return sum(1 for arrival in self.arrivals if arrival > moment)


@dataclass
class Recorded:
    server: ThreadedMockServer
    state: RecordingState
    seeded: int


@contextlib.contextmanager
def recording_servers() -> Iterator[Callable[..., Recorded]]:
    """Start fake APIs that record chunks per run, their group seeded with ``source``'s numbers."""
    servers: list[ThreadedMockServer] = []

    def start(source: Path, numbers: Iterable[str] | None = None, **config: Any) -> Recorded:
        config.setdefault("user", USER)
        config.setdefault("api_key", API_KEY)
        config.setdefault("group_id", GROUP)
        state = RecordingState(MockConfig(**config), chunk_ids(source))
        server = ThreadedMockServer(state=state)
        server.start()
        servers.append(server)
        if numbers is None:
            numbers = accepted_numbers((str(source),))
        seeded = state.seed(GROUP, numbers)
        return Recorded(server, state, seeded)

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def recording_api() -> Iterator[Callable[..., Recorded]]:
    """A fake API that records which chunk each request carried, in which run (see above)."""
    with recording_servers() as start:
        yield start


@dataclass
class Spawned:
    """The real CLI running in the background; output goes to a file (no pipe to fill up)."""

    process: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)

    def wait(self, timeout: float = 120) -> int:
        return self.process.wait(timeout)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, number: int) -> None:
        self.process.send_signal(number)


def spawn(cwd: Path, args: list[str], name: str = "run", **popen: Any) -> Spawned:
    log = cwd / f"{name}-{time.monotonic_ns()}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            ozbulk_command(*args), cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL,
            stdout=handle, stderr=subprocess.STDOUT, **popen,
        )  # fmt: skip
    return Spawned(process, log)


def wait_until(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.005)


def read_summary(path: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(path.read_text())
    return summary


_BASELINES: dict[str, dict[str, Any]] = {}


def uninterrupted_totals(
    run_cli: Callable[..., CliResult], fake_api: Callable[..., ThreadedMockServer], source: Path
) -> dict[str, Any]:
    """The totals of one uninterrupted run of ``source``, on a fresh fake API of its own.

    Remembered by the input's content for the session: the same sample is the same baseline.
    """
    content = hashlib.blake2b(source.read_bytes(), digest_size=16).hexdigest()
    if content in _BASELINES:
        return _BASELINES[content]
    server = fake_api()
    server.state.seed(GROUP, accepted_numbers((str(source),)))
    name = f"baseline-{source.stem}"
    args = delete_args(server, source, rate=0, concurrency=16, checkpoint=f"{name}.ckpt",
                       summary_json=f"{name}.json")  # fmt: skip
    result = run_cli(*args)
    assert result.returncode == 0, result.output
    assert server.state.remaining(GROUP) == 0
    baseline = read_summary(source.parent / f"{name}.json")
    assert_buckets_add_up(baseline)
    assert baseline["complete"] is True and baseline["not_found"] == 0
    _BASELINES[content] = baseline
    return baseline


def assert_buckets_add_up(summary: dict[str, Any]) -> None:
    """DESIGN.md invariant 1: every row in exactly one bucket, and the buckets add up."""
    buckets = ("deleted", "not_found", "error", "failed_numbers", "rejected", "duplicates")
    assert all(summary[bucket] >= 0 for bucket in buckets), summary
    assert sum(summary[bucket] for bucket in buckets) == summary["rows"], summary
    assert summary["rows"] == summary["accepted"] + summary["rejected"] + summary["duplicates"]
    assert summary["sent"] + summary["failed_numbers"] <= summary["accepted"]
    assert summary["success"] + summary["error"] == summary["sent"]


COMPARED = ("rows", "accepted", "rejected", "duplicates", "chunks_total", "chunks_done",
            "chunks_failed", "sent", "success", "error", "failed_numbers", "complete")  # fmt: skip


def assert_same_totals(summary: dict[str, Any], baseline: dict[str, Any]) -> None:
    """DESIGN.md invariant 3: the totals of an interrupted job equal an uninterrupted one's.

    Numbers an interrupted pass deleted come back "not found" when their chunk is sent again,
    so deleted and not_found are compared as a sum: the numbers that left the group.
    """
    assert {key: summary[key] for key in COMPARED} == {key: baseline[key] for key in COMPARED}
    assert summary["deleted"] + summary["not_found"] == baseline["deleted"] + baseline["not_found"]
    assert summary["sent"] == summary["accepted"]
    assert summary["exit_code"] == 0
    assert_buckets_add_up(summary)


def assert_every_chunk_once_and_done(checkpoint: Path, chunks_total: int) -> list[dict[str, Any]]:
    """One row per chunk id 0..chunks_total-1, each done; returns the rows."""
    reader = Checkpoint.read(checkpoint)
    try:
        rows = [dict(row) for row in reader.chunk_rows()]
    finally:
        reader.close()
    assert [row["id"] for row in rows] == list(range(chunks_total))
    assert {row["state"] for row in rows} == {DONE}
    return rows


def done_ids(checkpoint: Path) -> set[int]:
    if not checkpoint.exists():
        return set()
    reader = Checkpoint.read(checkpoint)
    try:
        return set(reader.ids(DONE))
    finally:
        reader.close()


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
    args = delete_args(api.server, source, rate=0, concurrency=8, checkpoint="c.ckpt",
                       summary_json="s.json")  # fmt: skip
    victim = spawn(tmp_path, args)
    wait_until(lambda: api.state.applied_count() >= 40, what="40 chunks applied")
    victim.signal(signal.SIGKILL)
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
