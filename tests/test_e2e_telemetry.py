"""Every run is a benchmark, end to end: the real CLI against the fake API over loopback.

Live metrics scraped during a run and parsed with prometheus_client's own parser, the textfile
for node_exporter, percentiles against the fake's injected latency, the request log, the report's
timeline across a stop and a resume, and the plot.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.batcher import accepted_numbers
from engine.mock import ThreadedMockServer
from tests._helpers import (
    API_KEY,
    GROUP,
    CliResult,
    cli_env,
    delete_args,
    read_summary,
    spawn,
    wait_until,
)

REQUIRED = {
    "ozbulk_requests", "ozbulk_numbers", "ozbulk_chunks", "ozbulk_request_duration_seconds",
    "ozbulk_pace_requests_per_second", "ozbulk_in_flight", "ozbulk_input_progress_ratio",
}  # fmt: skip


def scrape(url: str) -> dict[str, Any]:
    """Every sample of an exposition, by name and labels, parsed by prometheus_client."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    assert API_KEY not in text
    samples: dict[str, Any] = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples[sample.name + json.dumps(sample.labels, sort_keys=True)] = sample.value
    samples["families"] = families
    return samples


def test_metrics_are_served_while_a_run_goes_and_latency_matches_the_server(
    fake_api: Callable[..., ThreadedMockServer],
    sample_csv: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """--metrics-port 0: scraped mid-run and parsed; p50 within 20 % of --latency-ms 50."""
    server = fake_api(latency_ms=50)
    source = sample_csv(3000)
    server.state.seed(GROUP, accepted_numbers((str(source),)))
    args = delete_args(server, source, batch_size=20, rate=25, concurrency=4, metrics_port=0,
                       summary_json="s.json", request_log="requests.csv.gz")  # fmt: skip
    run = spawn(tmp_path, args)
    found: list[str] = []

    def served() -> bool:
        found[:] = re.findall(r"metrics served at (http://127\.0\.0\.1:\d+/metrics)", run.output)
        return bool(found) or run.process.poll() is not None

    wait_until(served, timeout=30, what="the metrics URL in the log")
    assert found, run.output
    admitted = 'ozbulk_requests_total{"outcome": "admitted"}'
    scrapes: list[dict[str, Any]] = []

    def admitted_over(count: float) -> bool:
        time.sleep(0.05)  # a scrape every 50 ms at most
        scrapes.append(scrape(found[0]))
        return bool(scrapes[-1].get(admitted, 0) > count)

    wait_until(lambda: admitted_over(5), timeout=30, what="5 requests in the metrics")
    first = scrapes[-1]
    wait_until(lambda: admitted_over(first[admitted] + 10), timeout=30, what="10 more")
    second = scrapes[-1]
    assert run.wait(timeout=60) == 0, run.output
    assert first["families"] >= REQUIRED, first["families"]
    # Scraped live: the run had not finished when the second scrape saw its count.
    summary = read_summary(tmp_path / "s.json")
    assert first[admitted] < second[admitted] < summary["requests"]
    histogram_count = 'ozbulk_request_duration_seconds_count{"outcome": "admitted"}'
    assert second[histogram_count] == second[admitted]
    assert second["ozbulk_pace_requests_per_second{}"] <= 25
    assert 0 < second["ozbulk_input_progress_ratio{}"] <= 1

    latency = summary["latency"]["admitted"]
    assert latency["count"] == summary["requests"]
    assert abs(latency["p50_ms"] - 50) <= 10, latency  # the fake's latency, within 20 %
    assert latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert summary["answers_by_kind"] == {"success": summary["requests"]}
    assert summary["time_s"]["sending"] > 0 and summary["time_s"]["start_up"] > 0

    lines = list(csv.DictReader(io.StringIO(gzip.decompress(
        (tmp_path / "requests.csv.gz").read_bytes()).decode())))  # fmt: skip
    assert len(lines) == summary["requests"]
    assert {line["outcome"] for line in lines} == {"admitted"}
    assert all(45 <= float(line["duration_ms"]) < 1000 for line in lines)


def test_the_textfile_holds_the_final_figures_and_nothing_half_written(
    fake_api: Callable[..., ThreadedMockServer],
    sample_csv: Callable[..., Path],
    run_cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    """--metrics-textfile: parsed after the run, it agrees with the summary; no temp file left."""
    server = fake_api(fault_rate=0.1, fault_kinds=("http_503",))
    source = sample_csv(2000)
    server.state.seed(GROUP, accepted_numbers((str(source),)))
    result = run_cli(*delete_args(server, source, batch_size=50, rate=0, backoff_base=0.01,
                                  metrics_textfile="m.prom", summary_json="s.json"))  # fmt: skip
    assert result.returncode == 0, result.output
    summary = read_summary(tmp_path / "s.json")
    text = (tmp_path / "m.prom").read_text()
    values = {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert values['ozbulk_requests_total{"outcome": "admitted"}'] == summary["chunks_done"]
    assert values['ozbulk_requests_total{"outcome": "error"}'] == summary["retries"]
    assert values['ozbulk_responses_total{"status": "503"}'] == summary["retries"] > 0
    assert values['ozbulk_retries_total{"cause": "server_error"}'] == summary["retries"]
    assert values['ozbulk_chunks_total{"state": "done"}'] == summary["chunks_done"]
    assert values['ozbulk_numbers_total{"result": "not_found"}'] == summary["not_found"]
    assert values["ozbulk_input_progress_ratio{}"] == 1.0
    assert [entry.name for entry in tmp_path.iterdir() if entry.name.startswith("m.prom")] == [
        "m.prom"
    ]
    assert summary["answers_by_status"] == {"503": summary["retries"],
                                           "success": summary["chunks_done"]}  # fmt: skip


@pytest.mark.slow
def test_a_stopped_and_resumed_run_has_one_timeline_and_a_plot(
    fake_api: Callable[..., ThreadedMockServer],
    sample_csv: Callable[..., Path],
    run_cli: Callable[..., CliResult],
    tmp_path: Path,
) -> None:
    """A rate-limit phase stopped by SIGINT, resumed against a faulty server: one timeline."""
    limited = fake_api(latency_ms=20, rate_limit=12)
    faulty = fake_api(latency_ms=20, fault_rate=0.2, fault_kinds=("http_503",))
    source = sample_csv(2000)
    for server in (limited, faulty):  # each deletes what the run sends it
        server.state.seed(GROUP, accepted_numbers((str(source),)))
    args = delete_args(limited, source, batch_size=20, checkpoint="c.ckpt", summary_json="s.json",
                       backoff_base=0.01)  # fmt: skip
    run = spawn(tmp_path, args)
    wait_until(lambda: limited.stats()["rate_limited"] >= 1, timeout=30, what="a refusal")
    run.signal_when(
        signal.SIGINT, lambda: limited.stats()["delete_requests"] >= 40, "requests", timeout=30
    )
    assert run.wait(timeout=30) == 130, run.output
    # The API host is no part of the run's identity: the resume goes to the faulty server.
    resumed = run_cli(*[faulty.url if word == limited.url else word for word in args])
    assert resumed.returncode == 0, resumed.output
    assert "latency admitted" in resumed.stdout and "time went to" in resumed.stdout

    report = run_cli("report", "c.ckpt", "--out", "out", "--plot")
    assert report.returncode == 0, report.output
    with (tmp_path / "out" / "timeline.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["pass"] for row in rows} == {"1", "2"}
    by_pass = {number: [row for row in rows if row["pass"] == number] for number in ("1", "2")}
    assert sum(int(row["refused"]) for row in by_pass["1"]) == limited.stats()["rate_limited"]
    assert sum(int(row["errors"]) for row in by_pass["2"]) == faulty.stats()["faults"]["http_503"]
    summary = read_summary(tmp_path / "s.json")
    assert sum(int(row["requests"]) for row in rows) == summary["requests"]
    assert sum(int(row["admitted"]) for row in rows) == summary["chunks_done"]
    with (tmp_path / "out" / "latency.csv").open(newline="") as handle:
        latency = {row["series"]: row for row in csv.DictReader(handle)}
    assert int(latency["admitted"]["count"]) == summary["chunks_done"]
    assert (tmp_path / "out" / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    status = run_cli("status", "c.ckpt", "--json")
    telemetry = json.loads(status.stdout)["telemetry"]
    assert telemetry["latency"]["admitted"]["count"] == summary["chunks_done"]
    assert telemetry["latency"]["refused"]["count"] == limited.stats()["rate_limited"]
    assert telemetry["pacer"]["decreases"] >= 1 and telemetry["pacer"]["passes"] == 2
    assert "latency admitted" in run_cli("status", "c.ckpt").stdout


def without(module: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a process where ``module`` cannot be imported."""
    code = (f"import sys; sys.modules[{module!r}] = None; from engine.cli import main; "
            f"sys.exit(main({list(argv)!r}))")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_a_plain_run_imports_neither_prometheus_client_nor_matplotlib(
    fake_api: Callable[..., ThreadedMockServer], sample_csv: Callable[..., Path], tmp_path: Path
) -> None:
    """Recording is always on; the optional extras are imported only when asked for."""
    server = fake_api()
    source = sample_csv(200)
    args = delete_args(server, source)
    code = (
        f"import sys; from engine.cli import main; code = main({args!r}); "
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client imported'; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_without_the_extras_the_flags_say_how_to_install_them_and_nothing_is_sent(
    fake_api: Callable[..., ThreadedMockServer], sample_csv: Callable[..., Path], tmp_path: Path
) -> None:
    """--metrics-port without prometheus_client, --plot without matplotlib: one line, exit 2."""
    server = fake_api()
    source = sample_csv(100)
    metrics = without("prometheus_client", *delete_args(server, source, metrics_port=0),
                      cwd=tmp_path)  # fmt: skip
    assert metrics.returncode == 2
    assert "pip install 'ozbulk[metrics]'" in metrics.stderr
    assert server.stats()["delete_requests"] == 0
    ran = subprocess.run([sys.executable, "-m", "engine", *delete_args(server, source,
                          checkpoint="c.ckpt")], cwd=tmp_path, env=cli_env(),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    plot = without("matplotlib", "report", "c.ckpt", "--out", "out", "--plot", cwd=tmp_path)
    assert plot.returncode == 2 and "pip install 'ozbulk[plot]'" in plot.stderr
    assert (tmp_path / "out" / "timeline.csv").exists()  # the CSV files need no extra


def test_a_metrics_port_in_use_is_refused_before_anything_is_sent(
    fake_api: Callable[..., ThreadedMockServer],
    sample_csv: Callable[..., Path],
    run_cli: Callable[..., CliResult],
) -> None:
    """A port another program holds: a clear one-line error, exit 2, no request."""
    server = fake_api()
    busy = server.port  # the fake API itself listens there
    result = run_cli(*delete_args(server, sample_csv(100), metrics_port=busy))
    assert result.returncode == 2, result.output
    assert f"--metrics-port {busy}: cannot listen on 127.0.0.1:{busy}" in result.stderr
    assert server.stats()["delete_requests"] == 0
