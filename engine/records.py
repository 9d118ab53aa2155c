"""The records that pass between the stages, in one place that imports no stage.

::

    producer ──Chunk──► workers ──ChunkResult──► collector ──Totals──► summary
       │ InputCounts, Reject     LiveStats, Verdict

A record says what happened; the stages decide what it means. Keeping them here lets the ledger
(``checkpoint``, ``collector``) name a chunk or a verdict without importing the transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Chunk:
    """Up to 100 distinct numbers, with where each came from (file index and line).

    The sequences are lists from an in-process producer and ``array`` objects from the producer
    process (cheaper to ship); either way they are only read. Whether a chunk goes out in doubt
    is the collector's to know (it keeps what earlier passes left), not the chunk's.
    """

    id: int
    numbers: Sequence[int]
    files: Sequence[int]
    lines: Sequence[int]
    # The numbers as a JSON array in the request's form, when the producer process made it.
    payload: bytes = b""


@dataclass(slots=True)
class InputCounts:
    """What the producer has read so far; the buckets add up to ``rows``."""

    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    chunks: int = 0
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that will not be sent: its file (index in the inputs), line, raw cell and why."""

    file: int
    line: int
    raw: str
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """A successful answer: how many numbers the API accepted, which it refused, how many went."""

    success: int
    error: list[str]
    deleted: int


@dataclass(slots=True)
class LiveStats:
    """Counters the workers bump and the progress display reads; one event loop, no locks."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    in_flight: int = 0
    transport_errors: int = 0
    server_errors: int = 0


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """A chunk with its verdict, or with the reason it failed after every attempt."""

    chunk: Chunk
    attempts: int
    verdict: Verdict | None
    reason: str = ""
    # Set when an attempt of this pass may have been applied and the chunk was sent again.
    doubt: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict is None


@dataclass(slots=True)
class Totals:
    """Outcomes of the chunks finished so far, this pass and earlier ones together."""

    chunks_done: int = 0
    chunks_failed: int = 0
    sent: int = 0
    success: int = 0
    error: int = 0
    deleted: int = 0
    in_doubt_chunks: int = 0
    # Of the numbers not found, those of chunks in doubt: an earlier attempt probably deleted them.
    probably_deleted_earlier: int = 0
    failed_numbers: int = 0
    numbers_finished_this_pass: int = 0

    @property
    def not_found(self) -> int:
        """Numbers the API answered for that it neither deleted nor refused: not in the group."""
        return self.sent - self.deleted - self.error
