"""Credentials on the wire: the API key header, or one shared token refreshed single-flight.

A token lives 60 minutes, an account may mint 10 an hour, and each new token invalidates the
earlier ones. So every worker shares one token; it is refreshed shortly before it expires or when
the API refuses it, and a refresh is keyed by the *generation* of the token that was refused, so
32 workers hitting one expired token cause exactly one refresh.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import orjson

from engine.errors import AuthError, ServerError
from engine.settings import Secret

# Refresh this long before expiry, so no request carries a token that dies in flight.
REFRESH_MARGIN_MAX = 300.0
HOUR = 3600.0

PostJson = Callable[[str, dict[str, str], bytes], Awaitable[tuple[int, bytes]]]


class Auth(Protocol):
    """What a worker needs: headers for the next request, and a way to report a refusal."""

    generation: int
    refreshes: int

    async def headers(self) -> dict[str, str]: ...

    async def token_rejected(self, generation: int) -> None: ...


class ApiKeyAuth:
    """``apiKey: <key>`` on every call; a refusal is final."""

    def __init__(self, api_key: Secret) -> None:
        self._headers = {"apiKey": api_key.reveal(), "Content-Type": "application/json"}
        self.generation = 0
        self.refreshes = 0

    async def headers(self) -> dict[str, str]:
        return self._headers

    async def token_rejected(self, generation: int) -> None:
        raise AuthError(
            "the API refused the request's token, but --auth apikey sends no token: "
            "this account uses TOKEN_AUTH; re-run with --auth token"
        )


class TokenAuth:
    """One bearer token for the whole run, minted through Generate Token."""

    def __init__(
        self,
        *,
        user: str,
        api_key: Secret,
        token_url: str,
        post: PostJson,
        ttl: float,
        budget: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._user = user
        self._api_key = api_key
        self._token_url = token_url
        self._post = post
        self._ttl = ttl
        self._margin = min(REFRESH_MARGIN_MAX, ttl * 0.1)
        self._budget = budget
        self._clock = clock
        self._issued: deque[float] = deque()
        self._lock = anyio.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._headers: dict[str, str] = {}
        self.generation = 0
        self.refreshes = 0

    async def headers(self) -> dict[str, str]:
        if self._token is None or self._clock() >= self._expires_at - self._margin:
            await self._refresh(self.generation)
        return self._headers

    async def token_rejected(self, generation: int) -> None:
        await self._refresh(generation)

    async def _refresh(self, stale_generation: int) -> None:
        async with self._lock:
            if self.generation != stale_generation:
                return  # another worker refreshed while this one waited for the lock
            self._spend_budget()
            status, body = await self._post(
                self._token_url,
                {"apiKey": self._api_key.reveal(), "Content-Type": "application/json"},
                orjson.dumps({"userName": self._user}),
            )
            token = _token_from(status, body)
            self._token = token
            self._expires_at = self._clock() + self._ttl
            self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            self.generation += 1
            self.refreshes += 1

    def _spend_budget(self) -> None:
        now = self._clock()
        while self._issued and now - self._issued[0] >= HOUR:
            self._issued.popleft()
        if len(self._issued) >= self._budget:
            wait = HOUR - (now - self._issued[0])
            raise AuthError(
                f"token budget spent: this run already generated {len(self._issued)} tokens in "
                f"the last hour (the account allows {self._budget}); another would risk locking "
                f"the account. Re-run the same command in {wait / 60:.0f} minutes to resume"
            )
        self._issued.append(now)


def _token_from(status: int, body: bytes) -> str:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = None
    if isinstance(answer, dict):
        token = answer.get("token")
        if isinstance(token, str) and token:
            return token
        message = str(answer.get("message") or answer.get("status") or "no token in the answer")
    else:
        message = f"HTTP {status} with a body that is not JSON"
    if "limit" in message.lower():
        raise AuthError(f"Generate Token refused: {message}; wait an hour and re-run to resume")
    if status >= 500 or answer is None:
        raise ServerError(f"Generate Token failed: {message}", http_status=status)
    raise AuthError(
        f"Generate Token refused: {message}; check --user and the API key "
        "(and that the account is set to TOKEN_AUTH)"
    )
