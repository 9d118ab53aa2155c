"""The report of a run, rebuilt from its checkpoint alone: summary.json and four CSV files.

``summary.json``      the run's totals (the same keys as ``--summary-json``)
``errors.csv``        numbers without a verdict of their own: listed in ``error`` by the API, or
                      in a chunk that failed after every retry (number, file, line, reason, chunk)
``rejected.csv``      rows that were never sent (file, line, raw value, reason)
``failed_chunks.csv`` chunks that failed after every retry (a re-run or --retry-failed resends)
``in_doubt.csv``      chunks sent again after an interruption or an earlier failure: maybe applied
                      by the earlier attempt, so their "not found" numbers were probably deleted
                      then, not missing
``timeline.csv``, ``latency.csv``: the run as a benchmark (see :mod:`engine.telemetry_report`)

Each file is written beside its final name and renamed into place, so a report folder never
holds half a file, even when the run writing it is killed.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from engine.checkpoint import Checkpoint, fingerprint
from engine.telemetry_report import TELEMETRY_FILES, summarize_checkpoint, write_telemetry_files

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
        "requests": counters.get("requests", 0),
        "retries": counters.get("retries", 0),
        "rate_limited": counters.get("rate_limited", 0),
        "token_refreshes": counters.get("token_refreshes", 0),
        "passes": counters.get("passes", 0),
        "complete": chunks_total is not None and sums["chunks_done"] == chunks_total,
        "checkpoint": str(checkpoint.path),
        "fingerprint": fingerprint(checkpoint.identity()),
        **summarize_checkpoint(checkpoint),  # latency, answers, retries, where time went
    }
    return summary


def write_report(checkpoint: Checkpoint, summary: dict[str, Any], out: Path) -> Path:
    """Write every report file into ``out`` (created if needed); return the folder."""
    out.mkdir(parents=True, exist_ok=True)
    names = _file_names(checkpoint)
    _replace(out / "summary.json", [json.dumps(summary, indent=2, sort_keys=True) + "\n"])
    _write_csv(
        out / "rejected.csv",
        ["file", "line", "raw", "reason"],
        (
            [_name(names, file), line, raw, reason]
            for file, line, raw, reason in checkpoint.reject_rows()
        ),
    )
    errors_header = ["number", "file", "line", "reason", "chunk"]
    _write_csv(out / "errors.csv", errors_header, _errors(checkpoint, names))
    _write_csv(
        out / "failed_chunks.csv",
        ["chunk", "numbers", "attempts", "first_file", "first_line", "reason"],
        _failed_chunks(checkpoint, names),
    )
    _write_csv(
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


def _write_csv(path: Path, header: list[str], rows: Iterable[list[Any]]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(temporary, path)


def _replace(path: Path, parts: Iterable[str]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.writelines(parts)
    os.replace(temporary, path)


def default_report_dir(checkpoint_path: Path) -> Path:
    return checkpoint_path.with_name(checkpoint_path.name + ".report")
