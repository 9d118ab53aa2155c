"""The real CLI against the fake API misbehaving: faults, short-lived tokens, hangs, bad keys.

Each test runs ``python -m engine delete`` as a subprocess over loopback (``tests/conftest.py``)
and judges it by what the fake API saw and by the run's own summary.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.batcher import accepted_numbers
from engine.checkpoint import Checkpoint
from engine.mock import FAULT_KINDS, MockConfig, ThreadedMockServer
from tests._helpers import API_KEY, GROUP, USER, CliResult, cli_env, delete_args

TTL = 2.5


def seed_all(server: ThreadedMockServer, source: Path) -> int:
    return server.state.seed(GROUP, accepted_numbers((str(source),)))


def record_tokens(server: ThreadedMockServer) -> list[str]:
    """Every token the fake API hands out, so that leak checks can look for each of them."""
    issued: list[str] = []
    lock = threading.Lock()
    generate = server.state.generate_token

    def recording(body: bytes, *, api_key: str | None) -> dict[str, Any]:
        answer = generate(body, api_key=api_key)
        if answer.get("token"):
            with lock:
                issued.append(answer["token"])
        return answer

    server.state.generate_token = recording  # type: ignore[method-assign]
    return issued


def summary_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text())


@pytest.mark.slow
def test_faults_and_a_short_token_life_lose_nothing_and_leak_nothing(
    run_cli: Callable[..., CliResult], fake_api, sample_csv, tmp_path: Path
) -> None:
    """10 % faults of every kind and a 2.5 s token: all deleted, 0 failed, refreshes ≈ run/TTL,
    and neither the API key nor any token in any output, log, report or checkpoint."""
    server = fake_api(auth_mode="token", token_ttl=TTL, token_budget=100, fault_rate=0.1, hang_s=5)
    tokens = record_tokens(server)
    source = sample_csv(30_000)
    seeded = seed_all(server, source)
    args = delete_args(
        server, source, rate=40, concurrency=16, auth="token", token_ttl=TTL, token_budget=100,
        read_timeout=1, summary_json="summary.json", report_dir="report", checkpoint="run.ckpt",
    )  # fmt: skip
    result = run_cli(*args, "-vv", "--log-file", "run.log")

    assert result.returncode == 0, result.output
    summary = summary_of(tmp_path)
    stats = server.stats()
    assert server.state.remaining(GROUP) == 0
    # A reply lost after the deletion makes the re-sent chunk find its numbers gone already.
    assert summary["deleted"] + summary["not_found"] == seeded
    if stats["faults"].get("lost_reply"):
        assert summary["not_found"] > 0
    assert summary["chunks_failed"] == 0
    assert summary["complete"] is True
    assert set(stats["faults"]) == set(FAULT_KINDS)  # every kind happened at least once
    # One token to start, then one a lifetime (less the refresh margin): about run time / TTL.
    lifetimes = summary["elapsed_s"] / TTL
    assert lifetimes - 1 <= summary["token_refreshes"] <= lifetimes / 0.9 + 2
    assert stats["tokens_issued"] == summary["token_refreshes"] == len(tokens)
    # Their times are kept, so a resume within the hour counts them against the budget.
    checkpoint = Checkpoint.read(tmp_path / "run.ckpt")
    try:
        assert len(checkpoint.meta("counters")["token_issued_at"]) == len(tokens)
    finally:
        checkpoint.close()

    secrets = [API_KEY.encode(), *(token.encode() for token in tokens)]
    assert len(secrets) >= 3
    looked_at = [result.stdout.encode(), result.stderr.encode()]
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    looked_at += [path.read_bytes() for path in files]
    names = {path.name for path in files}
    assert {"run.log", "summary.json", "run.ckpt"} <= names
    assert any(path.parent.name == "report" for path in files)
    assert (tmp_path / "run.log").stat().st_size > 0
    for blob in looked_at:
        for secret in secrets:
            assert secret not in blob


@pytest.mark.slow
def test_a_hanging_server_never_hangs_the_run(
    run_cli: Callable[..., CliResult], fake_api, sample_csv, tmp_path: Path
) -> None:
    """A fifth of the requests never answered: each ends at --read-timeout and is retried."""
    server = fake_api(fault_rate=0.2, fault_kinds=("hang",), hang_s=60)
    source = sample_csv(3_000)
    seeded = seed_all(server, source)
    started = time.monotonic()
    result = run_cli(
        *delete_args(server, source, rate=0, read_timeout=0.5, summary_json="summary.json"),
        timeout=60,
    )
    assert result.returncode == 0, result.output
    assert time.monotonic() - started < 30
    assert server.stats()["faults"]["hang"] > 0
    assert summary_of(tmp_path)["deleted"] == seeded
    assert server.state.remaining(GROUP) == 0


def test_the_circuit_breaker_stops_a_run_against_a_broken_server(
    run_cli: Callable[..., CliResult], fake_api, sample_csv, tmp_path: Path
) -> None:
    """Every request failing: exit 3 with a clear message, after a bounded number of requests."""
    server = fake_api(fail_all=True)
    source = sample_csv(20_000)  # some 200 chunks: far more than the breaker lets through
    window, concurrency, attempts = 10, 4, 2
    args = delete_args(
        server, source, rate=0, concurrency=concurrency, max_attempts=attempts,
        backoff_base=0.01, backoff_cap=0.02, breaker_window=window, breaker_ratio=0.8,
        summary_json="summary.json",
    )  # fmt: skip
    result = run_cli(*args)
    assert result.returncode == 3, result.output
    assert "failed after every retry" in result.stderr
    assert "re-run the same command" in result.stderr
    requests = server.stats()["delete_requests"]
    # The window's chunks, plus those in flight and those queued for the collector.
    assert window * attempts <= requests <= (window + 3 * concurrency) * attempts
    summary = summary_of(tmp_path)
    assert summary["complete"] is False
    assert summary["chunks_failed"] >= 0.8 * window


def test_failed_chunks_are_recorded_and_the_run_goes_on(
    run_cli: Callable[..., CliResult], fake_api, sample_csv, tmp_path: Path
) -> None:
    """With one attempt and 30 % 503s, failed chunks are reported and every chunk is finished."""
    server = fake_api(fault_rate=0.3, fault_kinds=("http_503",))
    source = sample_csv(5_000)
    seed_all(server, source)  # else the guard stops a run that finds no number in the group
    args = delete_args(
        server, source, rate=0, max_attempts=1, breaker_ratio=1.0, breaker_window=1000,
        summary_json="summary.json",
    )  # fmt: skip
    result = run_cli(*args)
    assert result.returncode == 1, result.output
    summary = summary_of(tmp_path)
    assert summary["chunks_failed"] > 0
    assert summary["chunks_done"] > 0
    assert summary["chunks_done"] + summary["chunks_failed"] == summary["chunks_total"]
    assert server.stats()["faults"]["http_503"] == summary["chunks_failed"]


def test_a_wrong_api_key_with_token_auth_stops_with_exit_3(
    run_cli: Callable[..., CliResult], fake_api, sample_csv
) -> None:
    """Generate Token refusing the key stops the run at once: exit 3, no delete sent, no leak."""
    server = fake_api(auth_mode="token")
    wrong = "wrong-key-0d1e5c"
    source = sample_csv(2_000)
    result = run_cli(
        *delete_args(server, source, auth="token"), env=cli_env(OZONETEL_API_KEY=wrong)
    )
    assert result.returncode == 3, result.output
    assert "Invalid userName or apiKey" in result.stderr
    assert "check --user and the API key" in result.stderr
    stats = server.stats()
    assert stats["tokens_issued"] == 0
    assert stats["delete_requests"] == 0
    assert wrong not in result.output
    assert API_KEY not in result.output


def test_tokens_refused_after_one_refresh_stop_the_run(
    run_cli: Callable[..., CliResult], fake_api, sample_csv
) -> None:
    """Tokens that are refused as soon as they are minted: one refresh, then exit 3."""
    # A microsecond: no request can arrive in time (a millisecond sometimes could, and a token
    # that once worked is rightly refreshed again, making this test flaky).
    server = fake_api(auth_mode="token", token_ttl=1e-6)
    source = sample_csv(2_000)
    result = run_cli(*delete_args(server, source, auth="token"))
    assert result.returncode == 3, result.output
    assert "freshly generated token" in result.stderr
    assert server.stats()["tokens_issued"] == 2


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # UDP: picks a route, sends nothing
            address: str = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_plain_http_to_a_remote_host_is_refused(
    run_cli: Callable[..., CliResult], sample_csv, tmp_path: Path
) -> None:
    """http:// to a non-loopback host: exit 2 and nothing sent, unless --allow-insecure-http."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    config = MockConfig(user=USER, api_key=API_KEY, group_id=GROUP)
    with ThreadedMockServer(config, host="0.0.0.0") as server:
        source = sample_csv(500)
        args = delete_args(server, source, rate=0)
        base = args.index("--base-url") + 1
        args[base] = f"http://{address}:{server.port}"
        refused = run_cli(*args)
        sent_when_refused = server.stats()["requests"]
        checkpoints_when_refused = list(tmp_path.glob("*.ckpt"))
        allowed = run_cli(*args, "--allow-insecure-http")
        sent_when_allowed = server.stats()["requests"]
    assert refused.returncode == 2, refused.output
    assert "--allow-insecure-http" in refused.stderr
    assert sent_when_refused == 0
    assert checkpoints_when_refused == []
    assert allowed.returncode == 0, allowed.output
    assert sent_when_allowed > 0
