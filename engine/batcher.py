"""The producer: read every input, normalize, deduplicate, and cut chunks with stable ids.

A chunk's id is its ordinal among the chunks of the whole input, so the same input and settings
always give the same chunks: resume skips ids the checkpoint holds as finished. Duplicates are
detected exactly across the whole run in a roaring bitmap of E.164 integers (about 2.5 bytes a
number; a Python ``set`` needs some 70).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pyroaring import BitMap64

from engine.numbers import Normalizer, Rejected
from engine.settings import InputSettings
from engine.source import CsvSource, FileLayout

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Chunk:
    """Up to 100 distinct numbers, with where each came from (file index and line)."""

    id: int
    numbers: list[int]
    files: list[int]
    lines: list[int]
    in_doubt: bool = False


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
    file: int
    line: int
    raw: str
    reason: str


RejectSink = Callable[[Reject], None]
# How much of a rejected cell the report keeps: enough to recognise it, never megabytes.
RAW_KEEP = 80


@dataclass
class Producer:
    """Iterates the chunks of a whole input; counts and reports every row on the way."""

    settings: InputSettings
    normalizer: Normalizer
    on_reject: RejectSink
    counts: InputCounts = field(default_factory=InputCounts)
    layouts: list[FileLayout] = field(default_factory=list)

    def chunks(self) -> Iterator[Chunk]:
        size = self.settings.batch_size
        counts = self.counts
        seen = BitMap64()
        normalize = self.normalizer.normalize
        numbers: list[int] = []
        files: list[int] = []
        lines: list[int] = []
        for file_index, name in enumerate(self.settings.paths):
            source = CsvSource(name, self.settings.column, self.normalizer.looks_like_phone)
            for line, cell in source.cells():
                counts.rows += 1
                try:
                    number = normalize(cell)
                except Rejected as reject:
                    counts.rejected += 1
                    raw = (cell or "")[:RAW_KEEP]
                    self.on_reject(Reject(file_index, line, raw, reject.reason))
                    continue
                if number in seen:
                    counts.duplicates += 1
                    continue
                seen.add(number)
                counts.accepted += 1
                numbers.append(number)
                files.append(file_index)
                lines.append(line)
                if len(numbers) == size:
                    yield Chunk(counts.chunks, numbers, files, lines)
                    counts.chunks += 1
                    numbers, files, lines = [], [], []
            if source.layout is not None:
                self.layouts.append(source.layout)
        if numbers:
            yield Chunk(counts.chunks, numbers, files, lines)
            counts.chunks += 1
        counts.finished = True


def accepted_numbers(paths: tuple[str, ...], column: str | None = None) -> Iterator[str]:
    """Every number a run over ``paths`` would send, in ``+`` form: for seeding a fake group."""
    producer = Producer(InputSettings(paths=paths, column=column), Normalizer(), lambda _: None)
    for chunk in producer.chunks():
        for number in chunk.numbers:
            yield f"+{number}"
