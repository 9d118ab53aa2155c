"""Credentials on the wire: the API key header, or one shared token refreshed single-flight.

A token lives 60 minutes, an account may mint 10 an hour, and each new token invalidates the
earlier ones. So every worker shares one token; it is refreshed shortly before it expires or when
the API refuses it, and a refresh is keyed by the *generation* of the token that was refused, so
32 workers hitting one expired token cause exactly one refresh. A refresh that fails is
single-flight too: the workers that waited for it get its error instead of each trying again.

Every token that may have been minted (an answer with a token, or no answer at all: the server
may have minted one and lost the reply) counts against the hourly budget; a refresh that would
exceed it stops the run instead of risking the account. A token the API refuses before it ever
accepted it means the credentials or the account's settings are wrong: after one refresh, that
stops the run too.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import anyio
import orjson

from engine.errors import (
    AuthError,
    RateLimited,
    RetryableApiError,
    ServerError,
    TransportError,
)
from engine.redact import REDACTOR, snippet
from engine.refusals import Refusal, refusal_in
from engine.settings import Secret

# Refresh this long before expiry (at most; a tenth of a short lifetime), so no request carries
# a token that dies in flight.
REFRESH_MARGIN_MAX = 300.0
REFRESH_MARGIN_SHARE = 0.1
HOUR = 3600.0
# After a failed refresh, the next attempt waits this long, doubling up to the cap: workers that
# need a token meanwhile get the failure at once and back off on their own.
RETRY_BASE = 1.0
RETRY_CAP = 30.0
# Generate Token failing this many times in a row (HTML, broken JSON, 5xx, no answer; about 30 s
# of backoff) stops the run: every chunk would otherwise fail for want of a token.
TOKEN_FAILURES_MAX = 6

# What a server's message may show of itself in an error, masked and cut (see engine.redact).
MESSAGE_CHARS = 200
# A bearer token is printable ASCII without spaces (RFC 6750's b64token, and then some).
_SENDABLE_TOKEN = re.compile(r"[!-~]+")

# POSTs for Generate Token: its status and body. HTTP 429 never comes back: the poster raises
# RateLimited for it, with its Retry-After (see OzonetelClient._post, which paces it too).
PostJson = Callable[[str, dict[str, str], bytes], Awaitable[tuple[int, bytes]]]


class Auth(Protocol):
    """What a worker needs: headers for the next request, and a way to report the verdict."""

    generation: int
    refreshes: int

    async def headers(self) -> dict[str, str]: ...

    def accepted(self, generation: int) -> None: ...

    async def token_rejected(self, generation: int) -> None: ...

    def retry_in(self) -> float | None:
        """After :meth:`headers` failed: seconds until it may try again, or None to give up."""
        ...

    def issued_at(self) -> list[float]: ...


class ApiKeyAuth:
    """``apiKey: <key>`` on every call; a refusal is final."""

    def __init__(self, api_key: Secret) -> None:
        self._headers = {"apiKey": api_key.reveal(), "Content-Type": "application/json"}
        self.generation = 0
        self.refreshes = 0

    async def headers(self) -> dict[str, str]:
        return self._headers

    def issued_at(self) -> list[float]:
        return []  # no tokens in this mode

    def accepted(self, generation: int) -> None:
        pass

    def retry_in(self) -> float | None:
        return None  # the key never fails to be there

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
        wall_clock: Callable[[], float] = time.time,
        earlier: Iterable[float] = (),
    ) -> None:
        self._user = user
        self._api_key = api_key
        self._token_url = token_url
        self._post = post
        self._ttl = ttl
        self._margin = min(REFRESH_MARGIN_MAX, ttl * REFRESH_MARGIN_SHARE)
        self._budget = budget
        self._clock = clock
        self._wall_clock = wall_clock
        # Tokens minted by earlier passes of this run (wall-clock times from the checkpoint):
        # the account's budget is per hour, not per process, so a resume counts them too.
        now, wall = clock(), wall_clock()
        self._issued: deque[float] = deque(
            sorted(now - (wall - when) for when in earlier if 0 <= wall - when < HOUR)
        )
        self._lock = anyio.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._headers: dict[str, str] = {}
        self._failures = 0
        self._failures_in_a_row = 0
        self._last_failure: RetryableApiError | None = None
        self._gave_up: AuthError | None = None
        self._retry_at = -math.inf
        self._current_accepted = False
        self._refused_unaccepted = 0
        self._last_refused_generation = 0
        self.generation = 0
        self.refreshes = 0

    def issued_at(self) -> list[float]:
        """Wall-clock times of the tokens minted within the last hour, for the checkpoint."""
        now, wall = self._clock(), self._wall_clock()
        self._forget_old(now)
        return [round(wall - (now - when), 3) for when in self._issued]

    @property
    def tokens_this_hour(self) -> int:
        """Tokens this run minted (or may have) within the last hour."""
        self._forget_old(self._clock())
        return len(self._issued)

    async def headers(self) -> dict[str, str]:
        if self._token is not None and self._clock() < self._expires_at - self._margin:
            return self._headers
        try:
            await self._refresh(self.generation, self._failures)
        except RetryableApiError:
            if self._token is not None and self._clock() < self._expires_at:
                return self._headers  # the old token still has a little life: use it meanwhile
            raise
        return self._headers

    def retry_in(self) -> float | None:
        if self._gave_up is not None or self._last_failure is None:
            return None
        return max(0.0, self._retry_at - self._clock())

    def accepted(self, generation: int) -> None:
        if generation == self.generation:
            self._current_accepted = True
            self._refused_unaccepted = 0

    async def token_rejected(self, generation: int) -> None:
        if generation == self.generation and not self._current_accepted:
            if generation != self._last_refused_generation:
                # Counted once per token, however many workers it was refused to.
                self._last_refused_generation = generation
                self._refused_unaccepted += 1
            if self._refused_unaccepted > 1:
                # Every worker refused this token stops here: none mints yet another one.
                raise AuthError(
                    "the API refused a freshly generated token again after a refresh: check "
                    "--user and the API key, that the account is set to TOKEN_AUTH, and that "
                    "no other client generates tokens for this account while ozbulk runs"
                )
        await self._refresh(generation, self._failures)

    async def _refresh(self, stale_generation: int, failures_seen: int) -> None:
        async with self._lock:
            if self.generation != stale_generation:
                return  # another worker refreshed while this one waited for the lock
            if self._gave_up is not None:
                raise AuthError(str(self._gave_up))
            last = self._last_failure
            if last is not None and (
                self._failures != failures_seen or self._clock() < self._retry_at
            ):
                # Another worker's attempt failed while this one waited, or moments ago: one
                # attempt serves them all.
                raise _again(last)
            self._check_budget()
            try:
                status, body = await self._post(
                    self._token_url,
                    {"apiKey": self._api_key.reveal(), "Content-Type": "application/json"},
                    orjson.dumps({"userName": self._user}),
                )
                token = _token_from(status, body)
            except RetryableApiError as error:
                if isinstance(error, TransportError):
                    # No answer: a token may have been minted and its reply lost.
                    self._issued.append(self._clock())
                self._failures += 1
                self._failures_in_a_row += 1
                self._last_failure = error
                wait = min(RETRY_CAP, RETRY_BASE * 2 ** (self._failures_in_a_row - 1))
                if isinstance(error, RateLimited) and error.retry_after:
                    wait = max(wait, error.retry_after)
                self._retry_at = self._clock() + wait
                # While the old token lives, requests go on with it: no reason to stop yet.
                usable = self._token is not None and self._clock() < self._expires_at
                if self._failures_in_a_row >= TOKEN_FAILURES_MAX and not usable:
                    self._gave_up = AuthError(
                        f"stopped: Generate Token failed {self._failures_in_a_row} times in a "
                        f"row, the last with: {error}. No request can be sent without a token. "
                        "Nothing is lost: re-run the same command to resume once the token "
                        "endpoint answers (check --base-url and that the account uses TOKEN_AUTH)"
                    )
                    raise AuthError(str(self._gave_up)) from None
                raise
            now = self._clock()
            self._issued.append(now)
            self._token = token
            REDACTOR.add(token)  # a log line that somehow quoted it would show *** instead
            self._expires_at = now + self._ttl
            self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            self._current_accepted = False
            self._failures_in_a_row = 0
            self._last_failure = None
            self._retry_at = -math.inf
            self.generation += 1
            self.refreshes += 1

    def _forget_old(self, now: float) -> None:
        while self._issued and now - self._issued[0] >= HOUR:
            self._issued.popleft()

    def _check_budget(self) -> None:
        now = self._clock()
        self._forget_old(now)
        if len(self._issued) >= self._budget:
            minutes = max(1, math.ceil((HOUR - (now - self._issued[0])) / 60))
            raise AuthError(
                f"token budget spent: this run generated {len(self._issued)} tokens in the last "
                f"hour and the account allows {self._budget} (--token-budget); another could "
                f"lock the account. Nothing is lost: re-run the same command in {minutes} "
                "minutes to resume"
            )


def _again(error: RetryableApiError) -> RetryableApiError:
    """A fresh copy of a failure, for another task to raise (one exception, one traceback)."""
    if isinstance(error, RateLimited):
        return RateLimited(str(error), retry_after=error.retry_after, http_status=error.http_status)
    return type(error)(str(error), http_status=error.http_status)


def _token_from(status: int, body: bytes) -> str:
    """The token in an answer of Generate Token, or the error the answer means."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = None
    if isinstance(answer, dict):
        token = answer.get("token")
        if isinstance(token, str) and token:
            if not _SENDABLE_TOKEN.fullmatch(token):
                raise ServerError(
                    "Generate Token answered a token that cannot go into a header (spaces, "
                    "control characters or non-ASCII)",
                    http_status=status,
                )
            return token
        text = str(answer.get("message") or answer.get("status") or "no token in the answer")
        message = snippet(text.encode(), MESSAGE_CHARS)
    else:
        message = f"HTTP {status} with a body that is not JSON: {snippet(body, MESSAGE_CHARS)}"
    lowered = message.lower()
    # No status 429 here: the poster raises RateLimited for it with its Retry-After (PostJson).
    if refusal_in(message) is Refusal.RATE_LIMITED:
        raise RateLimited(f"Generate Token rate limited: {message}", http_status=status)
    if "limit" in lowered:
        raise AuthError(
            f"Generate Token refused: {message}; the account's hourly token limit is spent: "
            "wait an hour and re-run the same command to resume"
        )
    if status >= 500 or answer is None:
        raise ServerError(f"Generate Token failed: {message}", http_status=status)
    raise AuthError(
        f"Generate Token refused: {message}; check --user and the API key "
        "(and that the account is set to TOKEN_AUTH)"
    )
