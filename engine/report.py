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

from engine.checkpoint import Checkpoint
from engine.files import make_private_dir, open_private, write_csv
from engine.redact import REDACTOR
from engine.telemetry_report import TELEMETRY_FILES, write_telemetry_files

REJECTED_HEADER = ["file", "line", "raw", "reason"]  # the report's and the dry run's
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


def write_report(checkpoint: Checkpoint, summary: dict[str, Any], out: Path) -> Path:
    """Write every report file into ``out`` (created if needed); return the folder.

    ``summary``: the JSON of a :class:`engine.summary.Summary` (its ``to_json()``).
    """
    make_private_dir(out)
    names = _file_names(checkpoint)
    _replace(out / "summary.json", [summary_json_text(REDACTOR.scrub_value(summary))])
    write_csv(
        out / "rejected.csv",
        REJECTED_HEADER,
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


def summary_json_text(summary: dict[str, Any]) -> str:
    """A summary as the JSON of summary.json and --summary-json: sorted keys, indented."""
    return json.dumps(summary, indent=2, sort_keys=True) + "\n"


def default_report_dir(checkpoint_path: Path) -> Path:
    return checkpoint_path.with_name(checkpoint_path.name + ".report")


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
