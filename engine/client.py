"""HTTP to the Ozonetel API: one DELETE per chunk, and the verdict read from the body.

The API answers HTTP 200 for most verdicts and puts the truth in ``status``; this module is the one
place that turns an answer (or a failure to get one) into either a :class:`Verdict` or an error of
:mod:`engine.errors`. aiohttp's exceptions are translated in :func:`translate_transport_error` and
nowhere else.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import orjson

from engine.auth import ApiKeyAuth, Auth, TokenAuth
from engine.errors import (
    ApiError,
    AuthError,
    FatalApiError,
    InvalidGroupError,
    RateLimited,
    RequestRejected,
    ServerError,
    TokenRejected,
    TransportError,
)
from engine.settings import RunSettings

# HTML pages and stack traces can be long; an error message keeps only their start.
SNIPPET = 120
TOKEN_MESSAGES = ("token expired", "invalid token", "token should not be null")
AUTH_MESSAGES = ("invalid username or apikey", "username is null", "unauthori")
RATE_MESSAGES = ("max limit exceeded", "rate limit", "too many requests")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A successful answer: how many numbers the API accepted, which it refused, how many went."""

    success: int
    error: list[str]
    deleted: int


def _snippet(raw: bytes) -> str:
    text = raw[:SNIPPET].decode("utf-8", errors="replace")
    return " ".join(text.split()) + ("…" if len(raw) > SNIPPET else "")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def classify(status: int, headers: Mapping[str, str], raw: bytes, generation: int = 0) -> Verdict:
    """Read one answer of deleteBlockNumberGroup: return its verdict or raise what it means."""
    if status == 429:
        raise RateLimited(
            "HTTP 429 Too Many Requests",
            retry_after=parse_retry_after(headers.get("Retry-After")),
            http_status=status,
        )
    if status >= 500:
        raise ServerError(f"HTTP {status}: {_snippet(raw)}", http_status=status)
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        if status in (401, 403):
            raise AuthError(f"HTTP {status}: the API refused the credentials", http_status=status)
        if status == 404:
            raise FatalApiError(
                "HTTP 404: no such endpoint; check --base-url and --path", http_status=status
            )
        raise ServerError(
            f"HTTP {status}, body is not a JSON verdict: {_snippet(raw)}", http_status=status
        )
    verdict = str(answer.get("status", "")).lower()
    message = str(answer.get("message", ""))
    lowered = message.lower()
    if verdict == "success":
        output = answer.get("output")
        if not isinstance(output, dict):
            raise ServerError(f"success without an output: {_snippet(raw)}", http_status=status)
        success, error, deleted = output.get("success"), output.get("error"), output.get("deleted")
        if (
            not isinstance(success, list)
            or not isinstance(error, list)
            or not isinstance(deleted, int)
        ):
            raise ServerError(
                f"success with a malformed output: {_snippet(raw)}", http_status=status
            )
        return Verdict(len(success), [str(item) for item in error], deleted)
    if any(text in lowered for text in RATE_MESSAGES):
        raise RateLimited(
            f"rate limited: {message}",
            retry_after=parse_retry_after(headers.get("Retry-After")),
            http_status=status,
        )
    if any(text in lowered for text in TOKEN_MESSAGES):
        raise TokenRejected(f"token refused: {message}", generation=generation, http_status=status)
    if any(text in lowered for text in AUTH_MESSAGES):
        raise AuthError(
            f"the API refused the credentials ({message}); check --user, the API key and --auth",
            http_status=status,
        )
    if "invalid group id" in lowered:
        raise InvalidGroupError(
            "Invalid group id: the group does not exist for this account; check --group-id",
            http_status=status,
        )
    if "parameters are mandatory" in lowered or "maximum" in lowered:
        raise RequestRejected(
            f"the API refused the request's shape ({message}); this is a bug in ozbulk, "
            "please report it with the output of -v",
            http_status=status,
        )
    if status in (401, 403):
        raise AuthError(f"HTTP {status}: {message or 'credentials refused'}", http_status=status)
    raise ServerError(f"unexpected answer (HTTP {status}): {_snippet(raw)}", http_status=status)


def translate_transport_error(error: BaseException, url: str) -> ApiError:
    """Map every failure to get an answer onto the error tree; the only place that knows aiohttp."""
    if isinstance(error, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
        return FatalApiError(
            f"TLS certificate of {url} failed verification; check --base-url "
            "(verification stays on: a key must not be sent to an impostor)"
        )
    if isinstance(error, aiohttp.ClientSSLError | ssl.SSLError):
        return TransportError(f"TLS error talking to {url}: {error.__class__.__name__}")
    if isinstance(error, asyncio.TimeoutError | TimeoutError | aiohttp.ServerTimeoutError):
        return TransportError(f"no answer from {url} in time")
    if isinstance(error, aiohttp.ClientConnectorError):
        return TransportError(
            f"cannot connect to {url}: {error.os_error.strerror or error.os_error}"
        )
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return TransportError(f"{url} closed the connection without answering")
    if isinstance(error, aiohttp.ClientPayloadError):
        return TransportError(f"the answer from {url} was cut short")
    if isinstance(error, aiohttp.ClientResponseError):
        return ServerError(f"bad HTTP answer from {url}: {error.status}", http_status=error.status)
    if isinstance(error, aiohttp.InvalidURL):
        return FatalApiError(f"invalid URL {url}; check --base-url and --path")
    if isinstance(error, aiohttp.ClientError | OSError):
        return TransportError(f"network error talking to {url}: {error.__class__.__name__}")
    raise TypeError(f"not a transport error: {error!r}")


TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class OzonetelClient:
    """Sends chunks; owns the aiohttp session (one for the run) and the auth provider."""

    def __init__(self, settings: RunSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self._session = session
        self._url = settings.url
        self._prefix = orjson.dumps({"userName": settings.user, "id": settings.group_id})[:-1]
        self.auth: Auth
        if settings.auth == "token":
            self.auth = TokenAuth(
                user=settings.user,
                api_key=settings.api_key,
                token_url=settings.token_url,
                post=self._post,
                ttl=settings.token_ttl,
                budget=settings.token_budget,
            )
        else:
            self.auth = ApiKeyAuth(settings.api_key)

    @staticmethod
    def open_session(settings: RunSettings) -> aiohttp.ClientSession:
        """One session, one connection per worker; timeouts leave out waiting for the pool."""
        timeout = aiohttp.ClientTimeout(
            total=settings.connect_timeout + settings.read_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        connector = aiohttp.TCPConnector(limit=settings.concurrency, ttl_dns_cache=300)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            json_serialize=lambda value: orjson.dumps(value).decode(),
            headers={"User-Agent": "ozbulk"},
        )

    def body(self, numbers: list[str]) -> bytes:
        """The request body; the fixed part is encoded once for the whole run."""
        return self._prefix + b',"blockNumbers":' + orjson.dumps(numbers) + b"}"

    async def delete(self, body: bytes) -> Verdict:
        headers = await self.auth.headers()
        generation = self.auth.generation
        try:
            async with self._session.delete(self._url, data=body, headers=headers) as response:
                raw = await response.read()
                status, answer_headers = response.status, response.headers
        except TRANSPORT_ERRORS as error:
            raise translate_transport_error(error, self._url) from None
        return classify(status, answer_headers, raw, generation)

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                return response.status, await response.read()
        except TRANSPORT_ERRORS as error:
            raise translate_transport_error(error, url) from None
