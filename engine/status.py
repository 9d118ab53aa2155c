"""``ozbulk status`` and ``ozbulk report``: read a checkpoint, never write it.

Both open the file read-only, so they are safe while a run is writing it (WAL readers never block
the writer) and on a checkpoint that must not change, such as one a newer ozbulk wrote.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from engine import settings as defaults
from engine.checkpoint import Checkpoint
from engine.report import write_not_found, write_report
from engine.summary import Summary, fit_to_terminal
from engine.telemetry_report import summary_lines


def resume_command(
    identity: dict[str, Any], settings: dict[str, Any], checkpoint: Path | None = None
) -> str:
    """The command that resumes a run, with every flag that decides its chunks.

    Paths are absolute, so it works from any folder. The API key is never part of it: it comes
    from where it came from before (OZONETEL_API_KEY, --api-key-file or a config file).
    """
    inputs = [str(item.get("path")) for item in identity.get("inputs", [])]
    if "-" in inputs:
        return "(none: this run read standard input, which cannot be read again)"
    words = ["ozbulk", "delete", *inputs]
    words += ["--group-id", str(identity.get("group_id", settings.get("group_id")))]
    words += ["--user", str(identity.get("user", settings.get("user")))]
    if settings.get("auth", "apikey") != "apikey":
        words += ["--auth", str(settings["auth"])]
    if settings.get("base_url"):
        words += ["--base-url", str(settings["base_url"])]
    if settings.get("path", defaults.DEFAULT_PATH) != defaults.DEFAULT_PATH:
        words += ["--path", str(settings["path"])]
    if identity.get("column") is not None:
        words += ["--column", str(identity["column"])]
    for key, default in (
        ("country", defaults.DEFAULT_COUNTRY),
        ("number_format", "digits"),
        ("batch_size", defaults.MAX_BATCH),
    ):
        if identity.get(key, default) != default:
            words += ["--" + key.replace("_", "-"), str(identity[key])]
    if "rate" in settings:
        rate = settings["rate"]
        if rate is None:
            words += ["--rate", "0"]  # no limit
        else:  # the text given (auto, 300/min), or a number from a checkpoint of 0.1
            words += ["--rate", rate if isinstance(rate, str) else f"{rate:g}"]
    if "concurrency" in settings:
        words += ["--concurrency", str(settings["concurrency"])]
    target = checkpoint.absolute() if checkpoint is not None else settings.get("checkpoint")
    words += ["--checkpoint", str(target)]
    return shlex.join(words)


def describe(checkpoint: Checkpoint) -> dict[str, Any]:
    """Everything `ozbulk status` shows, as one JSON-ready dictionary."""
    identity = checkpoint.identity()
    settings: dict[str, Any] = checkpoint.meta("settings", {}) or {}
    summary = Summary.of_checkpoint(checkpoint)
    updated = checkpoint.meta("updated_at", 0.0) or 0.0
    created = checkpoint.meta("created_at")
    if summary.complete:
        state = "complete"
    elif summary.totals.chunks_failed:
        state = "incomplete, with failed chunks"
    else:
        state = "incomplete"
    return {
        "checkpoint": str(checkpoint.path.absolute()),
        "schema_version": checkpoint.schema_version(),
        "fingerprint": summary.fingerprint,
        "state": state,
        "inputs": identity.get("inputs", []),
        "group_id": identity.get("group_id"),
        "user": identity.get("user"),
        "host": settings.get("host"),
        "identity": identity,
        "settings": settings,
        "chunks": summary.status_chunks(),
        "totals": summary.status_totals(),
        "counters": checkpoint.meta("counters", {}) or {},
        "horizon": checkpoint.meta("horizon", 0),
        "server_limit": summary.server_limit,
        "created_at": created,
        "created": _when(created),
        "updated_at": updated,
        "last_write": _when(updated),
        "updated_ago_s": round(time.time() - updated, 1) if updated else None,
        "resume_command": resume_command(identity, settings, checkpoint.path),
        "telemetry": dict(summary.telemetry),
    }


def _when(stamp: float | None) -> str | None:
    if not stamp:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(stamp))


def _count(value: Any) -> str:
    return "unknown" if value is None else f"{value:,}"


def render(info: dict[str, Any], out: Any = None) -> str:
    """``ozbulk status`` in words; fitted to ``out`` when it is a terminal."""
    chunks, totals, settings = info["chunks"], info["totals"], info["settings"]
    inputs = ", ".join(str(item.get("path", "?")) for item in info["inputs"])
    identity = info["identity"]
    remaining = (
        f"{chunks['remaining']:,} to send (failed ones included)"
        if chunks["remaining"] is not None
        else "remaining unknown until the input has been read to its end once"
    )
    lines = [
        f"checkpoint   {info['checkpoint']}",
        f"run          fingerprint {info['fingerprint']} (schema {info['schema_version']}): "
        f"{info['state']}",
        f"inputs       {inputs}",
        f"target       group {info['group_id']} of user {info['user']} at {info['host']} "
        f"({settings.get('auth')} auth)",
        f"settings     rate {settings.get('rate')}, concurrency {settings.get('concurrency')}, "
        f"batch {identity.get('batch_size')}, column {identity.get('column') or 'detected'}, "
        f"country {identity.get('country')}, format {identity.get('number_format')}",
        f"server limit {info.get('server_limit') or 'not met (nothing refused as too fast)'}",
        f"chunks       {_count(chunks['total'])} in all: {chunks['done']:,} done, "
        f"{chunks['failed']:,} failed, {remaining}; {chunks['in_doubt']:,} in doubt "
        f"(sent again after an interruption or a failure)",
        f"rows         {_count(totals['rows'])} read: {_count(totals['accepted'])} accepted, "
        f"{_count(totals['rejected'])} rejected, {_count(totals['duplicates'])} duplicates",
        f"numbers      {totals['sent']:,} with a verdict: {totals['deleted']:,} deleted, "
        f"{totals['not_found']:,} not in the group, {totals['error']:,} refused by the API; "
        f"{totals['failed_numbers']:,} in failed chunks",
        *summary_lines(info.get("telemetry") or {}),
        f"last write   {info['last_write']} ({info['updated_ago_s']} s ago)",
    ]
    text = fit_to_terminal("\n".join(lines), out)
    if info["state"] != "complete":  # never wrapped: the command must paste back whole
        text += f"\nresume with  {info['resume_command']}"
    return text


def show_status(path: Path, *, as_json: bool) -> int:
    checkpoint = Checkpoint.read(path)
    try:
        info = describe(checkpoint)
    finally:
        checkpoint.close()
    print(json.dumps(info, indent=2, sort_keys=True) if as_json else render(info, sys.stdout))
    return 0


def write_report_for(path: Path, out: Path) -> int:
    checkpoint = Checkpoint.read(path)
    try:
        write_report(checkpoint, Summary.of_checkpoint(checkpoint).to_json(), out)
        _, said = write_not_found(checkpoint, out)
    finally:
        checkpoint.close()
    print(f"report written to {out} ({said})")
    return 0
