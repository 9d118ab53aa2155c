"""The HTTP client: every verdict class of the API, and every aiohttp failure, read correctly.

Answers are faked with ``aioresponses`` at the aiohttp session, so these tests exercise the real
request the client builds (method, URL, headers, body) and the real reading of the answer.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.client_reqrep import ConnectionKey, RequestInfo
from aioresponses import aioresponses
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from engine.client import OzonetelClient, classify, parse_retry_after, translate_transport_error
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
from engine.records import Verdict
from engine.settings import InputSettings, RunSettings, Secret

BASE = "https://api.example.test"
URL_DELETE = f"{BASE}/ca_apis/deleteBlockNumberGroup"
URL_TOKEN = f"{BASE}/ca_apis/CAToken/generateToken"
KEY = "client-test-key-3b9d"
TOKEN = "tok-client-test-77aa"


class CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 (the latest) builds responses without the ``stream_writer`` that
    aiohttp 3.12+ requires; this supplies a stand-in for the request that was never written."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class mocked_api(aioresponses):
    """aioresponses whose fake answers are built with :class:`CompatResponse`."""

    def add(self, url: Any, method: str = "GET", **kwargs: Any) -> None:
        kwargs.setdefault("response_class", CompatResponse)
        super().add(url, method, **kwargs)


def settings(**overrides: Any) -> RunSettings:
    values: dict[str, Any] = {
        "inputs": InputSettings(paths=("numbers.csv",)),
        "group_id": 7,
        "user": "acme",
        "api_key": Secret(KEY),
        "checkpoint": Path("unused.ckpt"),
        "base_url": BASE,
    }
    values.update(overrides)
    return RunSettings(**values)


@pytest.fixture
async def client() -> AsyncIterator[OzonetelClient]:
    """An API-key client with a real aiohttp session (answers come from aioresponses)."""
    async with OzonetelClient.open_session(settings()) as session:
        yield OzonetelClient(settings(), session)


@pytest.fixture
async def token_client() -> AsyncIterator[OzonetelClient]:
    """A token-auth client."""
    run = settings(auth="token")
    async with OzonetelClient.open_session(run) as session:
        yield OzonetelClient(run, session)


def success_body(success: list[str], error: list[str], deleted: int) -> dict[str, Any]:
    return {
        "status": "success",
        "message": "deleted",
        "input": {"id": 7, "blockNumbers": success},
        "output": {"success": success, "error": error, "deleted": deleted},
    }


# -- the request ------------------------------------------------------------------------------


async def test_delete_sends_the_body_and_the_api_key(client: OzonetelClient) -> None:
    """DELETE carries userName, id and blockNumbers as JSON, and the apiKey header."""
    body = client.body(["919876543210", "919876543211"])
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, payload=success_body(["+919876543210"], [], 1))
        await client.delete(body)
        [call] = mocked.requests[("DELETE", URL(URL_DELETE))]
    assert orjson.loads(call.kwargs["data"]) == {
        "userName": "acme",
        "id": 7,
        "blockNumbers": ["919876543210", "919876543211"],
    }
    assert call.kwargs["headers"]["apiKey"] == KEY
    assert call.kwargs["headers"]["Content-Type"] == "application/json"
    assert call.kwargs["allow_redirects"] is False


# -- verdicts ---------------------------------------------------------------------------------


async def test_success_counts_error_list_and_deleted(client: OzonetelClient) -> None:
    """A success verdict gives len(success), the error numbers, and deleted (not len(success))."""
    numbers = ["+9191XX88XXX8", "+919700000094", "+919700000093", "+919700000094", "+91970095"]
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, payload=success_body(numbers, ["12ab"], 4))
        verdict = await client.delete(client.body(["1"]))
    assert verdict == Verdict(success=5, error=["12ab"], deleted=4)


@pytest.mark.parametrize("retry_after", ["7", " 7 "])
async def test_http_429_with_retry_after_seconds(client: OzonetelClient, retry_after: str) -> None:
    """HTTP 429 is RateLimited, with Retry-After in seconds and the status kept."""
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, status=429, body=b"", headers={"Retry-After": retry_after})
        with pytest.raises(RateLimited) as caught:
            await client.delete(client.body(["1"]))
    assert caught.value.retry_after == 7.0
    assert caught.value.http_status == 429


async def test_http_429_with_retry_after_http_date(client: OzonetelClient) -> None:
    """A Retry-After given as an HTTP date becomes the seconds until then."""
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, status=429, payload={}, headers={"Retry-After": when})
        with pytest.raises(RateLimited) as caught:
            await client.delete(client.body(["1"]))
    assert caught.value.retry_after == pytest.approx(30, abs=2)


def test_http_429_is_rate_limited_whatever_its_body_says() -> None:
    """A 429 is RateLimited with its Retry-After even when its body names another refusal."""
    body = orjson.dumps({"status": "false", "message": "Invalid username or apikey"})
    with pytest.raises(RateLimited) as caught:
        classify(429, {"Retry-After": "4"}, body)
    assert (caught.value.retry_after, caught.value.http_status) == (4.0, 429)


def test_parse_retry_after_edge_cases() -> None:
    """A date in the past waits 0 s; garbage, or no header, waits nothing in particular."""
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None


async def test_max_limit_exceeded_body_is_rate_limited(client: OzonetelClient) -> None:
    """HTTP 200 with {"message": "Max limit exceeded"} is RateLimited, not a verdict."""
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, payload={"status": "error", "message": "Max limit exceeded"})
        with pytest.raises(RateLimited) as caught:
            await client.delete(client.body(["1"]))
    assert caught.value.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_a_retryable_server_error(client: OzonetelClient, status: int) -> None:
    """Any 5xx, whatever its body, is a ServerError carrying the status."""
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, status=status, payload={"status": "error", "message": "oops"})
        with pytest.raises(ServerError) as caught:
            await client.delete(client.body(["1"]))
    assert caught.value.http_status == status


@pytest.mark.parametrize("status", [200, 502])
async def test_html_page_is_a_server_error_with_a_short_snippet(
    client: OzonetelClient, status: int
) -> None:
    """An HTML error page (even with HTTP 200) is a ServerError quoting only its start."""
    page = "<html><head><title>502 Bad Gateway</title></head><body>" + "x" * 5000 + "</body>"
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, status=status, body=page, content_type="text/html")
        with pytest.raises(ServerError) as caught:
            await client.delete(client.body(["1"]))
    assert "502 Bad Gateway" in str(caught.value)
    assert len(str(caught.value)) < 300


async def test_garbled_json_is_a_server_error(client: OzonetelClient) -> None:
    """A success answer cut off mid-stream is a ServerError, never a verdict."""
    garbled = b'{"status":"success","message":"deleted","input":{"id":1,"blockNu'
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, body=garbled)
        with pytest.raises(ServerError, match="not a JSON verdict"):
            await client.delete(client.body(["1"]))


@pytest.mark.parametrize(
    "output",
    [None, {"success": [], "error": []}, {"success": "x", "error": [], "deleted": 0}],
)
def test_success_with_a_malformed_output_is_a_server_error(output: object) -> None:
    """A success whose output lacks or mistypes success/error/deleted is a ServerError."""
    raw = orjson.dumps({"status": "success", "output": output})
    with pytest.raises(ServerError, match="output"):
        classify(200, {}, raw)


@pytest.mark.parametrize("message", ["Token Expired", "Invalid Token", "Token Should Not be Null"])
def test_token_refusals_carry_the_generation(message: str) -> None:
    """Token Expired / Invalid Token is TokenRejected naming the refused token's generation."""
    with pytest.raises(TokenRejected) as caught:
        classify(200, {}, orjson.dumps({"status": "false", "message": message}), generation=7)
    assert caught.value.generation == 7
    assert message in str(caught.value)


async def test_token_refusal_through_the_client_names_the_token_used(
    token_client: OzonetelClient,
) -> None:
    """A refused request reports the generation of the token it carried (the first is 1)."""
    with mocked_api() as mocked:
        mocked.post(URL_TOKEN, payload={"token": TOKEN, "message": ""})
        mocked.delete(URL_DELETE, payload={"status": "false", "message": "Token Expired"})
        with pytest.raises(TokenRejected) as caught:
            await token_client.delete(token_client.body(["1"]))
        [call] = mocked.requests[("DELETE", URL(URL_DELETE))]
    assert caught.value.generation == 1
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert "apiKey" not in call.kwargs["headers"]


@pytest.mark.parametrize("message", ["Invalid userName or apiKey", "UserName is null"])
async def test_bad_credentials_are_an_auth_error(client: OzonetelClient, message: str) -> None:
    """Invalid userName or apiKey stops the run (AuthError, exit 3) and says what to check."""
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, payload={"status": "false", "message": message})
        with pytest.raises(AuthError) as caught:
            await client.delete(client.body(["1"]))
    assert "--user" in str(caught.value)
    assert caught.value.exit_code == 3


async def test_invalid_group_id_is_fatal(client: OzonetelClient) -> None:
    """Invalid group id stops the run with InvalidGroupError pointing at --group-id."""
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, payload={"status": "error", "message": "Invalid group id"})
        with pytest.raises(InvalidGroupError, match="--group-id"):
            await client.delete(client.body(["1"]))


@pytest.mark.parametrize("message", ["Parameters are mandatory", "Maximum 100 numbers are allowed"])
async def test_request_shape_refusals_are_a_bug_report(
    client: OzonetelClient, message: str
) -> None:
    """Parameters are mandatory (or too many numbers) is RequestRejected: a bug in ozbulk."""
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, payload={"status": "error", "message": message})
        with pytest.raises(RequestRejected, match="bug in ozbulk"):
            await client.delete(client.body(["1"]))


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("<html>Not Found</html>", "text/html"), ('{"status":"error","message":"nope"}', "json")],
)
async def test_404_is_fatal_whatever_the_body(
    client: OzonetelClient, body: str, content_type: str
) -> None:
    """HTTP 404 means a wrong --base-url or --path: fatal, with or without a JSON body."""
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, status=404, body=body, content_type=content_type)
        with pytest.raises(FatalApiError, match="--path") as caught:
            await client.delete(client.body(["1"]))
    assert caught.value.http_status == 404


@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_are_auth_errors(client: OzonetelClient, status: int) -> None:
    """HTTP 401/403 without a known verdict are AuthError."""
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, status=status, body="denied", content_type="text/plain")
        with pytest.raises(AuthError):
            await client.delete(client.body(["1"]))


async def test_a_redirect_is_not_followed(client: OzonetelClient) -> None:
    """A 3xx is fatal and not followed: the apiKey header must not go to another host."""
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, status=301, body="", headers={"Location": "https://evil.test/"})
        with pytest.raises(FatalApiError, match=r"redirect to https://evil\.test/"):
            await client.delete(client.body(["1"]))
        assert list(mocked.requests) == [("DELETE", URL(URL_DELETE))]


def test_an_unknown_verdict_is_a_retryable_server_error() -> None:
    """A JSON verdict ozbulk does not know is retried as a ServerError, quoting it."""
    with pytest.raises(ServerError, match="Something odd"):
        classify(200, {}, orjson.dumps({"status": "error", "message": "Something odd"}))


# -- transport failures -----------------------------------------------------------------------

_KEY_ = ConnectionKey("api.example.test", 443, True, True, None, None, None)
_INFO = RequestInfo(
    URL(URL_DELETE),
    "DELETE",
    CIMultiDictProxy(CIMultiDict({"apiKey": KEY, "Authorization": f"Bearer {TOKEN}"})),
    URL(URL_DELETE),
)
_OS = OSError(111, f"Connection refused {KEY}")

# One instance of every exception a request can raise, and the class of the error tree it must
# become. The secret is planted in every text the exception carries, to prove none is quoted.
TRANSPORT_CASES: dict[type[BaseException], tuple[BaseException, type[ApiError]]] = {
    aiohttp.ClientError: (aiohttp.ClientError(KEY), TransportError),
    aiohttp.ClientConnectionError: (aiohttp.ClientConnectionError(KEY), TransportError),
    aiohttp.ClientConnectionResetError: (
        aiohttp.ClientConnectionResetError(KEY),
        TransportError,
    ),
    aiohttp.ClientOSError: (aiohttp.ClientOSError(104, KEY), TransportError),
    aiohttp.ClientConnectorError: (aiohttp.ClientConnectorError(_KEY_, _OS), TransportError),
    aiohttp.ClientConnectorDNSError: (
        aiohttp.ClientConnectorDNSError(_KEY_, OSError(-2, KEY)),
        TransportError,
    ),
    aiohttp.ClientProxyConnectionError: (
        aiohttp.ClientProxyConnectionError(_KEY_, _OS),
        TransportError,
    ),
    aiohttp.ClientSSLError: (aiohttp.ClientSSLError(_KEY_, ssl.SSLError(1, KEY)), TransportError),
    aiohttp.ClientConnectorSSLError: (
        aiohttp.ClientConnectorSSLError(_KEY_, ssl.SSLError(1, KEY)),
        TransportError,
    ),
    aiohttp.ClientConnectorCertificateError: (
        aiohttp.ClientConnectorCertificateError(_KEY_, ssl.SSLCertVerificationError(1, KEY)),
        FatalApiError,
    ),
    aiohttp.ServerConnectionError: (aiohttp.ServerConnectionError(KEY), TransportError),
    aiohttp.ServerDisconnectedError: (aiohttp.ServerDisconnectedError(KEY), TransportError),
    aiohttp.ServerTimeoutError: (aiohttp.ServerTimeoutError(KEY), TransportError),
    aiohttp.ConnectionTimeoutError: (aiohttp.ConnectionTimeoutError(KEY), TransportError),
    aiohttp.SocketTimeoutError: (aiohttp.SocketTimeoutError(KEY), TransportError),
    aiohttp.ServerFingerprintMismatch: (
        aiohttp.ServerFingerprintMismatch(KEY.encode(), TOKEN.encode(), "h", 443),
        FatalApiError,
    ),
    aiohttp.ClientPayloadError: (aiohttp.ClientPayloadError(KEY), TransportError),
    aiohttp.UploadAbortedError: (aiohttp.UploadAbortedError(KEY), TransportError),
    aiohttp.ClientResponseError: (
        aiohttp.ClientResponseError(_INFO, (), status=400, message=KEY),
        ServerError,
    ),
    aiohttp.ContentTypeError: (
        aiohttp.ContentTypeError(_INFO, (), status=200, message=KEY),
        ServerError,
    ),
    aiohttp.ClientHttpProxyError: (
        aiohttp.ClientHttpProxyError(_INFO, (), status=407, message=KEY),
        ServerError,
    ),
    aiohttp.WSServerHandshakeError: (
        aiohttp.WSServerHandshakeError(_INFO, (), status=400, message=KEY),
        ServerError,
    ),
    aiohttp.InvalidURL: (aiohttp.InvalidURL(f"https://x/?k={KEY}"), FatalApiError),
    aiohttp.InvalidUrlClientError: (
        aiohttp.InvalidUrlClientError(f"https://x/?k={KEY}"),
        FatalApiError,
    ),
    aiohttp.NonHttpUrlClientError: (
        aiohttp.NonHttpUrlClientError(f"ftp://x/?k={KEY}"),
        FatalApiError,
    ),
    aiohttp.RedirectClientError: (aiohttp.RedirectClientError(KEY), FatalApiError),
    aiohttp.InvalidUrlRedirectClientError: (
        aiohttp.InvalidUrlRedirectClientError(f"https://x/?k={KEY}", KEY),
        FatalApiError,
    ),
    aiohttp.NonHttpUrlRedirectClientError: (
        aiohttp.NonHttpUrlRedirectClientError(f"ftp://x/?k={KEY}"),
        FatalApiError,
    ),
    asyncio.TimeoutError: (TimeoutError(KEY), TransportError),
    OSError: (OSError(113, KEY), TransportError),
    ConnectionResetError: (ConnectionResetError(104, KEY), TransportError),
    ssl.SSLError: (ssl.SSLError(1, KEY), TransportError),
    ssl.SSLCertVerificationError: (ssl.SSLCertVerificationError(1, KEY), FatalApiError),
}

# aiohttp raises these only for websockets, which ozbulk does not open.
NOT_RAISED_BY_REQUESTS = {"WSMessageTypeError"}


def test_every_aiohttp_client_exception_has_a_case() -> None:
    """Each exception class aiohttp exports is covered below: a new one fails this test."""
    exported = {
        name
        for name in aiohttp.client_exceptions.__all__
        if inspect.isclass(getattr(aiohttp.client_exceptions, name))
    }
    covered = {cls.__name__ for cls in TRANSPORT_CASES}
    assert exported - NOT_RAISED_BY_REQUESTS - covered == set()


@pytest.mark.parametrize(
    ("error", "expected"), list(TRANSPORT_CASES.values()), ids=[c.__name__ for c in TRANSPORT_CASES]
)
def test_translate_maps_each_failure_without_quoting_secrets(
    error: BaseException, expected: type[ApiError]
) -> None:
    """Each failure becomes exactly the expected class, names the URL, and quotes no secret."""
    translated = translate_transport_error(error, URL_DELETE)
    assert type(translated) is expected
    message = str(translated)
    assert URL_DELETE in message
    assert KEY not in message
    assert TOKEN not in message


@pytest.mark.parametrize(
    "error",
    [error for error, _ in TRANSPORT_CASES.values()],
    ids=[c.__name__ for c in TRANSPORT_CASES],
)
def test_only_a_failure_to_connect_cannot_have_been_applied(error: BaseException) -> None:
    """Refused, unresolved, timed out connecting: nothing reached the server, no doubt. Any
    failure after that (reset, read timeout, cut short) may follow a deletion: in doubt."""
    translated = translate_transport_error(error, URL_DELETE)
    if isinstance(translated, TransportError):
        connecting = isinstance(
            error, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError
        )
        assert translated.may_have_applied is not connecting


def test_translate_refuses_what_is_not_a_transport_error() -> None:
    """A programming error is not disguised as a network failure."""
    with pytest.raises(TypeError, match="ValueError"):
        translate_transport_error(ValueError(KEY), URL_DELETE)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (aiohttp.ServerDisconnectedError(), TransportError),
        (aiohttp.ClientConnectionResetError("reset"), TransportError),
        (TimeoutError(), TransportError),
        (aiohttp.ClientPayloadError("cut"), TransportError),
        (aiohttp.InvalidURL("bad"), FatalApiError),
    ],
)
async def test_delete_translates_and_hides_the_aiohttp_error(
    client: OzonetelClient, error: Exception, expected: type[ApiError]
) -> None:
    """Through the client, a failure surfaces as the tree's error with aiohttp's suppressed."""
    with mocked_api() as mocked:
        mocked.delete(URL_DELETE, exception=error)
        with pytest.raises(expected) as caught:
            await client.delete(client.body(["1"]))
    assert caught.value.__suppress_context__
    assert caught.value.__cause__ is None


def test_messages_never_show_userinfo_of_the_url() -> None:
    """A user:password@ in --base-url is left out of every message."""
    run = settings(base_url=f"https://acme:{KEY}@api.example.test")
    client = OzonetelClient(run, session=aiohttp.ClientSession.__new__(aiohttp.ClientSession))
    error = translate_transport_error(aiohttp.ServerDisconnectedError(), client._where)
    assert KEY not in str(error)
    assert "https://api.example.test/ca_apis/deleteBlockNumberGroup" in str(error)


async def test_token_request_429_is_rate_limited_with_retry_after(
    token_client: OzonetelClient,
) -> None:
    """Generate Token answering 429 is RateLimited (retried), not a credentials failure."""
    with mocked_api() as mocked:
        mocked.post(URL_TOKEN, status=429, body="", headers={"Retry-After": "3"})
        with pytest.raises(RateLimited) as caught:
            await token_client.auth.headers()  # delete() would wait and ask again
    assert caught.value.retry_after == 3.0


async def test_token_request_429_is_rate_limited_whatever_its_body_says(
    token_client: OzonetelClient,
) -> None:
    """Generate Token's 429 stays RateLimited with its Retry-After, even with a refusal body."""
    refusal = {"status": "false", "message": "Invalid username or apikey"}
    with mocked_api() as mocked:
        mocked.post(URL_TOKEN, status=429, payload=refusal, headers={"Retry-After": "3"})
        with pytest.raises(RateLimited) as caught:
            await token_client.auth.headers()
    assert (caught.value.retry_after, caught.value.http_status) == (3.0, 429)


async def test_token_request_failure_is_translated(token_client: OzonetelClient) -> None:
    """A connection failure on Generate Token is a TransportError naming the token URL."""
    with mocked_api() as mocked:
        mocked.post(URL_TOKEN, exception=aiohttp.ServerDisconnectedError())
        with pytest.raises(TransportError, match="generateToken"):
            await token_client.auth.headers()  # delete() would wait and ask again


def test_session_timeouts_leave_out_the_pool_wait() -> None:
    """The pool fits every worker plus the token request; sock_read bounds a hung server."""
    run = settings(concurrency=12, connect_timeout=3, read_timeout=4)

    async def main() -> tuple[aiohttp.ClientTimeout, int]:
        async with OzonetelClient.open_session(run) as session:
            connector = session.connector
            assert connector is not None
            return session.timeout, connector.limit

    timeout, limit = asyncio.run(main())
    assert limit == 13
    assert timeout.sock_connect == 3
    assert timeout.sock_read == 4
