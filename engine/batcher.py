"""The producer: read every input, normalize, deduplicate, and cut chunks with stable ids.

A chunk's id is its ordinal among the chunks of the whole input, so the same input and settings
always give the same chunks: resume skips ids the checkpoint holds as finished. Duplicates are
detected exactly across the whole run in a roaring bitmap of E.164 integers (about 2 bytes a
number for Indian mobiles; a Python ``set`` of ints needs some 60).

The producer works a batch of rows at a time (see :data:`engine.source.BATCH_ROWS`): the source
parses a thousand records, the normalizer decides them together, the bitmap checks them
together, and the chunks are sliced off. Per-row Python work is what limits a producer at a
million rows a second, so each stage does its per-row part inside C loops (``map``, ``str``
methods, ``list.index``) and leaves Python code to the rare rows that need it. Counts move a
batch at a time, and always add up: ``rows == accepted + rejected + duplicates`` whenever the
producer is between two chunks.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from operator import length_hint
from typing import NamedTuple

from pyroaring import BitMap64

from engine.numbers import Normalizer
from engine.records import Chunk, InputCounts, Reject
from engine.settings import STATE_EVERY_ROWS, InputSettings
from engine.source import CsvSource, FileLayout, ReadPosition, drop

log = logging.getLogger(__name__)


RejectSink = Callable[[Reject], None]
# How much of a rejected cell the report keeps: enough to recognise it, never megabytes.
RAW_KEEP = 80


class SeenNumbers:
    """Every number accepted so far, exactly, in a roaring bitmap of E.164 integers."""

    def __init__(self) -> None:
        self._bitmap = BitMap64()

    def __contains__(self, number: int) -> bool:
        return number in self._bitmap

    def mark(self, numbers: list[int]) -> list[int]:
        """Add ``numbers``; return the positions of those seen before (or earlier in the list).

        Each number costs one bitmap operation (``add_checked``: insert, or raise KeyError when
        present), driven by ``deque(map(...))`` so the loop runs in C. A duplicate stops that
        loop; the iterator's remaining length says where it stopped, and the loop resumes after
        it. Asking ``in`` first and adding after would walk the bitmap twice per number, and at
        ten million numbers each walk is a few cache misses: this is most of the producer's time.
        """
        add = self._bitmap.add_checked
        remaining = iter(numbers)
        last = len(numbers) - 1
        duplicates: list[int] = []
        while True:
            try:
                deque(map(add, remaining), maxlen=0)
            except KeyError:
                duplicates.append(last - length_hint(remaining))
            else:
                return duplicates

    def serialize(self) -> bytes:
        return bytes(self._bitmap.serialize())

    @classmethod
    def deserialize(cls, data: bytes) -> SeenNumbers:
        seen = cls()
        seen._bitmap = BitMap64.deserialize(data)
        return seen

    def serialized_size(self) -> int:
        """What the bitmap takes serialized: its containers plus their index."""
        return len(self._bitmap.serialize())

    def statistics(self) -> dict[str, object]:
        """The bitmap's own account of its containers (counts and payload bytes)."""
        return dict(self._bitmap.get_statistics())

    def __len__(self) -> int:
        return len(self._bitmap)


@dataclass(slots=True)
class ProducerState:
    """Where a producer stands between two batches: a producer started from it goes on exactly
    as this one did, so a resume need not normalize and deduplicate the rows before it again.

    Only the inputs and settings that made it may continue it (the checkpoint's identity sees to
    that). ``numbers``, ``files`` and ``lines`` are the next chunk's beginning, fewer than a
    chunk; ``counts.chunks`` is the id that chunk will have.
    """

    file_index: int
    position: ReadPosition
    counts: InputCounts
    numbers: list[int]
    files: list[int]
    lines: list[int]
    seen: bytes  # the dedupe bitmap, serialized
    layouts: list[FileLayout]  # of the files before ``file_index``


StateSink = Callable[[ProducerState], None]


class _Resumed(NamedTuple):
    """Where a producer starts reading, and the next chunk's beginning read before it."""

    file_index: int
    position: ReadPosition | None
    numbers: list[int]
    files: list[int]
    lines: list[int]


@dataclass
class Producer:
    """Iterates the chunks of a whole input; counts and reports every row on the way.

    With ``on_state``, it also hands out a :class:`ProducerState` every so many rows (after the
    chunks cut so far were taken); with ``start``, it continues from one.
    """

    settings: InputSettings
    normalizer: Normalizer
    on_reject: RejectSink
    counts: InputCounts = field(default_factory=InputCounts)
    layouts: list[FileLayout] = field(default_factory=list)
    seen: SeenNumbers = field(default_factory=SeenNumbers)
    start: ProducerState | None = None
    on_state: StateSink | None = None
    state_every: int = STATE_EVERY_ROWS
    # Bytes of the input files taken so far (see CsvSource.consumed_bytes); 0 for stdin.
    bytes_read: int = 0

    def chunks(self) -> Iterator[Chunk]:
        """The chunks of every input in order; the rows are counted and reported on the way."""
        size = self.settings.batch_size
        counts = self.counts
        first_file, position, numbers, files, lines = self._resume()
        next_state = counts.rows + self._state_gap(counts.rows)
        files_before = 0  # bytes in the files before the one being read
        for file_index, name in enumerate(self.settings.paths):
            if file_index < first_file:
                files_before += _size(name)
                continue
            source = CsvSource(name, self.settings.column, self.normalizer.looks_like_phone)
            before = replace(counts)
            start_at = position if file_index == first_file else None
            for batch_lines, cells in source.batches(start_at):
                accepted, batch_lines = self._take(file_index, batch_lines, cells)
                self.bytes_read = files_before + source.consumed_bytes()
                numbers += accepted
                lines += batch_lines
                files += [file_index] * len(accepted)
                if len(numbers) >= size:
                    yield from self._cut_full(numbers, files, lines)
                if self.on_state is not None and counts.rows >= next_state:
                    self.on_state(ProducerState(
                        file_index, source.position, replace(counts), list(numbers), list(files),
                        list(lines), self.seen.serialize(), list(self.layouts),
                    ))  # fmt: skip
                    next_state = counts.rows + self._state_gap(counts.rows)
            files_before += _size(name)
            self.bytes_read = files_before
            if source.layout is not None:
                self.layouts.append(source.layout)
            self._log_file(name, before, start_at)
        if numbers:
            yield Chunk(counts.chunks, numbers, files, lines)
            counts.chunks += 1
        counts.finished = True

    def _resume(self) -> _Resumed:
        """Take over ``start``'s counts, bitmap and layouts; where to read on, and what of the
        next chunk was read already (file 0 from its beginning and nothing, without a start)."""
        start = self.start
        if start is None:
            return _Resumed(0, None, [], [], [])
        log.info(
            "%s: resuming after line %d, at chunk %d (the rows before were read by an "
            "earlier pass)",
            self.settings.paths[start.file_index],
            start.position.line,
            start.counts.chunks,
        )
        for name in self.counts.__slots__:  # the same object: others may hold it
            setattr(self.counts, name, getattr(start.counts, name))
        self.seen = SeenNumbers.deserialize(start.seen)
        self.layouts = list(start.layouts)
        return _Resumed(
            start.file_index,
            start.position,
            list(start.numbers),
            list(start.files),
            list(start.lines),
        )

    def _take(
        self, file_index: int, lines: list[int], cells: list[str | None]
    ) -> tuple[list[int], list[int]]:
        """One batch normalized, its rejects reported, deduplicated and counted: the numbers
        it adds and their lines."""
        accepted, rejects = self.normalizer.normalize_batch(cells)
        if rejects:
            self._report(file_index, lines, cells, rejects)
            lines = drop(lines, [position for position, _ in rejects])
        duplicates = self.seen.mark(accepted)
        if duplicates:
            accepted = drop(accepted, duplicates)
            lines = drop(lines, duplicates)
        # All four counts move together, so the buckets add up between any two chunks.
        counts = self.counts
        counts.rows += len(cells)
        counts.rejected += len(rejects)
        counts.duplicates += len(duplicates)
        counts.accepted += len(accepted)
        return accepted, lines

    def _cut_full(self, numbers: list[int], files: list[int], lines: list[int]) -> Iterator[Chunk]:
        """Every full chunk at the front of the lists, in order; the rest stays in them."""
        size = self.settings.batch_size
        counts = self.counts
        full = len(numbers) - len(numbers) % size
        for begin in range(0, full, size):
            end = begin + size
            yield Chunk(counts.chunks, numbers[begin:end], files[begin:end], lines[begin:end])
            counts.chunks += 1
        del numbers[:full], files[:full], lines[:full]

    def _log_file(self, name: str, before: InputCounts, after_line: ReadPosition | None) -> None:
        """The file's line of the log: its rows (from where this pass began) and their fate."""
        counts = self.counts
        log.info(
            "%s: %d rows%s: %d accepted, %d rejected, %d duplicates",
            name,
            counts.rows - before.rows,
            f" after line {after_line.line}" if after_line is not None else "",
            counts.accepted - before.accepted,
            counts.rejected - before.rejected,
            counts.duplicates - before.duplicates,
        )

    def _state_gap(self, rows: int) -> int:
        # The gap doubles with the rows read, up to 4 times state_every: a long input makes a
        # handful of states (each a few MB: the bitmap), and a resume re-reads a bounded part.
        return min(max(self.state_every, rows), 4 * self.state_every)

    def _report(
        self,
        file_index: int,
        lines: list[int],
        cells: list[str | None],
        rejects: list[tuple[int, str]],
    ) -> None:
        for position, reason in rejects:
            raw = (cells[position] or "")[:RAW_KEEP]
            self.on_reject(Reject(file_index, lines[position], raw, reason))


def _size(path: str) -> int:
    if path == "-":
        return 0
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # reading it says what is wrong


def accepted_numbers(paths: tuple[str, ...], column: str | None = None) -> Iterator[str]:
    """Every number a run over ``paths`` would send, in ``+`` form: for seeding a fake group."""
    producer = Producer(InputSettings(paths=paths, column=column), Normalizer(), lambda _: None)
    for chunk in producer.chunks():
        for number in chunk.numbers:
            yield f"+{number}"
