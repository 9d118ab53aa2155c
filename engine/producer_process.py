"""The producer in a process of its own, so reading and normalizing use the second core.

On two cores the event loop (HTTP, pacing, the collector) and the producer (CSV parsing,
normalization, dedupe) each want most of one core; in one process they take turns under the GIL,
so the producer costs the network loop up to half its time. Here a child process
(:mod:`engine.producer_child`) runs the very same :class:`~engine.batcher.Producer` and streams
its chunks, rejects and counts to the parent through a pipe, a few chunks a frame; the pipe's
buffer is the back-pressure.

The child is forked from the command before it loads its HTTP stack (see :func:`prestart`): it
has the producer's modules already, so it costs no interpreter start and no imports (some 0.1 s
of CPU a run). Where forking is not safe (another thread runs) it is a plain ``python -m
engine.producer_child``. Never a :mod:`multiprocessing` process: that would re-import the
parent's main module (the whole CLI and HTTP stack) in the child and start a resource-tracker
process besides. The parent reads the pipe without ever blocking the event loop: it waits until
the pipe is readable, takes what is there, and cuts it into frames.

The child skips the chunks this pass does not send (the parent passes its
:class:`~engine.selection.Selection`), so a resume ships only what is left. Standard input stays
in the parent's process: a child cannot share it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, assert_never, cast

import anyio
import anyio.lowlevel
import anyio.to_thread

from engine.batcher import Producer, RejectSink
from engine.errors import InputError
from engine.records import Chunk, InputCounts, Reject
from engine.selection import Selection
from engine.settings import STATE_EVERY_ROWS, InputSettings

# The child's messages are imported with the child: a producer in this process (a small input, a
# pipe) never builds their classes.
if TYPE_CHECKING:
    from engine.producer_messages import Batch, Message

log = logging.getLogger(__name__)

# Hears of each state written: (the id of the chunk it comes before, its file name).
StateSink = Callable[[int, str], None]

YIELD_EVERY = 8
# The pipe from the child is widened to this (Linux; elsewhere it keeps its default, 64 KB there),
# and one read takes whatever it holds. A wide pipe means the child, when ahead, sleeps and is
# woken once per read of ~300 chunks instead of once per few frames: on two busy cores each sleep
# and wake-up costs far more CPU than copying the bytes. It bounds memory all the same.
PIPE_SIZE = 1 << 20
READ_SIZE = PIPE_SIZE
# Where ``engine`` itself lives, so the child imports this very copy whatever its working directory.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class ChunkSource(Protocol):
    """Where a run's chunks come from: a producer process, or a producer in this one."""

    @property
    def counts(self) -> InputCounts:
        """The producer's counts so far (``finished`` once every input is read)."""

    @property
    def skipped(self) -> int:
        """Chunks produced and not sent (the selection does not want them), so far."""

    @property
    def bytes_read(self) -> int:
        """Bytes of the input files taken so far, for progress."""

    def chunks(self) -> AsyncGenerator[Chunk, None]:
        """The chunks to send, in order; closing it stops the producer."""
        ...


class FrameReader:
    """Cuts the pipe's bytes into the child's messages (see :mod:`engine.producer_child`)."""

    def __init__(self) -> None:
        from engine.producer_messages import FRAME_HEADER

        self._header = FRAME_HEADER
        self._buffer = bytearray()
        self._start = 0

    def feed(self, data: bytes) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def messages(self) -> Iterator[Message]:
        buffer, header = self._buffer, self._header
        size = header.size
        while len(buffer) - self._start >= size:
            (length,) = header.unpack_from(buffer, self._start)
            end = self._start + size + length
            if len(buffer) < end:
                return
            with memoryview(buffer) as view:
                message = cast("Message", pickle.loads(view[self._start + size : end]))
            self._start = end
            yield message

    @property
    def pending(self) -> int:
        """Bytes of a frame begun but not yet whole."""
        return len(self._buffer) - self._start


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (_PACKAGE_ROOT, env.get("PYTHONPATH"))))
    return env


class ProducerProcess:
    """The parent's end: an async iterator of chunks, and the counts as they arrive."""

    def __init__(
        self,
        inputs: InputSettings,
        selection: Selection,
        on_reject: RejectSink,
        *,
        start: Path | None = None,
        on_state: StateSink | None = None,
        state_dir: Path | None = None,
        state_every: int = STATE_EVERY_ROWS,
    ) -> None:
        """``start``: the file of a state to continue from. With ``state_dir``, the child writes
        a state there every ``state_every`` rows or so, and ``on_state(next_chunk, file name)``
        hears of each."""
        self.counts = InputCounts()
        self.skipped = 0
        self.bytes_read = 0  # of the input files, as the child last said
        self._inputs = inputs
        self._selection = selection
        self._on_reject = on_reject
        self._start = start
        self._on_state = on_state
        self._state_dir = state_dir
        self._state_every = state_every
        self.pid: int | None = None  # the child's, once started

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        from engine.producer_messages import (
            Batch,
            Crashed,
            Done,
            InputFailed,
            Job,
            LogLine,
            StateSaved,
        )

        process = _take_child()
        self.pid = process.pid
        assert process.stdin is not None and process.stdout is not None
        job = pickle.dumps(
            Job(self._inputs, self._selection.to_bytes(),
                None if self._start is None else str(self._start),
                None if self._state_dir is None else str(self._state_dir), self._state_every)
        )  # fmt: skip
        try:
            # A large job (a long resume's skip set) fills the pipe until the child reads it.
            await anyio.to_thread.run_sync(_write_and_close, process.stdin, job)
            fd = process.stdout.fileno()
            os.set_blocking(fd, False)
            frames = FrameReader()
            while True:
                for message in frames.messages():
                    match message:
                        case Batch():
                            for chunk in self._receive(message):
                                yield chunk
                        case StateSaved(next_chunk, file):
                            if self._on_state is not None:
                                self._on_state(next_chunk, file)
                        case LogLine(level, logger, text):
                            logging.getLogger(logger).log(level, "%s", text)
                        case Done():
                            return
                        case InputFailed(reason, file, line):
                            raise InputError(reason, file=file, line=line)
                        case Crashed(trace):
                            raise RuntimeError(f"the producer process failed:\n{trace}")
                        case _:
                            assert_never(message)
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    await anyio.wait_readable(fd)
                    continue
                if not data:
                    code = process.wait()
                    raise RuntimeError(
                        f"the producer process ended without a word (exit code {code}, "
                        f"{frames.pending} bytes of a message unread)"
                    )
                frames.feed(data)
        finally:
            process.stdout.close()
            if process.poll() is None:
                process.kill()
            process.wait()

    def _receive(self, batch: Batch) -> list[Chunk]:
        self.skipped, self.bytes_read = batch.skipped, batch.bytes_read
        for file, line, raw, reason in batch.rejects:
            self._on_reject(Reject(file, line, raw, reason))
        c = self.counts
        c.rows, c.accepted, c.rejected, c.duplicates, c.chunks, c.finished = batch.counts
        return [
            Chunk(chunk_id, numbers, files, lines, payload=payload)
            for chunk_id, numbers, files, lines, payload in batch.chunks
        ]


class Child(Protocol):
    """What the run uses of its producer process: a ``subprocess.Popen``, or :class:`Forked`."""

    @property
    def pid(self) -> int: ...

    @property
    def stdin(self) -> IO[bytes] | None: ...

    @property
    def stdout(self) -> IO[bytes] | None: ...

    def poll(self) -> int | None: ...

    def wait(self) -> int: ...

    def kill(self) -> None: ...


class Forked:
    """A child forked from this process, running :func:`engine.producer_child.serve`; waited
    for like a ``Popen``."""

    def __init__(self, pid: int, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self.pid, self.stdin, self.stdout = pid, stdin, stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self._reap(0)
        assert self.returncode is not None
        return self.returncode

    def _reap(self, options: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, options)
        except ChildProcessError:  # reaped by someone else: its exit code is lost
            self.returncode = UNKNOWN_EXIT
            return
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


# What a forked child that someone else reaped is taken to have exited with.
UNKNOWN_EXIT = 255

# A child started ahead of its job (see prestart), waiting for it on its job pipe.
_prestarted: Child | None = None


def prestart() -> None:
    """Start the producer process now; the run that follows hands it its job.

    An interpreter and the producer's imports take ~0.1 s. Started before the parent imports its
    HTTP stack, the child does that while the parent does the same, instead of after it, while
    the workers wait for their first chunk. A child never given a job reads end-of-file when this
    process closes its end (at exit, or at its death, kill -9 included) and exits.
    """
    global _prestarted
    if _prestarted is None:
        _prestarted = _start_child()
        atexit.register(_discard_prestarted)


def _take_child() -> Child:
    """The prestarted child if there is one still running, else a new one."""
    global _prestarted
    process, _prestarted = _prestarted, None
    if process is not None and process.poll() is None:
        return process
    return _start_child()


def _discard_prestarted() -> None:
    global _prestarted
    process, _prestarted = _prestarted, None
    if process is not None:
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        if process.poll() is None:
            process.kill()
        process.wait()


def _start_child() -> Child:
    """Fork the producer process, or start ``python -m engine.producer_child`` where forking is
    not safe; returns as soon as it runs (no waiting on it)."""
    if _can_fork():
        child: Child = _fork_child()
        log.debug("producer process %d: forked", child.pid)
    else:
        child = _exec_child()
        log.debug("producer process %d: started as a command (another thread runs)", child.pid)
    return child


def _can_fork() -> bool:
    # A fork copies only the thread that calls it: a lock another thread held at that instant
    # would stay locked in the child for ever. The command forks before anything starts one.
    # The system's count is asked too (as CPython's own warning does): a thread a library
    # started in C is no threading.Thread.
    if not hasattr(os, "fork") or threading.active_count() != 1:
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:  # no /proc (macOS): the interpreter's count must do
        return True


def _fork_child() -> Forked:
    # Loaded here, before the fork: the child then has it, and an inline run never loads it.
    from engine import producer_child

    job_read, job_write = os.pipe()
    frames_read, frames_write = os.pipe()
    _widen(frames_read)
    for stream in (sys.stdout, sys.stderr):  # or the child's copy of a buffer would go out too
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    pid = os.fork()
    if pid == 0:  # the child: it never returns into the command's code
        code = 1
        try:
            # The job's write end stays the parent's alone: its death (kill -9 included) is
            # then the end of the child's job input, and the child ends.
            os.close(job_write)
            os.close(frames_read)
            producer_child.serve(job_read, frames_write)
            code = 0
        finally:
            os._exit(code)
    os.close(job_read)
    os.close(frames_write)
    return Forked(pid, os.fdopen(job_write, "wb"), os.fdopen(frames_read, "rb"))


def _exec_child() -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.producer_child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_child_env(),
    )
    assert process.stdout is not None
    _widen(process.stdout.fileno())
    return process


def _widen(pipe: int) -> None:
    """Ask for a PIPE_SIZE buffer; a kernel that refuses (a lower pipe-max-size) keeps its own."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe, set_size, PIPE_SIZE)


def _write_and_close(stream: Any, job: bytes) -> None:
    try:
        stream.write(job)
        stream.close()
    except BrokenPipeError:
        pass  # the child died before reading: its exit is reported when its output ends


class ProducerInProcess:
    """The same interface over a producer in this process (standard input, tests)."""

    def __init__(self, producer: Producer, selection: Selection) -> None:
        self.counts = producer.counts
        self.skipped = 0
        self._producer = producer
        self._selection = selection

    @property
    def bytes_read(self) -> int:
        return self._producer.bytes_read

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        wants = self._selection.wants
        for count, chunk in enumerate(self._producer.chunks()):
            if wants(chunk.id):
                yield chunk
            else:
                self.skipped += 1
            if count % YIELD_EVERY == 0:
                await anyio.lowlevel.checkpoint()  # the workers must not starve while it reads
