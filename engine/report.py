"""The report of a run, rebuilt from its checkpoint alone: summary.json and four CSV files.

``errors.csv``        numbers the API listed in ``error`` (number, file, line, reason)
``rejected.csv``      rows that were never sent (file, line, raw value, reason)
``failed_chunks.csv`` chunks that failed after every retry (a re-run or --retry-failed resends)
``in_doubt.csv``      chunks re-sent after an interruption: maybe applied by the earlier run, so
                      their "not found" numbers were probably deleted then, not missing
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from engine.checkpoint import Checkpoint


def _file_names(checkpoint: Checkpoint) -> list[str]:
    return [str(item.get("path", "?")) for item in checkpoint.identity().get("inputs", [])]


def _name(names: list[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else ""


def write_report(checkpoint: Checkpoint, summary: dict[str, Any], out: Path) -> Path:
    """Write every report file into ``out`` (created if needed); return the folder."""
    out.mkdir(parents=True, exist_ok=True)
    names = _file_names(checkpoint)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    with (out / "rejected.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "line", "raw", "reason"])
        for file, line, raw, reason in checkpoint.reject_rows():
            writer.writerow([_name(names, file), line, raw, reason])
    with (out / "errors.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "file", "line", "reason", "chunk"])
        for row in checkpoint.chunk_rows("state = 'done' AND error > 0"):
            for number, file, line in json.loads(row["detail"]):
                writer.writerow(
                    [
                        number,
                        _name(names, file),
                        line or "",
                        "listed in error by the API",
                        row["id"],
                    ]
                )
        for row in checkpoint.chunk_rows("state = 'failed'"):
            for number, file, line in json.loads(row["detail"]):
                writer.writerow(
                    [number, _name(names, file), line, f"chunk failed: {row['reason']}", row["id"]]
                )
    with (out / "failed_chunks.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["chunk", "numbers", "attempts", "first_file", "first_line", "reason"])
        for row in checkpoint.chunk_rows("state = 'failed'"):
            detail = json.loads(row["detail"])
            first = detail[0] if detail else ("", -1, "")
            writer.writerow(
                [
                    row["id"],
                    row["sent"],
                    row["attempts"],
                    _name(names, first[1]),
                    first[2],
                    row["reason"],
                ]
            )
    with (out / "in_doubt.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["chunk", "state", "sent", "deleted", "not_found", "note"])
        for row in checkpoint.chunk_rows("in_doubt = 1"):
            not_found = (
                row["sent"] - row["deleted"] - row["error"] if row["state"] == "done" else ""
            )
            writer.writerow([
                row["id"], row["state"], row["sent"], row["deleted"], not_found,
                "sent again after an interruption; numbers not found were probably deleted "
                "by the interrupted run",
            ])  # fmt: skip
    return out


def default_report_dir(checkpoint_path: Path) -> Path:
    return checkpoint_path.with_name(checkpoint_path.name + ".report")
