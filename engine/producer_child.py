"""The producer process itself: forked by the pipeline (:func:`serve`), or run as ``python -m
engine.producer_child`` where forking is not safe.

It reads its job (the inputs and which chunk ids to send) as one pickle from a pipe (standard
input, as a command), runs the very same :class:`~engine.batcher.Producer` as an in-process run,
and writes frames to another (standard output, as a command): the messages of
:mod:`engine.producer_messages` (batches of chunks with the rejects and counts, log lines, states
written, then done, a bad input or a crash).

As a command it imports nothing of the HTTP side (aiohttp, anyio, SQLite), so it is producing
within some 50 ms of its start. Ctrl-C and SIGTERM are ignored: the parent decides how a run
stops, and closes the pipe; the child's next write then fails and it exits. Nothing else may
write to the frames' pipe or the real standard output, so ``print`` and stray library output
are sent to standard error.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import signal
import traceback
from array import array
from pathlib import Path
from typing import BinaryIO

from engine import state_file
from engine.batcher import Producer, ProducerState
from engine.errors import InputError
from engine.files import PRIVATE_FILE, make_private_dir
from engine.numbers import Normalizer, formatter, numbers_json
from engine.producer_messages import (
    FRAME_HEADER,
    Batch,
    ChunkFields,
    CountFields,
    Crashed,
    Done,
    InputFailed,
    Job,
    LogLine,
    Message,
    RejectFields,
    StateSaved,
)
from engine.records import InputCounts
from engine.selection import Selection

# Chunks per batch message: enough that the parent, when it waits for chunks, is woken once
# per 3,200 numbers rather than per few hundred; few enough that its first chunks come within
# some 5 ms of the first row read.
CHUNKS_PER_MESSAGE = 32
REJECTS_PER_MESSAGE = 1024

log = logging.getLogger(__name__)


class FrameWriter:
    """Length-prefixed pickles on a binary stream, flushed per message."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def send(self, message: Message) -> None:
        body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._stream.write(FRAME_HEADER.pack(len(body)))
        self._stream.write(body)
        self._stream.flush()


class _ShipLogs(logging.Handler):
    """Sends the child's log records to the parent, whose handlers format and redact them."""

    def __init__(self, frames: FrameWriter) -> None:
        super().__init__()
        self._frames = frames

    def emit(self, record: logging.LogRecord) -> None:
        self._frames.send(LogLine(record.levelno, record.name, record.getMessage()))


def _counts(counts: InputCounts) -> CountFields:
    return (counts.rows, counts.accepted, counts.rejected, counts.duplicates, counts.chunks,
            counts.finished)  # fmt: skip


def write_state(folder: Path, state: ProducerState) -> str:
    """Write ``state`` durably into ``folder`` (a new file, then renamed); its file name.

    The folder and the file are the owner's alone: the state holds phone numbers. The format is
    data only (:mod:`engine.state_file`), so a file planted in the folder cannot run code.
    """
    make_private_dir(folder)
    name = f"state-{state.counts.chunks}{state_file.SUFFIX}"
    partial = folder / f"{name}.partial"
    # O_NOFOLLOW: a link planted under this name must not turn the write onto another file.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    descriptor = os.open(partial, flags, PRIVATE_FILE)
    with open(descriptor, "wb") as handle:
        handle.write(state_file.encode(state))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, folder / name)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself survives a power cut
    finally:
        os.close(descriptor)
    return name


def load_state(path: Path) -> ProducerState | None:
    """The state stored in ``path``, or None (said in the log) if it is not one to trust.

    Damaged, crafted, of an older format (a pickle) or missing: each means reading the input
    from its start, which costs time and nothing else.
    """
    try:
        with open(path, "rb") as handle:
            return state_file.decode(handle.read())
    except (OSError, state_file.MalformedState) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        log.warning("%s: cannot use this producer state (%s); reading the input from its start",
                    path, reason)  # fmt: skip
        return None


def produce(job: Job, frames: FrameWriter) -> None:
    """Run the producer over the job's inputs and ship every wanted chunk, with counts,
    rejects and (if asked) states."""
    inputs, wanted = job.inputs, Selection.from_bytes(job.selection).wants
    rejects: list[RejectFields] = []
    chunks: list[ChunkFields] = []
    start = None if job.start is None else load_state(Path(job.start))
    # Every chunk before a state was finished when the run that stored it stopped.
    skipped = 0 if start is None else start.counts.chunks

    def flush() -> None:
        nonlocal chunks, rejects
        frames.send(Batch(chunks, rejects, _counts(producer.counts), skipped, producer.bytes_read))
        chunks, rejects = [], []

    def send_state(state: ProducerState) -> None:
        assert job.state_dir is not None
        flush()  # the chunks and rejects before it go first
        try:
            name = write_state(Path(job.state_dir), state)
        except OSError as error:  # a resume then re-reads more of the input: no reason to stop
            log.warning("could not store a producer state in %s: %s", job.state_dir, error)
            return
        frames.send(StateSaved(state.counts.chunks, name))

    producer = Producer(
        inputs,
        Normalizer(inputs.country),
        lambda reject: rejects.append((reject.file, reject.line, reject.raw, reject.reason)),
        start=start,
        on_state=None if job.state_dir is None else send_state,
        state_every=job.state_every,
    )
    write = formatter(inputs.number_format, producer.normalizer.country_code)
    for chunk in producer.chunks():
        if wanted(chunk.id):
            # The request's array is encoded here, on the producer's core, not the loop's; the
            # numbers and their origins travel as machine arrays, which unpickle as one copy
            # each instead of three hundred int objects.
            payload = numbers_json(chunk.numbers, write)
            chunks.append((chunk.id, array("q", chunk.numbers), array("I", chunk.files),
                           array("q", chunk.lines), payload))  # fmt: skip
        else:
            skipped += 1
        if len(chunks) >= CHUNKS_PER_MESSAGE or len(rejects) >= REJECTS_PER_MESSAGE:
            flush()
    flush()
    frames.send(Done())


def main() -> None:
    """``python -m engine.producer_child``: the job on stdin, the frames to the real stdout."""
    serve(0, os.dup(1))


def serve(job: int, out: int) -> None:
    """Read the job from descriptor ``job``, write the frames to ``out``; never raise.

    A forked child (see :mod:`engine.producer_process`) starts here too, with pipes of its own.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A forked child comes with the command's objects, and with its collector paused while the
    # command loads (engine.cli.run): what it came with is set aside for good (never walked,
    # so never copied on write), and it collects its own garbage like any process.
    gc.freeze()
    gc.enable()
    # Nothing but the frames may reach the parent through ``out``, nor its standard output
    # through fd 1: a stray print goes to stderr.
    os.dup2(2, 1)
    stream = os.fdopen(out, "wb", buffering=1 << 17)
    frames = FrameWriter(stream)
    root = logging.getLogger()
    root.handlers[:] = [_ShipLogs(frames)]
    root.setLevel(logging.INFO)
    try:
        with os.fdopen(job, "rb") as job_stream:
            request: Job = pickle.loads(job_stream.read())
        produce(request, frames)
    except InputError as error:
        frames.send(InputFailed(error.reason, error.file, error.line))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent stopped listening: it is stopping or gone
    except Exception:  # a bug, not the input's fault: the parent reports it as one
        with contextlib.suppress(OSError):
            frames.send(Crashed(traceback.format_exc()))
    finally:
        with contextlib.suppress(OSError):
            stream.close()


if __name__ == "__main__":
    main()
