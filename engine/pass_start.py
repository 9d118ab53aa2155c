"""What a pass starts from: the checkpoint as the earlier passes left it, read once.

The run loads it before anything is sent and hands each stage its part: the selection the done
and failed chunks, the collector the totals and what earlier passes left in doubt, the pacer the
learned limit, the auth the tokens minted within the hour, telemetry its figures, the guard its
decision. Nothing else reads the checkpoint to start a pass. The collector (its only writer)
reads it again twice, for what a pass adds: the sums after a failed write (what a resume will
find) and the finished chunks when it settles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pyroaring import FrozenBitMap

from engine.checkpoint import DONE, FAILED, Checkpoint
from engine.limits import Limit


@dataclass(frozen=True, slots=True)
class PassStart:
    """The checkpoint at the start of a pass (empty for a new run)."""

    done: FrozenBitMap
    failed: FrozenBitMap
    # The failed chunks whose row says in doubt: resending one takes it out of the in-doubt count.
    failed_in_doubt: FrozenBitMap
    # What the last pass that ended in order left in doubt (see engine.collector).
    in_doubt: FrozenBitMap
    # The last pass's horizon and unsettled record: up only if that pass died.
    horizon: int
    unsettled: Any
    counters: Mapping[str, Any]
    sums: Mapping[str, int]
    # What the input held when last stored (``ozbulk status`` tells the chunks left from it).
    input: Mapping[str, Any]
    telemetry: Any
    # Wall-clock times of the tokens earlier passes minted: the budget is per hour, not per pass.
    token_issued_at: tuple[float, ...]
    # The limit an earlier pass learned: pacing starts there instead of finding it again.
    server_limit: Limit | None

    @classmethod
    def load(cls, checkpoint: Checkpoint) -> PassStart:
        counters: dict[str, Any] = checkpoint.meta("counters", {}) or {}
        return cls(
            done=FrozenBitMap(checkpoint.ids(DONE)),
            failed=FrozenBitMap(checkpoint.ids(FAILED)),
            failed_in_doubt=FrozenBitMap(checkpoint.ids(FAILED, in_doubt=True)),
            in_doubt=FrozenBitMap(checkpoint.meta("in_doubt", []) or []),
            horizon=checkpoint.meta("horizon", 0),
            unsettled=checkpoint.meta("unsettled"),
            counters=MappingProxyType(counters),
            sums=MappingProxyType(checkpoint.sums()),
            input=MappingProxyType(checkpoint.meta("input") or {}),
            telemetry=checkpoint.meta("telemetry"),
            token_issued_at=tuple(counters.get("token_issued_at", [])),
            server_limit=Limit.from_json(counters.get("server_limit")),
        )

    @property
    def passes(self) -> int:
        """How many passes came before this one."""
        passes: int = self.counters.get("passes", 0)
        return passes
