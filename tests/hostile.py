"""A small hostile Ozonetel for tests: each test says how it answers deletes and token requests.

The embedded fake API (``engine.mock``) behaves like a healthy or flaky account; this one lies,
echoes secrets and sends without end, on loopback, in a thread of the test process. Every loop
it runs is bounded in bytes and time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from engine.mock.state import DELETE_PATH, TOKEN_PATH

Handler = Callable[[web.Request, "HostileServer"], Awaitable[web.StreamResponse]]
BLOCK = 64 * 1024
# A stream never outlives this, nor sends more than STREAM_BYTES_MAX: a client that does not
# stop reading meets the end eventually (and its test fails on memory, not on a hang).
STREAM_SECONDS_MAX = 60.0
STREAM_BYTES_MAX = 4 << 30


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def numbers_of(request: web.Request) -> list[str]:
    return list(orjson.loads(await request.read()).get("blockNumbers", []))


def honest(numbers: list[str], deleted: int | None = None) -> dict[str, Any]:
    """A true success verdict for ``numbers``: every one named, ``deleted`` (all) gone."""
    return {
        "status": "success",
        "message": "deleted",
        "output": {
            "success": [f"+{number}" for number in numbers],
            "error": [],
            "deleted": len(numbers) if deleted is None else deleted,
        },
    }


async def honest_delete(request: web.Request, server: HostileServer) -> web.StreamResponse:
    return json_response(honest(await numbers_of(request)))


async def stream(
    request: web.Request, *, total: int | None, announce: bool = True
) -> web.StreamResponse:
    """Send ``total`` bytes of a JSON-looking body (None: without end), until the client leaves;
    with ``announce``, a known total goes in Content-Length, else the body is chunked."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    if total is not None and announce:
        response.content_length = total
    await response.prepare(request)
    block = b'{"status":"success","message":"' + b"x" * (BLOCK - 32)
    sent = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_SECONDS_MAX
    limit = STREAM_BYTES_MAX if total is None else total
    try:
        while sent < limit and loop.time() < deadline:
            piece = block[: limit - sent]
            await response.write(piece)
            sent += len(piece)
    except (ConnectionError, RuntimeError):
        pass  # the client hung up: what a capped reader does
    return response


@dataclass
class HostileServer:
    """An aiohttp app on 127.0.0.1 in its own thread; counts the requests per path."""

    delete: Handler = honest_delete
    token: Handler | None = None
    requests: dict[str, int] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests[request.path] = self.requests.get(request.path, 0) + 1
        return await handler(request, self)

    async def _token(self, request: web.Request, server: HostileServer) -> web.StreamResponse:
        token = f"tok-{len(self.tokens) + 1}-8f3e2a91c7d64b05"
        self.tokens.append(token)
        return json_response({"token": token, "message": ""})

    async def _start(self) -> None:
        app = web.Application()
        token = self.token or self._token
        delete = self.delete

        async def on_delete(request: web.Request) -> web.StreamResponse:
            return await self._count(request, delete)

        async def on_token(request: web.Request) -> web.StreamResponse:
            return await self._count(request, token)

        app.router.add_route("DELETE", DELETE_PATH, on_delete)
        app.router.add_route("POST", TOKEN_PATH, on_token)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=0.25)  # fmt: skip
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    def __enter__(self) -> HostileServer:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="hostile-server", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
