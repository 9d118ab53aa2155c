"""Local servers for the benchmarks, each in its own process: a client must not share their GIL.

``python -m benchmarks.servers raw``
    The fastest fake we can run: a bare ``asyncio.Protocol`` that reads a request's head and body
    and answers a success verdict (HTTP/1.1 keep-alive, no HTTP parsing beyond
    ``Content-Length``). The verdict names the request's own numbers (``input`` echo, one
    ``success`` entry per number), as a real server does: ozbulk checks every verdict against its
    request and would refuse a canned one. The client pays a realistic JSON parse.
    ``--latency-ms`` delays each answer on a timer; ``--fail-after N`` answers "Invalid group id"
    (a verdict no retry can fix, so ``ozbulk`` stops at once with its checkpoint committed) from
    the N+1-th request on, which is how the resume benchmark gets a run stopped half-way.

``python -m benchmarks.servers mock``
    The embedded fake API (``engine.mock.build_app``) with one middleware that records when each
    request arrived and whether it was admitted; used where the fake's strict sliding-window rate
    limit is the point.

Both print ``... listening on URL`` as their first stdout line, ``first T`` when the first request
arrives (T on the system-wide monotonic clock, comparable across processes), and on SIGTERM
write ``--log`` (JSON: arrival times and HTTP statuses) before they exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from aiohttp import web

from engine.mock import MockConfig, MockState, build_app

HOST = "127.0.0.1"
BACKLOG = 1024
ECHOED = [f"9198765{index:05d}" for index in range(100)]
SUCCESS_BODY = orjson.dumps(
    {
        "status": "success",
        "message": "deleted",
        "input": {"id": 1, "blockNumbers": ECHOED},
        "output": {"success": [f"+{number}" for number in ECHOED], "error": [], "deleted": 100},
    }
)
INVALID_GROUP_BODY = orjson.dumps({"status": "error", "message": "Invalid group id"})


def success_for(request_body: bytes) -> bytes:
    """The success verdict of a delete: every number sent, in the server's ``+`` form, deleted."""
    try:
        request = orjson.loads(request_body)
    except orjson.JSONDecodeError:
        request = None
    numbers = request.get("blockNumbers", []) if isinstance(request, dict) else []
    return orjson.dumps(
        {
            "status": "success",
            "message": "deleted",
            "input": {"id": 1, "blockNumbers": numbers},
            "output": {
                "success": [f"+{number}" for number in numbers],
                "error": [],
                "deleted": len(numbers),
            },
        }
    )


def _response(body: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class ArrivalLog:
    """Arrival times (system-wide monotonic clock) and answer statuses, kept in memory."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.times: list[float] = []
        self.statuses: list[int] = []
        self.announced = False

    def arrived(self, now: float, status: int) -> None:
        if not self.announced:
            self.announced = True
            print(f"first {now!r}", flush=True)
        if self.path is not None:
            self.times.append(now)
            self.statuses.append(status)

    def write(self) -> None:
        if self.path is not None:
            self.path.write_text(json.dumps({"times": self.times, "statuses": self.statuses}))


class RawServer:
    """Answers every request with one precomputed verdict; counts, optionally logs, them."""

    def __init__(self, log: ArrivalLog, latency_ms: float, fail_after: int | None) -> None:
        self.log = log
        self.latency_s = latency_ms / 1000
        self.fail_after = fail_after
        self.answered = 0
        self.invalid_group = _response(INVALID_GROUP_BODY)

    def answer(self, transport: asyncio.Transport, body: bytes) -> None:
        self.answered += 1
        failing = self.fail_after is not None and self.answered > self.fail_after
        self.log.arrived(time.monotonic(), 200)
        response = self.invalid_group if failing else _response(success_for(body))
        if self.latency_s:
            asyncio.get_running_loop().call_later(self.latency_s, _write, transport, response)
        else:
            transport.write(response)


def _write(transport: asyncio.Transport, response: bytes) -> None:
    if not transport.is_closing():
        transport.write(response)


class _Connection(asyncio.Protocol):
    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            total = end + 4 + _content_length(bytes(buffer[:end]))
            if len(buffer) < total:
                return
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            assert self.transport is not None
            self.server.answer(self.transport, body)


def _content_length(head: bytes) -> int:
    lowered = head.lower()
    at = lowered.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    start = at + len(b"\r\ncontent-length:")
    stop = lowered.find(b"\r\n", start)
    return int(lowered[start : stop if stop >= 0 else None])


async def serve_raw(args: argparse.Namespace) -> None:
    log = ArrivalLog(args.log)
    server = RawServer(log, args.latency_ms, args.fail_after)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: _Connection(server), HOST, args.port, backlog=BACKLOG
    )
    port = listener.sockets[0].getsockname()[1]
    await _run_until_signal(f"raw benchmark server listening on http://{HOST}:{port}", log)
    listener.close()


async def serve_mock(args: argparse.Namespace) -> None:
    log = ArrivalLog(args.log)
    config = MockConfig(
        user=args.user,
        api_key=args.api_key,
        group_id=args.group_id,
        latency_ms=args.latency_ms,
        rate_limit=args.rate_limit,
    )
    app = build_app(MockState(config))

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        arrived = time.monotonic()
        response = await handler(request)
        log.arrived(arrived, response.status)
        return response

    app.middlewares.append(record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, args.port, backlog=BACKLOG)
    await site.start()
    port = runner.addresses[0][1]
    await _run_until_signal(f"mock benchmark server listening on http://{HOST}:{port}", log)
    await runner.cleanup()


async def _run_until_signal(banner: str, log: ArrivalLog) -> None:
    print(banner, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.write()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.servers", description=__doc__)
    kinds = parser.add_subparsers(dest="kind", required=True)
    raw = kinds.add_parser("raw", help="precomputed success verdicts, as fast as asyncio goes")
    raw.add_argument("--fail-after", type=int, help="answer 'Invalid group id' after N requests")
    mock = kinds.add_parser("mock", help="engine.mock's fake API, arrivals recorded")
    mock.add_argument("--user", default="bench")
    mock.add_argument("--api-key", default="bench-key")
    mock.add_argument("--group-id", type=int, default=1)
    mock.add_argument("--rate-limit", type=float, help="strict sliding-window limit, requests/s")
    for sub in (raw, mock):
        sub.add_argument("--port", type=int, default=0)
        sub.add_argument("--latency-ms", type=float, default=0.0)
        sub.add_argument("--log", type=Path, help="on SIGTERM, write arrivals here (JSON)")
    args = parser.parse_args(argv)
    asyncio.run(serve_raw(args) if args.kind == "raw" else serve_mock(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
