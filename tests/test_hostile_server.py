"""Hostile servers: answers too large, answers that lie, servers that echo secrets, re-sends.

Each test either checks the client against ``tests/hostile.py`` (a server that lies on purpose)
or runs the real CLI against it, then reads every byte the run left behind.
"""

from __future__ import annotations

import base64
import csv
import gzip
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from engine import auth as auth_module
from engine import cli
from engine.batcher import accepted_numbers
from engine.client import Expected, OzonetelClient, classify
from engine.errors import AuthError, FatalApiError, ServerError, TransportError
from engine.mock.state import DELETE_PATH, TOKEN_PATH
from engine.numbers import numbers_json
from engine.redact import REDACTOR, Redactor, redact_url, snippet
from engine.settings import InputSettings, RunSettings, Secret
from tests._helpers import API_KEY, USER, CliResult, cli_env, delete_args, ozbulk_command
from tests.hostile import HostileServer, honest, json_response, numbers_of, stream

SENT = [919876500001, 919876500002, 919876500003]
WRITE: Callable[[int], str] = str


def answer(output: dict[str, Any], status: int = 200) -> bytes:
    return orjson.dumps({"status": "success", "message": "deleted", "output": output})


# -- verdicts checked against their request ---------------------------------------------------


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ({"success": [], "error": [], "deleted": 4}, "deleted 4"),
        ({"success": [], "error": [], "deleted": -1}, "negative"),
        ({"success": [], "error": [], "deleted": True}, "bool"),
        ({"success": [], "error": [], "deleted": 2.0}, "float"),
        ({"success": [], "error": [], "deleted": "3"}, "str"),
        ({"success": [], "error": [], "deleted": 2**63}, "deleted"),
        ({"success": ["+919876500001"] * 4, "error": [], "deleted": 0}, "4 in success"),
        ({"success": [], "error": ["1", "2", "3", "4"], "deleted": 0}, "4 in error"),
        ({"success": ["+919999999999"], "error": [], "deleted": 1}, "not sent"),
        ({"success": ["+919876500001", "919876500001"], "error": [], "deleted": 2}, "twice"),
        ({"success": ["+919876500001"], "error": ["919876500002"], "deleted": 3}, "in error"),
        ({"success": [True], "error": [], "deleted": 0}, "not sent"),
        ({"success": "all", "error": [], "deleted": 0}, "not a list"),
    ],
)
@pytest.mark.parametrize("sent_json", [b"", numbers_json(SENT, WRITE)], ids=["numbers", "json"])
def test_an_impossible_verdict_is_a_server_error_never_a_count(
    output: dict[str, Any], why: str, sent_json: bytes
) -> None:
    """Counts above what was sent, wrong types, numbers never sent: a ServerError naming why,
    whether or not the request's JSON is known (it gives the check a faster first test)."""
    with pytest.raises(ServerError, match="impossible answer") as caught:
        classify(200, {}, answer(output), expected=Expected(SENT, WRITE, sent_json))
    assert why in str(caught.value)
    assert caught.value.may_have_applied  # the chunk is in doubt when it is sent again


@pytest.mark.parametrize("write", [str, lambda number: f"+{number}"], ids=["digits", "e164"])
def test_the_numbers_sent_named_in_order_are_matched_as_bytes(write: Callable[[int], str]) -> None:
    """The usual answer (every number, in order, as sent or in + form) is decided by comparing
    bytes; an answer that only looks like it on the bytes is left to the full check."""
    expected = Expected(SENT, write, numbers_json(SENT, write))
    plus = [f"+{number}" for number in SENT]
    assert expected._in_order_as_sent(plus)
    assert expected._in_order_as_sent([write(number) for number in SENT])
    assert not expected._in_order_as_sent(plus[::-1])  # the full check takes it from here
    assert expected.all_sent_once(plus[::-1])
    assert not expected._in_order_as_sent(plus[:2])
    # One string holding two numbers and an empty one: as many items, joined differently.
    glued = ["\n".join(plus[:2]), "", plus[2]]
    assert not expected._in_order_as_sent(glued)
    assert not expected.all_sent_once(glued)
    assert not expected._in_order_as_sent([1, 2, 3])
    assert not Expected(SENT, write)._in_order_as_sent(plus)  # no JSON known: no shortcut


def test_a_true_verdict_in_any_form_the_server_uses_is_believed() -> None:
    """`+`-prefixed, as sent, national: each names a number sent; deleted may be below success."""
    national: Callable[[int], str] = lambda number: str(number)[2:]  # noqa: E731
    raw = answer(
        {"success": ["+919876500001", "9876500002"], "error": ["9876500003"], "deleted": 1}
    )
    verdict = classify(200, {}, raw, expected=Expected(SENT, national))
    assert (verdict.success, verdict.error, verdict.deleted) == (2, ["9876500003"], 1)
    assert classify(200, {}, answer({"success": [], "error": [], "deleted": 0}),
                    expected=Expected(SENT)).deleted == 0  # fmt: skip


@pytest.mark.parametrize(
    ("status", "error"), [(401, AuthError), (403, AuthError), (404, FatalApiError),
                          (302, FatalApiError), (500, ServerError), (418, ServerError)],
)  # fmt: skip
def test_a_success_body_with_a_non_2xx_status_is_not_a_success(
    status: int, error: type[Exception]
) -> None:
    """HTTP 401/404/500 with a "success" body is what its status says, never a verdict."""
    raw = answer({"success": ["+919876500001"], "error": [], "deleted": 1})
    with pytest.raises(error):
        classify(status, {}, raw, expected=Expected(SENT))


# -- the one redactor -------------------------------------------------------------------------


def test_the_redactor_masks_every_form_a_server_echoes_a_secret_in() -> None:
    """Plain, percent-encoded, JSON-escaped, and a URL password's Basic header value."""
    redactor = Redactor()
    redactor.add('k3y/with+"odd"')
    redactor.add_url("http://alice:pa%40ss@host.test/x")
    basic = base64.b64encode(b"alice:pa@ss").decode()
    text = f'k3y/with+"odd" k3y%2Fwith%2B%22odd%22 k3y/with+\\"odd\\" pa@ss pa%40ss Basic {basic}'
    scrubbed = redactor.scrub(text)
    assert scrubbed == "*** *** *** *** *** Basic ***"
    redactor.add("ab")  # too short to mask without mangling every message
    assert redactor.scrub("abc") == "abc"


def test_a_url_password_shows_as_stars() -> None:
    assert redact_url("http://user:pass@host:8080/p?q=1") == "http://user:***@host:8080/p?q=1"
    assert redact_url("https://host/p") == "https://host/p"


def test_a_snippet_masks_before_it_cuts() -> None:
    """A secret straddling the cut would leave its first half; masked first, nothing is left."""
    secret = "straddling-secret-0123456789"
    REDACTOR.add(secret)
    raw = b"x" * 110 + secret.encode() + b"y" * 50
    text = snippet(raw, 120)
    assert "straddl" not in text and "***" in text
    assert len(text) <= 121


# -- answers capped in size -------------------------------------------------------------------


def settings_for(url: str, **extra: Any) -> RunSettings:
    return RunSettings(
        inputs=InputSettings(paths=("x.csv",)),
        group_id=1,
        user=USER,
        api_key=Secret(API_KEY),
        checkpoint=Path("x.ckpt"),
        base_url=url,
        **extra,
    )


async def delete_once(server: HostileServer, **extra: Any) -> Any:
    run = settings_for(server.url, **extra)
    async with OzonetelClient.open_session(run) as session:
        client = OzonetelClient(run, session)
        return await client.delete(client.body(["919876500001"]), Expected([919876500001]))


@pytest.mark.parametrize("total", [None, 100 << 20], ids=["endless-chunked", "100MB-announced"])
async def test_an_answer_larger_than_the_cap_is_a_server_error(total: int | None) -> None:
    """An endless chunked body or a 100 MB one: ServerError after 1 MB, in well under a second."""

    async def huge(request: web.Request, server: HostileServer) -> web.StreamResponse:
        return await stream(request, total=total)

    with HostileServer(delete=huge) as server:
        started = time.monotonic()
        with pytest.raises(ServerError, match="max-response-bytes") as caught:
            await delete_once(server)
        assert time.monotonic() - started < 5
    assert caught.value.may_have_applied


async def test_the_cap_counts_bytes_after_decompression() -> None:
    """A 50 KB gzip body that inflates to 50 MB (a "zip bomb") meets the cap while inflating."""
    bomb = gzip.compress(b"0" * (50 << 20), compresslevel=9)
    assert len(bomb) < 100_000

    async def inflating(request: web.Request, server: HostileServer) -> web.StreamResponse:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip",
                                                "Content-Type": "application/json"})  # fmt: skip

    with HostileServer(delete=inflating) as server, pytest.raises(ServerError, match="max-resp"):
        await delete_once(server)


async def test_the_cap_is_a_setting() -> None:
    """A 20 KB verdict passes the default cap and fails a 10 KB one."""

    async def padded(request: web.Request, server: HostileServer) -> web.StreamResponse:
        body = honest(await numbers_of(request))
        body["padding"] = "p" * 20_000
        return json_response(body)

    with HostileServer(delete=padded) as server:
        assert (await delete_once(server)).deleted == 1
        with pytest.raises(ServerError, match="10240 bytes"):
            await delete_once(server, max_response_bytes=10_240)


async def test_the_cap_holds_for_an_unannounced_answer_that_arrives_whole() -> None:
    """A 20 KB chunked answer, no Content-Length, written at once: it is at its end before it is
    read, and the cap still holds (10 KB fails) without holding back an answer under it."""

    async def unannounced(request: web.Request, server: HostileServer) -> web.StreamResponse:
        return await stream(request, total=20_000, announce=False)

    with HostileServer(delete=unannounced) as server:
        with pytest.raises(ServerError, match="10240 bytes"):
            await delete_once(server, max_response_bytes=10_240)
        with pytest.raises(ServerError, match="body is not a JSON verdict"):
            await delete_once(server)  # read whole under the default cap, then judged


def test_a_cap_below_a_kilobyte_is_refused() -> None:
    with pytest.raises(Exception, match="--max-response-bytes must be at least 1024"):
        settings_for("http://127.0.0.1:1", max_response_bytes=10)


async def test_a_token_answer_larger_than_the_cap_is_a_server_error() -> None:
    """The cap holds for Generate Token too: an endless token answer is a ServerError."""

    async def endless(request: web.Request, server: HostileServer) -> web.StreamResponse:
        return await stream(request, total=None)

    with HostileServer(token=endless) as server:
        run = settings_for(server.url, auth="token")
        async with OzonetelClient.open_session(run) as session:
            client = OzonetelClient(run, session)
            with pytest.raises(ServerError, match="Generate Token is larger"):
                await client.auth.headers()


# -- no silent re-send ------------------------------------------------------------------------


async def test_idle_connections_are_closed_before_a_server_would_close_them() -> None:
    """Without aiohttp's re-send, a server closing an idle connection under a request costs a
    retry: ozbulk lets go of idle connections first (most servers keep them 5 s or more)."""
    async with OzonetelClient.open_session(settings_for("http://127.0.0.1:1")) as session:
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector._keepalive_timeout is not None and connector._keepalive_timeout < 5
        assert session._retry_connection is False


async def test_a_dropped_connection_is_not_re_sent_behind_the_workers_back() -> None:
    """aiohttp re-sends a DELETE on a dropped keep-alive connection; ozbulk's session does not."""

    async def drop_second(request: web.Request, server: HostileServer) -> web.StreamResponse:
        numbers = await numbers_of(request)
        if server.requests[DELETE_PATH] >= 2:
            assert request.transport is not None
            request.transport.close()  # applied, perhaps; the answer is lost
        return json_response(honest(numbers))

    with HostileServer(delete=drop_second) as server:
        run = settings_for(server.url)
        async with OzonetelClient.open_session(run) as session:
            client = OzonetelClient(run, session)
            body = client.body(["919876500001"])
            await client.delete(body, Expected([919876500001]))  # opens the kept-alive connection
            with pytest.raises(TransportError) as caught:
                await client.delete(body, Expected([919876500001]))
        assert server.requests[DELETE_PATH] == 2  # not 3: the drop reached ozbulk
    assert caught.value.may_have_applied


async def test_a_refused_connection_cannot_have_been_applied() -> None:
    """Nothing listening: the attempt never reached a server, so it leaves no doubt."""
    with HostileServer() as server:
        url = server.url
    run = settings_for(url)
    async with OzonetelClient.open_session(run) as session:
        client = OzonetelClient(run, session)
        with pytest.raises(TransportError) as caught:
            await client.delete(client.body(["919876500001"]))
    assert not caught.value.may_have_applied


# -- the real CLI -----------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def every_byte(tmp_path: Path, result: CliResult) -> list[tuple[str, bytes]]:
    """Everything the run printed or left on disk, by name."""
    blobs = [("stdout", result.stdout.encode()), ("stderr", result.stderr.encode())]
    blobs += [(str(path), path.read_bytes()) for path in tmp_path.rglob("*") if path.is_file()]
    return blobs


def assert_no_secret(blobs: list[tuple[str, bytes]], secrets: list[str]) -> None:
    for name, blob in blobs:
        for secret in secrets:
            assert secret.encode() not in blob, f"{secret!r} leaked into {name}"


def test_impossible_verdicts_through_the_cli_fail_their_chunks_and_count_nothing(
    run_cli: Callable[..., CliResult], sample_csv: Callable[..., Path], tmp_path: Path
) -> None:
    """Every lie of the issue, 2**63 included: no count, failed chunks with a snippet, no crash."""
    lies = [
        lambda numbers: honest(numbers, deleted=len(numbers) + 150),
        lambda numbers: honest(numbers, deleted=-5),
        lambda numbers: honest(numbers, deleted=2**63),
        lambda numbers: {**honest(numbers), "output": {**honest(numbers)["output"],
                                                       "deleted": True}},
        lambda numbers: honest(numbers + ["919999999999"] * 50),
    ]  # fmt: skip

    async def lying(request: web.Request, server: HostileServer) -> web.StreamResponse:
        numbers = await numbers_of(request)
        lie = lies[server.requests[DELETE_PATH] % len(lies)]
        return json_response(lie(numbers))

    source = sample_csv(600)
    with HostileServer(delete=lying) as server:
        args = delete_args(server, source, rate=0, max_attempts=2, backoff_base=0.01,
                           checkpoint="run.ckpt", report_dir="report",
                           summary_json="summary.json")  # fmt: skip
        result = run_cli(*args)
    assert result.returncode in (1, 3), result.output  # failed chunks, or the breaker: not 0/70
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["deleted"] == 0 and summary["sent"] == 0 and summary["success"] == 0
    assert summary["chunks_failed"] >= 1 and summary["complete"] is False
    failed = read_csv(tmp_path / "report" / "failed_chunks.csv")
    assert failed and all("impossible answer" in row["reason"] for row in failed)
    assert all('{"status":"success"' in row["reason"] for row in failed)  # the raw snippet


def test_the_answer_cap_is_a_cli_setting(
    run_cli: Callable[..., CliResult], sample_csv: Callable[..., Path], tmp_path: Path
) -> None:
    """--max-response-bytes reaches the client: a padded verdict fails under a small cap."""

    async def padded(request: web.Request, server: HostileServer) -> web.StreamResponse:
        body = honest(await numbers_of(request))
        body["padding"] = "p" * 5000
        return json_response(body)

    source = sample_csv(150)
    with HostileServer(delete=padded) as server:
        args = delete_args(server, source, rate=0, max_attempts=1, checkpoint="run.ckpt",
                           report_dir="report", max_response_bytes=4096)  # fmt: skip
        result = run_cli(*args)
    assert result.returncode == 1, result.output
    failed = read_csv(tmp_path / "report" / "failed_chunks.csv")
    assert failed and all("--max-response-bytes (4096 bytes" in row["reason"] for row in failed)


MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:], stdin=subprocess.DEVNULL)\n"
    "peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "open(sys.argv[1], 'w').write(f'{peak_kib} {code}')\n"
)
RSS_LIMIT_MB = 200


@pytest.mark.parametrize("total", [None, 100 << 20], ids=["endless-chunked", "100MB-chunked"])
def test_memory_stays_flat_whatever_the_server_sends(
    total: int | None, sample_csv: Callable[..., Path], tmp_path: Path
) -> None:
    """16 workers against endless or 100 MB bodies: every chunk failed, peak RSS under 200 MB.

    The peak is the largest resident size of ozbulk or its producer process (getrusage of a
    wrapper's children), measured, not estimated.
    """

    async def huge(request: web.Request, server: HostileServer) -> web.StreamResponse:
        # Chunked even when a total is known: the cap must hold while reading, not only on a
        # Content-Length that announces it.
        return await stream(request, total=total, announce=False)

    source = sample_csv(2000)
    measured = tmp_path / "peak.txt"
    with HostileServer(delete=huge) as server:
        args = delete_args(server, source, rate=0, concurrency=16, max_attempts=2,
                           backoff_base=0.01, checkpoint="run.ckpt", report_dir="report",
                           summary_json="summary.json")  # fmt: skip
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-c", MEASURE, str(measured), *ozbulk_command(*args)],
            cwd=tmp_path, env=cli_env(), capture_output=True, timeout=300, check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    peak_kib, code = map(int, measured.read_text().split())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code in (1, 3), summary
    assert summary["deleted"] == 0 and summary["chunks_done"] == 0
    assert summary["chunks_failed"] >= 16
    failed = read_csv(tmp_path / "report" / "failed_chunks.csv")
    assert all("max-response-bytes" in row["reason"] for row in failed)
    print(f"peak RSS {peak_kib / 1024:.0f} MB in {elapsed:.1f} s ({total=})")
    assert peak_kib < RSS_LIMIT_MB * 1024


@pytest.mark.parametrize("auth", ["token", "apikey"])
def test_no_secret_a_server_echoes_reaches_any_output_report_log_or_checkpoint(
    auth: str, run_cli: Callable[..., CliResult], sample_csv: Callable[..., Path], tmp_path: Path
) -> None:
    """A server that echoes the key, the token or the Basic header of a --base-url password in
    500 pages and error messages: none of them in stdout, stderr, log, report, checkpoint,
    summary or `status`, and the URL shows as user:***@."""
    password = "url-pass-5e8d1b" if auth == "apikey" else None  # token auth takes no password

    async def echo(request: web.Request, server: HostileServer) -> web.StreamResponse:
        headers = "\n".join(f"{name}: {value}" for name, value in request.headers.items())
        if server.requests[DELETE_PATH] % 2:
            page = f"<html><h1>500</h1><pre>{headers}</pre></html>"
            return web.Response(text=page, status=500, content_type="text/html")
        message = f"bad key {API_KEY} {request.headers.get('Authorization')} {headers}"
        return json_response({"status": "false", "message": message})

    source = sample_csv(300)
    with HostileServer(delete=echo) as server:
        base = server.url
        if password:
            base = base.replace("http://", f"http://{USER}:{password}@")
        args = delete_args(server, source, rate=0, auth=auth, max_attempts=2,
                           backoff_base=0.01, checkpoint="run.ckpt", report_dir="report",
                           summary_json="summary.json")  # fmt: skip
        args[args.index("--base-url") + 1] = base
        result = run_cli(*args, "-vv", "--log-file", "run.log")
        tokens = list(server.tokens)
    assert result.returncode in (1, 3), result.output
    status = run_cli("status", "run.ckpt")
    failed = read_csv(tmp_path / "report" / "failed_chunks.csv")
    assert failed and all("***" in row["reason"] for row in failed)  # echoed, then masked
    secrets = [API_KEY, *tokens]
    if password:
        assert f"{USER}:***@127.0.0.1" in result.output and f"{USER}:***@127.0.0.1" in status.output
        secrets += [password, base64.b64encode(f"{USER}:{password}".encode()).decode()]
    else:
        assert tokens
    blobs = [*every_byte(tmp_path, result), ("status", status.output.encode())]
    assert {"run.log", "summary.json", "run.ckpt"} <= {Path(name).name for name, _ in blobs}
    assert_no_secret(blobs, secrets)


def test_a_server_echoing_the_key_in_a_fatal_answer_shows_stars(
    run_cli: Callable[..., CliResult], sample_csv: Callable[..., Path], tmp_path: Path
) -> None:
    """`exit 3: stopped: … bad key …` quotes the server: the key in it is ***."""

    async def refuse(request: web.Request, server: HostileServer) -> web.StreamResponse:
        message = f"Invalid userName or apiKey {request.headers.get('apiKey')}"
        return json_response({"status": "false", "message": message})

    source = sample_csv(150)
    with HostileServer(delete=refuse) as server:
        args = delete_args(server, source, rate=0, checkpoint="run.ckpt", report_dir="report",
                           summary_json="summary.json")  # fmt: skip
        result = run_cli(*args, "--log-file", "run.log")
    assert result.returncode == 3, result.output
    assert "Invalid userName or apiKey ***" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "***" in summary["stopped_by"]
    assert_no_secret(every_byte(tmp_path, result), [API_KEY])


def test_re_sends_inside_one_pass_are_counted_and_in_doubt(
    run_cli: Callable[..., CliResult], sample_csv: Callable[..., Path], tmp_path: Path
) -> None:
    """Replies lost after the deletion: the server sees exactly the requests ozbulk counts, and
    each chunk re-sent after one is in doubt, its "not found" numbers probably deleted by it."""
    held: set[str] = set()
    dropped: set[str] = set()  # chunks (by their first number) whose reply was lost

    async def lose_some(request: web.Request, server: HostileServer) -> web.StreamResponse:
        numbers = await numbers_of(request)
        deleted = sum(1 for number in numbers if number in held)
        held.difference_update(numbers)
        if server.requests[DELETE_PATH] % 3 == 0 and numbers[0] not in dropped:
            dropped.add(numbers[0])  # once a chunk at most: the test needs no retry budget
            assert request.transport is not None
            request.transport.close()  # deleted, and the reply is lost
        return json_response(honest(numbers, deleted=deleted))

    source = sample_csv(2500)
    held.update(number.lstrip("+") for number in accepted_numbers((str(source),)))
    seeded = len(held)
    with HostileServer(delete=lose_some) as server:
        args = delete_args(server, source, rate=0, concurrency=4, backoff_base=0.01,
                           checkpoint="run.ckpt", report_dir="report",
                           summary_json="summary.json")  # fmt: skip
        result = run_cli(*args)
        arrived = server.requests[DELETE_PATH]
    assert result.returncode == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["requests"] == arrived  # every request that reached the server is counted
    assert summary["deleted"] + summary["not_found"] == seeded and not held
    doubtful = read_csv(tmp_path / "report" / "in_doubt.csv")
    assert summary["in_doubt_chunks"] == len(doubtful) == len(dropped) > 0
    assert sum(int(row["not_found"]) for row in doubtful) == summary["not_found"] > 0
    assert summary["probably_deleted_earlier"] == summary["not_found"]
    assert all("this pass that may have been applied" in row["reason"] for row in doubtful)


def test_a_token_endpoint_answering_html_backs_off_then_stops_clearly(
    monkeypatch: pytest.MonkeyPatch, sample_csv: Callable[..., Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """HTML or broken JSON from Generate Token: retried with backoff, then exit 3 saying so,
    with no chunk failed (nothing was sent)."""
    monkeypatch.setattr(auth_module, "RETRY_BASE", 0.05)
    monkeypatch.setattr(auth_module, "RETRY_CAP", 0.2)
    pages = [b"<html>502 Bad Gateway</html>", b'{"tok']

    async def broken(request: web.Request, server: HostileServer) -> web.StreamResponse:
        body = pages[server.requests[TOKEN_PATH] % 2]
        return web.Response(body=body, content_type="text/html")

    source = sample_csv(300)
    monkeypatch.chdir(tmp_path)
    with HostileServer(token=broken) as server:
        args = delete_args(server, source, rate=0, auth="token", checkpoint="run.ckpt",
                           report_dir="report", summary_json="summary.json")  # fmt: skip
        monkeypatch.setenv("OZONETEL_API_KEY", API_KEY)
        code = cli.main(args)
        token_requests = server.requests.get(TOKEN_PATH, 0)
        deletes = server.requests.get(DELETE_PATH, 0)
    output = capsys.readouterr()
    assert code == 3, output
    assert token_requests == auth_module.TOKEN_FAILURES_MAX and deletes == 0
    assert "Generate Token failed 6 times in a row" in output.out + output.err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["chunks_failed"] == 0 and summary["sent"] == 0
