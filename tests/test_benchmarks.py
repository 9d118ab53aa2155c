"""The benchmark suite runs on tiny inputs and writes its results; no figure is asserted here.

Speed stays out of the test suite (it depends on the machine and its load): these tests only
check that `python -m benchmarks` and its parts work, so that a full run does not die half-way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.data import write_numbers_csv
from benchmarks.harness import BARE_LOOP, HAND_LOOP, Server, alternating, hand_loop, run, spread
from benchmarks.servers import SUCCESS_BODY, _content_length
from benchmarks.suite import _max_in_window
from engine.batcher import Producer
from engine.client import classify
from engine.numbers import Normalizer
from engine.settings import InputSettings

ROOT = Path(__file__).resolve().parent.parent


def run_benchmarks(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_quick_producer_benchmark_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    """`--quick --only producer` exits 0 and writes results.json, results.md and a PNG."""
    done = run_benchmarks("--quick", "--only", "producer", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True
    assert results["machine"]["cores"] >= 1
    producer = results["benchmarks"]["producer"]["data"]
    assert set(producer["runs"]) == {"read", "normalize", "full"}
    assert producer["runs"]["full"][0]["rows"] == 100_000
    assert "Producer" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "producer.png").stat().st_size > 0
    assert "on:  " in done.stdout  # each benchmark says what machine it ran on


def test_quick_overhead_benchmark_runs_both_sides_against_a_local_server(tmp_path: Path) -> None:
    """The network benchmark runs ozbulk and the hand loop and reports their ratio."""
    done = run_benchmarks("--quick", "--only", "overhead", "--repeats", "1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    overhead = json.loads((tmp_path / "results.json").read_text())["benchmarks"]["overhead"]
    runs = overhead["data"]["runs"]
    assert len(runs["ozbulk"]) == len(runs["hand loop"]) == 1
    assert runs["ozbulk"][0]["numbers"] == runs["hand loop"][0]["numbers"] > 0
    assert overhead["data"]["ratio_wall"]["median"] > 0
    assert "Engine overhead" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "overhead.png").exists()


def test_an_unknown_benchmark_name_is_refused() -> None:
    """`--only` names the benchmarks it knows when given one it does not."""
    done = run_benchmarks("--only", "nonsense")
    assert done.returncode == 2
    assert "overhead" in done.stderr


def test_generated_input_reads_back_with_the_kinds_it_reports(tmp_path: Path) -> None:
    """write_numbers_csv's rows all reach the producer, and its bad rows are rejected."""
    path = tmp_path / "numbers.csv"
    kinds = write_numbers_csv(path, 5_000, seed=3)
    assert sum(kinds.values()) == 5_000
    producer = Producer(InputSettings(paths=(str(path),)), Normalizer(), lambda _reject: None)
    chunks = list(producer.chunks())
    counts = producer.counts
    assert counts.rows == 5_000
    assert counts.rejected == kinds["bad"]
    assert counts.duplicates >= kinds["duplicate"]
    assert all(len(chunk.numbers) <= 100 for chunk in chunks)


def test_the_raw_servers_answer_is_a_success_verdict_for_ozbulk() -> None:
    """The fast fake's precomputed body is read by ozbulk as a success of 100 numbers."""
    verdict = classify(200, {}, SUCCESS_BODY)
    assert verdict.success == 100
    assert verdict.error == []


@pytest.mark.parametrize(
    ("head", "length"),
    [
        (b"DELETE /x HTTP/1.1\r\nHost: a\r\nContent-Length: 42", 42),
        (b"DELETE /x HTTP/1.1\r\ncontent-length:7\r\nHost: a", 7),
        (b"GET /x HTTP/1.1\r\nHost: a", 0),
    ],
)
def test_raw_server_reads_the_body_length_from_the_head(head: bytes, length: int) -> None:
    """Content-Length is found whatever its case and position; absent means no body."""
    assert _content_length(head) == length


def test_spread_and_alternation_helpers() -> None:
    """Spreads give median, min and max; sides alternate A B, B A so drift cancels."""
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0,
                                       "values": [3.0, 1.0, 2.0]}  # fmt: skip
    assert alternating(2, ("a", "b")) == [(0, "a"), (0, "b"), (1, "b"), (1, "a")]
    assert _max_in_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3


def test_the_bare_socket_floor_does_the_hand_loops_job(tmp_path: Path) -> None:
    """bare_loop.py (no HTTP library) sends just what the hand loop sends, every one answered."""
    source = tmp_path / "numbers.csv"
    write_numbers_csv(source, 3_000, seed=5)
    sent: dict[str, tuple[int, int]] = {}
    with Server("raw", "--latency-ms", "5", folder=tmp_path, log=True) as server:
        for script in (HAND_LOOP, BARE_LOOP):
            command = hand_loop(source, server.url, concurrency=4, script=script)
            result = run(command, cwd=tmp_path).check().json_line()
            assert result["failed"] == 0
            sent[script.name] = (result["sent"], result["requests"])
        arrivals = server.stop()
    assert sent["bare_loop.py"] == sent["hand_loop.py"]
    numbers, requests = sent["hand_loop.py"]
    assert 0 < numbers <= 100 * requests
    assert len(arrivals.times) == 2 * requests


def test_nginx_config_answers_the_api_path_only(tmp_path: Path) -> None:
    """The generated nginx config listens on loopback only (two ports), keeps every path
    in its folder, and answers the delete path with a verdict built from the request's numbers."""
    from benchmarks.nginx import API_PATH, config, verdict_template

    text = config(tmp_path, 8123, 8124)
    assert "listen 127.0.0.1:8123" in text and "listen 127.0.0.1:8124;" in text
    assert "daemon off;" in text
    assert "worker_processes 1;" in text and "root " not in text
    for line in text.splitlines():
        if line.strip().startswith(("pid", "error_log", "client_body_temp_path")):
            assert str(tmp_path) in line
    assert f"location = {API_PATH}" in text
    assert f"return 200 '{verdict_template('$http_x_numbers', '$http_x_deleted')}'" in text
    assert "proxy_set_header X-Numbers $numbers;" in text


def _delete_body(numbers: list[str]) -> bytes:
    return (
        b'{"userName":"bench","id":1,"blockNumbers":'
        + json.dumps(numbers).replace(" ", "").encode()
        + b"}"
    )


def test_nginx_echoes_each_request_s_numbers_on_one_connection(tmp_path: Path) -> None:
    """Where nginx is installed: each DELETE gets a verdict naming its own numbers, which ozbulk's
    check accepts (a full chunk deleted, a short one not found), in turn on one keep-alive
    connection; a body nginx cannot read in memory gets an empty verdict, never a wrong one."""
    import http.client

    from benchmarks.nginx import API_PATH, NginxServer, find_nginx
    from engine.client import Expected

    binary, missing = find_nginx()
    if binary is None:
        pytest.skip(missing)
    full = [919876500000 + index for index in range(100)]
    short = [917000000001, 918000000002, 916000000003]
    with NginxServer(binary, tmp_path / "nginx") as server:
        host, port = server.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        for numbers, deleted in ((full, 100), (short, 0), (full[:99], 0)):
            connection.request("DELETE", API_PATH, body=_delete_body(list(map(str, numbers))))
            answer = connection.getresponse()
            raw = answer.read()
            assert answer.status == 200
            verdict = classify(200, {}, raw, expected=Expected(numbers))
            assert (verdict.success, verdict.error, verdict.deleted) == (len(numbers), [], deleted)
        connection.request("DELETE", API_PATH, body=b"x" * 40_000)
        answer = connection.getresponse()
        assert answer.status == 200
        assert json.loads(answer.read())["output"] == {"success": [], "error": [], "deleted": 0}
        connection.request("GET", "/elsewhere")
        assert connection.getresponse().status == 404
        connection.close()
