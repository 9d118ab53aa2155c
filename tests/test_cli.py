"""The command line: configuration layers, the plan, confirmation, dry runs and clear errors."""

from __future__ import annotations

import gzip
import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from engine import errors
from engine.arguments import EXIT_CODES, build_parsers
from engine.batcher import accepted_numbers
from engine.cli import resume_command
from engine.errors import ExitCode
from tests._helpers import API_KEY, GROUP, USER, cli_env, delete_args, ozbulk_command


def _settings_table(output: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in output.splitlines()[1:]:
        name, rest = line.split(maxsplit=1)
        value, _, source = rest.rpartition("  ")
        rows[name] = (value.strip(), source.strip())
    return rows


def test_config_precedence_flag_over_env_over_file_over_default(run_cli, sample_csv, tmp_path):
    """A flag beats OZBULK_*, which beats the --config file, which beats the default."""
    source = sample_csv(10)
    (tmp_path / "ozbulk.toml").write_text(
        'user = "from-file"\ngroup-id = 9\n[delete]\nrate = 3\nconcurrency = 5\nbatch_size = 50\n'
    )
    env = cli_env(OZBULK_RATE="4", OZBULK_CONCURRENCY="6")
    result = run_cli("config", "show", str(source), "--config", "ozbulk.toml", "--concurrency", "7",
                     env=env)  # fmt: skip
    assert result.returncode == 0, result.output
    table = _settings_table(result.stdout)
    assert table["concurrency"] == ("7", "flag")
    assert table["rate"] == ("4", "environment OZBULK_RATE")
    assert table["batch-size"][0] == "50" and table["batch-size"][1].startswith("file")
    assert table["user"][0] == "from-file"
    assert table["max-attempts"] == ("8", "default")
    assert table["inputs"][1] == "argument"
    assert table["api-key"][0] == "***"
    assert API_KEY not in result.output


def test_the_layered_parsers_are_named_by_the_command_they_parse():
    """`delete` and `config show` take settings from the environment and a file; no other does."""
    parsers = build_parsers()
    assert {name: parser.prog for name, parser in parsers.layered.items()} == {
        "delete": "ozbulk delete",
        "config": "ozbulk config show",
    }


def test_unknown_config_key_is_refused_with_the_known_ones(run_cli, sample_csv, tmp_path):
    """A typo in the config file is one clear line naming the key, exit 2."""
    source = sample_csv(10)
    (tmp_path / "bad.toml").write_text("rtae = 3\n")
    result = run_cli("config", "show", str(source), "--config", "bad.toml")
    assert result.returncode == 2
    assert "unknown setting(s) rtae" in result.stderr
    assert "Traceback" not in result.output


def test_bad_setting_is_refused_before_anything_is_sent(run_cli, fake_api, sample_csv):
    """--rate 0.0x, --batch-size 101 and a missing --user each exit 2 and send nothing."""
    server = fake_api()
    source = sample_csv(50)
    for flags, expected in (
        ({"batch_size": 101}, "--batch-size must be between 1 and 100"),
        ({"rate": -2}, "--rate must be > 0"),
        ({"concurrency": 0}, "--concurrency must be between 1 and 1024"),
    ):
        result = run_cli(*delete_args(server, source, **flags))
        assert result.returncode == 2, result.output
        assert expected in result.stderr
        assert "Traceback" not in result.output
    result = run_cli("delete", str(source), "--group-id", "1", "--base-url", server.url, "--yes")
    assert result.returncode == 2 and "--user is required" in result.stderr
    assert server.stats()["requests"] == 0


def test_plain_http_to_a_remote_host_is_refused(run_cli, sample_csv):
    """The key must not cross the network in clear text unless explicitly allowed."""
    source = sample_csv(10)
    result = run_cli("delete", str(source), "--group-id", "1", "--user", USER,
                     "--base-url", "http://203.0.113.9", "--yes")  # fmt: skip
    assert result.returncode == 2
    assert "--allow-insecure-http" in result.stderr


def test_no_terminal_and_no_yes_refuses_with_advice(run_cli, fake_api, sample_csv):
    """Without a terminal to confirm on, the run asks for --yes and sends nothing."""
    server = fake_api()
    source = sample_csv(50)
    args = [arg for arg in delete_args(server, source) if arg != "--yes"]
    result = run_cli(*args)
    assert result.returncode == 2
    assert "pass --yes" in result.stderr
    assert server.stats()["requests"] == 0


def test_dry_run_reports_counts_and_rejects_and_sends_nothing(
    run_cli, fake_api, sample_csv, tmp_path
):
    """--dry-run prints the plan, writes rejected.csv with file and line, and sends nothing."""
    server = fake_api()
    source = sample_csv(2000)
    result = run_cli(*delete_args(server, source, dry_run=True, summary_json="dry.json"))
    assert result.returncode == 0, result.output
    assert "dry run: nothing sent" in result.stderr  # the plan's stream in every mode
    counts = json.loads((tmp_path / "dry.json").read_text())
    assert counts["rows"] == counts["accepted"] + counts["rejected"] + counts["duplicates"] == 2000
    rejected = (tmp_path / f"ozbulk-{USER}-{GROUP}.ckpt.dry-run" / "rejected.csv").read_text()
    lines = rejected.splitlines()
    assert len(lines) == counts["rejected"] + 1
    assert all(line.startswith(str(source)) for line in lines[1:])
    assert server.stats()["requests"] == 0
    assert not (tmp_path / f"ozbulk-{USER}-{GROUP}.ckpt").exists()


def test_a_dry_run_writes_rejected_csv_whole_or_not_at_all(run_cli, fake_api, tmp_path):
    """rejected.csv of a dry run is renamed into place once whole, as the report's: an input
    unreadable part-way leaves the earlier file as it was, and no temporary file beside it."""
    server = fake_api()
    rows = ["phone"] + [f"abc{n}" if n % 7 == 0 else str(9800000000 + n) for n in range(60_000)]
    packed = gzip.compress(("\n".join(rows) + "\n").encode())
    source = tmp_path / "numbers.csv.gz"
    source.write_bytes(packed)
    whole = run_cli(*delete_args(server, source, dry_run=True, report_dir="dry"))
    assert whole.returncode == 0, whole.output
    written = (tmp_path / "dry" / "rejected.csv").read_text()
    assert len(written.splitlines()) == 1 + 60_000 // 7 + 1
    source.write_bytes(packed[: len(packed) // 2])
    cut = run_cli(*delete_args(server, source, dry_run=True, report_dir="dry"))
    assert cut.returncode == 2 and "read failed" in cut.stderr, cut.output
    assert [entry.name for entry in (tmp_path / "dry").iterdir()] == ["rejected.csv"]
    assert (tmp_path / "dry" / "rejected.csv").read_text() == written
    assert server.stats()["requests"] == 0


def test_help_teaches_the_common_runs(run_cli):
    """`delete --help` shows the first run, resume, token auth, dry run and the exit codes."""
    result = run_cli("delete", "--help")
    assert result.returncode == 0
    for text in ("first run", "resume", "--auth token", "--dry-run", "exit codes", "130"):
        assert text in result.stdout


def test_every_exit_code_is_in_the_one_table_that_help_explains():
    """Each error's exit code is an ExitCode, and `delete --help` explains every ExitCode."""
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4, 70, 130]
    pending, seen = [errors.OzbulkError], []
    while pending:
        error = pending.pop()
        seen.append(error)
        pending += error.__subclasses__()
        assert isinstance(error.exit_code, ExitCode), error
    assert len(seen) > 20
    for code in ExitCode:
        assert f"\n  {code.value:<5}{code.meaning[:40]}" in EXIT_CODES, code


def test_resume_command_drops_restart_and_a_literal_key():
    """The printed resume command never restarts the run and never shows the key."""
    argv = ["delete", "a.csv", "--api-key", "s3cret", "--restart", "--group-id", "1",
            "--api-key=other"]  # fmt: skip
    command = resume_command(argv)
    assert command == "ozbulk delete a.csv --group-id 1"


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def _spawn_on_pty(args: list[str], cwd: Path) -> tuple[subprocess.Popen[bytes], int]:
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        ozbulk_command(*args), cwd=cwd, env=cli_env(COLUMNS="160"),
        stdin=follower, stdout=follower, stderr=follower, close_fds=True,
    )  # fmt: skip
    os.close(follower)
    return process, leader


@pytest.mark.parametrize(("answer", "expected_code"), [("yes", 0), ("no", 2)])
def test_confirmation_prompt_on_a_terminal(fake_api, sample_csv, tmp_path, answer, expected_code):
    """On a terminal the plan is shown and only 'yes' lets the run start."""
    server = fake_api()
    source = sample_csv(300)
    args = [a for a in delete_args(server, source) if a != "--yes"]
    process, leader = _spawn_on_pty(args, tmp_path)
    try:
        screen = _read_until(leader, b"Type yes to confirm", 30)
        assert b"ozbulk plan" in screen and b"pre-scan, exact" in screen
        os.write(leader, answer.encode() + b"\n")
        screen += _read_until(leader, b"never printed", 60)  # to EOF: the run ends
        assert process.wait(timeout=60) == expected_code
    finally:
        os.close(leader)
        process.kill() if process.poll() is None else None
    expected_requests = 3 if answer == "yes" else 0
    assert server.stats()["requests"] == expected_requests


def test_progress_bar_renders_and_updates_on_a_terminal(fake_api, sample_csv, tmp_path):
    """A live run on a pseudo-terminal draws the bar and it advances before the run ends."""
    server = fake_api(latency_ms=20)
    source = sample_csv(6000)
    server.state.seed(GROUP, accepted_numbers((str(source),)))
    process, leader = _spawn_on_pty(
        [a for a in delete_args(server, source, rate=20, concurrency=4) if a != "--no-progress"],
        tmp_path,
    )
    try:
        screen = _read_until(leader, b"\nexit 0", 90)
        screen += _read_until(leader, b"never printed", 2)  # drain to EOF while it exits
        code = process.wait(timeout=30)
    finally:
        os.close(leader)
    assert code == 0, screen[-2000:]
    text = screen.decode(errors="replace")
    assert "deleting" in text and "req/s" in text and "ETA" in text
    # the bar redraws with growing counts: several distinct "N/TOTAL" figures appear
    done = {int(m.replace(",", "")) for m in re.findall(r"([\d,]+)/[\d,]+", text)}
    assert len(done) >= 3, sorted(done)
    assert "\x1b[" in text  # drawn with terminal control sequences, not log lines


def test_a_stopped_stdin_run_says_it_cannot_be_resumed(run_cli, fake_api, sample_csv):
    """Standard input is read once: a stopped run says so instead of offering a resume command."""
    server = fake_api()
    source = sample_csv(300)
    args = delete_args(server, "-", rate=0)
    args[args.index("--group-id") + 1] = "999"  # no such group: the run stops with exit 3
    result = run_cli(*args, input=source.read_text())
    assert result.returncode == 3, result.output
    assert "cannot be resumed" in result.stdout
    assert "resume with:" not in result.stdout


def test_config_show_spells_out_special_rates(run_cli, sample_csv):
    """--rate auto and --rate 0 are shown as words, not as their internal numbers."""
    source = sample_csv(10)
    for flag, shown in (("auto", "auto"), ("0", "0 (no limit)")):
        result = run_cli("config", "show", str(source), "--user", "u", "--group-id", "1",
                         "--rate", flag)  # fmt: skip
        assert result.returncode == 0, result.output
        assert _settings_table(result.stdout)["rate"] == (shown, "flag")


# -- words that can be trusted -------------------------------------------------------------


def test_abbreviated_flags_are_refused_with_the_nearest_flag(run_cli, sample_csv):
    """--rat, --group and --conf are not taken for --rate, --group-id and --config: one line,
    exit 2, naming the flag that was probably meant."""
    source = str(sample_csv(10))
    for typo, meant in (("--rat", "--rate"), ("--group", "--group-id"), ("--conf", "--config")):
        result = run_cli("delete", source, "--user", USER, "--group-id", "1", typo, "3")
        assert result.returncode == 2, result.output
        assert f"did you mean {meant}?" in result.stderr, result.stderr
        assert "see ozbulk delete --help" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_bad_value_is_one_line_not_a_usage_dump(run_cli, sample_csv):
    """--group-id abc: one line naming the flag and the value, exit 2."""
    result = run_cli("delete", str(sample_csv(10)), "--user", USER, "--group-id", "abc")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--group-id" in lines[0] and "'abc'" in lines[0]
    assert "usage:" not in result.stderr


def test_version_comes_from_the_package_metadata(run_cli):
    """--version prints the installed package's version, the one written in pyproject.toml."""
    from importlib.metadata import version

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ozbulk {version('ozbulk')}"


def test_output_options_work_before_the_command(run_cli, fake_api, sample_csv, tmp_path):
    """`ozbulk -q status X` and `ozbulk -v config show ...` work like the options after it."""
    server = fake_api()
    source = sample_csv(50)
    assert run_cli(*delete_args(server, source, checkpoint="c.ckpt")).returncode == 0
    result = run_cli("-q", "status", "c.ckpt")
    assert result.returncode == 0, result.output
    assert "complete" in result.stdout
    shown = run_cli("-v", "config", "show", str(source), "--user", USER, "--group-id", "1")
    assert shown.returncode == 0, shown.output


def test_environment_key_beats_a_key_in_the_config_file(run_cli, fake_api, sample_csv, tmp_path):
    """flags > environment > file holds for the API key too, and config show says so."""
    server = fake_api()
    source = sample_csv(50)
    (tmp_path / "cfg.toml").write_text('api-key = "wrong-key-from-file"\n')
    result = run_cli(*delete_args(server, source, config="cfg.toml"))
    assert result.returncode == 0, result.output  # the environment's (right) key was used
    shown = run_cli("config", "show", str(source), "--config", "cfg.toml", "--user", USER,
                    "--group-id", "1")  # fmt: skip
    assert _settings_table(shown.stdout)["api-key"] == ("***", "environment OZONETEL_API_KEY")
    (tmp_path / "key").write_text("from-a-flag-file\n")
    shown = run_cli("config", "show", str(source), "--config", "cfg.toml", "--user", USER,
                    "--group-id", "1", "--api-key-file", "key")  # fmt: skip
    assert _settings_table(shown.stdout)["api-key"][1].endswith("(flag)")


def test_the_plan_of_a_restart_describes_the_fresh_run(run_cli, fake_api, sample_csv):
    """--restart after a finished run: the plan speaks of a new checkpoint and every request,
    not of the old checkpoint's state."""
    server = fake_api()
    source = sample_csv(450)
    assert run_cli(*delete_args(server, source)).returncode == 0
    again = run_cli(*delete_args(server, source, restart=True))
    assert again.returncode == 0, again.output
    assert "resumes" not in again.stderr
    assert "moves the old one aside" in again.stderr
    assert "about 5 of up to 100" in again.stderr or "5 of up to 100" in again.stderr


def test_another_runs_checkpoint_is_refused_before_any_plan(run_cli, fake_api, sample_csv):
    """Check first, plan after: a foreign checkpoint is an error, and no plan is shown."""
    server = fake_api()
    source = sample_csv(50)
    assert run_cli(*delete_args(server, source, checkpoint="c.ckpt")).returncode == 0
    other = run_cli(*delete_args(server, source, checkpoint="c.ckpt", country="US"))
    assert other.returncode == 2
    assert "belongs to another run" in other.stderr
    assert "ozbulk plan" not in other.output


def test_an_input_without_numbers_is_not_a_complete_run(run_cli, fake_api, tmp_path):
    """An input with no phone number in it ends with exit 2 and says why, never "complete"."""
    server = fake_api()
    (tmp_path / "empty.csv").write_text("phone\nn/a\nabc\n")
    result = run_cli(*delete_args(server, "empty.csv"))
    assert result.returncode == 2, result.output
    assert "no phone number" in result.output and "exit 0" not in result.output


def test_status_of_a_complete_run_offers_no_resume(run_cli, fake_api, sample_csv):
    """A finished run has nothing to resume: status says complete and no "resume with"."""
    server = fake_api()
    assert run_cli(*delete_args(server, sample_csv(50), checkpoint="c.ckpt")).returncode == 0
    result = run_cli("status", "c.ckpt")
    assert "complete" in result.stdout and "resume with" not in result.stdout


def test_demo_prints_no_path_it_removes(run_cli):
    """The demo works in a temporary folder: no report or checkpoint path of it is printed."""
    result = run_cli("demo", "--rows", "300")
    assert result.returncode == 0, result.output
    assert ".report" not in result.output and ".ckpt" not in result.output


def test_a_stop_is_said_once(run_cli, fake_api, sample_csv):
    """The circuit breaker's message is not prefixed twice ("stopped: stopped:")."""
    server = fake_api(fail_all=True)
    result = run_cli(*delete_args(server, sample_csv(3000), rate=0, max_attempts=1,
                                  breaker_window=5))  # fmt: skip
    assert result.returncode == 3, result.output
    assert "stopped: stopped" not in result.output
    assert "exit 3: stopped: " in result.stdout


def test_help_documents_exit_code_70(run_cli):
    """Every exit code ozbulk uses is in the help, the internal error's 70 included."""
    result = run_cli("delete", "--help")
    assert "70   internal error" in result.stdout


# -- for scripts ---------------------------------------------------------------------------


def test_quiet_prints_only_the_result_line(run_cli, fake_api, sample_csv):
    """-q: stdout is the one-line result; nothing else unless something is wrong."""
    server = fake_api()
    result = run_cli("-q", *delete_args(server, sample_csv(50)))
    assert result.returncode == 0
    assert result.stdout == "exit 0: complete: every number has a verdict\n"
    assert result.stderr == ""


def test_summary_json_dash_writes_the_summary_to_stdout(run_cli, fake_api, sample_csv):
    """--summary-json -: stdout is one JSON document; the readable summary goes to stderr."""
    server = fake_api()
    result = run_cli(*delete_args(server, sample_csv(50), summary_json="-"))
    assert result.returncode == 0
    summary = json.loads(result.stdout)
    assert summary["complete"] is True and "not_found" in summary
    assert "ozbulk summary" in result.stderr


def test_json_logs_carry_the_plan_and_the_summary_as_events(run_cli, fake_api, sample_csv):
    """--log-format json: every line on stderr is JSON, the plan and the summary included."""
    server = fake_api()
    result = run_cli(*delete_args(server, sample_csv(50), log_format="json"))
    assert result.returncode == 0, result.output
    events = [json.loads(line) for line in result.stderr.splitlines()]
    kinds = [event.get("event") for event in events]
    assert "plan" in kinds and "summary" in kinds
    summary = next(event for event in events if event.get("event") == "summary")
    assert summary["result"].startswith("exit 0")
    assert result.stdout == ""


def test_summary_reads_at_a_glance(run_cli, fake_api, sample_csv, tmp_path):
    """Words, thousands separators, shares and h:mm:ss in the printed summary, never None;
    summary.json keeps its machine keys."""
    server = fake_api()
    source = sample_csv(2500)
    server.state.seed(GROUP, list(accepted_numbers((str(source),)))[:1000])
    result = run_cli(*delete_args(server, source, summary_json="s.json"))
    assert result.returncode == 0, result.output
    text = result.stdout
    assert "None" not in text
    assert re.search(r"deleted +1,000 \(\d+\.\d %\)", text), text
    assert re.search(r"not found +1,\d{3} \(\d+\.\d %\)", text), text
    assert re.search(r"elapsed +\d+:\d\d:\d\d", text), text
    summary = json.loads((tmp_path / "s.json").read_text())
    assert {"deleted", "not_found", "elapsed_s", "chunks_total"} <= set(summary)


def test_the_log_file_tells_the_whole_story(run_cli, fake_api, sample_csv, tmp_path):
    """--log-file: version and settings (no key), the plan, the pace, the summary and the exit
    code; the terminal does not get those lines twice. -v adds a line per retry."""
    from importlib.metadata import version

    server = fake_api(fault_rate=0.3, fault_kinds=("http_503",))
    source = sample_csv(500)
    server.state.seed(GROUP, accepted_numbers((str(source),)))
    result = run_cli("-v", *delete_args(server, source, rate=50, log_file="run.log",
                                        backoff_base=0.01))  # fmt: skip
    assert result.returncode == 0, result.output
    story = (tmp_path / "run.log").read_text()
    for expected in (
        f"ozbulk {version('ozbulk')}: delete, settings",
        "ozbulk plan",
        "pace: ",
        "ozbulk summary",
        "exit 0: complete",
        "attempt 1 failed (HTTP 503",
    ):
        assert expected in story, (expected, story)
    assert API_KEY not in story
    assert "delete, settings" not in result.stderr and "pace: " not in result.stderr
    assert "retrying" in result.stderr  # -v: one line per retry on the terminal too


def test_very_verbose_logs_one_line_per_request(run_cli, fake_api, sample_csv):
    """-vv: one line per request, with its verdict; without it, none."""
    server = fake_api()
    source = sample_csv(300)
    quiet = run_cli(*delete_args(server, source))
    assert "attempt 1:" not in quiet.stderr
    loud = run_cli("-vv", *delete_args(server, source, restart=True))
    assert loud.returncode == 0, loud.output
    assert len(re.findall(r"chunk \d+, attempt 1: \d+ numbers, deleted", loud.stderr)) == 3


def test_a_folder_as_input_is_named_as_one(run_cli, tmp_path):
    """A folder given as input is said to be a folder (with the glob to use), not "no such file"."""
    (tmp_path / "exports").mkdir()
    result = run_cli("delete", "exports", "--group-id", "1", "--user", USER, "--yes")
    assert result.returncode == 2
    assert "is a folder" in result.stderr and "exports/*.csv" in result.stderr


def test_the_plan_of_retry_failed_counts_only_the_failed_chunks(
    run_cli, fake_api, sample_csv, tmp_path
):
    """--retry-failed: the plan names exactly the chunks that failed, and that many are sent."""
    source = sample_csv(2000)
    server = fake_api(fault_rate=0.3, fault_kinds=("http_503",))
    server.state.seed(GROUP, accepted_numbers((str(source),)))
    first = run_cli(*delete_args(server, source, rate=0, max_attempts=1, breaker_ratio=1.0,
                                 summary_json="s.json"))  # fmt: skip
    assert first.returncode == 1, first.output
    failed = json.loads((tmp_path / "s.json").read_text())["chunks_failed"]
    healthy = fake_api()
    healthy.state.seed(GROUP, accepted_numbers((str(source),)))
    again = run_cli(*delete_args(healthy, source, rate=0, retry_failed=True))
    assert again.returncode == 0, again.output
    assert f"requests     {failed:,} (--retry-failed" in again.stderr, again.stderr
    assert healthy.stats()["delete_requests"] == failed


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion_scripts_know_every_command_and_option(run_cli, shell: str) -> None:
    """`ozbulk completion SHELL` prints a script that names the commands and delete's options;
    the bash one is valid bash."""
    result = run_cli("completion", shell)
    assert result.returncode == 0, result.output
    script = result.stdout
    for word in (
        "delete",
        "status",
        "mock-server",
        "--rate",
        "--allow-not-found",
        "--metrics-port",
    ):
        assert word in script, word
    if shell == "bash":
        checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        assert checked.returncode == 0, checked.stderr
    else:
        assert script.startswith("#compdef ozbulk")
