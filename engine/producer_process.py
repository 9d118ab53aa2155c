"""The producer in a process of its own, so reading and normalizing use the second core.

On two cores the event loop (HTTP, pacing, the collector) and the producer (CSV parsing,
normalization, dedupe) each want most of one core; in one process they take turns under the GIL,
so the producer costs the network loop up to half its time. Here a child process runs the very
same :class:`~engine.batcher.Producer` and streams its chunks, rejects and counts to the parent
through a pipe, a few chunks a message; the pipe's buffer is the back-pressure.

The child skips the chunks the checkpoint holds as finished (the parent passes their ids), so a
resume ships only what is left. It ignores Ctrl-C and SIGTERM (the parent decides how to stop)
and ends when the parent closes the pipe or dies. Standard input stays in the parent's process:
a child cannot share it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import signal
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import anyio
import anyio.lowlevel
import orjson
from pyroaring import BitMap

from engine.batcher import Chunk, InputCounts, Producer, Reject, RejectSink
from engine.errors import InputError
from engine.numbers import Normalizer, formatter
from engine.settings import InputSettings

log = logging.getLogger(__name__)

CHUNKS_PER_MESSAGE = 8
YIELD_EVERY = 8
REJECTS_PER_MESSAGE = 1024


@dataclass(frozen=True)
class Selection:
    """Which chunk ids to send: all but ``skip``, or (retry-failed) only ``only``."""

    skip: bytes
    only: bytes | None

    def predicate(self) -> Any:
        if self.only is not None:
            only = BitMap.deserialize(self.only)
            return only.__contains__
        skip = BitMap.deserialize(self.skip)
        return lambda chunk_id: chunk_id not in skip


class _ShipLogs(logging.Handler):
    """Sends the child's log records to the parent, whose handlers format and redact them."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        self._send(("log", record.levelno, record.name, record.getMessage()))


def _counts(counts: InputCounts) -> tuple[int, int, int, int, int, bool]:
    return (counts.rows, counts.accepted, counts.rejected, counts.duplicates, counts.chunks,
            counts.finished)  # fmt: skip


def child_main(connection: Connection, inputs: InputSettings, selection: Selection) -> None:
    """The child's whole life: produce, ship, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def send(message: Any) -> None:
        connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    root = logging.getLogger()
    root.handlers[:] = [_ShipLogs(send)]
    root.setLevel(logging.INFO)
    try:
        wanted = selection.predicate()
        rejects: list[tuple[int, int, str, str]] = []
        producer = Producer(
            inputs,
            Normalizer(inputs.country),
            lambda reject: rejects.append((reject.file, reject.line, reject.raw, reject.reason)),
        )
        write = formatter(inputs.number_format, producer.normalizer.country_code)
        chunks: list[tuple[int, list[int], list[int], list[int], bool, bytes]] = []
        skipped = 0
        for chunk in producer.chunks():
            if wanted(chunk.id):
                # The request's array is encoded here, on the producer's core, not the loop's.
                payload = orjson.dumps(list(map(write, chunk.numbers)))
                chunks.append((chunk.id, chunk.numbers, chunk.files, chunk.lines, False, payload))
            else:
                skipped += 1
            if len(chunks) >= CHUNKS_PER_MESSAGE or len(rejects) >= REJECTS_PER_MESSAGE:
                send(("batch", chunks, rejects, _counts(producer.counts), skipped))
                chunks, rejects = [], []
        send(("batch", chunks, rejects, _counts(producer.counts), skipped))
        send(("done", producer.layouts))
    except InputError as error:
        send(("error", error.reason, error.file, error.line))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent stopped listening: it is stopping or gone
    except Exception:  # a bug, not the input's fault: the parent reports it as one
        with contextlib.suppress(OSError):
            send(("crash", traceback.format_exc()))
    finally:
        connection.close()


class ProducerProcess:
    """The parent's end: an async iterator of chunks, and the counts as they arrive."""

    def __init__(self, inputs: InputSettings, selection: Selection, on_reject: RejectSink) -> None:
        self.counts = InputCounts()
        self.skipped = 0
        self.layouts: list[Any] = []
        self._inputs = inputs
        self._selection = selection
        self._on_reject = on_reject

    async def chunks(self) -> AsyncIterator[Chunk]:
        context = multiprocessing.get_context("spawn")  # fork would copy a running event loop
        connection, child_end = context.Pipe(duplex=False)
        process = context.Process(
            target=child_main, args=(child_end, self._inputs, self._selection), daemon=True,
            name="ozbulk-producer",
        )  # fmt: skip
        process.start()
        child_end.close()
        try:
            while True:
                if not connection.poll():
                    await anyio.wait_readable(connection.fileno())
                try:
                    message = pickle.loads(connection.recv_bytes())
                except EOFError:
                    raise RuntimeError("the producer process ended without a word") from None
                kind = message[0]
                if kind == "batch":
                    for chunk in self._receive(message):
                        yield chunk
                elif kind == "log":
                    logging.getLogger(message[2]).log(message[1], "%s", message[3])
                elif kind == "done":
                    self.layouts = message[1]
                    return
                elif kind == "error":
                    _, reason, file, line = message
                    raise InputError(reason, file=file, line=line)
                else:
                    raise RuntimeError(f"the producer process failed:\n{message[1]}")
        finally:
            connection.close()
            if process.is_alive():
                process.kill()
            process.join(timeout=5)

    def _receive(self, message: Any) -> list[Chunk]:
        _, chunks, rejects, counts, self.skipped = message
        for file, line, raw, reason in rejects:
            self._on_reject(Reject(file, line, raw, reason))
        c = self.counts
        c.rows, c.accepted, c.rejected, c.duplicates, c.chunks, c.finished = counts
        return [Chunk(*fields) for fields in chunks]


class ProducerInProcess:
    """The same interface over a producer in this process (standard input, tests)."""

    def __init__(self, producer: Producer, wanted: Any) -> None:
        self.counts = producer.counts
        self.skipped = 0
        self._producer = producer
        self._wanted = wanted

    @property
    def layouts(self) -> list[Any]:
        return list(self._producer.layouts)

    async def chunks(self) -> AsyncIterator[Chunk]:
        for count, chunk in enumerate(self._producer.chunks()):
            if self._wanted(chunk.id):
                yield chunk
            else:
                self.skipped += 1
            if count % YIELD_EVERY == 0:
                await anyio.lowlevel.checkpoint()  # the workers must not starve while it reads
