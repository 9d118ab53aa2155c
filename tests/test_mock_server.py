"""The embedded fake Ozonetel API: every verdict, auth mode, counter, rate limit and fault.

Everything that crosses HTTP goes over real loopback sockets with aiohttp, against `MockServer`.
Time-based behaviour (token expiry, token budget, rate window) runs on a fake clock handed to
`MockState`, so no test sleeps for it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from engine.mock import (
    CREATE_PATH,
    DELETE_ALIAS_PATH,
    DELETE_PATH,
    FAULT_KINDS,
    TOKEN_PATH,
    UPDATE_PATH,
    MockConfig,
    MockServer,
    MockState,
    ThreadedMockServer,
    build_app,
    canonicalise,
    generate_mobile_numbers,
)
from engine.mock.command import add_arguments, config_from_args, run
from engine.mock.state import RateLimitStyle

USER = "demo"
API_KEY = "demo-key"
AUTH = {"apiKey": API_KEY}
GROUP = 1


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def delete_body(numbers: list[Any], group_id: object = GROUP) -> dict[str, Any]:
    return {"userName": USER, "id": group_id, "blockNumbers": numbers}


async def call(
    session: aiohttp.ClientSession,
    server: MockServer,
    body: object,
    *,
    method: str = "DELETE",
    path: str = DELETE_PATH,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Send `body` (JSON-encoded unless already bytes) and return the status and decoded answer."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    sent_headers = {"Content-Type": "application/json", **(AUTH if headers is None else headers)}
    async with session.request(method, server.url + path, data=data, headers=sent_headers) as reply:
        return reply.status, orjson.loads(await reply.read())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer(MockConfig()) as running:
        yield running


# -- canonical form and config, without HTTP --


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("9876543210", "+919876543210"),
        ("919876543210", "+919876543210"),
        ("+919876543210", "+919876543210"),
        ("+1 415 555 0100", "+14155550100"),
        (" 98765 43210 ", "+919876543210"),
        ("12345678", "+12345678"),
        ("123456789012345", "+123456789012345"),
        ("441234567890", "+441234567890"),
        (9876543210, "+919876543210"),
        ("1234567", None),
        ("1234567890123456", None),
        ("98765x3210", None),
        ("9.19E+11", None),
        ("\u0669\u0668\u0667\u0666\u0665\u0664\u0663\u0662\u0661\u0660", None),
        ("", None),
        ("+", None),
        (True, None),
        (None, None),
        (["9876543210"], None),
    ],
)
def test_canonicalise(raw: object, expected: str | None) -> None:
    """Numbers take Ozonetel's `+` form (10 digits gain +91); anything else is invalid."""
    assert canonicalise(raw) == expected


def test_seed_counts_only_new_valid_numbers() -> None:
    """seed() skips invalid and already-held numbers and reports how many it added."""
    state = MockState(MockConfig())
    assert state.seed(GROUP, ["phone", "9876543210", "919876543210", "9876543211"]) == 2
    assert state.seed(GROUP, ["9876543211", "bad"]) == 0
    assert state.remaining(GROUP) == 2
    assert state.numbers(GROUP) == {"+919876543210", "+919876543211"}


def test_seed_creates_a_named_group() -> None:
    """seed() on an unknown id creates the group, and its name shows in the stats."""
    state = MockState(MockConfig())
    assert state.seed(7, ["9876543210"], name="seven") == 1
    assert state.stats()["groups"]["7"] == {"name": "seven", "remaining": 1}
    with pytest.raises(KeyError, match="no group 8"):
        state.remaining(8)


def test_generate_mobile_numbers_are_distinct_seeded_indian_mobiles() -> None:
    """Generated numbers are 10 distinct digits starting 6-9, the same for the same seed."""
    numbers = generate_mobile_numbers(500, seed=3)
    assert len(set(numbers)) == 500
    assert all(len(n) == 10 and n.isdigit() and n[0] in "6789" for n in numbers)
    assert numbers == generate_mobile_numbers(500, seed=3)
    assert numbers != generate_mobile_numbers(500, seed=4)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"auth_mode": "basic"}, "must be apikey or token"),
        ({"group_id": 0}, "group_id (--group-id) must be an integer >= 1"),
        ({"token_ttl": 0}, "use 3600"),
        ({"token_budget": 0}, "Ozonetel allows 10 an hour"),
        ({"rate_limit": 0}, "leave it unset for no limit"),
        ({"rate_limit_style": "json"}, "must be http, http-bare or body"),
        ({"fault_rate": 1.5}, "use 0.05"),
        ({"fault_kinds": ["http_418"]}, "choose from http_500"),
        ({"fault_rate": 0.1, "fault_kinds": []}, "name at least one kind"),
        ({"latency_ms": -1}, "use 0 for none"),
    ],
)
def test_config_rejects_bad_values_with_the_fix(overrides: dict[str, Any], fragment: str) -> None:
    """MockConfig refuses invalid settings with a message that names the flag and the fix."""
    with pytest.raises(ValueError) as caught:
        MockConfig(**overrides)
    assert fragment in str(caught.value)


def test_config_hides_the_api_key_and_freezes_fault_kinds() -> None:
    """The API key never shows in the config's repr, and fault_kinds becomes a tuple."""
    config = MockConfig(api_key="s3cret-fake", fault_kinds=["reset"])
    assert "s3cret-fake" not in repr(config)
    assert config.fault_kinds == ("reset",)
    hash(config)


def test_rate_window_slides_over_admitted_requests_only() -> None:
    """A request is admitted only if fewer than R were admitted in the last second."""
    clock = FakeClock()
    state = MockState(MockConfig(rate_limit=3), clock=clock)
    assert [state.admit(DELETE_PATH) for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert state.admit(DELETE_PATH) is False
    clock.advance(0.5)
    # The first three are now exactly one second old; the two refusals never counted.
    assert [state.admit(DELETE_PATH) for _ in range(4)] == [True, True, True, False]
    assert state.stats()["rate_limited"] == 3


def test_fault_draws_repeat_for_a_seed_and_match_the_rate() -> None:
    """The same fault_seed gives the same faults, at about fault_rate of the calls."""
    config = MockConfig(fault_rate=0.3, fault_seed=11)
    state_a, state_b = MockState(config), MockState(config)
    draws_a = [state_a.draw_fault() for _ in range(2000)]
    draws_b = [state_b.draw_fault() for _ in range(2000)]
    assert draws_a == draws_b
    faulty = [kind for kind in draws_a if kind is not None]
    assert 0.25 < len(faulty) / len(draws_a) < 0.35
    assert set(faulty) == set(FAULT_KINDS)
    assert sum(state_a.stats()["faults"].values()) == len(faulty)


def test_build_app_routes_every_api_path() -> None:
    """The app answers the token, delete (both paths), update, create and mock paths."""
    app = build_app(MockState(MockConfig()))
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    assert {
        ("POST", TOKEN_PATH),
        ("DELETE", DELETE_PATH),
        ("DELETE", DELETE_ALIAS_PATH),
        ("PUT", UPDATE_PATH),
        ("POST", CREATE_PATH),
        ("GET", "/mock/stats"),
        ("POST", "/mock/reset-stats"),
    } <= routes


# -- delete verdicts over HTTP --


async def test_delete_success_counts_rows_removed_not_numbers_sent(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    """Success lists every valid number in + form (duplicates kept); deleted counts removals."""
    server.state.seed(GROUP, ["9876543210", "9876543211", "9876543212", "9876543214"])
    sent = ["9876543210", "919876543211", "9876543212", "919876543211", "+919876543214"]
    status, answer = await call(session, server, delete_body(sent))
    assert status == 200
    assert answer == {
        "status": "success",
        "message": "deleted",
        "input": {"id": GROUP, "blockNumbers": sent},
        "output": {
            "success": [
                "+919876543210",
                "+919876543211",
                "+919876543212",
                "+919876543211",
                "+919876543214",
            ],
            "error": [],
            "deleted": 4,
        },
    }
    assert server.state.remaining(GROUP) == 0


async def test_delete_of_numbers_not_in_group_succeeds_with_zero_deleted(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    """A number the group does not hold is still listed in success but not counted as deleted."""
    server.state.seed(GROUP, ["9876543210"])
    _, answer = await call(session, server, delete_body(["9000000001", "9876543210"]))
    assert answer["output"] == {
        "success": ["+919000000001", "+919876543210"],
        "error": [],
        "deleted": 1,
    }
    _, again = await call(session, server, delete_body(["9876543210"]))
    assert again["status"] == "success"
    assert again["output"]["deleted"] == 0


async def test_delete_lists_invalid_numbers_raw_in_error(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    """Invalid numbers come back exactly as sent in output.error, the valid ones still go."""
    server.state.seed(GROUP, ["9876543210"])
    _, answer = await call(session, server, delete_body(["abc", "123", "9876543210", 42]))
    assert answer["status"] == "success"
    assert answer["output"] == {
        "success": ["+919876543210"],
        "error": ["abc", "123", 42],
        "deleted": 1,
    }


async def test_delete_alias_path_behaves_like_the_main_one(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    """/ca_apis/deleteBlockNumber deletes exactly as /ca_apis/deleteBlockNumberGroup does."""
    server.state.seed(GROUP, ["9876543210"])
    _, answer = await call(session, server, delete_body(["9876543210"]), path=DELETE_ALIAS_PATH)
    assert answer["output"]["deleted"] == 1
    assert server.stats()["requests_by_path"] == {DELETE_ALIAS_PATH: 1}


async def test_group_id_may_be_a_digit_string(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    """An id sent as a string of digits addresses the same group as the integer."""
    server.state.seed(GROUP, ["9876543210"])
    _, answer = await call(session, server, delete_body(["9876543210"], group_id="1"))
    assert answer["output"]["deleted"] == 1
    assert answer["input"]["id"] == "1"


@pytest.mark.parametrize(
    ("body", "bodyless"),
    [
        (b"", 1),
        (b"   ", 1),
        (b"not json", 0),
        (b'["a list"]', 0),
        (orjson.dumps({"userName": USER, "blockNumbers": ["9876543210"]}), 0),
        (orjson.dumps({"userName": USER, "id": GROUP}), 0),
        (orjson.dumps({"userName": USER, "id": GROUP, "blockNumbers": "9876543210"}), 0),
    ],
)
async def test_missing_parameters_are_mandatory(
    server: MockServer, session: aiohttp.ClientSession, body: bytes, bodyless: int
) -> None:
    """No body, no JSON object, or no id/blockNumbers list answers "Parameters are mandatory"."""
    status, answer = await call(session, server, body)
    assert status == 200
    assert answer == {"status": "error", "message": "Parameters are mandatory"}
    assert server.stats()["bodyless_requests"] == bodyless


async def test_more_than_max_batch_numbers_is_refused(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    """101 numbers are refused whole, counted as oversized, and nothing is deleted."""
    numbers = generate_mobile_numbers(101)
    server.state.seed(GROUP, numbers)
    _, answer = await call(session, server, delete_body(numbers))
    assert answer == {"status": "error", "message": "Maximum 100 numbers are allowed"}
    _, accepted = await call(session, server, delete_body(numbers[:100]))
    assert accepted["output"]["deleted"] == 100
    stats = server.stats()
    assert stats["oversized_requests"] == 1
    assert stats["max_batch_seen"] == 101
    assert server.state.remaining(GROUP) == 1


@pytest.mark.parametrize("group_id", [2, 0, "x", None, True])
async def test_unknown_group_id_is_invalid(
    server: MockServer, session: aiohttp.ClientSession, group_id: object
) -> None:
    """An id naming no group answers "Invalid group id"."""
    _, answer = await call(session, server, delete_body(["9876543210"], group_id=group_id))
    assert answer == {"status": "error", "message": "Invalid group id"}


@pytest.mark.parametrize(
    ("headers", "user"),
    [({"apiKey": "wrong"}, USER), ({}, USER), (AUTH, "someone-else"), (AUTH, None)],
)
async def test_apikey_mode_refuses_wrong_credentials(
    server: MockServer,
    session: aiohttp.ClientSession,
    headers: dict[str, str],
    user: str | None,
) -> None:
    """A wrong or missing apiKey, or another userName, answers "Invalid userName or apiKey"."""
    server.state.seed(GROUP, ["9876543210"])
    body = {"id": GROUP, "blockNumbers": ["9876543210"]}
    if user is not None:
        body["userName"] = user
    status, answer = await call(session, server, body, headers=headers)
    assert status == 200
    assert answer == {"status": "false", "message": "Invalid userName or apiKey"}
    assert server.stats()["auth_failures"] == 1
    assert server.state.remaining(GROUP) == 1


# -- token mode --


async def generate_token(
    session: aiohttp.ClientSession,
    server: MockServer,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    _, answer = await call(
        session,
        server,
        {"userName": USER} if body is None else body,
        method="POST",
        path=TOKEN_PATH,
        headers=headers,
    )
    assert isinstance(answer, dict)
    return answer


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def token_server(clock: FakeClock) -> AsyncIterator[MockServer]:
    state = MockState(MockConfig(auth_mode="token", token_ttl=60, token_budget=3), clock=clock)
    state.seed(GROUP, generate_mobile_numbers(10))
    async with MockServer(state=state) as running:
        yield running


async def test_token_is_issued_and_accepted(
    token_server: MockServer, session: aiohttp.ClientSession
) -> None:
    """generateToken answers a token that then authorises deletes as a Bearer header."""
    answer = await generate_token(session, token_server)
    assert answer["message"] == ""
    assert isinstance(answer["token"], str)
    assert len(answer["token"]) >= 20
    _, deleted = await call(
        session, token_server, delete_body(["9000000001"]), headers=bearer(answer["token"])
    )
    assert deleted["status"] == "success"
    assert token_server.stats()["tokens_issued"] == 1


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer   "])
async def test_token_mode_without_a_token_is_refused(
    token_server: MockServer, session: aiohttp.ClientSession, authorization: str | None
) -> None:
    """No or empty Bearer token answers "Token Should Not be Null or Empty.", even with apiKey."""
    await generate_token(session, token_server)
    headers = dict(AUTH)
    if authorization is not None:
        headers["Authorization"] = authorization
    _, answer = await call(session, token_server, delete_body(["9000000001"]), headers=headers)
    assert answer == {"status": "false", "message": "Token Should Not be Null or Empty."}


async def test_unknown_and_superseded_tokens_are_invalid(
    token_server: MockServer, session: aiohttp.ClientSession
) -> None:
    """A token never issued, or one replaced by a newer token, answers "Invalid Token"."""
    first = (await generate_token(session, token_server))["token"]
    second = (await generate_token(session, token_server))["token"]
    assert first != second
    for token in ("made-up", first):
        _, answer = await call(
            session, token_server, delete_body(["9000000001"]), headers=bearer(token)
        )
        assert answer == {"status": "false", "message": "Invalid Token"}
    _, answer = await call(
        session, token_server, delete_body(["9000000001"]), headers=bearer(second)
    )
    assert answer["status"] == "success"
    assert token_server.stats()["auth_failures"] == 2


async def test_token_expires_after_its_ttl(
    token_server: MockServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Once token_ttl has passed the token answers "Token Expired" until a new one is made."""
    token = (await generate_token(session, token_server))["token"]
    clock.advance(59.9)
    _, answer = await call(
        session, token_server, delete_body(["9000000001"]), headers=bearer(token)
    )
    assert answer["status"] == "success"
    clock.advance(0.1)
    _, answer = await call(
        session, token_server, delete_body(["9000000001"]), headers=bearer(token)
    )
    assert answer == {"status": "false", "message": "Token Expired"}
    fresh = (await generate_token(session, token_server))["token"]
    _, answer = await call(
        session, token_server, delete_body(["9000000001"]), headers=bearer(fresh)
    )
    assert answer["status"] == "success"


async def test_token_budget_is_per_rolling_hour(
    token_server: MockServer, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Beyond token_budget tokens in an hour generateToken refuses, until the hour rolls on."""
    for _ in range(3):
        assert "token" in await generate_token(session, token_server)
        clock.advance(60)
    refused = await generate_token(session, token_server)
    assert refused == {"status": "false", "message": "Token generation limit exceeded"}
    clock.advance(3600 - 180)
    assert "token" in await generate_token(session, token_server)
    stats = token_server.stats()
    assert stats["tokens_issued"] == 4
    assert stats["token_refusals"] == 1


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        ({}, AUTH, "UserName is null"),
        (b"", AUTH, "UserName is null"),
        ({"userName": ""}, AUTH, "UserName is null"),
        ({"userName": USER}, {"apiKey": "wrong"}, "Invalid userName or apiKey"),
        ({"userName": USER}, {}, "Invalid userName or apiKey"),
        ({"userName": "other"}, AUTH, "Invalid userName or apiKey"),
    ],
)
async def test_generate_token_refuses_bad_credentials(
    token_server: MockServer,
    session: aiohttp.ClientSession,
    body: object,
    headers: dict[str, str],
    message: str,
) -> None:
    """generateToken needs the userName in the body and the account's apiKey header."""
    answer = await generate_token(session, token_server, body, headers)
    assert answer == {"status": "false", "message": message}
    assert token_server.stats()["tokens_issued"] == 0


# -- seeding calls --


async def test_update_adds_numbers_to_the_named_group_or_creates_it(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    """updateBlockNumbers adds to the group by name (new ones only), creating it when unknown."""
    body = {
        "userName": USER,
        "groupName": server.config.group_name,
        "description": "seed",
        "expiryDate": "2099-12-31 23:59:59",
        "blockNumbers": ["9876543210", "9876543211", "oops", "919876543210"],
    }
    _, answer = await call(session, server, body, method="PUT", path=UPDATE_PATH)
    assert answer["status"] == "success"
    assert answer["output"] == {
        "succes": ["+919876543210", "+919876543211", "+919876543210"],
        "error": ["oops"],
        "new": 2,
        "inserted": 2,
    }
    assert server.state.remaining(GROUP) == 2
    _, again = await call(session, server, body, method="PUT", path=UPDATE_PATH)
    assert again["output"]["new"] == 0
    body["groupName"] = "fresh"
    _, created = await call(session, server, body, method="PUT", path=UPDATE_PATH)
    assert created["output"]["new"] == 2
    assert server.stats()["groups"]["2"] == {"name": "fresh", "remaining": 2}


async def test_update_needs_its_parameters_and_respects_the_cap(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    """updateBlockNumbers without groupName is refused, and so are more than 100 numbers."""
    _, missing = await call(
        session, server, {"userName": USER, "blockNumbers": []}, method="PUT", path=UPDATE_PATH
    )
    assert missing == {"status": "error", "message": "Parameters are mandatory"}
    body = {"userName": USER, "groupName": "big", "blockNumbers": generate_mobile_numbers(101)}
    _, oversized = await call(session, server, body, method="PUT", path=UPDATE_PATH)
    assert oversized == {"status": "error", "message": "Maximum 100 numbers are allowed"}


async def test_create_makes_a_group_that_delete_can_address(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    """createBlockNumber answers the new group's id, which delete then accepts."""
    body = {
        "userName": USER,
        "name": "created",
        "description": "test",
        "blockNumbers": ["9876543210", "9876543211"],
        "expiryDate": "2099-12-31 23:59:59",
    }
    _, answer = await call(session, server, body, method="POST", path=CREATE_PATH)
    assert answer == {"status": "success", "message": "Created", "id": 2}
    _, duplicate = await call(session, server, body, method="POST", path=CREATE_PATH)
    assert duplicate["status"] == "error"
    _, deleted = await call(session, server, delete_body(["9876543210"], group_id=2))
    assert deleted["output"]["deleted"] == 1
    assert server.state.remaining(2) == 1


async def test_seeding_calls_follow_the_auth_rules(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    """update and create refuse a wrong apiKey exactly as delete does."""
    for method, path, body in [
        ("PUT", UPDATE_PATH, {"userName": USER, "groupName": "g", "blockNumbers": []}),
        ("POST", CREATE_PATH, {"userName": USER, "name": "g", "blockNumbers": []}),
    ]:
        _, answer = await call(
            session, server, body, method=method, path=path, headers={"apiKey": "x"}
        )
        assert answer == {"status": "false", "message": "Invalid userName or apiKey"}
    assert server.stats()["auth_failures"] == 2


# -- stats --


async def test_stats_count_what_the_server_saw(
    server: MockServer, session: aiohttp.ClientSession
) -> None:
    """/mock/stats counts requests, numbers, batch sizes and repeated successful batches."""
    numbers = generate_mobile_numbers(30)
    server.state.seed(GROUP, numbers)
    batch_a, batch_b = numbers[:10], numbers[10:30]
    for batch in (batch_a, batch_a, batch_a, batch_b):
        await call(session, server, delete_body(batch))
    await call(session, server, b"")
    await call(session, server, delete_body(batch_b, group_id=99))
    async with session.get(server.url + "/mock/stats") as reply:
        stats = orjson.loads(await reply.read())
    assert stats == server.stats()
    assert stats["requests"] == 6
    assert stats["requests_by_path"] == {DELETE_PATH: 6}
    assert stats["delete_requests"] == 6
    assert stats["numbers_received"] == 10 * 3 + 20 + 20
    assert stats["numbers_deleted"] == 30
    assert stats["max_batch_seen"] == 20
    assert stats["bodyless_requests"] == 1
    # batch_a succeeded three times, batch_b once; the failed repeat of batch_b does not count.
    assert stats["duplicate_batches"] == 1
    assert stats["groups"] == {str(GROUP): {"name": server.config.group_name, "remaining": 0}}
    assert stats["faults"] == {}

    async with session.post(server.url + "/mock/reset-stats") as reply:
        assert reply.status == 200
    after = server.stats()
    assert after["requests"] == after["duplicate_batches"] == after["numbers_received"] == 0
    await call(session, server, delete_body(batch_a))
    assert server.stats()["duplicate_batches"] == 0


async def test_latency_delays_every_answer(session: aiohttp.ClientSession) -> None:
    """latency_ms holds each API answer back by at least that long."""
    async with MockServer(MockConfig(latency_ms=150)) as server:
        started = time.monotonic()
        _, answer = await call(session, server, delete_body([]))
        assert time.monotonic() - started >= 0.15
        assert answer["status"] == "success"


# -- rate limiting --


@pytest.mark.parametrize("style", ["http", "http-bare", "body"])
async def test_rate_limit_refuses_exactly_the_surplus(
    session: aiohttp.ClientSession, style: RateLimitStyle
) -> None:
    """R+5 requests within one second: R are answered, exactly 5 get "Max limit exceeded"."""
    clock = FakeClock()
    rate = 10
    state = MockState(MockConfig(rate_limit=rate, rate_limit_style=style), clock=clock)
    async with MockServer(state=state) as server:

        async def one() -> tuple[int, Any, str | None]:
            async with session.delete(
                server.url + DELETE_PATH, data=orjson.dumps(delete_body([])), headers=AUTH
            ) as reply:
                return (
                    reply.status,
                    orjson.loads(await reply.read()),
                    reply.headers.get("Retry-After"),
                )

        answers = await asyncio.gather(*(one() for _ in range(rate + 5)))
        limited = [
            a for a in answers if a[1] == {"status": "error", "message": "Max limit exceeded"}
        ]
        served = [a for a in answers if a[1].get("status") == "success"]
        assert len(limited) == 5
        assert len(served) == rate
        if style == "http":
            assert {(status, retry) for status, _, retry in limited} == {(429, "1")}
        elif style == "http-bare":
            assert {(status, retry) for status, _, retry in limited} == {(429, None)}
        else:
            assert {(status, retry) for status, _, retry in limited} == {(200, None)}
        assert state.stats()["rate_limited"] == 5
        clock.advance(1.0)
        status, answer, _ = await one()
        assert (status, answer["status"]) == (200, "success")


@pytest.mark.parametrize("reset", [False, True], ids=["sliding", "reset-on-the-clock"])
async def test_a_per_minute_limit_answers_an_honest_retry_after(
    session: aiohttp.ClientSession, reset: bool
) -> None:
    """2 a minute: the third request is told to come back when the window frees up."""
    clock = FakeClock()
    wall = [1_699_999_200.0 + 45.0]  # 45 s into a minute of the wall clock
    config = MockConfig(rate_limit=2, rate_limit_window=60.0, rate_limit_reset=reset)
    state = MockState(config, clock=clock, wall=lambda: wall[0])
    async with MockServer(state=state) as server:
        async with session.delete(
            server.url + DELETE_PATH, data=orjson.dumps(delete_body([])), headers=AUTH
        ) as reply:
            assert reply.status == 200
        clock.advance(10.0)
        wall[0] += 10.0
        statuses = []
        for _ in range(2):
            async with session.delete(
                server.url + DELETE_PATH, data=orjson.dumps(delete_body([])), headers=AUTH
            ) as reply:
                statuses.append((reply.status, reply.headers.get("Retry-After")))
    # Sliding: the first request leaves the window 60 s after it came, 50 s from now. Reset
    # on the clock: the minute ends 5 s from now.
    assert statuses == [(200, None), (429, "5" if reset else "50")]


async def test_rate_limit_holds_on_the_real_clock(session: aiohttp.ClientSession) -> None:
    """With the real clock, a quick burst of R+5 still gets exactly 5 refusals."""
    rate = 20
    async with MockServer(MockConfig(rate_limit=rate)) as server:
        statuses = await asyncio.gather(
            *(call(session, server, delete_body([])) for _ in range(rate + 5)),
            return_exceptions=False,
        )
    assert sorted(status for status, _ in statuses).count(429) == 5


# -- faults --


@pytest.mark.parametrize(
    ("kind", "status"), [("http_500", 500), ("http_502", 502), ("http_503", 503)]
)
async def test_http_error_faults_answer_json_and_delete_nothing(
    session: aiohttp.ClientSession, kind: str, status: int
) -> None:
    """An HTTP 5xx fault answers a JSON error body and leaves the group untouched."""
    async with MockServer(MockConfig(fault_rate=1.0, fault_kinds=[kind])) as server:
        server.state.seed(GROUP, ["9876543210"])
        answered, answer = await call(session, server, delete_body(["9876543210"]))
        assert answered == status
        assert answer["status"] == "error"
        assert server.state.remaining(GROUP) == 1
        assert server.stats()["faults"] == {kind: 1}


async def test_html_502_fault_answers_a_proxy_page(session: aiohttp.ClientSession) -> None:
    """The html_502 fault answers HTTP 502 with an HTML page instead of JSON."""
    async with MockServer(MockConfig(fault_rate=1.0, fault_kinds=["html_502"])) as server:
        async with session.delete(
            server.url + DELETE_PATH, data=orjson.dumps(delete_body([])), headers=AUTH
        ) as reply:
            assert reply.status == 502
            assert reply.content_type == "text/html"
            assert (await reply.read()).startswith(b"<html>")
        assert server.stats()["faults"] == {"html_502": 1}


async def test_garbled_fault_answers_truncated_json(session: aiohttp.ClientSession) -> None:
    """The garbled fault answers HTTP 200 with JSON cut short, and deletes nothing."""
    async with MockServer(MockConfig(fault_rate=1.0, fault_kinds=["garbled"])) as server:
        server.state.seed(GROUP, ["9876543210"])
        async with session.delete(
            server.url + DELETE_PATH, data=orjson.dumps(delete_body(["9876543210"])), headers=AUTH
        ) as reply:
            assert reply.status == 200
            body = await reply.read()
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)
        assert server.state.remaining(GROUP) == 1


async def raw_delete(server: MockServer, body: object) -> bytes:
    """Send one DELETE on a fresh socket and return every byte the server sent before closing.

    aiohttp's client silently resends an idempotent request once when the connection drops,
    which would hide what the server did to the first one.
    """
    payload = orjson.dumps(body)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            f"DELETE {DELETE_PATH} HTTP/1.1\r\nHost: mock\r\napiKey: {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_reset_fault_resets_the_connection_and_deletes_nothing() -> None:
    """The reset fault answers with a TCP reset and leaves the group untouched."""
    async with MockServer(MockConfig(fault_rate=1.0, fault_kinds=["reset"])) as server:
        server.state.seed(GROUP, ["9876543210"])
        with pytest.raises(ConnectionResetError):
            await raw_delete(server, delete_body(["9876543210"]))
        assert server.state.remaining(GROUP) == 1
        assert server.stats()["faults"] == {"reset": 1}


async def test_lost_reply_fault_deletes_then_closes_without_answering() -> None:
    """The lost_reply fault applies the deletion, then closes the connection with no reply."""
    async with MockServer(MockConfig(fault_rate=1.0, fault_kinds=["lost_reply"])) as server:
        server.state.seed(GROUP, ["9876543210", "9876543211"])
        assert await raw_delete(server, delete_body(["9876543210"])) == b""
        assert server.state.numbers(GROUP) == {"+919876543211"}
        stats = server.stats()
        assert stats["numbers_deleted"] == 1
        assert stats["faults"] == {"lost_reply": 1}


@pytest.mark.parametrize("kind", ["reset", "lost_reply"])
async def test_dropped_connections_reach_aiohttp_as_connection_errors(
    session: aiohttp.ClientSession, kind: str
) -> None:
    """aiohttp surfaces both drops as ClientConnectionError, after resending the DELETE once."""
    async with MockServer(MockConfig(fault_rate=1.0, fault_kinds=[kind])) as server:
        server.state.seed(GROUP, ["9876543210"])
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(session, server, delete_body(["9876543210"]))
        stats = server.stats()
        assert stats["faults"] == {kind: stats["delete_requests"]}
        assert stats["delete_requests"] in (1, 2)


async def test_hang_fault_outlasts_the_client_timeout(session: aiohttp.ClientSession) -> None:
    """The hang fault answers nothing before hang_s, so the client times out; stop is prompt."""
    config = MockConfig(fault_rate=1.0, fault_kinds=["hang"], hang_s=30)
    server = MockServer(config)
    await server.start()
    try:
        server.state.seed(GROUP, ["9876543210"])
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call(session, server, delete_body(["9876543210"])), 0.3)
        assert server.state.remaining(GROUP) == 1
    finally:
        started = time.monotonic()
        await server.stop()
    assert time.monotonic() - started < 2


async def test_hang_fault_answers_normally_after_hang_s(session: aiohttp.ClientSession) -> None:
    """A client patient enough for hang_s gets the normal answer."""
    config = MockConfig(fault_rate=1.0, fault_kinds=["hang"], hang_s=0.2)
    async with MockServer(config) as server:
        server.state.seed(GROUP, ["9876543210"])
        _, answer = await call(session, server, delete_body(["9876543210"]))
        assert answer["output"]["deleted"] == 1
        assert server.stats()["faults"] == {"hang": 1}


async def test_fail_all_answers_503_to_every_delete(session: aiohttp.ClientSession) -> None:
    """fail_all makes every delete answer HTTP 503, counted as a fault."""
    async with MockServer(MockConfig(fail_all=True)) as server:
        for _ in range(3):
            status, answer = await call(session, server, delete_body([]))
            assert (status, answer["status"]) == (503, "error")
        assert server.stats()["faults"] == {"fail_all": 3}


async def test_faults_spare_the_seeding_calls(session: aiohttp.ClientSession) -> None:
    """Faults are drawn for delete calls only; update still succeeds at fault_rate 1."""
    async with MockServer(MockConfig(fault_rate=1.0, fault_kinds=["reset"])) as server:
        body = {"userName": USER, "groupName": "g", "blockNumbers": ["9876543210"]}
        _, answer = await call(session, server, body, method="PUT", path=UPDATE_PATH)
        assert answer["status"] == "success"


# -- runners --


def test_threaded_server_serves_from_its_own_thread() -> None:
    """ThreadedMockServer answers synchronous clients, shares its state, and really stops."""
    with ThreadedMockServer(MockConfig()) as server:
        server.state.seed(GROUP, ["9876543210"])
        request = urllib.request.Request(
            server.url + DELETE_PATH,
            data=orjson.dumps(delete_body(["9876543210"])),
            headers={"Content-Type": "application/json", **AUTH},
            method="DELETE",
        )
        with urllib.request.urlopen(request, timeout=5) as reply:
            answer = orjson.loads(reply.read())
        assert answer["output"]["deleted"] == 1
        assert server.stats()["numbers_deleted"] == 1
        url = server.url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/mock/stats", timeout=2)


async def test_server_refuses_conflicting_config_and_state() -> None:
    """MockServer takes a config or a state, not a state with some other config."""
    with pytest.raises(ValueError, match="not two different ones"):
        MockServer(MockConfig(user="a"), state=MockState(MockConfig(user="b")))
    with pytest.raises(RuntimeError, match="not running"):
        _ = MockServer().url


# -- the mock-server command --


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ozbulk mock-server")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_build_the_matching_config() -> None:
    """Every mock-server flag lands in the MockConfig field it names."""
    config = config_from_args(
        parse(
            "--user=u",
            "--api-key=k",
            "--auth-mode=token",
            "--group-id=5",
            "--fault-rate=0.2",
            "--fault-kinds=reset, hang",
            "--rate-limit=7.5",
            "--rate-limit-style=body",
            "--latency-ms=3",
            "--token-ttl=9",
            "--token-budget=4",
            "--random-seed=8",
        )
    )
    assert config == MockConfig(
        user="u",
        api_key="k",
        auth_mode="token",
        group_id=5,
        fault_rate=0.2,
        fault_kinds=("reset", "hang"),
        rate_limit=7.5,
        rate_limit_style="body",
        latency_ms=3,
        token_ttl=9,
        token_budget=4,
        fault_seed=8,
    )


def test_run_rejects_bad_flags_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A flag MockConfig refuses makes run() print the fix and exit 2 without listening."""
    assert run(parse("--fault-rate=2", "--port=0")) == 2
    assert "use 0.05" in capsys.readouterr().err


def test_mock_server_command_serves_until_sigterm(tmp_path: Path) -> None:
    """mock-server seeds from CSV and --seed-count, prints its URL, and exits 0 on SIGTERM."""
    csv_path = tmp_path / "seed.csv"
    csv_path.write_text("phone,name\r\n9876543210,a\r\n919876543211,b\r\nnot a number,c\r\n")
    script = (
        "import argparse, sys\n"
        "from engine.mock.command import add_arguments, run\n"
        "parser = argparse.ArgumentParser()\n"
        "add_arguments(parser)\n"
        "sys.exit(run(parser.parse_args(sys.argv[1:])))\n"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            "--port=0",
            f"--seed-csv={csv_path}",
            "--seed-count=5",
            "--api-key=top-secret-fake",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        prefix = "ozbulk mock-server listening on http://127.0.0.1:"
        assert line.startswith(prefix), line
        assert line.endswith(" (group 1: 7 numbers)"), line
        url = line.split(" ")[4]
        with urllib.request.urlopen(url + "/mock/stats", timeout=5) as reply:
            assert orjson.loads(reply.read())["groups"]["1"]["remaining"] == 7
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "top-secret-fake" not in line + stdout + stderr
