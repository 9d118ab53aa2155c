"""Helpers the test modules share; fixtures live in conftest.py.

No test module imports another (tests/test_layout.py checks it): what two of them need is here.
Its asserts are rewritten by pytest like a test's (tests/__init__.py registers this module).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.batcher import Producer, accepted_numbers
from engine.checkpoint import DONE, FAILED, Checkpoint, ChunkRecord
from engine.mock import MockConfig, MockState, ThreadedMockServer, canonicalise
from engine.numbers import Normalizer
from engine.settings import InputSettings

# -- the fake account and the real CLI --------------------------------------------------------


API_KEY = "test-key-5f1c9a7e2b"  # a recognisable fake, so leak checks can grep for it
USER = "tester"
GROUP = 1


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OZONETEL_", "OZBULK_"))}
    env["OZONETEL_API_KEY"] = API_KEY
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def ozbulk_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def delete_args(server: ThreadedMockServer, *inputs: str | Path, **flags: Any) -> list[str]:
    """Arguments of `ozbulk delete` against `server`; flags as --name value (True = bare flag)."""
    args = ["delete", *map(str, inputs), "--group-id", str(GROUP), "--user", USER,
            "--base-url", server.url, "--yes", "--no-progress"]  # fmt: skip
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    return args


# -- checkpoints, and files that are not one ozbulk can read ----------------------------------

IDENTITY: dict[str, Any] = {
    "inputs": [{"path": "/data/numbers.csv", "size": 1234, "blake2b": "00ff"}],
    "group_id": 1,
    "user": "tester",
    "column": None,
    "country": "IN",
    "number_format": "digits",
    "batch_size": 100,
}
SETTINGS: dict[str, Any] = {"host": "127.0.0.1:1", "rate": 5.0, "concurrency": 4}


def done(chunk_id: int, deleted: int = 100, **extra: Any) -> ChunkRecord:
    fields: dict[str, Any] = {
        "id": chunk_id, "state": DONE, "sent": 100, "success": 100, "error": 0,
        "deleted": deleted, "attempts": 1, "in_doubt": False, "reason": "", "detail": [],
    }  # fmt: skip
    fields.update(extra)
    return ChunkRecord(**fields)


def failed(chunk_id: int, reason: str = "HTTP 503") -> ChunkRecord:
    detail = [(f"91987654{n:04d}", 0, n + 2) for n in range(100)]
    return ChunkRecord(chunk_id, FAILED, 100, 0, 0, 0, 3, False, reason, detail)


def open_run(path: Path, identity: dict[str, Any] | None = None) -> Checkpoint:
    return Checkpoint.for_run(path, identity or IDENTITY, SETTINGS)


def rewrite(path: Path, *statements: str) -> None:
    """Run SQL on a checkpoint behind ozbulk's back (as another program or version would)."""
    connection = sqlite3.connect(path)
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    connection.close()


def with_schema_version(path: Path, value: str, *more: str) -> None:
    """A checkpoint whose stored schema version is the JSON text ``value``."""
    checkpoint = open_run(path)
    checkpoint.record([done(0)], [], {})
    checkpoint.close()
    rewrite(path, *more, f"UPDATE meta SET value = '{value}' WHERE key = 'schema_version'")


def newer_schema(path: Path) -> None:
    with_schema_version(path, "99")


def garbage(path: Path) -> None:
    path.write_bytes(random.Random(3).randbytes(20_000))


def text_file(path: Path) -> None:
    path.write_text("phone\n9876543210\n")


def other_sqlite(path: Path) -> None:
    rewrite(path, "CREATE TABLE contacts (name TEXT, phone TEXT)")


def torn_pages(path: Path) -> None:
    checkpoint = open_run(path)
    checkpoint.record([failed(n) for n in range(300)], [], {})
    checkpoint.close()
    data = bytearray(path.read_bytes())
    data[4096 * 3 : 4096 * 5] = random.Random(5).randbytes(8192)
    path.write_bytes(bytes(data))


def bad_version_value(path: Path) -> None:
    with_schema_version(path, '"one"')


# -- a producer state an attacker would plant -------------------------------------------------


class PlantedPayload:
    """Unpickling this runs ``os.system``: what an attacker would put in a state file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


# -- a fake API that records each chunk, and the CLI as a killable subprocess -----------------
# Shared by the interruption tests: they check DESIGN.md's invariants 1 (every row in exactly one
# bucket) and 3 (an interrupted job finishes with the totals of an uninterrupted one, no finished
# chunk sent again).


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

    def signal_when(
        self, number: int, condition: Callable[[], bool], what: str = "", timeout: float = 60
    ) -> float:
        """Send signal ``number`` once ``condition`` holds; returns when (time.monotonic())."""
        wait_until(condition, timeout, what)
        sent = time.monotonic()
        self.signal(number)
        return sent


def spawn(cwd: Path, args: list[str], name: str = "run", **popen: Any) -> Spawned:
    log = cwd / f"{name}-{time.monotonic_ns()}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            ozbulk_command(*args), cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL,
            stdout=handle, stderr=subprocess.STDOUT, **popen,
        )  # fmt: skip
    return Spawned(process, log)


def run_in_background(
    cwd: Path, api: Recorded, source: Path, concurrency: int
) -> tuple[Spawned, list[str]]:
    """`ozbulk delete` of ``source`` against ``api`` in the background, as the interruption tests
    run it: unpaced, checkpoint c.ckpt and summary s.json in ``cwd``. Returns the process and its
    arguments, which resume it."""
    args = delete_args(api.server, source, rate=0, concurrency=concurrency, checkpoint="c.ckpt",
                       summary_json="s.json")  # fmt: skip
    return spawn(cwd, args), args


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
