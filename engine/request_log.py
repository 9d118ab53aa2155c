"""``--request-log FILE``: one CSV line per request, written by a thread off the event loop.

The event loop only puts a tuple on a queue (tens of nanoseconds); a thread formats the lines and
writes them, compressed with gzip when the file name ends in ``.gz``. If the disk cannot keep up,
lines beyond :data:`QUEUE_MAX` waiting are dropped (and counted in the log's last line) rather
than letting memory grow or the requests wait.

Columns: ``time`` (UTC, ms), ``chunk``, ``attempt``, ``duration_ms`` (round trip),
``wait_ms`` (for the pacer's turn), ``status`` (HTTP; ``none`` without an answer, ``success`` for
a success verdict), ``outcome`` (admitted, refused, error), ``kind`` (the verdict kind),
``retry_after_s``, ``pace`` (requests/s held when it was answered; empty = unlimited). No header
or body of a request is written: nothing secret.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import io
import logging
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from engine.errors import UsageError
from engine.telemetry import outcome_of

if TYPE_CHECKING:
    from engine.pacing import Pacer

log = logging.getLogger(__name__)

QUEUE_MAX = 200_000  # lines waiting for the thread: a few tens of MB at most
HEADER = ("time", "chunk", "attempt", "duration_ms", "wait_ms", "status", "outcome", "kind",
          "retry_after_s", "pace")  # fmt: skip
_STOP = None


class RequestLog:
    """Opened before the run sends anything (a bad path is a UsageError then)."""

    def __init__(self, path: Path, pacer: Pacer | None = None) -> None:
        self.path = path
        self._pacer = pacer
        try:
            # Closed by close(), after the thread has written the last line: no `with` fits.
            self._file: TextIO = (
                gzip.open(path, "wt", encoding="utf-8", newline="")  # noqa: SIM115
                if path.name.endswith(".gz")
                else open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
            )
        except OSError as error:
            raise UsageError(f"--request-log {path}: cannot write it ({error.strerror})") from None
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.dropped = 0
        self.written = 0
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._write_all, name="request-log", daemon=True)
        self._thread.start()

    def record(
        self, when: float, chunk: int, attempt: int, seconds: float, wait: float, status: str,
        kind: str, retry_after: float | None,
    ) -> None:  # fmt: skip
        """Called on the event loop for every answer: a tuple on the queue, nothing more."""
        if self._queue.qsize() >= QUEUE_MAX:
            self.dropped += 1
            return
        pace = None if self._pacer is None else self._pacer.rate
        self._queue.put((when, chunk, attempt, seconds, wait, status, kind, retry_after, pace))

    def _write_all(self) -> None:
        buffer = io.StringIO()
        lines = csv.writer(buffer)
        lines.writerow(HEADER)
        while True:
            item = self._queue.get()
            batch = [item]
            while item is not _STOP and not self._queue.empty() and len(batch) < 10_000:
                item = self._queue.get()
                batch.append(item)
            if self.error is None:
                for entry in batch:
                    if entry is not _STOP:
                        lines.writerow(_line(entry))
                try:
                    self._file.write(buffer.getvalue())
                except OSError as error:  # a full disk: the run goes on, the log stops here
                    self.error = error
                buffer.seek(0)
                buffer.truncate()
                self.written += len(batch) - (item is _STOP)
            if item is _STOP:
                return

    def close(self) -> None:
        """Write what is queued, then close the file (at the end of the run)."""
        self._queue.put(_STOP)
        self._thread.join()
        try:
            if self.dropped and self.error is None:
                self._file.write(f"# {self.dropped} lines dropped: the disk did not keep up\n")
            self._file.close()
        except OSError as error:
            self.error = self.error or error
        if self.error is not None:
            log.error(
                "--request-log %s: writing failed (%s); the run itself was not affected",
                self.path,
                self.error.strerror or self.error,
            )


def _line(entry: tuple[Any, ...]) -> list[Any]:
    when, chunk, attempt, seconds, wait, status, kind, retry_after, pace = entry
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="milliseconds")
    return [
        stamp, chunk, attempt, f"{seconds * 1000:.3f}", f"{wait * 1000:.3f}", status,
        outcome_of(kind), kind, "" if retry_after is None else f"{retry_after:g}",
        "" if pace is None else f"{pace:.4g}",
    ]  # fmt: skip
