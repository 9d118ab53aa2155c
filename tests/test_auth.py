"""Credentials: the API key header, and the one shared token's life (single-flight, budget)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import orjson
import pytest

from engine import auth as auth_module
from engine.auth import ApiKeyAuth, TokenAuth
from engine.client import OzonetelClient, classify
from engine.errors import AuthError, RateLimited, ServerError, TokenRejected, TransportError
from engine.mock import MockConfig, MockServer, MockState
from engine.refusals import MESSAGES, Refusal
from engine.settings import DEFAULT_TOKEN_BUDGET, InputSettings, RunSettings, Secret

KEY = "auth-test-key-91c2"
REFUSAL_TEXTS = dict(MESSAGES)


@dataclass
class FakeClock:
    """A monotonic clock the test moves by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


Answer = tuple[int, dict[str, object] | bytes] | Exception


@dataclass
class FakeTokenEndpoint:
    """Generate Token as a coroutine: answers from a script, then fresh tokens; counts calls."""

    script: list[Answer] = field(default_factory=list)
    calls: int = 0
    minted: list[str] = field(default_factory=list)
    seen_headers: list[dict[str, str]] = field(default_factory=list)

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        self.calls += 1
        self.seen_headers.append(headers)
        assert orjson.loads(body) == {"userName": "acme"}
        await anyio.wait_all_tasks_blocked()  # every waiter piles up behind the lock first
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            status, payload = answer
            return status, payload if isinstance(payload, bytes) else orjson.dumps(payload)
        token = f"token-{len(self.minted) + 1}"
        self.minted.append(token)
        return 200, orjson.dumps({"token": token, "message": ""})


def make_auth(
    endpoint: FakeTokenEndpoint, clock: FakeClock, *, ttl: float = 100.0, budget: int = 10
) -> TokenAuth:
    return TokenAuth(
        user="acme",
        api_key=Secret(KEY),
        token_url="https://api.example.test/ca_apis/CAToken/generateToken",
        post=endpoint.post,
        ttl=ttl,
        budget=budget,
        clock=clock,
    )


async def together(count: int, call: Callable[[], object]) -> list[object]:
    """Run ``count`` calls of ``call`` at once; their results or exceptions, in order."""
    results: list[object] = [None] * count

    async def one(index: int) -> None:
        try:
            results[index] = await call()  # type: ignore[misc]
        except Exception as error:
            results[index] = error

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index)
    return results


# -- API key --------------------------------------------------------------------------------


async def test_api_key_auth_sends_the_key_and_refuses_token_errors() -> None:
    """apikey mode sends apiKey on every call; a token refusal says to use --auth token."""
    auth = ApiKeyAuth(Secret(KEY))
    assert (await auth.headers())["apiKey"] == KEY
    with pytest.raises(AuthError, match="--auth token") as caught:
        await auth.token_rejected(0)
    assert KEY not in str(caught.value)


# -- single flight ----------------------------------------------------------------------------


async def test_the_first_call_mints_a_token_sent_as_bearer() -> None:
    """The first request mints a token with the API key; requests carry only the bearer."""
    endpoint, clock = FakeTokenEndpoint(), FakeClock()
    auth = make_auth(endpoint, clock)
    headers = await auth.headers()
    assert headers["Authorization"] == "Bearer token-1"
    assert "apiKey" not in headers
    assert endpoint.seen_headers[0]["apiKey"] == KEY
    assert (auth.generation, auth.refreshes) == (1, 1)


async def test_32_workers_hitting_one_expired_token_cause_one_refresh() -> None:
    """Thirty-two workers finding the token expired at once cause exactly one refresh."""
    endpoint, clock = FakeTokenEndpoint(), FakeClock()
    auth = make_auth(endpoint, clock)
    await auth.headers()
    clock.now += 200  # past the 100 s lifetime
    results = await together(32, auth.headers)
    assert endpoint.calls == 2
    assert all(headers == {"Authorization": "Bearer token-2", "Content-Type": "application/json"}
               for headers in results)  # fmt: skip


async def test_32_refusals_of_one_token_cause_one_refresh() -> None:
    """Thirty-two "Token Expired" answers for generation 1 cause one refresh, to generation 2."""
    endpoint, clock = FakeTokenEndpoint(), FakeClock()
    auth = make_auth(endpoint, clock)
    await auth.headers()
    auth.accepted(1)
    await together(32, lambda: auth.token_rejected(1))
    assert endpoint.calls == 2
    assert auth.generation == 2
    await auth.token_rejected(1)  # a late answer for the old token changes nothing
    assert endpoint.calls == 2


async def test_refreshes_shortly_before_expiry() -> None:
    """A token is replaced a tenth of its life before it expires, not after."""
    endpoint, clock = FakeTokenEndpoint(), FakeClock()
    auth = make_auth(endpoint, clock, ttl=100.0)
    await auth.headers()
    clock.now += 89.9
    await auth.headers()
    assert endpoint.calls == 1
    clock.now += 0.2  # 90.1 s old: inside the 10 s margin
    assert (await auth.headers())["Authorization"] == "Bearer token-2"
    assert endpoint.calls == 2


async def test_the_margin_is_at_most_five_minutes() -> None:
    """An hour-long token is refreshed 5 minutes before expiry (not 6, a tenth of it)."""
    endpoint, clock = FakeTokenEndpoint(), FakeClock()
    auth = make_auth(endpoint, clock, ttl=3600.0)
    await auth.headers()
    clock.now += 3600 - 301
    await auth.headers()
    assert endpoint.calls == 1
    clock.now += 2
    await auth.headers()
    assert endpoint.calls == 2


# -- the hourly budget ------------------------------------------------------------------------


async def test_budget_is_counted_and_exceeding_it_stops_with_a_clear_message() -> None:
    """Ozonetel's 10 tokens an hour: the 11th is never requested; AuthError says when to resume."""
    endpoint, clock = FakeTokenEndpoint(), FakeClock()
    auth = make_auth(endpoint, clock, budget=DEFAULT_TOKEN_BUDGET)
    await auth.headers()
    for generation in range(1, DEFAULT_TOKEN_BUDGET):
        auth.accepted(generation)
        clock.now += 60
        await auth.token_rejected(generation)
    assert endpoint.calls == 10
    assert auth.tokens_this_hour == 10
    auth.accepted(10)
    clock.now += 60
    with pytest.raises(AuthError) as caught:
        await auth.token_rejected(10)
    message = str(caught.value)
    assert "token budget spent" in message
    assert "--token-budget" in message
    assert "in 50 minutes" in message  # the first token, 10 minutes old, leaves the hour then
    assert endpoint.calls == 10
    assert KEY not in message
    clock.now += 3000
    await auth.token_rejected(10)
    assert endpoint.calls == 11


async def test_tokens_of_earlier_passes_count_against_the_budget_on_resume() -> None:
    """A resume within the hour counts the tokens earlier passes minted (from the checkpoint)."""
    endpoint, clock = FakeTokenEndpoint(), FakeClock()
    wall = 1_800_000_000.0
    earlier = [wall - 3700, wall - 600, wall - 300]  # the first left the hour already
    auth = TokenAuth(
        user="acme", api_key=Secret(KEY), token_url="https://api.example.test/t",
        post=endpoint.post, ttl=100.0, budget=3, clock=clock, wall_clock=lambda: wall,
        earlier=earlier,
    )  # fmt: skip
    assert auth.tokens_this_hour == 2
    await auth.headers()  # the third of three
    assert endpoint.calls == 1
    assert auth.issued_at() == [wall - 600, wall - 300, wall]
    auth.accepted(1)
    with pytest.raises(AuthError, match="token budget spent"):
        await auth.token_rejected(1)
    assert endpoint.calls == 1


async def test_a_lost_reply_counts_against_the_budget_a_5xx_does_not() -> None:
    """No answer may have minted a token (counted); an HTTP 503 did not (not counted)."""
    endpoint = FakeTokenEndpoint(
        script=[TransportError("reset"), (503, b"<html>busy</html>")],
    )
    clock = FakeClock()
    auth = make_auth(endpoint, clock, budget=2)
    with pytest.raises(TransportError):
        await auth.headers()
    clock.now += auth_module.RETRY_CAP
    with pytest.raises(ServerError):
        await auth.headers()
    clock.now += auth_module.RETRY_CAP
    await auth.headers()
    assert auth.tokens_this_hour == 2
    auth.accepted(1)
    with pytest.raises(AuthError, match="token budget spent"):
        await auth.token_rejected(1)


# -- failures -------------------------------------------------------------------------------


async def test_a_failed_refresh_is_single_flight_too() -> None:
    """32 workers needing a token while Generate Token fails cause one attempt, not 32."""
    endpoint = FakeTokenEndpoint(script=[TransportError("no answer from the token URL")])
    clock = FakeClock()
    auth = make_auth(endpoint, clock)
    results = await together(32, auth.headers)
    assert endpoint.calls == 1
    assert all(isinstance(result, TransportError) for result in results)
    assert len({id(result) for result in results}) == 32  # each task raises its own copy
    with pytest.raises(TransportError):
        await auth.headers()  # moments later: the same failure, no new attempt
    assert endpoint.calls == 1
    clock.now += auth_module.RETRY_BASE
    assert (await auth.headers())["Authorization"] == "Bearer token-1"
    assert endpoint.calls == 2


async def test_a_failed_early_refresh_keeps_using_the_valid_token() -> None:
    """If the refresh before expiry fails, requests go on with the old token until it expires."""
    endpoint, clock = FakeTokenEndpoint(), FakeClock()
    auth = make_auth(endpoint, clock, ttl=100.0)
    await auth.headers()
    endpoint.script.append(ServerError("503", http_status=503))
    clock.now += 95
    assert (await auth.headers())["Authorization"] == "Bearer token-1"
    clock.now += 6  # expired, and the retry wait is over
    assert (await auth.headers())["Authorization"] == "Bearer token-2"


@pytest.mark.parametrize("message", ["Invalid userName or apiKey", "UserName is null"])
async def test_bad_credentials_stop_the_run(message: str) -> None:
    """Generate Token refusing the user or key is an AuthError (exit 3) naming what to check."""
    endpoint = FakeTokenEndpoint(script=[(200, {"status": "false", "message": message})])
    auth = make_auth(endpoint, FakeClock())
    with pytest.raises(AuthError) as caught:
        await auth.headers()
    assert "--user and the API key" in str(caught.value)
    assert caught.value.exit_code == 3
    assert KEY not in str(caught.value)


async def test_a_fresh_token_refused_after_one_refresh_stops_the_run() -> None:
    """A token refused before any success is refreshed once; refused again, the run stops."""
    endpoint, clock = FakeTokenEndpoint(), FakeClock()
    auth = make_auth(endpoint, clock)
    await auth.headers()
    await auth.token_rejected(1)  # never accepted: perhaps just unlucky; one refresh
    assert endpoint.calls == 2
    await together(8, lambda: auth.token_rejected(1))  # stale answers: ignored, not counted
    with pytest.raises(AuthError, match="freshly generated token"):
        await auth.token_rejected(2)
    results = await together(8, lambda: auth.token_rejected(2))  # the others refused it too
    assert all(isinstance(result, AuthError) for result in results)
    assert endpoint.calls == 2


async def test_tokens_that_worked_are_refreshed_as_often_as_they_expire() -> None:
    """A token refused after it was accepted is an expiry: refreshed every time, no stop."""
    endpoint, clock = FakeTokenEndpoint(), FakeClock()
    auth = make_auth(endpoint, clock, budget=100)
    await auth.headers()
    for generation in range(1, 6):
        auth.accepted(generation)
        await auth.token_rejected(generation)
    assert auth.generation == 6
    assert endpoint.calls == 6


async def test_token_generation_limit_stops_with_when_to_resume() -> None:
    """The server's own "Token generation limit exceeded" stops the run: wait an hour."""
    endpoint = FakeTokenEndpoint(
        script=[(200, {"status": "false", "message": "Token generation limit exceeded"})]
    )
    with pytest.raises(AuthError, match="wait an hour"):
        await make_auth(endpoint, FakeClock()).headers()


async def test_a_rate_limited_token_request_is_retried_not_fatal() -> None:
    """Generate Token answering "Max limit exceeded" is RateLimited, and spends no budget."""
    endpoint = FakeTokenEndpoint(
        script=[(200, {"status": "error", "message": "Max limit exceeded"})]
    )
    auth = make_auth(endpoint, FakeClock())
    with pytest.raises(RateLimited):
        await auth.headers()
    assert auth.tokens_this_hour == 0


@pytest.mark.parametrize("message", REFUSAL_TEXTS[Refusal.RATE_LIMITED])
async def test_delete_and_generate_token_read_a_rate_limit_alike(message: str) -> None:
    """Each rate-limit wording is RateLimited from Delete and from Generate Token alike."""
    body = {"status": "error", "message": message.upper()}
    with pytest.raises(RateLimited):
        classify(200, {}, orjson.dumps(body))
    with pytest.raises(RateLimited):
        await make_auth(FakeTokenEndpoint(script=[(200, body)]), FakeClock()).headers()


async def test_a_garbled_token_answer_is_a_server_error() -> None:
    """A token answer that is not JSON is retryable (ServerError), not a credentials verdict."""
    endpoint = FakeTokenEndpoint(script=[(200, b'{"tok')])
    with pytest.raises(ServerError, match="not JSON"):
        await make_auth(endpoint, FakeClock()).headers()


# -- against the fake API ---------------------------------------------------------------------


async def test_32_workers_and_one_expired_token_against_the_fake_api(tmp_path: Path) -> None:
    """Over HTTP: 32 deletes refused "Token Expired" at once lead to one new token, then pass."""
    config = MockConfig(user="acme", api_key=KEY, auth_mode="token", token_ttl=0.4)
    server_clock = FakeClock()
    async with MockServer(state=MockState(config, clock=server_clock)) as server:
        server.state.seed(1, [f"98765{index:05d}" for index in range(32)])
        settings = RunSettings(
            inputs=InputSettings(paths=("numbers.csv",)),
            group_id=1,
            user="acme",
            api_key=Secret(KEY),
            checkpoint=tmp_path / "c.ckpt",
            base_url=server.url,
            auth="token",
            concurrency=32,
        )
        async with OzonetelClient.open_session(settings) as session:
            client = OzonetelClient(settings, session)
            await client.delete(client.body(["1234567890"]))  # mints token 1, and uses it
            server_clock.now += 0.5  # token 1 expires on the server (the client thinks 1 h)
            refused: list[int] = []

            async def send(index: int) -> None:
                body = client.body([f"98765{index:05d}"])
                try:
                    await client.delete(body)
                except TokenRejected as error:
                    refused.append(error.generation)
                    await client.auth.token_rejected(error.generation)
                    verdict = await client.delete(body)
                    assert verdict.deleted == 1

            async with anyio.create_task_group() as group:
                for index in range(32):
                    group.start_soon(send, index)
        stats = server.stats()
    assert refused == [1] * 32
    assert stats["tokens_issued"] == 2
    assert client.auth.refreshes == 2
    assert stats["groups"]["1"]["remaining"] == 0


# -- a hostile token endpoint ----------------------------------------------------------------


async def test_a_token_endpoint_failing_again_and_again_stops_the_run_with_a_clear_message() -> (
    None
):
    """HTML, broken JSON, 5xx: retried with a doubling wait; the 6th failure in a row is fatal."""
    pages: list[Answer] = [(200, b"<html>502</html>"), (200, b'{"tok'), (503, b"busy")] * 3
    endpoint = FakeTokenEndpoint(script=pages)
    clock = FakeClock()
    auth = make_auth(endpoint, clock)
    waits = []
    for _ in range(auth_module.TOKEN_FAILURES_MAX - 1):
        with pytest.raises(ServerError):
            await auth.headers()
        wait = auth.retry_in()
        assert wait is not None
        waits.append(wait)
        clock.now += wait
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0]
    with pytest.raises(AuthError, match="Generate Token failed 6 times in a row") as caught:
        await auth.headers()
    assert "not JSON" in str(caught.value) or "busy" in str(caught.value)
    assert auth.retry_in() is None  # given up: the client stops waiting
    with pytest.raises(AuthError):
        await auth.headers()  # and every later caller gets the same verdict, no new request
    assert endpoint.calls == auth_module.TOKEN_FAILURES_MAX


async def test_the_client_waits_out_a_failing_token_endpoint_instead_of_failing_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two broken answers, then a token: delete() gets its headers after the backoff."""
    monkeypatch.setattr(auth_module, "RETRY_BASE", 0.01)
    endpoint = FakeTokenEndpoint(script=[(200, b"<html>"), (200, b"[1, 2")])
    auth = make_auth(endpoint, FakeClock())
    auth._clock = anyio.current_time  # the waits run on the event loop's clock
    client = OzonetelClient.__new__(OzonetelClient)
    client.auth = auth
    headers = await client._headers()
    assert headers["Authorization"] == "Bearer token-1" and endpoint.calls == 3


async def test_a_token_answer_echoing_the_key_is_masked_where_it_enters() -> None:
    """Generate Token's message quoting the API key: the error carries *** (no sink needed)."""
    from engine.redact import REDACTOR

    REDACTOR.add(KEY)
    endpoint = FakeTokenEndpoint(
        script=[(200, {"status": "false", "message": f"Invalid userName or apiKey {KEY}"})]
    )
    with pytest.raises(AuthError) as caught:
        await make_auth(endpoint, FakeClock()).headers()
    assert KEY not in str(caught.value) and "apiKey ***" in str(caught.value)


async def test_a_token_that_cannot_go_into_a_header_is_a_server_error() -> None:
    endpoint = FakeTokenEndpoint(script=[(200, {"token": "abc\r\nX-Evil: 1"})])
    with pytest.raises(ServerError, match="cannot go into a header"):
        await make_auth(endpoint, FakeClock()).headers()


async def test_an_early_refresh_failing_again_and_again_stops_only_once_the_token_is_dead() -> None:
    """Failures of the refresh before expiry: the valid token serves on; the run stops only when
    it has expired and Generate Token still fails."""
    endpoint, clock = FakeTokenEndpoint(), FakeClock()
    auth = make_auth(endpoint, clock, ttl=1000.0)  # refreshed 100 s before expiry
    await auth.headers()
    endpoint.script.extend([(200, b"<html>")] * 20)
    clock.now += 901
    for _ in range(auth_module.TOKEN_FAILURES_MAX + 2):
        assert (await auth.headers())["Authorization"] == "Bearer token-1"
        clock.now += auth.retry_in() or 0
    clock.now += 100  # dead now
    with pytest.raises(AuthError, match="times in a row"):
        await auth.headers()
