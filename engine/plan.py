"""What a run will do, shown before it does anything (terraform's plan, then apply).

The counts come from a pre-scan (the same reading as the run itself) when the input is small
enough to read twice cheaply; beyond that they are estimated from file sizes, and the plan says
which.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.batcher import InputCounts, Producer, Reject
from engine.checkpoint import Checkpoint
from engine.errors import CheckpointError
from engine.files import make_private_dir, open_private
from engine.numbers import Normalizer
from engine.report import SafeCsvWriter
from engine.settings import RunSettings

# Reading this much twice costs a few seconds at most; bigger inputs get an estimate.
PRESCAN_LIMIT_BYTES = 64 * 1024 * 1024
SAMPLE_BYTES = 1024 * 1024


@dataclass
class Plan:
    settings: RunSettings
    counts: InputCounts | None
    exact: bool
    estimated_rows: int | None
    resume: dict[str, Any] | None

    @property
    def numbers(self) -> int | None:
        if self.counts is not None:
            return self.counts.accepted
        return self.estimated_rows

    @property
    def requests(self) -> int | None:
        numbers = self.numbers
        return None if numbers is None else math.ceil(numbers / self.settings.inputs.batch_size)

    def remaining_requests(self) -> int | None:
        requests = self.requests
        if requests is None or self.resume is None:
            return requests
        return max(0, requests - int(self.resume.get("chunks_done", 0)))

    def duration_s(self) -> float | None:
        remaining, rate = self.remaining_requests(), self.settings.rate
        if remaining is None or rate is None or self.settings.rate_auto:
            return None
        return remaining / rate

    def render(self) -> str:
        s = self.settings
        rate = "auto (found by probing)" if s.rate_auto else (
            "unlimited" if s.rate is None else f"{s.rate:g} requests/s"
        )  # fmt: skip
        lines = [
            "ozbulk plan",
            f"  target       {s.base_url}{s.path}",
            f"  group        {s.group_id} of user {s.user} ({s.auth} auth)",
            f"  inputs       {', '.join(s.inputs.paths)}",
        ]
        if self.counts is not None:
            c = self.counts
            lines.append(
                f"  numbers      {c.accepted:,} to send; {c.rejected:,} rejected, "
                f"{c.duplicates:,} duplicates, of {c.rows:,} rows (pre-scan, exact)"
            )
        elif self.estimated_rows is not None:
            lines.append(f"  numbers      about {self.estimated_rows:,} rows (estimated from size)")
        else:
            lines.append("  numbers      unknown until read (standard input)")
        requests = self.remaining_requests()
        if requests is not None:
            lines.append(f"  requests     {requests:,} of up to {s.inputs.batch_size} numbers")
        lines.append(f"  pace         {rate}, {s.concurrency} at once")
        duration = self.duration_s()
        if duration is not None:
            lines.append(f"  duration     about {_human(duration)} at that rate")
        if self.resume is not None:
            r = self.resume
            lines.append(
                f"  resumes      {s.checkpoint}: {r['chunks_done']:,} chunks done, "
                f"{r['chunks_failed']:,} failed, {r['deleted']:,} numbers deleted so far"
            )
        else:
            lines.append(f"  checkpoint   {s.checkpoint} (new)")
        return "\n".join(lines)


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def input_size(paths: tuple[str, ...]) -> int | None:
    if "-" in paths:
        return None
    return sum(os.path.getsize(path) for path in paths)


def _estimate_rows(paths: tuple[str, ...]) -> int | None:
    """Rows from file sizes and the average line length of the first megabyte; None if unsure."""
    total = 0
    for path in paths:
        try:
            with open(path, "rb") as raw:
                compressed = raw.read(2) == b"\x1f\x8b"
            opener: Any = gzip.open if compressed else open
            with opener(path, "rb") as handle:
                sample = handle.read(SAMPLE_BYTES)
        except (OSError, EOFError, zlib.error):
            return None  # the run itself reports what is wrong with the file
        lines = max(1, sample.count(b"\n"))
        ratio = 4.0 if compressed else 1.0  # phone lists compress about 4:1
        total += int(os.path.getsize(path) * ratio / (len(sample) / lines)) if sample else 0
    return total


def prescan(settings: RunSettings, on_reject: Any = None) -> InputCounts:
    """Read the whole input exactly as the run will, sending nothing."""
    producer = Producer(
        settings.inputs, Normalizer(settings.inputs.country), on_reject or (lambda _: None)
    )
    for _ in producer.chunks():
        pass
    return producer.counts


def make_plan(settings: RunSettings, *, prescan_allowed: bool = True) -> Plan:
    """Pre-scan when someone is about to confirm and the input is small; otherwise estimate.

    A run started with --yes reads its input once, not twice: scripts and benchmarks get the
    estimate, a person deciding at the prompt gets the exact counts.
    """
    size = input_size(settings.inputs.paths)
    counts: InputCounts | None = None
    estimated: int | None = None
    if size is not None and prescan_allowed and size <= PRESCAN_LIMIT_BYTES:
        counts = prescan(settings)
    elif size is not None:
        estimated = _estimate_rows(settings.inputs.paths)
    return Plan(settings, counts, counts is not None, estimated, _resume_state(settings.checkpoint))


def _resume_state(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        checkpoint = Checkpoint.read(path)
    except CheckpointError:
        return None  # the run itself refuses it, with the full explanation
    try:
        return checkpoint.sums()
    finally:
        checkpoint.close()


def write_rejects(settings: RunSettings, out: Path) -> InputCounts:
    """The dry run: read everything, write rejected.csv, send nothing."""
    make_private_dir(out)
    names = settings.inputs.paths
    with open_private(out / "rejected.csv") as handle:
        writer = SafeCsvWriter(handle)  # owner-only, and no cell runs as a formula
        writer.writerow(["file", "line", "raw", "reason"])

        def on_reject(reject: Reject) -> None:
            writer.writerow([names[reject.file], reject.line, reject.raw, reject.reason])

        return prescan(settings, on_reject)
