"""The producer in a child process gives exactly what the producer gives in this one."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import anyio
import pytest
from pyroaring import BitMap

from engine import producer_process
from engine.batcher import Producer
from engine.errors import InputError
from engine.numbers import Normalizer
from engine.producer_messages import (
    FRAME_HEADER,
    Batch,
    Crashed,
    Done,
    InputFailed,
    LogLine,
    StateSaved,
)
from engine.producer_process import FrameReader, ProducerProcess
from engine.records import Chunk, Reject
from engine.selection import Selection
from engine.settings import InputSettings

# Every chunk: a first pass, nothing done or failed yet.
EVERYTHING = Selection.build(done=BitMap(), failed=BitMap(), retry_failed=False)


class _Garbled(Selection):
    """A selection whose serialized form the child cannot read."""

    __slots__ = ()

    def to_bytes(self) -> bytes:
        return b"not a serialized bitmap"


def _collect(source: ProducerProcess) -> list[Chunk]:
    async def run() -> list[Chunk]:
        return [chunk async for chunk in source.chunks()]

    return anyio.run(run)


def test_child_process_yields_the_same_chunks_counts_and_rejects(sample_csv) -> None:
    """Chunks (ids, numbers, origins), counts and rejects match the in-process producer's."""
    inputs = InputSettings(paths=(str(sample_csv(5000)),))
    expected_rejects: list[Reject] = []
    producer = Producer(inputs, Normalizer(), expected_rejects.append)
    expected = list(producer.chunks())
    rejects: list[Reject] = []
    source = ProducerProcess(inputs, EVERYTHING, rejects.append)
    got = _collect(source)
    assert [(c.id, list(c.numbers), list(c.files), list(c.lines)) for c in got] == [
        (c.id, list(c.numbers), list(c.files), list(c.lines)) for c in expected
    ]
    assert rejects == expected_rejects and rejects
    assert source.counts == producer.counts and source.counts.finished
    assert source.skipped == 0


def test_child_process_skips_finished_chunks_and_counts_them(sample_csv) -> None:
    """Chunk ids in the skip set are not shipped; `only` ships just those ids."""
    inputs = InputSettings(paths=(str(sample_csv(3000)),))
    done = BitMap(range(0, 20))
    resume = Selection.build(done=done, failed=BitMap(), retry_failed=False)
    source = ProducerProcess(inputs, resume, lambda _: None)
    ids = [chunk.id for chunk in _collect(source)]
    assert ids == list(range(20, source.counts.chunks))
    assert source.skipped == 20
    only = BitMap([3, 7])
    failed = Selection.build(done=BitMap(), failed=only, retry_failed=True)
    retry = ProducerProcess(inputs, failed, lambda _: None)
    assert [chunk.id for chunk in _collect(retry)] == [3, 7]


def test_child_process_input_error_keeps_file_and_reason(tmp_path: Path) -> None:
    """A file the child cannot use raises InputError in the parent, naming the file."""
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 64)
    inputs = InputSettings(paths=(str(binary),))
    source = ProducerProcess(inputs, EVERYTHING, lambda _: None)
    with pytest.raises(InputError) as caught:
        _collect(source)
    assert caught.value.file == str(binary)
    assert str(binary) in str(caught.value)


def test_a_crash_in_the_child_surfaces_as_an_internal_error_with_its_traceback(sample_csv) -> None:
    """A bug in the child is not blamed on the input: RuntimeError carrying the child's trace."""
    inputs = InputSettings(paths=(str(sample_csv(100)),))
    broken = _Garbled(BitMap(), only=False)
    source = ProducerProcess(inputs, broken, lambda _: None)
    with pytest.raises(RuntimeError, match="the producer process failed") as caught:
        _collect(source)
    assert "Traceback" in str(caught.value)
    assert not isinstance(caught.value, InputError)


def test_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    """The pipe may cut a frame at any byte: the reader yields each message once it is whole."""
    messages = [("batch", list(range(n)), b"x" * n) for n in (0, 1, 300, 70_000)]
    stream = b"".join(
        FRAME_HEADER.pack(len(body)) + body
        for body in (pickle.dumps(message) for message in messages)
    )
    for piece in (1, 3, 4096, len(stream)):
        reader, got = FrameReader(), []
        for start in range(0, len(stream), piece):
            reader.feed(stream[start : start + piece])
            got.extend(reader.messages())
        assert got == messages
        assert reader.pending == 0


def test_every_message_crosses_the_pipe_as_an_equal_record() -> None:
    """The records pickle by their own __reduce__ (class and fields): each comes back equal."""
    row = (4, array("q", [919876543210]), array("I", [0]), array("q", [2]), b'["9876543210"]')
    messages = [
        Batch([row], [(0, 3, "n/a", "not a phone number")], (3, 1, 1, 0, 1, False), 2, 77),
        LogLine(logging.WARNING, "engine.batcher", "a warning"),
        StateSaved(12, "state-12.ozstate"),
        Done(),
        InputFailed("cannot be decoded", "in.csv", None),
        Crashed("Traceback (most recent call last): ..."),
    ]
    for message in messages:
        copy = pickle.loads(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        assert type(copy) is type(message) and copy == message


def test_a_producer_stopped_early_takes_its_process_with_it(sample_csv) -> None:
    """Closing the chunk iterator after one chunk (a stop) kills and reaps the child at once."""
    inputs = InputSettings(paths=(str(sample_csv(20_000)),))
    source = ProducerProcess(inputs, EVERYTHING, lambda _: None)

    async def first_chunk() -> Chunk:
        async with contextlib.aclosing(source.chunks()) as chunks:
            async for chunk in chunks:
                return chunk
        raise AssertionError("no chunk at all")

    assert anyio.run(first_chunk).id == 0
    assert source.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(source.pid, 0)  # gone, not a zombie: it was waited for


def test_the_child_and_the_cli_start_without_what_they_never_use() -> None:
    """The producer child imports no HTTP stack; the CLI no aiohttp.web and no phonenumbers."""
    probe = (
        "import sys, engine.producer_child, engine.batcher;"
        "child = {'aiohttp', 'anyio', 'sqlite3'} & set(sys.modules);"
        "import engine.cli;"
        "cli = {'aiohttp.web', 'phonenumbers'} & set(sys.modules);"
        "print(sorted(child), sorted(cli))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["[]", "[]"]


def test_the_child_writes_states_and_goes_on_exactly_from_one(sample_csv, tmp_path) -> None:
    """States are announced after the chunks before them; a child started from one ships exactly
    the chunks and rejects that followed it, and ends with the same counts."""
    inputs = InputSettings(paths=(str(sample_csv(12_000)),))
    everything = EVERYTHING
    states = tmp_path / "states"
    events: list[tuple[str, Any]] = []
    source = ProducerProcess(
        inputs, everything, lambda reject: events.append(("reject", reject)),
        on_state=lambda next_chunk, name: events.append(("state", (next_chunk, name))),
        state_dir=states, state_every=2_000,
    )  # fmt: skip

    async def run() -> None:
        async for chunk in source.chunks():
            events.append(("chunk", chunk))

    anyio.run(run)
    announced = [(index, value) for index, (kind, value) in enumerate(events) if kind == "state"]
    assert len(announced) >= 3
    assert {name for _, (_, name) in announced} == {path.name for path in states.iterdir()}
    for index, (next_chunk, name) in announced:
        before = [value.id for kind, value in events[:index] if kind == "chunk"]
        assert before == list(range(next_chunk))  # every earlier chunk came first
        later_rejects: list[Reject] = []
        resumed = ProducerProcess(inputs, everything, later_rejects.append, start=states / name)
        rest = _collect(resumed)
        after = [value for kind, value in events[index:] if kind == "chunk"]
        assert [(c.id, list(c.numbers), list(c.lines)) for c in rest] == [
            (c.id, list(c.numbers), list(c.lines)) for c in after
        ]
        assert later_rejects == [value for kind, value in events[index:] if kind == "reject"]
        assert resumed.counts == source.counts
        assert resumed.skipped == next_chunk  # the chunks before a state count as done


def test_an_unreadable_state_means_reading_from_the_start(sample_csv, tmp_path, caplog) -> None:
    """A damaged or missing state file is not fatal: the child says so and reads everything."""
    inputs = InputSettings(paths=(str(sample_csv(3_000)),))
    everything = EVERYTHING
    damaged = tmp_path / "state-7.ozstate"
    damaged.write_bytes(b"not a state")
    for start in (damaged, tmp_path / "missing.ozstate"):
        source = ProducerProcess(inputs, everything, lambda _: None, start=start)
        with caplog.at_level(logging.WARNING):
            chunks = _collect(source)
        assert [chunk.id for chunk in chunks] == list(range(source.counts.chunks))
        assert source.counts.rows == 3_000
        assert "reading the input from its start" in caplog.text
        caplog.clear()


def test_a_prestarted_child_is_the_one_that_produces(sample_csv, monkeypatch) -> None:
    """prestart() starts the child ahead of the run; the run hands that very child its job."""
    monkeypatch.setattr(producer_process, "_prestarted", None)
    producer_process.prestart()
    prestarted = producer_process._prestarted
    assert prestarted is not None and prestarted.poll() is None
    inputs = InputSettings(paths=(str(sample_csv(3000)),))
    source = ProducerProcess(inputs, EVERYTHING, lambda _: None)
    chunks = _collect(source)
    assert source.pid == prestarted.pid
    assert [chunk.id for chunk in chunks] == list(range(source.counts.chunks))
    assert producer_process._prestarted is None  # taken: a second run starts its own


# Another thread, as a library might start one: the child is then started as a command.
_A_THREAD = (
    "import threading; threading.Thread(target=threading.Event().wait, daemon=True).start();"
)


@pytest.mark.parametrize("started", ["forked", "command"])
def test_a_prestarted_child_never_given_a_job_ends_with_its_parent(started: str) -> None:
    """A process that prestarts a child and exits (even by kill -9) leaves no child behind."""
    probe = (
        (_A_THREAD if started == "command" else "")
        + "import os, sys, engine.producer_process as p; p.prestart();"
        "print(p._prestarted.pid, type(p._prestarted).__name__, flush=True);"
        "os.kill(os.getpid(), 9) if sys.argv[1] == 'kill' else None"
    )
    for how in ("exit", "kill"):
        done = subprocess.run(
            [sys.executable, "-c", probe, how], capture_output=True, text=True, timeout=60
        )
        child, kind = done.stdout.split()
        assert kind == ("Forked" if started == "forked" else "Popen")
        deadline = time.monotonic() + 10
        while _alive(int(child)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(int(child)), how


@pytest.mark.parametrize("started", ["forked", "command"])
def test_a_forked_or_command_child_gives_what_the_producer_gives(started: str, sample_csv) -> None:
    """Forked (no other thread runs: no interpreter to start, no imports) or started as a command
    (another thread runs, which a fork would not copy): the same chunks, counts and rejects as
    the producer in this process, and the child is waited for."""
    source = sample_csv(5_000)
    probe = (
        (_A_THREAD if started == "command" else "")
        + "import json, sys, anyio, engine.producer_process as p\n"
        "from pyroaring import BitMap\n"
        "from engine.selection import Selection\n"
        "EVERYTHING = Selection.build(done=BitMap(), failed=BitMap(), retry_failed=False)\n"
        "from engine.settings import InputSettings\n"
        "p.prestart(); kind = type(p._prestarted).__name__\n"
        "rejects = []\n"
        "source = p.ProducerProcess(InputSettings(paths=(sys.argv[1],)), EVERYTHING, "
        "rejects.append)\n"
        "async def run(): return [[c.id, list(c.numbers), list(c.lines)] "
        "async for c in source.chunks()]\n"
        "chunks = anyio.run(run)\n"
        "print(json.dumps([kind, chunks, [[r.line, r.reason] for r in rejects], source.counts.rows,"
        " p.Path(f'/proc/{source.pid}').exists()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(source)], capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    kind, chunks, rejects, rows, child_left = json.loads(done.stdout)
    assert kind == ("Forked" if started == "forked" else "Popen")
    wanted_rejects: list[Reject] = []
    producer = Producer(InputSettings(paths=(str(source),)), Normalizer(), wanted_rejects.append)
    wanted = [[c.id, list(c.numbers), list(c.lines)] for c in producer.chunks()]
    assert chunks == wanted and rows == 5_000
    assert rejects == [[r.line, r.reason] for r in wanted_rejects] and rejects
    assert not child_left  # reaped, not a zombie


def _alive(pid: int) -> bool:
    """Running or sleeping, not gone and not a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_the_pipe_from_the_child_is_widened_so_it_wakes_the_child_less_often() -> None:
    """The child's frames go through a PIPE_SIZE pipe (when the kernel allows that much)."""
    if int(Path("/proc/sys/fs/pipe-max-size").read_text()) < producer_process.PIPE_SIZE:
        pytest.skip("this kernel's pipe-max-size is below PIPE_SIZE")
    process = producer_process._start_child()
    try:
        assert process.stdout is not None
        size = fcntl.fcntl(process.stdout.fileno(), fcntl.F_GETPIPE_SZ)
        assert size == producer_process.PIPE_SIZE
    finally:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def test_a_forked_child_reaped_elsewhere_counts_as_ended() -> None:
    """A forked child someone else waited for: the run sees it ended (code unknown), no crash."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped here, as other code in the process might
    forked = producer_process.Forked(child.pid, io.BytesIO(), io.BytesIO())
    assert forked.poll() == forked.wait() == producer_process.UNKNOWN_EXIT
    forked.kill()  # ended: nothing to kill, and no error
