"""Where the producer runs (``--producer auto``): a child process on another core, or inline.

The child reads, normalizes and deduplicates on a second core while the parent sends, but it is
not free: an interpreter and its imports (~0.1 s of CPU before the first chunk), and every chunk
pickled, piped and unpickled. It pays for itself only when there is much to read and a second
core to read it on. So ``auto`` takes the child when

- the input may hold enough rows for a producer state (see ``--producer-state-rows``): states,
  which let a resume skip re-reading, are stored by the child only, so a large input always gets
  it, whatever the machine; or a gzip file or a pipe, whose rows cannot be told from a size;
- otherwise, when the input is at least :data:`CHILD_MIN_BYTES` and this process may run on
  two cores or more.

The load average is not asked. Measured against nginx at 200k rows on two shared cores, the
child against inline: at a 1-minute load of ~1.7 (much of it the benchmark's own runs) the child
was clearly faster in wall time; at loads of 6 to 10 inline was no faster (0.94 of the child's
numbers/s, median of 5 pairs), for 10 % less CPU. The scheduler shares the cores by task, so two
processes get a larger share of a busy machine than one. A threshold on the load would have
chosen inline where the child wins.

Standard input is always read inline (the pipeline's own rule: a pipe cannot be handed over).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from engine.settings import InputSettings
from engine.source import GZIP_MAGIC, is_gzip

PRODUCER_CHOICES = ("auto", "process", "inline")
DEFAULT_PRODUCER = "auto"
# Below this, the child's start costs more than the parent reading the whole input itself
# (~2.5 µs a row of ~30 bytes inline: 1 MB is ~0.1 s).
CHILD_MIN_BYTES = 1 << 20
# The shortest row that can hold a number ("9876543210\n"): bytes ÷ this bounds the rows above.
SHORTEST_ROW_BYTES = 11


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ProducerChoice:
    in_child: bool
    reason: str


def choose_producer(
    choice: str, inputs: InputSettings, state_rows: int, cores: int | None = None
) -> ProducerChoice:
    """Decide where the producer runs for ``--producer choice``; the reason is for the log."""
    if choice == "process":
        return ProducerChoice(True, "--producer process")
    if choice == "inline":
        return ProducerChoice(False, "--producer inline")
    if inputs.from_stdin:
        return ProducerChoice(False, "standard input is read inline")
    size, hidden = _input_bytes(inputs.paths)
    if hidden:
        return ProducerChoice(True, "a gzip input or a pipe: its rows cannot be told from a size")
    if size // SHORTEST_ROW_BYTES >= state_rows:
        return ProducerChoice(True, f"{_mb(size)} of input: large enough for producer states")
    if size < CHILD_MIN_BYTES:
        return ProducerChoice(False, f"{_mb(size)} of input: less than the child costs to start")
    cores = usable_cores() if cores is None else cores
    if cores < 2:
        return ProducerChoice(False, f"{_mb(size)} of input, but one usable core")
    return ProducerChoice(True, f"{_mb(size)} of input, {cores} usable cores")


def _input_bytes(paths: tuple[str, ...]) -> tuple[int, bool]:
    """The inputs' total size, and whether any may hide its rows (gzip, or not a regular file).

    Only regular files are opened: a pipe or FIFO (``<(zcat ...)``) opened and closed here
    would lose bytes or leave its writer without a reader. A file that cannot be read counts
    0 (reading it says what is wrong).
    """
    total, hidden = 0, False
    for path in paths:
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                hidden = True
                continue
            with open(path, "rb") as handle:
                hidden = hidden or is_gzip(handle.read(len(GZIP_MAGIC)))
                total += os.fstat(handle.fileno()).st_size
        except OSError:
            continue
    return total, hidden


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
