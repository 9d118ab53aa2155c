"""The fake Ozonetel API over HTTP: an aiohttp app, an async runner and a threaded runner.

Verdicts come from `MockState`; this module adds what only HTTP can do: latency, rate-limit
answers, and faults that break the response or the connection itself. It is used for benchmarks,
so a request costs one lock, one orjson parse and one orjson dump, and nothing is logged.
"""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Protocol

import orjson
from aiohttp import web

from engine.mock.state import (
    CREATE_PATH,
    DELETE_ALIAS_PATH,
    DELETE_PATH,
    FAIL_ALL_FAULT,
    RATE_LIMITED_BODY,
    TOKEN_PATH,
    UPDATE_PATH,
    JsonObject,
    MockConfig,
    MockState,
)

STATS_PATH: Final = "/mock/stats"
RESET_STATS_PATH: Final = "/mock/reset-stats"
STATE_KEY: Final = web.AppKey("ozbulk_mock_state", MockState)

# In-flight handlers get this long to finish on stop(); a hung one is cancelled after it, so a
# test that provoked a "hang" fault does not wait hang_s for the server to go away.
SHUTDOWN_GRACE_S: Final = 0.25
# Benchmarks open hundreds of connections at once; the default backlog of 128 drops some.
LISTEN_BACKLOG: Final = 1024
THREAD_START_TIMEOUT_S: Final = 10.0

_ERROR_STATUS_BY_FAULT: Final = {
    "http_500": (500, "Internal Server Error"),
    "http_502": (502, "Bad Gateway"),
    "http_503": (503, "Service Unavailable"),
    FAIL_ALL_FAULT: (503, "Service Unavailable"),
}
_HTML_502: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
# A success answer cut off mid-stream, as a proxy with a dying upstream delivers it.
_GARBLED_BODY: Final = b'{"status":"success","message":"deleted","input":{"id":1,"blockNu'


class _Call(Protocol):
    def __call__(
        self, body: bytes, *, api_key: str | None, authorization: str | None
    ) -> JsonObject: ...


def _json(body: JsonObject, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _abort(request: web.Request, *, reset: bool) -> web.Response:
    """Drop the connection without an answer; with `reset`, send a TCP RST instead of a FIN."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if reset and sock is not None:
            # Linger on with a zero timeout makes close() send RST: "connection reset by peer".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # aiohttp fails to write this to the closed transport and treats it as a client disconnect.
    return web.Response()


class _Handlers:
    def __init__(self, state: MockState) -> None:
        self._state = state
        config = state.config
        self._latency_s = config.latency_ms / 1000
        self._hang_s = config.hang_s
        self._rate_limit_style = config.rate_limit_style

    async def _admit(self, request: web.Request) -> web.Response | None:
        """Count the request, wait the configured latency, and answer it if it is rate limited."""
        admitted = self._state.admit(request.path)
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if admitted:
            return None
        if self._rate_limit_style == "body":
            return _json(RATE_LIMITED_BODY, 200)
        response = _json(RATE_LIMITED_BODY, 429)
        if self._rate_limit_style == "http":
            # Whole seconds, as the header takes, rounded up: never an invitation to come early.
            response.headers["Retry-After"] = str(max(1, math.ceil(self._state.retry_after())))
        return response

    async def _answer(self, request: web.Request, call: _Call) -> web.Response:
        body = await request.read()
        headers = request.headers
        return _json(
            call(body, api_key=headers.get("apiKey"), authorization=headers.get("Authorization"))
        )

    async def generate_token(self, request: web.Request) -> web.Response:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        body = await request.read()
        return _json(self._state.generate_token(body, api_key=request.headers.get("apiKey")))

    async def delete(self, request: web.Request) -> web.Response:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        fault = self._state.draw_fault()
        if fault is None:
            return await self._answer(request, self._state.delete)
        if fault in _ERROR_STATUS_BY_FAULT:
            status, message = _ERROR_STATUS_BY_FAULT[fault]
            return _json({"status": "error", "message": message}, status)
        if fault == "html_502":
            return web.Response(body=_HTML_502, status=502, content_type="text/html")
        if fault == "reset":
            return _abort(request, reset=True)
        if fault == "hang":
            await asyncio.sleep(self._hang_s)
            return await self._answer(request, self._state.delete)
        if fault == "garbled":
            return web.Response(body=_GARBLED_BODY, content_type="application/json")
        # lost_reply: the deletion happens, the client never learns it did.
        await self._answer(request, self._state.delete)
        return _abort(request, reset=False)

    async def update(self, request: web.Request) -> web.Response:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        return await self._answer(request, self._state.update)

    async def create(self, request: web.Request) -> web.Response:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        return await self._answer(request, self._state.create)

    async def stats(self, request: web.Request) -> web.Response:
        return _json(self._state.stats())

    async def reset_stats(self, request: web.Request) -> web.Response:
        self._state.reset_stats()
        return _json({"status": "success", "message": "stats reset"})


def build_app(state: MockState) -> web.Application:
    """The aiohttp application serving `state`; `app[STATE_KEY]` gives the state back."""
    app = web.Application()
    app[STATE_KEY] = state
    handlers = _Handlers(state)
    routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.Response]]]] = [
        ("POST", TOKEN_PATH, handlers.generate_token),
        ("DELETE", DELETE_PATH, handlers.delete),
        ("DELETE", DELETE_ALIAS_PATH, handlers.delete),
        ("PUT", UPDATE_PATH, handlers.update),
        ("POST", CREATE_PATH, handlers.create),
        ("GET", STATS_PATH, handlers.stats),
        ("POST", RESET_STATS_PATH, handlers.reset_stats),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    return app


class MockServer:
    """The fake API listening on a TCP port of this event loop; use as `async with`.

    Pass either a `MockConfig` (a fresh `MockState` is made from it) or a ready `state`, e.g. one
    built with a fake clock or already seeded.
    """

    def __init__(
        self,
        config: MockConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        state: MockState | None = None,
    ) -> None:
        if state is None:
            state = MockState(config if config is not None else MockConfig())
        elif config is not None and config != state.config:
            raise ValueError("pass a config or a state whose config it is, not two different ones")
        self.state = state
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def config(self) -> MockConfig:
        return self.state.config

    @property
    def port(self) -> int:
        """The port actually bound (useful when 0 asked for any free one)."""
        if self._port is None:
            raise RuntimeError("the mock server is not running; use `async with MockServer(...)`")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stats(self) -> JsonObject:
        return self.state.stats()

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the mock server is already running")
        runner = web.AppRunner(
            build_app(self.state),
            access_log=None,
            # A client that gave up on a hung request must not keep its handler (and stop())
            # waiting out hang_s.
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_GRACE_S,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port, backlog=LISTEN_BACKLOG)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> MockServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class ThreadedMockServer:
    """`MockServer` on its own event loop in a daemon thread, for synchronous tests and tools.

    `state` and `stats()` are safe to use from any thread: `MockState` locks every call.
    """

    def __init__(
        self,
        config: MockConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        state: MockState | None = None,
    ) -> None:
        self._server = MockServer(config, host, port, state=state)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> MockState:
        return self._server.state

    @property
    def config(self) -> MockConfig:
        return self._server.config

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return self._server.url

    def stats(self) -> JsonObject:
        return self._server.stats()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the mock server is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="ozbulk-mock-server", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._server.start(), loop).result(
                THREAD_START_TIMEOUT_S
            )
        except BaseException:
            self._stop_loop()
            raise

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._server.stop(), loop).result(
                THREAD_START_TIMEOUT_S
            )
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def __enter__(self) -> ThreadedMockServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
