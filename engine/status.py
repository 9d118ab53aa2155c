"""``ozbulk status`` and ``ozbulk report``: read a checkpoint, never write it."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from engine.checkpoint import Checkpoint, fingerprint
from engine.report import write_report


def resume_command(settings: dict[str, Any]) -> str:
    """The command that resumes a run (the API key comes from where it came from before)."""
    words = ["ozbulk", "delete", *settings.get("inputs", [])]
    words += ["--group-id", str(settings.get("group_id")), "--user", str(settings.get("user"))]
    if settings.get("auth") != "apikey":
        words += ["--auth", str(settings.get("auth"))]
    words += [
        "--base-url",
        str(settings.get("base_url")),
        "--checkpoint",
        str(settings.get("checkpoint")),
    ]
    return shlex.join(words)


def describe(checkpoint: Checkpoint) -> dict[str, Any]:
    identity = checkpoint.identity()
    settings = checkpoint.meta("settings", {}) or {}
    sums = checkpoint.sums()
    updated = checkpoint.meta("updated_at", 0.0)
    return {
        "checkpoint": str(checkpoint.path),
        "fingerprint": fingerprint(identity),
        "identity": identity,
        "settings": settings,
        "progress": sums,
        "counters": checkpoint.meta("counters", {}),
        "horizon": checkpoint.meta("horizon", 0),
        "created_at": checkpoint.meta("created_at"),
        "updated_at": updated,
        "updated_ago_s": round(time.time() - updated, 1) if updated else None,
        "resume_command": resume_command(settings),
    }


def show_status(path: Path, *, as_json: bool) -> int:
    checkpoint = Checkpoint.read(path)
    try:
        info = describe(checkpoint)
    finally:
        checkpoint.close()
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    progress, settings = info["progress"], info["settings"]
    inputs = ", ".join(item.get("path", "?") for item in info["identity"].get("inputs", []))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["updated_at"] or 0))
    print(f"checkpoint   {info['checkpoint']} (fingerprint {info['fingerprint']})")
    print(f"inputs       {inputs}")
    print(
        f"target       group {settings.get('group_id')} of {settings.get('user')} at "
        f"{settings.get('host')} ({settings.get('auth')} auth)"
    )
    print(
        f"settings     rate {settings.get('rate')}, concurrency {settings.get('concurrency')}, "
        f"batch {info['identity'].get('batch_size')}"
    )
    print(
        f"chunks       {progress['chunks_done']} done, {progress['chunks_failed']} failed "
        f"(highest chunk possibly sent: {info['horizon']})"
    )
    print(
        f"numbers      sent {progress['sent']}, deleted {progress['deleted']}, "
        f"error {progress['error']}, failed {progress['failed_numbers']}"
    )
    print(f"last write   {when} ({info['updated_ago_s']} s ago)")
    print(f"resume with  {info['resume_command']}")
    return 0


def write_report_for(path: Path, out: Path) -> int:
    checkpoint = Checkpoint.read(path)
    try:
        info = describe(checkpoint)
        summary = {**info["progress"], **(info["counters"] or {}), "checkpoint": str(path)}
        write_report(checkpoint, summary, out)
    finally:
        checkpoint.close()
    print(f"report written to {out}")
    return 0
