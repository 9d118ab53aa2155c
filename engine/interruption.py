"""Ctrl-C and SIGTERM outside the run itself: exit 130, with a line that says what was sent.

While a run sends, :func:`engine.pipeline.watch_signals` turns both signals into a graceful stop.
Before that (start-up, the pre-scan, the plan, the prompt) and after it, Python's defaults
would apply: SIGINT raises KeyboardInterrupt, but SIGTERM kills the process silently with
status 143. :func:`install` makes SIGTERM raise KeyboardInterrupt too, so every interruption
ends the same way, and :func:`describe` says whether anything had been sent by then.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType


class _Phase:
    """How far ``ozbulk delete`` has come: whether requests may have gone out yet."""

    checkpoint: Path | None = None  # set when the run that may send begins
    signal_name = "SIGINT"


def install() -> None:
    """SIGTERM raises KeyboardInterrupt, as SIGINT does (the run installs its own handlers)."""
    if threading.current_thread() is threading.main_thread():  # only there can Python catch it
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _Phase.signal_name = signal.Signals(signum).name
    raise KeyboardInterrupt(_Phase.signal_name)


def sending_begins(checkpoint: Path) -> None:
    """From here on an interruption may come after requests went out, recorded in
    ``checkpoint``."""
    _Phase.checkpoint = checkpoint


def describe(error: KeyboardInterrupt) -> str:
    """The line printed for an interruption: which signal, and what had been sent."""
    name = str(error) or _Phase.signal_name
    path = _Phase.checkpoint
    if path is None:
        return f"interrupted ({name}) before anything was sent"
    sent = _recorded(path)
    if sent is None:
        return (
            f"interrupted ({name}); what was sent is recorded in {path} "
            f"(ozbulk status {path}); re-run the same command to resume"
        )
    chunks, numbers = sent
    return (
        f"interrupted ({name}); {chunks:,} chunks ({numbers:,} numbers) are recorded as sent "
        f"in {path} so far; re-run the same command to resume"
    )


def _recorded(path: Path) -> tuple[int, int] | None:
    import sqlite3

    from engine.checkpoint import Checkpoint  # only now: start-up stays light
    from engine.errors import CheckpointError

    try:
        checkpoint = Checkpoint.read(path)
    except (CheckpointError, OSError):
        return None
    try:
        sums = checkpoint.sums()
    except sqlite3.Error:
        return None
    finally:
        checkpoint.close()
    return sums["chunks_finished"], sums["sent"] + sums["failed_numbers"]
