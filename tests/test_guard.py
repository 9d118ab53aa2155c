"""The guard against a run that deletes nothing: it stops early, says what to check, can be
overridden on purpose, and a resume keeps its decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.batcher import accepted_numbers
from engine.checkpoint import Checkpoint
from engine.errors import NothingDeleted
from engine.guard import ALLOWED, GUARD_NUMBERS, PASSED, TRIPPED, NotFoundGuard
from tests._helpers import GROUP, delete_args


def test_it_stops_once_the_first_numbers_were_none_in_the_group() -> None:
    """20 chunks of 100 with deleted 0: the 20th raises, naming what to check."""
    guard = NotFoundGuard(None, allow=False, group_id=42, number_example="919876543210")
    for _ in range(GUARD_NUMBERS // 100 - 1):
        guard.record(100, 0, 0, in_doubt=False)
    with pytest.raises(NothingDeleted) as stopped:
        guard.record(100, 0, 0, in_doubt=False)
    message = str(stopped.value)
    for word in ("--number-format", "--group-id", "--user", "--allow-not-found", "group 42",
                 "919876543210"):  # fmt: skip
        assert word in message
    assert guard.decision == TRIPPED and stopped.value.exit_code == 3


def test_one_deletion_settles_it_and_chunks_in_doubt_prove_nothing() -> None:
    """A chunk in doubt (maybe deleted earlier) is not counted; one deleted number passes."""
    guard = NotFoundGuard(None, allow=False)
    for _ in range(GUARD_NUMBERS):
        guard.record(100, 0, 0, in_doubt=True)
    guard.record(100, 1, 0, in_doubt=False)
    assert guard.decision == PASSED
    for _ in range(GUARD_NUMBERS):
        guard.record(100, 0, 0, in_doubt=False)  # the rest may be gone already: fine


def test_numbers_the_api_listed_in_error_are_not_counted_as_not_found() -> None:
    """Refused numbers are another problem (errors.csv), not a sign of a wrong group."""
    guard = NotFoundGuard(None, allow=False)
    for _ in range(GUARD_NUMBERS):
        guard.record(100, 0, 100, in_doubt=False)
    assert guard.decision is None


def test_allow_never_stops_and_a_stored_decision_is_kept() -> None:
    """--allow-not-found is remembered; a tripped run stops again before sending; a run that
    already deleted numbers is never stopped."""
    allowed = NotFoundGuard(None, allow=True)
    for _ in range(GUARD_NUMBERS):
        allowed.record(100, 0, 0, in_doubt=False)
    assert allowed.decision == ALLOWED
    assert NotFoundGuard(ALLOWED, allow=False).decision == ALLOWED
    with pytest.raises(NothingDeleted):
        NotFoundGuard(TRIPPED, allow=False).check_start()
    NotFoundGuard(TRIPPED, allow=True).check_start()
    assert NotFoundGuard(None, allow=False, deleted_before=5).decision == PASSED


def _requests(server) -> int:  # type: ignore[no-untyped-def]
    return int(server.stats()["requests"])


def test_a_run_against_the_wrong_group_stops_early_and_a_resume_keeps_the_decision(
    run_cli, fake_api, sample_csv, tmp_path: Path
) -> None:
    """None of the numbers is in the group: exit 3 after about 2,000 numbers, not the whole
    input; the same command stops again without sending; --allow-not-found goes on to the end,
    and that decision is kept by the checkpoint."""
    server = fake_api()
    source = sample_csv(6000)
    args = delete_args(server, source, rate=0, concurrency=4)
    first = run_cli(*args)
    assert first.returncode == 3, first.output
    assert "none of the first" in first.stderr and "--number-format" in first.stderr
    sent = _requests(server)
    # The guard judges verdicts as the collector merges them; by then the workers may have sent
    # what is in flight (4) and what waits in the results stream (2 x concurrency = 8).
    assert GUARD_NUMBERS // 100 <= sent <= GUARD_NUMBERS // 100 + 4 + 8

    again = run_cli(*args)
    assert again.returncode == 3, again.output
    assert "earlier pass" in again.stderr
    assert _requests(server) == sent  # nothing more was sent

    allowed = run_cli(*args, "--allow-not-found")
    assert allowed.returncode == 0, allowed.output
    checkpoint = Checkpoint.read(tmp_path / f"ozbulk-tester-{GROUP}.ckpt")
    try:
        assert checkpoint.meta("counters")["not_found_guard"] == ALLOWED
    finally:
        checkpoint.close()
    status = run_cli("status", f"ozbulk-tester-{GROUP}.ckpt", "--json")
    assert json.loads(status.stdout)["state"] == "complete"


def test_a_run_that_finds_its_numbers_is_not_stopped(run_cli, fake_api, sample_csv) -> None:
    """The group holds the numbers: the guard passes and the run completes."""
    server = fake_api()
    source = sample_csv(3000)
    server.state.seed(GROUP, accepted_numbers((str(source),)))
    result = run_cli(*delete_args(server, source, rate=0))
    assert result.returncode == 0, result.output


# -- first contact -----------------------------------------------------------------------


def test_first_contact_stops_on_pages_that_are_not_the_api_and_on_refused_connections() -> None:
    """Six attempts with an HTML page (HTTP 200) or a refused connection, before any verdict,
    stop the run; 5xx answers and verdicts that cannot be true (the API is there, and lies) are
    left to the retries; after a verdict nothing stops it."""
    from engine.errors import NoApiThere, NotAVerdict, ServerError, TransportError
    from engine.guard import NO_API_ATTEMPTS, FirstContact

    page = NotAVerdict("HTTP 200, body is not a JSON verdict: <html>", http_status=200)
    refused = TransportError("cannot connect to http://x/: Connection refused")
    for error in (page, refused):
        contact = FirstContact("http://x/")
        for _ in range(NO_API_ATTEMPTS - 1):
            contact.failed(error)
        with pytest.raises(NoApiThere) as stopped:
            contact.failed(error)
        assert "--base-url" in str(stopped.value) and str(error) in str(stopped.value)
    down = FirstContact("http://x/")
    for _ in range(50):
        down.failed(ServerError("HTTP 503: busy", http_status=503))
        down.failed(ServerError("impossible answer (HTTP 200): deleted 5 of 3", http_status=200))
    reached = FirstContact("http://x/")
    reached.succeeded()
    for _ in range(50):
        reached.failed(page)


def test_a_refused_connection_stops_within_seconds(run_cli, sample_csv) -> None:
    """Nothing listens at --base-url: exit 3 in seconds, saying what was answered and what to
    check, instead of eight attempts for every chunk."""
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = sample_csv(3000)
    started = time.monotonic()
    result = run_cli("delete", str(source), "--group-id", "1", "--user", "u", "--yes",
                     "--base-url", f"http://127.0.0.1:{port}", "--rate", "0")  # fmt: skip
    assert result.returncode == 3, result.output
    assert time.monotonic() - started < 20
    assert "found no Ozonetel API there" in result.output
    assert "Connection refused" in result.stderr and "--base-url" in result.stderr
    assert "stopped: stopped" not in result.output


def test_an_html_page_with_http_200_stops_early(run_cli, sample_csv) -> None:
    """A proxy's or another site's page (HTTP 200, HTML): exit 3 after a few requests, with
    the start of what was answered."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    requests = []

    class Page(BaseHTTPRequestHandler):
        def do_DELETE(self) -> None:
            requests.append(self.path)
            body = b"<html><body>Welcome to the office proxy</body></html>"
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET = do_DELETE

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        source = sample_csv(3000)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_cli("delete", str(source), "--group-id", "1", "--user", "u", "--yes",
                         "--base-url", url, "--rate", "0", "--concurrency", "2")  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 3, result.output
    assert "office proxy" in result.stderr and "--base-url" in result.stderr
    assert len(requests) <= 8
