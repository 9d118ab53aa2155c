"""Start-up: the commands that send nothing load no HTTP stack, so they answer in a blink."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from engine.arguments import COMMANDS, build_parsers
from engine.checkpoint import Checkpoint
from tests._helpers import cli_env, delete_args

# What only `delete` needs: the HTTP client and the event loop's libraries, the pipeline, and rich
# (which only a drawn progress bar needs).
HEAVY = ("aiohttp", "anyio", "aiolimiter", "rich", "engine.pipeline", "engine.client")

# Runs the real entry point in a fresh interpreter and reports, on stderr's last line, which of
# HEAVY it loaded; argparse's --help and --version end in SystemExit, which counts as an exit.
PROBE = f"""
import json, sys
from engine.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r}
                or name in {HEAVY!r})
print(json.dumps({{"code": code, "loaded": loaded}}), file=sys.stderr)
"""


def loaded_by(*args: str, cwd: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
    )
    result: dict[str, object] = json.loads(done.stderr.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("--version",),
        ("delete", "--help"),
        ("status", "--help"),
        ("config", "show", "numbers.csv", "--user", "acme", "--group-id", "7"),
    ],
)
def test_commands_that_send_nothing_load_no_http_stack(args: tuple[str, ...], tmp_path) -> None:
    """--help, delete --help and config show import none of what only a run uses."""
    (tmp_path / "numbers.csv").write_text("phone\n9876543210\n")
    result = loaded_by(*args, cwd=tmp_path)
    assert result["code"] in (0, None)
    assert result["loaded"] == []


def test_status_reads_a_checkpoint_without_the_http_stack(tmp_path: Path) -> None:
    """`ozbulk status` opens the checkpoint (SQLite) but never aiohttp, anyio or rich."""
    path = tmp_path / "run.ckpt"
    settings = {"base_url": "https://api.example", "group_id": 7, "user": "acme"}
    Checkpoint.for_run(path, {"inputs": [], "group_id": 7, "user": "acme"}, settings).close()
    result = loaded_by("status", str(path), cwd=tmp_path)
    assert result["code"] == 0
    assert result["loaded"] == []


def test_the_probe_sees_delete_load_the_http_stack(tmp_path: Path) -> None:
    """The probe itself works: `delete` (here a dry run) loads what the others must not."""
    source = tmp_path / "numbers.csv"
    source.write_text("phone\n9876543210\n")
    result = loaded_by(
        "delete", str(source), "--user", "acme", "--group-id", "7", "--dry-run", cwd=tmp_path
    )
    assert result["code"] == 0
    assert {"aiohttp", "anyio", "engine.pipeline"} <= set(result["loaded"])  # type: ignore[arg-type]


def test_a_run_that_skips_the_teardown_still_flushes_its_output_and_log(
    run_cli, fake_api, sample_csv, tmp_path: Path
) -> None:
    """`ozbulk` exits without the interpreter's teardown, yet its stdout (even into a pipe that
    buffers it), its --log-file and its --summary-json are complete, and the exit code is kept."""
    server = fake_api()
    source = sample_csv(500)
    log_file, summary = tmp_path / "run.log", tmp_path / "summary.json"
    buffered = {k: v for k, v in cli_env().items() if k != "PYTHONUNBUFFERED"}
    args = delete_args(server, source, log_file=log_file, summary_json=summary)
    done = run_cli(*args, env=buffered)
    assert done.returncode == 0, done.output
    assert done.stdout.rstrip().endswith("exit 0: complete: every number has a verdict")
    assert "ozbulk summary" in done.stdout
    assert json.loads(summary.read_text())["complete"] is True
    logged = log_file.read_text()
    assert "rows" in logged and logged.endswith("\n")
    args = delete_args(server, source, group_id=999, checkpoint="other.ckpt")
    failed = run_cli(*args, env=buffered)
    assert failed.returncode == 3, failed.output  # an invalid group: the code survives os._exit
    assert "resume with:" in failed.stdout


@pytest.mark.parametrize("args", [("--help",), ("delete", "--help"), ("status", "--help")])
def test_only_version_reads_the_package_metadata(args: tuple[str, ...], tmp_path) -> None:
    """The version is looked up when --version asks for it, not built into every parse."""
    probe = (
        "import sys\nfrom engine.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit:\n    pass\nprint('importlib.metadata' in sys.modules, file=sys.stderr)"
    )

    def reads_metadata(*words: str) -> tuple[bool, str]:
        done = subprocess.run(
            [sys.executable, "-c", probe, *words], capture_output=True, text=True, timeout=60,
            cwd=tmp_path, env=cli_env(), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return done.stderr.strip().splitlines()[-1] == "True", done.stdout

    assert reads_metadata(*args)[0] is False
    read, shown = reads_metadata("--version")
    assert read and shown.startswith("ozbulk ") and "unknown" not in shown


# What a small delete (read inline, --rate 0, --no-progress, no --config, no --log-file) never
# runs: other commands (the fake API, status, demo, sample, completion), the producer child and
# its messages, the pacer's bucket (aiolimiter, which reads package metadata as it loads), the
# TOML parser, and the optional displays and exporters.
NOT_FOR_A_SMALL_RUN = (
    "engine.mock", "engine.status", "engine.demo", "engine.sample", "shtab",
    "engine.producer_child", "engine.producer_messages", "engine.bucket", "aiolimiter",
    "importlib.metadata", "tomllib", "rich", "engine.metrics", "prometheus_client",
    "engine.request_log", "phonenumbers",
)  # fmt: skip

# The same entry point, reporting every module loaded and the garbage collector's state.
PROBE_ALL = """
import gc, json, logging, sys
from engine.cli import main
code = main(sys.argv[1:])
report = {"code": code, "modules": sorted(sys.modules), "collecting": gc.isenabled(),
          "frozen": gc.get_freeze_count(), "story": logging.getLogger("engine.story").level}
print(json.dumps(report), file=sys.stderr)
"""

# `python -m engine` itself (it ends in os._exit): the report comes from an exit handler, which
# the command runs before it exits.
PROBE_COMMAND = """
import atexit, gc, json, runpy, sys
report = lambda: print(json.dumps({"collecting": gc.isenabled(), "frozen": gc.get_freeze_count()}),
                       file=sys.stderr)
atexit.register(report)
sys.argv[0] = "ozbulk"
runpy.run_module("engine", run_name="__main__", alter_sys=True)
"""


def _probe(probe: str, *args: str, cwd: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60,
        cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stderr.strip().splitlines()[-1])
    return result


def _small_run(fake_api, sample_csv, tmp_path: Path) -> list[str]:
    server = fake_api()
    args = delete_args(server, sample_csv(100), rate=0, concurrency=32, allow_not_found=True,
                       summary_json=tmp_path / "summary.json")  # fmt: skip
    return args


def test_a_small_delete_loads_only_what_it_runs(fake_api, sample_csv, tmp_path: Path) -> None:
    """A 100-row delete sends every number, without loading another command's modules, the
    producer child's, the pacer's bucket, the TOML parser or a display it was not asked for."""
    result = _probe(PROBE_ALL, *_small_run(fake_api, sample_csv, tmp_path), cwd=tmp_path)
    assert result["code"] == 0
    assert json.loads((tmp_path / "summary.json").read_text())["complete"] is True
    modules = set(result["modules"])  # type: ignore[call-overload]
    assert {"aiohttp", "anyio", "engine.pipeline", "engine.producer_process"} <= modules
    assert "uvloop" in modules  # the run's event loop
    loaded = sorted(
        name for name in modules
        if any(name == unwanted or name.startswith(unwanted + ".")
               for unwanted in NOT_FOR_A_SMALL_RUN)
    )  # fmt: skip
    assert loaded == []
    assert result["story"] == logging.NOTSET  # muted for the run (no --log-file), not after it


def test_the_command_collects_garbage_again_once_its_modules_are_loaded(
    fake_api, sample_csv, tmp_path: Path
) -> None:
    """`ozbulk delete` pauses the collector while it loads and sets aside what start-up made
    (gc.freeze), then collects as usual during the run; main() leaves the collector alone."""
    args = _small_run(fake_api, sample_csv, tmp_path)
    command = _probe(PROBE_COMMAND, *args, "--checkpoint", "command.ckpt", cwd=tmp_path)
    assert command["collecting"] is True
    assert command["frozen"] > 10_000  # type: ignore[operator]
    called = _probe(PROBE_ALL, *args, "--checkpoint", "called.ckpt", cwd=tmp_path)
    assert called["code"] == 0
    assert called["collecting"] is True
    assert called["frozen"] == 0


def test_a_run_lists_every_command_but_builds_only_its_own() -> None:
    """The command line a run parses (one command's options) shows the same `ozbulk --help` as
    the whole one, and declares none of the other commands' options."""
    whole, run = build_parsers().root, build_parsers("delete").root
    assert run.format_help() == whole.format_help()
    for command in COMMANDS:
        assert f"    {command}" in whole.format_help()
    assert "--latency-ms" in _declared(whole)
    assert "--latency-ms" not in _declared(run) and "--rate" in _declared(run)


def _declared(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag declared by a parser and the parsers of its commands."""
    flags = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                flags |= _declared(command)
    return flags


def test_the_hint_for_a_mistake_knows_every_command_s_flags(run_cli, sample_csv) -> None:
    """A run declares only its own options, yet an unknown flag is matched against every
    command's, as before: --latency-m (mock-server's --latency-ms) is named."""
    result = run_cli("delete", str(sample_csv(10)), "--user", "u", "--group-id", "1",
                     "--latency-m", "3")  # fmt: skip
    assert result.returncode == 2, result.output
    assert "(did you mean --latency-ms?)" in result.stderr, result.stderr
