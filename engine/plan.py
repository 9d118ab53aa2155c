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

from engine.batcher import Producer
from engine.checkpoint import Checkpoint, _explain_difference
from engine.errors import CheckpointError, CheckpointMismatch
from engine.files import csv_file, make_private_dir
from engine.limits import Limit
from engine.numbers import Normalizer
from engine.progress import Expected
from engine.records import InputCounts, Reject
from engine.report import REJECTED_HEADER
from engine.settings import RunSettings
from engine.source import GZIP_MAGIC, is_gzip

# Reading this much twice costs a few seconds at most; bigger inputs get an estimate.
PRESCAN_LIMIT_BYTES = 64 * 1024 * 1024
SAMPLE_BYTES = 1024 * 1024


@dataclass
class Plan:
    """The run that follows, exactly: fresh, resumed, restarted, or re-sending failed chunks."""

    settings: RunSettings
    counts: InputCounts | None
    exact: bool
    estimated_rows: int | None
    resume: dict[str, Any] | None
    restart: bool = False
    input_bytes: int | None = None
    from_checkpoint: bool = False  # the counts are an earlier pass's complete reading

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
        if self.settings.retry_failed:
            return 0 if self.resume is None else int(self.resume.get("chunks_failed", 0))
        requests = self.requests
        if requests is None or self.resume is None:
            return requests
        return max(0, requests - int(self.resume.get("chunks_done", 0)))

    @property
    def server_limit(self) -> Limit | None:
        """The server's limit as an earlier pass of this run learned it."""
        return None if self.resume is None else Limit.from_json(self.resume.get("server_limit"))

    def duration_s(self) -> float | None:
        """At the ceiling, or at the limit an earlier pass learned if that is lower."""
        remaining = self.remaining_requests()
        limit = self.server_limit
        rates = [rate for rate in (self.settings.rate, limit and limit.per_second) if rate]
        if remaining is None or not rates:
            return None
        return remaining / min(rates)

    def expected(self) -> Expected:
        """What the progress display knows before the first number is read."""
        retry = None
        if self.settings.retry_failed:
            retry = 0 if self.resume is None else int(self.resume.get("failed_numbers", 0))
        return Expected(
            total=self.numbers,
            exact=self.exact,
            input_bytes=self.input_bytes,
            pass_numbers=retry,
        )

    def render(self) -> str:
        s = self.settings
        lines = [
            "ozbulk plan",
            f"  target       {s.base_url_shown}{s.path}",
            f"  group        {s.group_id} of user {s.user} ({s.auth} auth)",
            f"  inputs       {', '.join(s.inputs.paths)}",
        ]
        if self.counts is not None:
            c = self.counts
            how = (
                "exact, from the checkpoint's complete reading"
                if self.from_checkpoint
                else "pre-scan, exact"
            )
            lines.append(
                f"  numbers      {c.accepted:,} to send; {c.rejected:,} rejected, "
                f"{c.duplicates:,} duplicates, of {c.rows:,} rows ({how})"
            )
        elif self.estimated_rows is not None:
            lines.append(f"  numbers      about {self.estimated_rows:,} rows (estimated from size)")
        else:
            lines.append("  numbers      unknown until read (standard input)")
        lines += self._work_lines()
        lines.append(f"  pace         {s.pace_words}; {s.concurrency} at once")
        limit = self.server_limit
        if limit is not None:
            lines.append(f"  server limit {limit.describe()} (learned by an earlier pass)")
        duration = self.duration_s()
        if duration is not None:
            lines.append(f"  duration     about {_human(duration)} at that rate")
        elif self.remaining_requests():
            lines.append("  duration     unknown until the server's limit is learned")
        lines.append(self._checkpoint_line())
        return "\n".join(lines)

    def _work_lines(self) -> list[str]:
        s, r = self.settings, self.resume
        if s.retry_failed:
            failed = 0 if r is None else int(r.get("chunks_failed", 0))
            numbers = 0 if r is None else int(r.get("failed_numbers", 0))
            return [
                f"  requests     {failed:,} (--retry-failed: only the chunks that failed, "
                f"{numbers:,} numbers)"
            ]
        requests = self.remaining_requests()
        if requests is None:
            return []
        about = "" if self.exact else "about "
        return [f"  requests     {about}{requests:,} of up to {s.inputs.batch_size} numbers"]

    def _checkpoint_line(self) -> str:
        s, r = self.settings, self.resume
        if self.restart and s.checkpoint.exists():
            return (
                f"  checkpoint   {s.checkpoint} (new: --restart moves the old one aside, "
                "keeping it)"
            )
        if r is None:
            return f"  checkpoint   {s.checkpoint} (new)"
        return (
            f"  resumes      {s.checkpoint}: {r['chunks_done']:,} chunks done, "
            f"{r['chunks_failed']:,} failed, {r['deleted']:,} numbers deleted so far"
        )


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
                compressed = is_gzip(raw.read(len(GZIP_MAGIC)))
            with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
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


def make_plan(
    settings: RunSettings, *, prescan_allowed: bool = True, restart: bool = False
) -> Plan:
    """Pre-scan when someone is about to confirm and the input is small; otherwise estimate.

    A run started with --yes reads its input once, not twice: scripts and benchmarks get the
    estimate, a person deciding at the prompt gets the exact counts. A resume whose earlier
    pass read the input to its end knows the exact counts from the checkpoint.

    Checks first: a checkpoint that belongs to another run is refused here, before any plan is
    shown (with --restart it is moved aside later, after the confirmation).
    """
    size = input_size(settings.inputs.paths)
    resume = None if restart else check_checkpoint(settings)
    counts: InputCounts | None = None
    estimated: int | None = None
    stored = (resume or {}).get("input") or {}
    if stored.get("finished"):
        counts = InputCounts(
            rows=stored.get("rows", 0),
            accepted=stored.get("accepted", 0),
            rejected=stored.get("rejected", 0),
            duplicates=stored.get("duplicates", 0),
            chunks=stored.get("chunks", 0),
            finished=True,
        )
        return Plan(settings, counts, True, None, resume, restart, size, from_checkpoint=True)
    if size is not None and prescan_allowed and size <= PRESCAN_LIMIT_BYTES:
        counts = prescan(settings)
    elif size is not None:
        estimated = _estimate_rows(settings.inputs.paths)
    return Plan(settings, counts, counts is not None, estimated, resume, restart, size)


def check_checkpoint(settings: RunSettings) -> dict[str, Any] | None:
    """The state of the run's checkpoint, read-only; None when there is none yet.

    Raises what opening it for the run would: another run's checkpoint, a newer schema, a
    damaged file. Nothing is written, so a refused or unconfirmed run leaves no trace.
    """
    path = settings.checkpoint
    if not path.exists():
        return None
    if path.is_dir():
        raise CheckpointError(
            f"the checkpoint {path} is a folder; pass a file name to --checkpoint", path=str(path)
        )
    if path.stat().st_size == 0:
        return None  # what a crash before the first commit leaves: the run starts afresh
    checkpoint = Checkpoint.read(path)
    try:
        identity = checkpoint.identity()
        if not identity:
            return None
        wanted = run_identity_of(settings)
        if identity != wanted:
            raise CheckpointMismatch(
                f"the checkpoint {path} belongs to another run "
                f"({_explain_difference(identity, wanted)}); re-run with --restart to start "
                "over (the old file is kept aside), or pass another --checkpoint",
                path=str(path),
            )
        state: dict[str, Any] = dict(checkpoint.sums())
        state["input"] = checkpoint.meta("input") or {}
        # What an earlier pass learned of the server's limit, for the plan's pace and duration.
        state["server_limit"] = (checkpoint.meta("counters", {}) or {}).get("server_limit")
        return state
    finally:
        checkpoint.close()


def run_identity_of(settings: RunSettings) -> dict[str, Any]:
    from engine.pipeline import run_identity  # the pipeline's own definition, not a copy

    return run_identity(settings)


def write_rejects(settings: RunSettings, out: Path) -> InputCounts:
    """The dry run: read everything, write rejected.csv (as the report does), send nothing."""
    make_private_dir(out)
    names = settings.inputs.paths
    # Written as the rows are read (a file of rejects never sits in memory), and renamed into
    # place once whole; owner-only, redacted, and no cell runs as a formula.
    with csv_file(out / "rejected.csv", REJECTED_HEADER) as write:

        def on_reject(reject: Reject) -> None:
            write([names[reject.file], reject.line, reject.raw, reject.reason])

        return prescan(settings, on_reject)
