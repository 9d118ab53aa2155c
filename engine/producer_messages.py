"""The wire between the pipeline and its producer process (:mod:`engine.producer_child`).

The parent writes one pickled :class:`Job` to the child's standard input. The child answers on
its standard output with frames: a 4-byte little-endian length (:data:`FRAME_HEADER`), then one
pickled message, each a small record below:

:class:`Batch`        a few chunks, the rejects since the last batch, the producer's counts, the
                      chunks skipped so far, the bytes of input taken (for progress)
:class:`LogLine`      a log record, formatted and redacted by the parent
:class:`StateSaved`   a :class:`~engine.batcher.ProducerState` was written to ``file`` in the
                      job's state folder, after every chunk before ``next_chunk`` was sent
:class:`Done`         every input read
:class:`InputFailed`  an input the producer cannot use
:class:`Crashed`      a bug: the parent reports it as one

The numbers in a batch stay plain tuples of machine arrays (:data:`ChunkFields`): they unpickle
as one copy each instead of a hundred int objects, and a record per chunk would cost the parent's
loop an object per chunk more. The records live in a module of their own, not in the child's: the
child runs as ``__main__``, and a class pickled from there could not be found by the parent.
Like the child, this imports nothing of the HTTP side.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import Any

from engine.settings import STATE_EVERY_ROWS, InputSettings

FRAME_HEADER = struct.Struct("<I")

# A chunk as it crosses: id, numbers, file indexes, lines, the request's JSON array.
ChunkFields = tuple[int, "array[int]", "array[int]", "array[int]", bytes]
# A reject as it crosses: file index, line, raw cell, reason.
RejectFields = tuple[int, int, str, str]
# The producer's InputCounts: rows, accepted, rejected, duplicates, chunks, finished.
CountFields = tuple[int, int, int, int, int, bool]


class _Wire:
    """Pickled as its class and its fields' values, as cheaply as a tuple.

    A slotted dataclass otherwise pickles through its generated ``__getstate__`` and
    ``__setstate__``, which cost some 10 µs a message each way: for a batch, a fifth more than
    the tuple it replaced.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[type[_Wire], tuple[Any, ...]]:
        fields: tuple[str, ...] = self.__slots__  # a dataclass's slots: its fields, in order
        return type(self), tuple([getattr(self, name) for name in fields])


@dataclass(frozen=True, slots=True)
class Job:
    """What the parent asks for: the inputs, which chunk ids to send, and where to begin."""

    inputs: InputSettings
    selection: bytes  # which chunk ids to send: a serialized engine.selection.Selection
    start: str | None = None  # the file of a ProducerState to continue from
    state_dir: str | None = None  # where to write states; None: write none
    state_every: int = STATE_EVERY_ROWS  # rows between states, at first


@dataclass(frozen=True, slots=True)
class Batch(_Wire):
    chunks: list[ChunkFields]
    rejects: list[RejectFields]
    counts: CountFields
    skipped: int
    bytes_read: int


@dataclass(frozen=True, slots=True)
class LogLine(_Wire):
    level: int
    logger: str
    text: str


@dataclass(frozen=True, slots=True)
class StateSaved(_Wire):
    next_chunk: int
    file: str


@dataclass(frozen=True, slots=True)
class Done(_Wire):
    pass


@dataclass(frozen=True, slots=True)
class InputFailed(_Wire):
    reason: str
    file: str | None
    line: int | None


@dataclass(frozen=True, slots=True)
class Crashed(_Wire):
    traceback: str


Message = Batch | LogLine | StateSaved | Done | InputFailed | Crashed
