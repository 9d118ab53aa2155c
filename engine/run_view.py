"""What the display and the exporters read of a running pass, and nothing more.

:class:`engine.pipeline.Run` is one (structurally: it does not name this module). The readers
(:mod:`engine.progress`, :mod:`engine.metrics`, :mod:`engine.exporters`) are typed with
:class:`RunView` instead of the pipeline's class, so none of them imports the pipeline, which
imports them: the readers sit beside the run, not after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from engine.limits import Limit
    from engine.pacing import Pacer
    from engine.records import InputCounts, LiveStats, Totals
    from engine.telemetry import Telemetry


class PacerView(Protocol):
    """The pacer, as far as the display goes: the pace held and what sets it."""

    @property
    def pace(self) -> str: ...

    @property
    def rate(self) -> float | None: ...

    @property
    def ceiling(self) -> float | None: ...

    @property
    def forced_down(self) -> bool: ...

    @property
    def waiting_until(self) -> float | None: ...

    @property
    def limit(self) -> Limit | None: ...


class SourceView(Protocol):
    """The chunk source, as far as progress goes: the producer's counts and bytes taken."""

    @property
    def counts(self) -> InputCounts: ...

    @property
    def bytes_read(self) -> int:
        """Bytes of the input files read so far; 0 for standard input."""
        ...


class LedgerView(Protocol):
    """The collector, read: its totals and the token refreshes of this pass."""

    @property
    def totals(self) -> Totals: ...

    @property
    def token_refreshes(self) -> Callable[[], int]: ...


class RunView(Protocol):
    """One running pass, read by the display, the metrics and the request log."""

    @property
    def pacer(self) -> Pacer: ...

    @property
    def stats(self) -> LiveStats: ...

    @property
    def source(self) -> SourceView: ...

    @property
    def collector(self) -> LedgerView: ...

    @property
    def telemetry(self) -> Telemetry: ...


class Display(Protocol):
    """What shows a pass while it runs (engine.progress): a task that reads it until cancelled."""

    async def run(self, run: RunView) -> None: ...
