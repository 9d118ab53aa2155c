"""The summary of a run: one record, built from a live run or from its checkpoint alone.

::

    Run (counts, totals, counters) ──► Summary.of_run ─┐
                                                       ├─► to_json()       summary.json,
    checkpoint (sums, counters, input) ► of_checkpoint ┘                   --summary-json,
                                                           render_summary  the printed summary,
                                                           status_*        ``ozbulk status``

Every figure is counted once, where it is kept (the input's counts, the collector's totals, the
counters), and every figure derived from them is derived once: ``not_found`` by
:class:`engine.records.Totals`, ``chunks_total``, ``chunks_remaining`` and ``complete`` here.
The JSON keys are the public contract of ``summary.json`` and ``--summary-json``: a live run's
summary has a few figures only that pass knows (``elapsed_s``, ``chunks_skipped``, ...), and one
rebuilt from a checkpoint has what only a whole reading of the checkpoint gives
(``input_read_completely``, ``chunks_remaining``).

This module imports no stage (pipeline, client, workers): it reads plain records, so the display
and the reports can use it without the HTTP stack.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from engine.checkpoint import Checkpoint, fingerprint
from engine.errors import ExitCode
from engine.limits import describe_limit
from engine.records import InputCounts, Totals
from engine.redact import REDACTOR
from engine.report import REPORT_FILES
from engine.telemetry_report import summarize_checkpoint, summary_lines


@dataclass(frozen=True, slots=True)
class PassFigures:
    """What only the pass that is ending knows: the checkpoint keeps none of these."""

    chunks_skipped: int
    # Results merged but never committed (the checkpoint stopped taking writes): not counted.
    unrecorded_chunks: int
    paused_by_server_s: float
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Summary:
    """A run's totals, this pass and earlier ones together, and how the pass ended."""

    # What the input gave; None when the checkpoint never recorded it.
    rows: int | None
    accepted: int | None
    rejected: int | None
    duplicates: int | None
    input_finished: bool
    chunks_read: int | None
    totals: Totals
    requests: int
    retries: int
    rate_limited: int
    token_refreshes: int
    passes: int
    server_limit: str | None  # the learned limit in words
    checkpoint: str
    fingerprint: str
    telemetry: Mapping[str, Any] = field(default_factory=dict)
    # Set for a live run only (None for a summary rebuilt from a checkpoint).
    this_pass: PassFigures | None = None
    # How the pass ended, set once it has: its exit code, what stopped it, the report folder.
    exit_code: int | None = None
    stopped_by: str | None = None
    report: str | None = None

    # -- the two ways to build one ---------------------------------------------------------

    @classmethod
    def of_run(
        cls,
        counts: InputCounts,
        totals: Totals,
        counters: Mapping[str, Any],
        *,
        this_pass: PassFigures,
        checkpoint: str,
        fingerprint: str,
        telemetry: Mapping[str, Any],
    ) -> Summary:
        """A live run's summary: the producer's counts, the collector's totals and counters."""
        return cls(
            rows=counts.rows,
            accepted=counts.accepted,
            rejected=counts.rejected,
            duplicates=counts.duplicates,
            input_finished=counts.finished,
            chunks_read=counts.chunks,
            totals=replace(totals),  # a copy: the collector's own goes on changing
            requests=counters["requests"],
            retries=counters["retries"],
            rate_limited=counters["rate_limited"],
            token_refreshes=counters["token_refreshes"],
            passes=counters["passes"],
            server_limit=describe_limit(counters["server_limit"]),
            checkpoint=checkpoint,
            fingerprint=fingerprint,
            telemetry=telemetry,
            this_pass=this_pass,
        )

    @classmethod
    def of_checkpoint(cls, checkpoint: Checkpoint) -> Summary:
        """The run's totals as far as the checkpoint knows them."""
        sums = checkpoint.sums()
        counters: dict[str, Any] = checkpoint.meta("counters", {}) or {}
        read: dict[str, Any] = checkpoint.meta("input", {}) or {}
        return cls(
            rows=read.get("rows"),
            accepted=read.get("accepted"),
            rejected=read.get("rejected"),
            duplicates=read.get("duplicates"),
            input_finished=bool(read.get("finished")),
            chunks_read=read.get("chunks"),
            totals=Totals(
                chunks_done=sums["chunks_done"],
                chunks_failed=sums["chunks_failed"],
                sent=sums["sent"],
                success=sums["success"],
                error=sums["error"],
                deleted=sums["deleted"],
                in_doubt_chunks=sums["in_doubt_chunks"],
                probably_deleted_earlier=sums["probably_deleted_earlier"],
                failed_numbers=sums["failed_numbers"],
            ),
            requests=counters.get("requests", 0),
            retries=counters.get("retries", 0),
            rate_limited=counters.get("rate_limited", 0),
            token_refreshes=counters.get("token_refreshes", 0),
            passes=counters.get("passes", 0),
            server_limit=describe_limit(counters.get("server_limit")),
            checkpoint=str(checkpoint.path),
            fingerprint=fingerprint(checkpoint.identity()),
            telemetry=summarize_checkpoint(checkpoint),  # latency, answers, where time went
        )

    def ended(self, exit_code: int, stopped_by: str | None) -> Summary:
        """This summary with how its pass ended."""
        return replace(self, exit_code=exit_code, stopped_by=stopped_by)

    def with_report(self, folder: str) -> Summary:
        return replace(self, report=folder)

    # -- derived figures -------------------------------------------------------------------

    @property
    def chunks_total(self) -> int | None:
        """Known once the input has been read to its end."""
        return self.chunks_read if self.input_finished else None

    @property
    def chunks_remaining(self) -> int | None:
        """Chunks still to send, failed ones included; None while the total is unknown."""
        total = self.chunks_total
        return None if total is None else total - self.totals.chunks_done

    @property
    def not_found(self) -> int:
        return self.totals.not_found

    @property
    def complete(self) -> bool:
        """The input was read to its end and every chunk of it is done: each number has a verdict.

        A state of the work, not of how the pass ended: a stop or an error that came after the
        last chunk was done leaves the run complete (its exit code still says how it ended), as
        ``ozbulk status`` reads the same checkpoint. An input without a single number is never
        complete: it is refused ("nothing to send"), not done.
        """
        total = self.chunks_total
        return bool(total) and self.totals.chunks_done == total

    @property
    def numbers_with_verdict(self) -> int:
        """Numbers done with, for good or not: answered, or in a chunk that failed."""
        return self.totals.sent + self.totals.failed_numbers

    # -- what it shows -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The keys of ``summary.json`` and ``--summary-json``; every text redacted."""
        totals, live = self.totals, self.this_pass
        summary: dict[str, Any] = {
            "rows": self.rows,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
        }
        if live is None:
            summary["input_read_completely"] = self.input_finished
        summary |= {
            "chunks_total": self.chunks_total,
            "chunks_done": totals.chunks_done,
            "chunks_failed": totals.chunks_failed,
        }
        if live is None:
            summary["chunks_remaining"] = self.chunks_remaining
        else:
            summary["chunks_skipped"] = live.chunks_skipped
        summary |= {
            "sent": totals.sent,
            "success": totals.success,
            "error": totals.error,
            "deleted": totals.deleted,
            "not_found": self.not_found,
            "failed_numbers": totals.failed_numbers,
            "in_doubt_chunks": totals.in_doubt_chunks,
            # Part of not_found: numbers of chunks in doubt, probably deleted by an earlier attempt.
            "probably_deleted_earlier": totals.probably_deleted_earlier,
        }
        if live is not None:
            summary["unrecorded_chunks"] = live.unrecorded_chunks
        summary |= {
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "token_refreshes": self.token_refreshes,
            "passes": self.passes,
            "server_limit": self.server_limit,
        }
        if live is not None:
            summary["paused_by_server_s"] = live.paused_by_server_s
            summary["elapsed_s"] = live.elapsed_s
        summary |= {
            "complete": self.complete,
            "checkpoint": self.checkpoint,
            "fingerprint": self.fingerprint,
            **self.telemetry,
        }
        if self.exit_code is not None:
            summary["exit_code"] = int(self.exit_code)
        if self.stopped_by is not None:
            summary["stopped_by"] = self.stopped_by
        if self.report is not None:
            summary["report"] = self.report
        result: dict[str, Any] = REDACTOR.scrub_value(summary)
        return result

    def status_chunks(self) -> dict[str, int | None]:
        """The chunk figures of ``ozbulk status``."""
        totals = self.totals
        return {
            "total": self.chunks_total,
            "done": totals.chunks_done,
            "failed": totals.chunks_failed,
            "remaining": self.chunks_remaining,
            "in_doubt": totals.in_doubt_chunks,
        }

    def status_totals(self) -> dict[str, int | None]:
        """The number figures of ``ozbulk status``."""
        totals = self.totals
        return {
            "rows": self.rows,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "sent": totals.sent,
            "success": totals.success,
            "deleted": totals.deleted,
            "not_found": self.not_found,
            "error": totals.error,
            "failed_numbers": totals.failed_numbers,
        }


def dry_run_json(counts: InputCounts) -> dict[str, Any]:
    """``--summary-json`` of a dry run: what reading the input gave, nothing sent."""
    return {
        "rows": counts.rows,
        "accepted": counts.accepted,
        "rejected": counts.rejected,
        "duplicates": counts.duplicates,
        "chunks": counts.chunks,
        "dry_run": True,
    }


# -- the summary a person reads -----------------------------------------------------------------


def _n(value: Any) -> str:
    return "unknown" if value is None else f"{value:,}"


def _share(part: int, whole: int | None) -> str:
    if not whole:
        return ""
    return f" ({100 * part / whole:.1f} %)"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def render_summary(summary: Summary, *, paths: bool = True) -> str:
    """The summary in words, with thousands separators, shares and h:mm:ss; never "None".

    ``summary.json`` keeps the machine keys; this is for reading at a glance. ``paths``: False
    when the report and checkpoint are about to be removed (``ozbulk demo``).
    """
    s, totals = summary, summary.totals
    sent, failed_numbers, accepted = totals.sent, totals.failed_numbers, s.accepted
    with_verdict = s.numbers_with_verdict
    elapsed = None if s.this_pass is None else s.this_pass.elapsed_s
    speed = ""
    if elapsed and sent:
        speed = f" ({s.requests / elapsed:,.1f} requests/s)"
    chunks_total = s.chunks_total
    lines = [
        "ozbulk summary",
        f"  input        {_n(s.rows)} rows: {_n(accepted)} numbers to send, "
        f"{_n(s.rejected)} rejected, {_n(s.duplicates)} duplicates",
        f"  deleted      {_n(totals.deleted)}{_share(totals.deleted, sent)}",
        f"  not found    {_n(s.not_found)}{_share(s.not_found, sent)} (not in the group)",
        f"  refused      {_n(totals.error)}{_share(totals.error, sent)} "
        "(listed in error by the API)",
        f"  failed       {_n(totals.chunks_failed)} chunks after every retry "
        f"({_n(failed_numbers)} numbers)",
        f"  chunks       {_n(totals.chunks_done)} of {_n(chunks_total)} done"
        + (
            f"; {_n(totals.in_doubt_chunks)} sent again after an interruption (in doubt)"
            if totals.in_doubt_chunks
            else ""
        ),
        f"  progress     {_n(with_verdict)} of {_n(accepted)} numbers"
        f"{_share(with_verdict, accepted) if chunks_total is not None else ''}",
        f"  requests     {_n(s.requests)}: {_n(s.retries)} retries, "
        f"{_n(s.rate_limited)} refused as too fast",
        f"  elapsed      {_clock(elapsed)}{speed}",
    ]
    if s.server_limit:
        paused = 0.0 if s.this_pass is None else s.this_pass.paused_by_server_s
        lines.append(
            f"  server limit {s.server_limit}"
            + (f"; waited {_clock(paused)} for it" if paused >= 1 else "")
        )
    lines += [f"  {line}" for line in summary_lines(dict(s.telemetry))]
    if paths and s.report:
        lines.append(f"  report       {s.report}/ ({', '.join(REPORT_FILES)})")
    if paths and s.checkpoint:
        lines.append(f"  checkpoint   {s.checkpoint}")
    return REDACTOR.scrub("\n".join(lines))


def result_line(summary: Summary) -> str:
    """The one-line result: the exit code and what it means."""
    code = ExitCode.OK if summary.exit_code is None else summary.exit_code
    if code == ExitCode.OK and not summary.accepted:
        return "exit 0: complete, but the input held no phone number to send"
    words = ExitCode(code).outcome if code in set(ExitCode) else None
    meaning = words or f"stopped: {_gist(summary.stopped_by or '')}"
    return REDACTOR.scrub(f"exit {int(code)}: {meaning}")


def _gist(reason: str) -> str:
    """The first clause of a stop's reason, for the one-line result; the error itself is
    logged in full (on stderr), so the long text is not said twice."""
    reason = reason.removeprefix("stopped: ").removeprefix("stopped by ")
    gist = re.split(r"(?<=[^.\d])[.;](?:\s|$)| \(", reason, maxsplit=1)[0]
    return gist if len(gist) <= 100 else gist[:99] + "…"


# A label, then two spaces or more, then its value: a wrapped line goes on under the value.
_LABELLED = re.compile(r"\s*\S.*?\s{2,}(?=\S)")


def fit_to_terminal(text: str, out: Any) -> str:
    """``text`` with each line too long for the terminal ``out`` wrapped under its value.

    Only for a terminal: piped or redirected output keeps one line per fact, for grep. Words
    and paths are never broken (one longer than the screen overflows instead), so whatever is
    copied from the screen reads as it was written.
    """
    try:
        width = os.get_terminal_size(out.fileno()).columns if out.isatty() else 0
    except (AttributeError, OSError, ValueError):
        width = 0
    if width < 40:  # not a terminal, or too narrow for a hanging indent to help
        return text
    lines: list[str] = []
    for line in text.splitlines():
        if len(line) <= width:
            lines.append(line)
            continue
        label = _LABELLED.match(line)
        indent = label.end() if label is not None and label.end() <= width // 2 else 4
        lines += textwrap.wrap(line, width, subsequent_indent=" " * indent,
                               break_long_words=False, break_on_hyphens=False)  # fmt: skip
    return "\n".join(lines)


def print_summary(
    summary: Summary,
    *,
    resume: str | None = None,
    paths: bool = True,
    quiet: bool = False,
    out: Any = None,
) -> None:
    """The summary in words (unless quiet), then the one-line result and how to resume (the
    command is never wrapped: it must paste back whole)."""
    out = out or sys.stdout
    if not quiet:
        print(fit_to_terminal(render_summary(summary, paths=paths), out), file=out)
    print(result_line(summary), file=out)
    if resume:
        print(resume, file=out)
