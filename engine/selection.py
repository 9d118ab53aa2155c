"""Which chunks a pass sends: decided here once, for the in-process producer and the child alike.

A pass sends every chunk the checkpoint does not hold as done, or, with ``--retry-failed``, only
the chunks it holds as failed. The other set never matters to that pass, so a selection keeps
just the one it goes by: that is what crosses to the producer process (:meth:`Selection.to_bytes`),
and what a resume's producer state is looked up by (:meth:`Selection.first`).

It imports nothing but pyroaring and the standard library: the producer process loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyroaring import BitMap

# The first byte of the serialized form: which way the bitmap after it is read.
_ALL_BUT = b"A"  # every chunk not in the bitmap (the done set)
_ONLY = b"O"  # only the chunks in the bitmap (--retry-failed: the failed set)


@dataclass(frozen=True, slots=True)
class Selection:
    """The chunk ids this pass sends: all but ``ids``, or (``only``) just ``ids``."""

    ids: Any  # a pyroaring BitMap (untyped)
    only: bool

    @classmethod
    def build(cls, *, done: Any, failed: Any, retry_failed: bool) -> Selection:
        """From the checkpoint's done and failed sets and the --retry-failed choice."""
        return cls(failed, only=True) if retry_failed else cls(done, only=False)

    def wants(self, chunk_id: int) -> bool:
        """Whether this pass sends the chunk ``chunk_id``."""
        return (chunk_id in self.ids) is self.only

    def first(self) -> int:
        """The lowest chunk id this pass may send: a producer state before it can be used."""
        if self.only:
            return int(self.ids.min()) if self.ids else 0
        # The longest prefix 0..k-1 that is all done, by bisection on the bitmap's rank.
        done, low, high = self.ids, 0, len(self.ids)
        while low < high:
            middle = (low + high + 1) // 2
            if done.rank(middle - 1) == middle:
                low = middle
            else:
                high = middle - 1
        return low

    def to_bytes(self) -> bytes:
        """The form sent to the producer process (:meth:`from_bytes` reads it back)."""
        body: bytes = self.ids.serialize()
        return (_ONLY if self.only else _ALL_BUT) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> Selection:
        """The selection :meth:`to_bytes` wrote; ValueError if ``data`` is not one."""
        kind, body = data[:1], data[1:]
        if kind not in (_ALL_BUT, _ONLY):
            raise ValueError(f"not a serialized selection (it begins with {kind!r})")
        return cls(BitMap.deserialize(body), only=kind == _ONLY)
