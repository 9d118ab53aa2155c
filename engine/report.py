"""The report of a run, rebuilt from its checkpoint alone: summary.json and four CSV files.

``summary.json``      the run's totals (the same keys as ``--summary-json``)
``errors.csv``        numbers without a verdict of their own: listed in ``error`` by the API, or
                      in a chunk that failed after every retry (number, file, line, reason, chunk)
``rejected.csv``      rows that were never sent (file, line, raw value, reason)
``failed_chunks.csv`` chunks that failed after every retry (a re-run or --retry-failed resends)
``in_doubt.csv``      chunks sent again after an interruption or an earlier failure: maybe applied
                      by the earlier attempt, so their "not found" numbers were probably deleted
                      then, not missing
``not_found.csv``     (``ozbulk report`` only: it reads the input again) the numbers the group did
                      not hold. A chunk that deleted none of its numbers gives each of them, known
                      exactly (``exact`` true); a chunk that deleted some gives all its candidates
                      with how many of them were not found, since the API does not say which
``timeline.csv``, ``latency.csv``: the run as a benchmark (see :mod:`engine.telemetry_report`)

Each file is written beside its final name and renamed into place, so a report folder never
holds half a file, even when the run writing it is killed. The folder and its files are the
owner's alone: they hold phone numbers. Every cell and value passes the redactor on its way out
(the checkpoint's rows already did; this is the backstop for a checkpoint written before a
secret was known to be one).

The CSV files are meant for a spreadsheet, and a spreadsheet runs a cell that begins with
``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return before one) as a formula: a rejected
row ``=HYPERLINK("http://evil", "click")``, or a server's error message, must not become a live
link or a command. Such a text cell is written with a leading apostrophe, which spreadsheets
read as "this is text" (:func:`engine.files.spreadsheet_safe`). A cell that is a plain number,
with at most a sign, is left as it is: ``+919876543210`` and ``-5`` are read as numbers, never
as formulas, and a phone number stays readable and searchable exactly as the input had it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from engine.checkpoint import Checkpoint, fingerprint
from engine.files import make_private_dir, open_private, write_csv
from engine.limits import describe_limit
from engine.redact import REDACTOR
from engine.telemetry_report import (
    TELEMETRY_FILES,
    summarize_checkpoint,
    summary_lines,
    write_telemetry_files,
)

NOT_FOUND_FILE = "not_found.csv"
NOT_FOUND_HEADER = [
    "number", "file", "line", "chunk", "exact", "chunk_not_found", "chunk_candidates", "in_doubt",
]  # fmt: skip

REPORT_FILES: tuple[str, ...] = (
    "summary.json",
    "errors.csv",
    "rejected.csv",
    "failed_chunks.csv",
    "in_doubt.csv",
)
REPORT_FILES += TELEMETRY_FILES  # timeline.csv, latency.csv: see engine.telemetry_report


def _file_names(checkpoint: Checkpoint) -> list[str]:
    return [str(item.get("path", "?")) for item in checkpoint.identity().get("inputs", [])]


def _name(names: list[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else ""


def summary_from_checkpoint(checkpoint: Checkpoint) -> dict[str, Any]:
    """The run's totals as far as the checkpoint knows them, keyed like ``--summary-json``."""
    sums = checkpoint.sums()
    counters: dict[str, Any] = checkpoint.meta("counters", {}) or {}
    read: dict[str, Any] = checkpoint.meta("input", {}) or {}
    finished = bool(read.get("finished"))
    chunks_total = read.get("chunks") if finished else None
    summary: dict[str, Any] = {
        "rows": read.get("rows"),
        "accepted": read.get("accepted"),
        "rejected": read.get("rejected"),
        "duplicates": read.get("duplicates"),
        "input_read_completely": finished,
        "chunks_total": chunks_total,
        "chunks_done": sums["chunks_done"],
        "chunks_failed": sums["chunks_failed"],
        "chunks_remaining": None if chunks_total is None else chunks_total - sums["chunks_done"],
        "sent": sums["sent"],
        "success": sums["success"],
        "error": sums["error"],
        "deleted": sums["deleted"],
        "not_found": sums["sent"] - sums["deleted"] - sums["error"],
        "failed_numbers": sums["failed_numbers"],
        "in_doubt_chunks": sums["in_doubt_chunks"],
        # Part of not_found: numbers of chunks in doubt, probably deleted by an earlier attempt.
        "probably_deleted_earlier": sums["probably_deleted_earlier"],
        "requests": counters.get("requests", 0),
        "retries": counters.get("retries", 0),
        "rate_limited": counters.get("rate_limited", 0),
        "token_refreshes": counters.get("token_refreshes", 0),
        "passes": counters.get("passes", 0),
        "server_limit": describe_limit(counters.get("server_limit")),
        "complete": chunks_total is not None and sums["chunks_done"] == chunks_total,
        "checkpoint": str(checkpoint.path),
        "fingerprint": fingerprint(checkpoint.identity()),
        **summarize_checkpoint(checkpoint),  # latency, answers, retries, where time went
    }
    return summary


def write_report(checkpoint: Checkpoint, summary: dict[str, Any], out: Path) -> Path:
    """Write every report file into ``out`` (created if needed); return the folder."""
    make_private_dir(out)
    names = _file_names(checkpoint)
    summary = REDACTOR.scrub_value(summary)
    _replace(out / "summary.json", [json.dumps(summary, indent=2, sort_keys=True) + "\n"])
    write_csv(
        out / "rejected.csv",
        ["file", "line", "raw", "reason"],
        (
            [_name(names, file), line, raw, reason]
            for file, line, raw, reason in checkpoint.reject_rows()
        ),
    )
    errors_header = ["number", "file", "line", "reason", "chunk"]
    write_csv(out / "errors.csv", errors_header, _errors(checkpoint, names))
    write_csv(
        out / "failed_chunks.csv",
        ["chunk", "numbers", "attempts", "first_file", "first_line", "reason"],
        _failed_chunks(checkpoint, names),
    )
    write_csv(
        out / "in_doubt.csv",
        ["chunk", "state", "sent", "deleted", "not_found", "error", "reason"],
        _in_doubt(checkpoint),
    )
    write_telemetry_files(checkpoint, out)  # timeline.csv, latency.csv
    return out


def _errors(checkpoint: Checkpoint, names: list[str]) -> Iterator[list[Any]]:
    for row in checkpoint.chunk_rows("state = 'done' AND error > 0"):
        for number, file, line in json.loads(row["detail"]):
            yield [number, _name(names, file), line or "", "listed in error by the API", row["id"]]
    for row in checkpoint.chunk_rows("state = 'failed'"):
        for number, file, line in json.loads(row["detail"]):
            yield [number, _name(names, file), line, f"chunk failed: {row['reason']}", row["id"]]


def _failed_chunks(checkpoint: Checkpoint, names: list[str]) -> Iterator[list[Any]]:
    for row in checkpoint.chunk_rows("state = 'failed'"):
        detail = json.loads(row["detail"])
        first_file, first_line = (detail[0][1], detail[0][2]) if detail else (-1, "")
        yield [
            row["id"], row["sent"], row["attempts"], _name(names, first_file), first_line,
            row["reason"],
        ]  # fmt: skip


def _in_doubt(checkpoint: Checkpoint) -> Iterator[list[Any]]:
    for row in checkpoint.chunk_rows("in_doubt = 1"):
        if row["state"] == "done":
            not_found = row["sent"] - row["deleted"] - row["error"]
            yield [row["id"], "done", row["sent"], row["deleted"], not_found, row["error"],
                   row["reason"]]  # fmt: skip
        else:
            yield [row["id"], "failed", row["sent"], "", "", "", f"failed: {row['reason']}"]


def _replace(path: Path, parts: Iterable[str]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open_private(temporary) as handle:
        handle.writelines(parts)
    os.replace(temporary, path)


def default_report_dir(checkpoint_path: Path) -> Path:
    return checkpoint_path.with_name(checkpoint_path.name + ".report")


# -- the summary a person reads ---------------------------------------------------------------


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


def render_summary(summary: dict[str, Any], *, paths: bool = True) -> str:
    """The summary in words, with thousands separators, shares and h:mm:ss; never "None".

    ``summary.json`` keeps the machine keys; this is for reading at a glance. ``paths``: False
    when the report and checkpoint are about to be removed (``ozbulk demo``).
    """
    s = summary
    sent, failed_numbers = s.get("sent", 0), s.get("failed_numbers", 0)
    accepted = s.get("accepted")
    with_verdict = sent + failed_numbers
    elapsed = s.get("elapsed_s")
    speed = ""
    if elapsed and s.get("sent"):
        speed = f" ({s.get('requests', 0) / elapsed:,.1f} requests/s)"
    chunks_total = s.get("chunks_total")
    lines = [
        "ozbulk summary",
        f"  input        {_n(s.get('rows'))} rows: {_n(accepted)} numbers to send, "
        f"{_n(s.get('rejected'))} rejected, {_n(s.get('duplicates'))} duplicates",
        f"  deleted      {_n(s.get('deleted'))}{_share(s.get('deleted', 0), sent)}",
        f"  not found    {_n(s.get('not_found'))}{_share(s.get('not_found', 0), sent)} "
        "(not in the group)",
        f"  refused      {_n(s.get('error'))}{_share(s.get('error', 0), sent)} "
        "(listed in error by the API)",
        f"  failed       {_n(s.get('chunks_failed'))} chunks after every retry "
        f"({_n(failed_numbers)} numbers)",
        f"  chunks       {_n(s.get('chunks_done'))} of {_n(chunks_total)} done"
        + (
            f"; {_n(s.get('in_doubt_chunks'))} sent again after an interruption (in doubt)"
            if s.get("in_doubt_chunks")
            else ""
        ),
        f"  progress     {_n(with_verdict)} of {_n(accepted)} numbers"
        f"{_share(with_verdict, accepted) if chunks_total is not None else ''}",
        f"  requests     {_n(s.get('requests'))}: {_n(s.get('retries'))} retries, "
        f"{_n(s.get('rate_limited'))} refused as too fast",
        f"  elapsed      {_clock(elapsed)}{speed}",
    ]
    if s.get("server_limit"):
        paused = s.get("paused_by_server_s") or 0
        lines.append(
            f"  server limit {s['server_limit']}"
            + (f"; waited {_clock(paused)} for it" if paused >= 1 else "")
        )
    lines += [f"  {line}" for line in summary_lines(s)]
    if paths and s.get("report"):
        lines.append(f"  report       {s['report']}/ ({', '.join(REPORT_FILES)})")
    if paths and s.get("checkpoint"):
        lines.append(f"  checkpoint   {s['checkpoint']}")
    return "\n".join(lines)


# -- not found: regenerated from the input, since the checkpoint keeps no successes ----------


def write_not_found(checkpoint: Checkpoint, out: Path) -> tuple[Path | None, str]:
    """Write ``not_found.csv`` into ``out``; (its path, or None, and a sentence saying what)."""
    from engine.batcher import Producer
    from engine.numbers import Normalizer, formatter
    from engine.settings import InputSettings

    identity = checkpoint.identity()
    wanted = _not_found_chunks(checkpoint)
    if not wanted:
        write_csv(out / NOT_FOUND_FILE, NOT_FOUND_HEADER, iter(()))
        return out / NOT_FOUND_FILE, "every number sent was deleted or refused: none not found"
    problem = _inputs_problem(identity)
    if problem:
        return None, f"{NOT_FOUND_FILE} not written: {problem}"
    inputs = InputSettings(
        paths=tuple(str(item["path"]) for item in identity["inputs"]),
        column=identity.get("column"),
        country=identity.get("country", "IN"),
        number_format=identity.get("number_format", "digits"),
        batch_size=identity.get("batch_size", 100),
    )
    normalizer = Normalizer(inputs.country)
    write = formatter(inputs.number_format, normalizer.country_code)
    names = list(inputs.paths)

    def rows() -> Iterator[list[Any]]:
        last = max(wanted)
        for chunk in Producer(inputs, normalizer, lambda _: None).chunks():
            if chunk.id > last:
                return
            found = wanted.get(chunk.id)
            if found is None:
                continue
            not_found, refused, in_doubt = found
            candidates = [
                (write(number), file, line)
                for number, file, line in zip(chunk.numbers, chunk.files, chunk.lines, strict=True)
                if write(number) not in refused
            ]
            exact = not_found == len(candidates)
            for number, file, line in candidates:
                yield [number, _name(names, file), line, chunk.id, exact, not_found,
                       len(candidates), in_doubt]  # fmt: skip

    write_csv(out / NOT_FOUND_FILE, NOT_FOUND_HEADER, rows())
    return out / NOT_FOUND_FILE, f"{sum(v[0] for v in wanted.values()):,} numbers not found"


def _not_found_chunks(checkpoint: Checkpoint) -> dict[int, tuple[int, set[str], bool]]:
    """Chunk id -> (numbers not found, the numbers the API refused, in doubt)."""
    chunks: dict[int, tuple[int, set[str], bool]] = {}
    for row in checkpoint.chunk_rows("state = 'done' AND sent - deleted - error > 0"):
        refused = {str(item[0]) for item in json.loads(row["detail"] or "[]")}
        chunks[row["id"]] = (row["sent"] - row["deleted"] - row["error"], refused,
                             bool(row["in_doubt"]))  # fmt: skip
    return chunks


def _inputs_problem(identity: dict[str, Any]) -> str:
    """Why the input cannot give back the run's chunks, or "" when it can."""
    for item in identity.get("inputs", []):
        path = str(item.get("path"))
        if path == "-":
            return "the run read standard input, which cannot be read again"
        if not os.path.isfile(path):
            return f"the input {path} is gone"
        if os.path.getsize(path) != item.get("size"):
            return f"the input {path} has changed since the run"
    return ""
