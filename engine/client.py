"""HTTP to the Ozonetel API: one DELETE per chunk, and the verdict read from the body.

The API answers HTTP 200 for most verdicts and puts the truth in ``status``; this module is the one
place that turns an answer (or a failure to get one) into either a :class:`Verdict` or an error of
:mod:`engine.errors`. aiohttp's exceptions are translated in :func:`translate_transport_error` and
nowhere else.

Nothing a server sends is believed or kept as it comes:

* an answer is read in blocks up to ``--max-response-bytes``; a larger one is a server error for
  the chunk, so memory stays flat whatever arrives (an endless chunked body, a 100 MB JSON);
* every verdict is checked against its request (:func:`check_verdict`): a count above what was
  sent, a list naming numbers never sent, a ``true`` or a float where a count goes: all are server
  errors for the chunk (retried, then failed and reported), never counts;
* text of the server's that reaches a message (a snippet of the body, its ``message``) passes the
  redactor first, so a server echoing the API key or the token echoes ``***``;
* aiohttp's own silent re-send of a DELETE on a dropped keep-alive connection is turned off: a
  request that may have reached the server is one the workers count, pace and mark in doubt.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import anyio
import orjson
from yarl import URL

from engine.auth import ApiKeyAuth, Auth, TokenAuth
from engine.errors import (
    ApiError,
    AuthError,
    FatalApiError,
    InvalidGroupError,
    NotAVerdict,
    RateLimited,
    RequestRejected,
    RetryableApiError,
    ServerError,
    TokenRejected,
    TransportError,
)
from engine.pacing import Pacer
from engine.records import Verdict
from engine.redact import REDACTOR, snippet
from engine.refusals import Refusal, refusal_in
from engine.settings import RunSettings

# HTML pages and stack traces can be long; an error message keeps only their start.
SNIPPET = 120
# Shorter than the idle timeout of most servers (see open_session).
KEEPALIVE_S = 4.0
# The server's own ``message`` is quoted in errors; a long one is cut like a snippet.
MESSAGE_CHARS = 200


@dataclass(slots=True)
class Expected:
    """What a chunk's request sent, for checking the verdict against: the numbers and their forms.

    The server names numbers in its own form (``+`` and the country code, see ozonetel-api.md)
    or as they were sent; both are matched back to the number sent. The table is built only when
    an answer needs it, once per chunk.
    """

    numbers: Sequence[int]
    write: Callable[[int], str] = str
    # The request's JSON array of the numbers (engine.numbers.numbers_json), when known.
    sent_json: bytes = b""
    _forms: dict[str, int] | None = field(default=None, repr=False)
    _sent: set[int] | None = field(default=None, repr=False)

    @property
    def count(self) -> int:
        return len(self.numbers)

    def all_sent_once(self, items: list[object]) -> bool:
        """True if ``items`` name numbers that were sent, none twice.

        The usual answer lists every number sent, in the order sent, as sent or as ``+`` and
        its digits: a comparison of two byte strings decides it. Next, names that ``int`` reads
        as the number itself decide it with one set comparison. Anything else is matched item
        by item.
        """
        if self._in_order_as_sent(items):
            return True
        sent = self._sent
        if sent is None:
            sent = self._sent = set(self.numbers)
        try:
            # Only strings: int() would also take True or 9.19e11, which are no numbers here.
            named = {int(item) for item in items if type(item) is str}
        except ValueError:
            named = set()
        if len(named) == len(items) and named <= sent:
            return True
        seen: set[int] = set()
        for item in items:
            number = self.number_of(item)
            if number is None or number in seen:
                return False
            seen.add(number)
        return True

    def _in_order_as_sent(self, items: list[object]) -> bool:
        """Whether ``items`` are the numbers of ``sent_json``, in order, as sent or in + form.

        The answer's strings are joined with a newline, which no number sent contains: equal
        joins of equally many strings are equal lists. It costs a few microseconds a chunk,
        against some twenty for reading every name as a number.
        """
        if not self.sent_json or len(items) != len(self.numbers):
            return False
        try:
            named = "\n".join(items).encode()  # type: ignore[arg-type]
        except (TypeError, UnicodeEncodeError):  # a name that is no string, or no text
            return False
        # The array holds plain digit strings (written by numbers_json): nothing is escaped.
        sent = self.sent_json[2:-2].replace(b'","', b"\n")
        return named == sent or named == b"+" + sent.replace(b"\n", b"\n+")

    def number_of(self, item: object) -> int | None:
        """The number sent that ``item`` of an answer's list names, or None if none was."""
        if isinstance(item, bool) or not isinstance(item, str | int):
            return None
        forms = self._forms
        if forms is None:
            forms = self._forms = {}
            for number in self.numbers:
                digits = str(number)
                forms[digits] = forms[f"+{digits}"] = forms[self.write(number)] = number
        text = str(item)
        found = forms.get(text)
        if found is None:
            found = forms.get("".join(text.split()))
        return found


def _snippet(raw: bytes) -> str:
    return snippet(raw, SNIPPET)


def _message(answer: dict[str, object]) -> str:
    """The server's ``message``, secrets masked, cut to a readable length."""
    text = " ".join(str(answer.get("message", "")).split())
    text = REDACTOR.scrub(text[: MESSAGE_CHARS + REDACTOR.longest])
    return text[:MESSAGE_CHARS] + ("…" if len(text) > MESSAGE_CHARS else "")


def check_verdict(output: dict[str, object], expected: Expected | None, status: int,
                  raw: bytes) -> Verdict:  # fmt: skip
    """The verdict in a success's ``output``, or ServerError if it cannot be true of the request.

    Without ``expected`` (a caller that does not say what it sent) only the shapes are checked.
    """
    success, error, deleted = output.get("success"), output.get("error"), output.get("deleted")

    def impossible(why: str) -> ServerError:
        return ServerError(
            f"impossible answer (HTTP {status}): {why}: {_snippet(raw)}", http_status=status
        )

    if not isinstance(success, list) or not isinstance(error, list):
        raise impossible("success or error is not a list")
    # bool is an int to Python; `true` is no count.
    if not isinstance(deleted, int) or isinstance(deleted, bool):
        raise impossible(f"deleted is {type(deleted).__name__}, not a count")
    if deleted < 0:
        raise impossible(f"deleted {deleted} is negative")
    if expected is not None:
        sent = expected.count
        if len(success) + len(error) > sent:
            raise impossible(
                f"{len(success)} in success and {len(error)} in error for {sent} numbers sent"
            )
        if deleted + len(error) > sent:
            raise impossible(f"deleted {deleted} and {len(error)} in error of {sent} sent")
        if not expected.all_sent_once([*success, *error] if error else success):
            raise impossible("it names a number that was not sent, or one sent once twice")
    return Verdict(len(success), [str(item) for item in error], deleted)


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


def classify(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    generation: int = 0,
    expected: Expected | None = None,
) -> Verdict:
    """Read one answer of deleteBlockNumberGroup: return its verdict or raise what it means.

    In layers, as httpx's ``_send_handling_*``: what the status says before any body is read,
    then the body's shape, then a success's output, then the refusal its message states.
    """
    _raise_for_status(status, headers, raw)
    answer = _json_object(raw)
    if answer is None:
        raise _not_a_verdict(status, raw)
    # A success is believed only with a 2xx: "401 Unauthorized" with a success body is not one.
    if str(answer.get("status", "")).lower() == "success" and 200 <= status < 300:
        return _success(answer, status, raw, expected)
    raise _refusal(status, headers, raw, _message(answer), generation)


def _raise_for_status(status: int, headers: Mapping[str, str], raw: bytes) -> None:
    """Raise what the status alone means, whatever the body says: 429, 5xx, a redirect."""
    if status == 429:
        raise _rate_limited("HTTP 429 Too Many Requests", status, headers)
    if status >= 500:
        raise ServerError(f"HTTP {status}: {_snippet(raw)}", http_status=status)
    if 300 <= status < 400:
        # Redirects are not followed: the apiKey header would go along to wherever they point.
        raise FatalApiError(
            f"HTTP {status}: the API answered with a redirect to "
            f"{snippet(headers.get('Location', '?').encode(), SNIPPET)}; check --base-url and "
            "--path (ozbulk does not follow redirects: credentials never leave for another host)",
            http_status=status,
        )


def _json_object(raw: bytes) -> dict[str, object] | None:
    """The body as a JSON object, or None if it is not one (HTML, garbled, a bare list)."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def _not_a_verdict(status: int, raw: bytes) -> ApiError:
    """The error a body that is no JSON verdict means, by the status it came with."""
    if status in (401, 403):
        return AuthError(f"HTTP {status}: the API refused the credentials", http_status=status)
    if status == 404:
        return FatalApiError(
            "HTTP 404: no such endpoint; check --base-url and --path", http_status=status
        )
    return NotAVerdict(
        f"HTTP {status}, body is not a JSON verdict: {_snippet(raw)}", http_status=status
    )


def _success(
    answer: dict[str, object], status: int, raw: bytes, expected: Expected | None
) -> Verdict:
    output = answer.get("output")
    if not isinstance(output, dict):
        raise ServerError(f"success without an output: {_snippet(raw)}", http_status=status)
    return check_verdict(output, expected, status, raw)


def _refusal(
    status: int, headers: Mapping[str, str], raw: bytes, message: str, generation: int
) -> ApiError:
    """The error a JSON answer that is no success means: its message first, then its status."""
    match refusal_in(message):
        case Refusal.RATE_LIMITED:
            return _rate_limited(f"rate limited: {message}", status, headers)
        case Refusal.TOKEN:
            return TokenRejected(
                f"token refused: {message}", generation=generation, http_status=status
            )
        case Refusal.CREDENTIALS:
            return AuthError(
                f"the API refused the credentials ({message}); check --user, the API key and "
                "--auth",
                http_status=status,
            )
        case Refusal.GROUP:
            return InvalidGroupError(
                "Invalid group id: the group does not exist for this account; check --group-id",
                http_status=status,
            )
        case Refusal.REQUEST_SHAPE:
            return RequestRejected(
                f"the API refused the request's shape ({message}); this is a bug in ozbulk, "
                "please report it with the output of -v",
                http_status=status,
            )
    if status in (401, 403):
        return AuthError(f"HTTP {status}: {message or 'credentials refused'}", http_status=status)
    if status == 404:
        return FatalApiError(
            f"HTTP 404 ({message or 'not found'}): no such endpoint; check --base-url and --path",
            http_status=status,
        )
    return ServerError(f"unexpected answer (HTTP {status}): {_snippet(raw)}", http_status=status)


def _rate_limited(text: str, status: int, headers: Mapping[str, str]) -> RateLimited:
    return RateLimited(
        text, retry_after=parse_retry_after(headers.get("Retry-After")), http_status=status
    )


def translate_transport_error(error: BaseException, url: str) -> ApiError:
    """Map every failure to get an answer onto the error tree; the only place that knows aiohttp.

    Messages name the URL and the kind of failure, never the request's headers (which hold the
    API key or token); callers raise the result ``from None`` so aiohttp's own text stays out.
    """
    name = error.__class__.__name__
    if isinstance(error, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
        return FatalApiError(
            f"TLS certificate of {url} failed verification; check --base-url "
            "(verification stays on: a key must not be sent to an impostor)"
        )
    if isinstance(error, aiohttp.ServerFingerprintMismatch):
        return FatalApiError(f"TLS certificate of {url} does not match the expected fingerprint")
    if isinstance(error, aiohttp.RedirectClientError):
        return FatalApiError(
            f"{url} redirected to an unusable URL ({name}); check --base-url and --path"
        )
    if isinstance(error, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return FatalApiError(f"invalid URL {url}; check --base-url and --path")
    if isinstance(error, aiohttp.ClientSSLError | ssl.SSLError):
        # A handshake that failed sent nothing; an error later in the stream may have.
        handshake = isinstance(error, aiohttp.ClientConnectorError)
        return TransportError(f"TLS error talking to {url}: {name}", may_have_applied=not handshake)
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return TransportError(
            f"could not connect to {url} in time (--connect-timeout)", may_have_applied=False
        )
    if isinstance(error, asyncio.TimeoutError | TimeoutError):  # ServerTimeoutError is one too
        return TransportError(f"no answer from {url} in time (--read-timeout)")
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return TransportError(
            f"cannot resolve the host of {url}; check --base-url and DNS", may_have_applied=False
        )
    if isinstance(error, aiohttp.ClientProxyConnectionError):
        return TransportError(f"cannot connect to the proxy for {url}", may_have_applied=False)
    if isinstance(error, aiohttp.ClientConnectorError):
        # The standard text for the errno, never text the exception carries.
        number = error.os_error.errno
        reason = os.strerror(number) if isinstance(number, int) and number > 0 else name
        return TransportError(f"cannot connect to {url}: {reason}", may_have_applied=False)
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return TransportError(f"{url} closed the connection without answering")
    if isinstance(error, aiohttp.ClientPayloadError):
        return TransportError(f"the answer from {url} was cut short")
    if isinstance(error, aiohttp.UploadAbortedError):
        return TransportError(f"the request to {url} was not fully sent")
    if isinstance(error, aiohttp.ClientResponseError):
        return ServerError(f"bad HTTP answer from {url}: {error.status}", http_status=error.status)
    if isinstance(error, ConnectionResetError):
        return TransportError(f"{url} reset the connection")
    if isinstance(error, aiohttp.ClientError | OSError):
        return TransportError(f"network error talking to {url}: {name}")
    raise TypeError(f"not a transport error: {name}")


TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class OzonetelClient:
    """Sends chunks; owns the aiohttp session (one for the run) and the auth provider."""

    def __init__(
        self,
        settings: RunSettings,
        session: aiohttp.ClientSession,
        pacer: Pacer | None = None,
        token_issued_at: Iterable[float] = (),
    ) -> None:
        self.settings = settings
        # Paces the deletes (the workers take their turns); the token request only reports to
        # it, so that the requests after it leave room for it in the server's window.
        self.pacer = pacer
        self._session = session
        # Parsed once: given a string, aiohttp parses the URL again for every request.
        self._url = URL(settings.url)
        self._where = _without_userinfo(settings.url)
        self._max_bytes = settings.max_response_bytes
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
                earlier=token_issued_at,
            )
        else:
            self.auth = ApiKeyAuth(settings.api_key)

    @staticmethod
    def open_session(settings: RunSettings) -> aiohttp.ClientSession:
        """One session, one connection per worker; timeouts leave out waiting for the pool.

        The pool has room for every worker plus the token request, so no request ever waits
        for a connection, and ``total`` (which would count that wait) only bounds a server that
        trickles an answer byte by byte. ``sock_read`` is what catches a server that hangs.
        """
        timeout = aiohttp.ClientTimeout(
            total=settings.connect_timeout + 2 * settings.read_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        # Idle connections are closed after KEEPALIVE_S, before most servers close them (5 s is
        # a common server default): a request sent just as the server closes its end fails,
        # and without aiohttp's silent re-send (below) that costs a retry and a chunk in doubt.
        connector = aiohttp.TCPConnector(
            limit=settings.concurrency + 1, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_S
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            json_serialize=lambda value: orjson.dumps(value).decode(),
            headers={"User-Agent": "ozbulk"},
        )
        # aiohttp re-sends an idempotent request (DELETE is one) once, silently, when a reused
        # connection drops: a second delete the workers would neither count, nor pace, nor know
        # may have been applied twice. Off, the drop reaches the workers' retry like any other.
        # (aiohttp's own test client turns it off the same way; tests pin that it stays off.)
        session._retry_connection = False
        return session

    def body(self, numbers: list[str]) -> bytes:
        """The request body; the fixed part is encoded once for the whole run."""
        return self.body_from_json(orjson.dumps(numbers))

    def body_from_json(self, numbers_json: bytes) -> bytes:
        """The request body around a JSON array of numbers encoded elsewhere (the producer)."""
        return self._prefix + b',"blockNumbers":' + numbers_json + b"}"

    async def delete(self, body: bytes, expected: Expected | None = None) -> Verdict:
        """Send one DELETE with this body; its verdict, or the error of the error tree it means.

        ``expected`` (what the body holds) lets the verdict be checked against the request.
        """
        headers = await self._headers()
        generation = self.auth.generation
        try:
            async with self._session.delete(
                self._url, data=body, headers=headers, allow_redirects=False
            ) as response:
                raw = await read_capped(response, self._max_bytes, self._where)
                status, answer_headers = response.status, response.headers
        except TRANSPORT_ERRORS as error:
            raise translate_transport_error(error, self._where) from None
        verdict = classify(status, answer_headers, raw, generation, expected)
        self.auth.accepted(generation)
        return verdict

    async def _headers(self) -> dict[str, str]:
        """The auth headers; while Generate Token fails, its backoff is waited out here.

        A failure to get a token is no attempt of the chunk's (nothing was sent): it waits for
        the auth's next try, shared by every worker, until the auth gives up (AuthError).
        """
        while True:
            try:
                return await self.auth.headers()
            except RetryableApiError:
                wait = self.auth.retry_in()
                if wait is None:
                    raise
                await anyio.sleep(wait)

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """POST for Generate Token: status and body; HTTP 429 is raised as RateLimited here."""
        pacer = self.pacer
        ticket = 0.0 if pacer is None else pacer.unpaced()
        status, retry_after = 0, None
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status, retry_after = response.status, response.headers.get("Retry-After")
                raw = await read_capped(response, self._max_bytes, "Generate Token")
        except TRANSPORT_ERRORS as error:
            raise translate_transport_error(error, _without_userinfo(url)) from None
        finally:
            if pacer is not None and status != 429:
                pacer.on_other(ticket)
        if status == 429:
            refused = RateLimited(
                "Generate Token: HTTP 429 Too Many Requests",
                retry_after=parse_retry_after(retry_after),
                http_status=status,
            )
            if pacer is not None:
                pacer.on_rate_limited(ticket, refused.retry_after)
            raise refused
        return status, raw


async def read_capped(response: aiohttp.ClientResponse, limit: int, where: str) -> bytes:
    """The body of ``response``, read in blocks; ServerError once it passes ``limit`` bytes.

    The connection is closed then rather than drained: a server that sends without end must not
    keep a worker (or memory) busy. aiohttp's reader holds only a bounded buffer meanwhile.
    """
    announced = response.content_length
    if announced is not None and announced > limit:
        response.close()
        raise _too_large(response.status, where, limit, f"it announces {announced} bytes")
    content = response.content
    if content.is_eof():
        # The whole body came with the headers, as a verdict of a few KB does: take it as it
        # lies, without the async iteration's round trips through the event loop. It is what
        # the reader holds, which its flow control keeps small; checked all the same.
        body = content.read_nowait()
        _within_cap(response, len(body), limit, where)
        return body
    blocks: list[bytes] = []
    size = 0
    async for block in content.iter_any():
        size += len(block)
        _within_cap(response, size, limit, where)
        blocks.append(block)
    return b"".join(blocks)


def _within_cap(response: aiohttp.ClientResponse, size: int, limit: int, where: str) -> None:
    """ServerError, the connection closed (not drained), once ``size`` bytes pass the cap."""
    if size > limit:
        response.close()
        raise _too_large(response.status, where, limit, "it kept coming")


def _too_large(status: int, where: str, limit: int, why: str) -> ServerError:
    return ServerError(
        f"HTTP {status}: the answer from {where} is larger than --max-response-bytes "
        f"({limit} bytes; {why}); a verdict takes a few KB",
        http_status=status,
    )


def _without_userinfo(url: str) -> str:
    """The URL as messages show it: no user:password@ (a secret could hide there), no query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
