"""The workers: N tasks that each take a chunk, send it until it has a verdict, and pass it on.

Retries are decided by an explicit predicate: only :class:`~engine.errors.RetryableApiError` is
retried; a :class:`~engine.errors.FatalApiError` propagates (carrying the chunk's id) and stops
the whole run. How each retryable error is retried:

* network errors, timeouts, 5xx, HTML or garbled answers: after a backoff with full jitter,
  uniform in [0, min(cap, base * 2^(n-1))]; each uses up an attempt, and a chunk whose attempts
  run out becomes a *failed* result (recorded, reported, re-sent by ``--retry-failed``);
* rate-limit answers: at once, when the pacer (which has slowed down, and honours Retry-After for
  every worker) gives the next turn; they do not use up attempts, up to 10x as many tries;
* a refused token: at once, after the shared token was refreshed (single-flight, by generation).

Every turn the pacer gives is reported back to it with its ticket, whatever the outcome, so its
sliding-window guard knows which requests the server may still be counting.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine import streams
from engine.client import Expected, OzonetelClient
from engine.errors import (
    AuthError,
    FatalApiError,
    RateLimited,
    RetryableApiError,
    ServerError,
    TokenRejected,
    TransportError,
)
from engine.guard import FirstContact
from engine.numbers import numbers_json
from engine.pacing import Pacer
from engine.records import Chunk, ChunkResult, LiveStats, Verdict
from engine.telemetry import Telemetry

RATE_LIMITED_ATTEMPTS_FACTOR = 10
# A backstop: TokenAuth stops a run whose fresh tokens are refused; this stops a chunk whose
# token keeps being replaced under it (another client minting tokens for the account).
TOKEN_REFUSALS_MAX = 5


# -v shows one line per retry, -vv one per request (the command line sets their levels).
retry_log = logging.getLogger("engine.retries")
request_log = logging.getLogger("engine.requests")


@dataclass
class WorkerContext:
    """What every worker shares: the client, the pacer, the counters and the run's settings."""

    client: OzonetelClient
    pacer: Pacer
    stats: LiveStats
    max_attempts: int
    backoff_base: float
    backoff_cap: float
    write: Callable[[int], str]
    stopping: anyio.Event = field(default_factory=anyio.Event)
    # Told of each chunk just before its first request leaves: what a stop leaves in doubt.
    on_send: Callable[[Chunk], None] = lambda chunk: None
    # Stops a run early when there is no API at the other end (see engine.guard).
    first_contact: FirstContact | None = None
    telemetry: Telemetry = field(default_factory=Telemetry)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""
    return random.uniform(0.0, min(cap, base * 2 ** (attempt - 1)))


@dataclass(slots=True)
class _Attempts:
    """One chunk's attempts so far: which use up its budget, and why it is in doubt."""

    made: int = 0
    rate_limited: int = 0
    token_refusals: int = 0
    doubt: str = ""  # why this pass put the chunk in doubt, if it did

    @property
    def counted(self) -> int:
        """The attempts that use up ``max_attempts``: rate limits and refused tokens do not."""
        return self.made - self.rate_limited - self.token_refusals


async def send_chunk(chunk: Chunk, context: WorkerContext) -> ChunkResult | None:
    """Send one chunk until it has a verdict; None if the run is stopping before it has one."""
    # The producer process encodes the numbers off this event loop's core.
    sent = chunk.payload or numbers_json(chunk.numbers, context.write)
    body = context.client.body_from_json(sent)
    expected = Expected(chunk.numbers, context.write, sent)
    attempts = _Attempts()
    while True:
        ticket, waited = await context.telemetry.turn(context.pacer.acquire(context.stopping))
        if ticket is None:
            return None
        if attempts.made == 0:
            context.on_send(chunk)
        outcome = await _attempt(chunk, body, expected, (ticket, waited), attempts, context)
        if isinstance(outcome, Verdict):
            return _succeeded(chunk, outcome, attempts, context)
        if context.first_contact is not None:
            context.first_contact.failed(outcome)
        if _out_of_attempts(attempts, context.max_attempts):
            return _gave_up(chunk, outcome, attempts, context)
        if context.stopping.is_set():
            return None
        _count_retry(chunk, outcome, attempts, context)
        if not await _wait_to_retry(outcome, attempts, context):
            return None


async def _attempt(
    chunk: Chunk,
    body: bytes,
    expected: Expected,
    turn: tuple[float, float],
    attempts: _Attempts,
    context: WorkerContext,
) -> Verdict | RetryableApiError:
    """One request on the pacer's turn: its verdict, or the retryable error it ended with.

    The pacer hears how the turn ended, whatever the outcome; a fatal error propagates.
    """
    ticket, waited = turn
    stats = context.stats
    attempts.made += 1
    stats.requests += 1
    stats.in_flight += 1
    try:
        verdict = await context.telemetry.request(
            context.client.delete(body, expected), chunk.id, attempts.made, waited
        )
    except RateLimited as error:
        return _rate_limited(error, ticket, attempts, context)
    except TokenRejected as error:
        return await _token_rejected(chunk, error, ticket, attempts, context)
    except TransportError as error:
        stats.transport_errors += 1
        return _may_have_applied(error, ticket, attempts, context)
    except ServerError as error:
        stats.server_errors += 1
        return _may_have_applied(error, ticket, attempts, context)
    except BaseException:
        context.pacer.on_other(ticket)  # fatal, or cancelled: the run is ending
        raise
    else:
        context.pacer.on_success(ticket)
        return verdict
    finally:
        stats.in_flight -= 1


def _rate_limited(
    error: RateLimited, ticket: float, attempts: _Attempts, context: WorkerContext
) -> RetryableApiError:
    """The pacer slows down (and honours Retry-After for every worker); no attempt used up."""
    context.pacer.on_rate_limited(ticket, error.retry_after)
    context.stats.rate_limited += 1
    attempts.rate_limited += 1
    return error


async def _token_rejected(
    chunk: Chunk, error: TokenRejected, ticket: float, attempts: _Attempts, context: WorkerContext
) -> RetryableApiError:
    """The shared token is refreshed (single-flight, by generation); no attempt used up."""
    context.pacer.on_other(ticket)
    attempts.token_refusals += 1
    if attempts.token_refusals > TOKEN_REFUSALS_MAX:
        raise AuthError(
            f"the API refused {attempts.token_refusals} tokens in a row for chunk {chunk.id}; "
            "check the account's token settings and --user",
            chunk_id=chunk.id,
        ) from None
    try:
        await context.client.auth.token_rejected(error.generation)
    except RetryableApiError as refresh_error:
        return refresh_error  # the refresh itself failed: back off, then try again
    return error


def _may_have_applied(
    error: TransportError | ServerError, ticket: float, attempts: _Attempts, context: WorkerContext
) -> RetryableApiError:
    """A network error, timeout, 5xx or garbled answer: it uses up an attempt, and one the
    server may have carried out puts the chunk in doubt (the first such reason is kept)."""
    context.pacer.on_other(ticket)
    attempts.doubt = attempts.doubt or _doubt_after(error)
    return error


def _succeeded(
    chunk: Chunk, verdict: Verdict, attempts: _Attempts, context: WorkerContext
) -> ChunkResult:
    """The chunk's result, with why this pass may have applied it before, if it may have."""
    if request_log.isEnabledFor(logging.DEBUG):
        request_log.debug("chunk %d, attempt %d: %d numbers, deleted %d, error %d",
                          chunk.id, attempts.made, len(chunk.numbers), verdict.deleted,
                          len(verdict.error))  # fmt: skip
    if context.first_contact is not None:
        context.first_contact.succeeded()
    context.telemetry.chunk_finished(len(chunk.numbers), verdict)
    return ChunkResult(chunk, attempts.made, verdict, doubt=attempts.doubt)


def _gave_up(
    chunk: Chunk, error: RetryableApiError, attempts: _Attempts, context: WorkerContext
) -> ChunkResult:
    """A failed result: recorded, reported, and sent again by ``--retry-failed``."""
    context.telemetry.chunk_finished(len(chunk.numbers), None)
    return ChunkResult(chunk, attempts.made, None, reason=str(error), doubt=attempts.doubt)


def _out_of_attempts(attempts: _Attempts, max_attempts: int) -> bool:
    """Every counted attempt used, or ten times as many tries in all (rate limits, tokens)."""
    return (
        attempts.counted >= max_attempts
        or attempts.made >= max_attempts * RATE_LIMITED_ATTEMPTS_FACTOR
    )


def _count_retry(
    chunk: Chunk, error: RetryableApiError, attempts: _Attempts, context: WorkerContext
) -> None:
    context.stats.retries += 1
    context.telemetry.retried(error)
    if retry_log.isEnabledFor(logging.INFO):
        retry_log.info("chunk %d, attempt %d failed (%s); retrying", chunk.id, attempts.made, error)


async def _wait_to_retry(
    error: RetryableApiError, attempts: _Attempts, context: WorkerContext
) -> bool:
    """Wait before the next attempt; False if the run began stopping meanwhile.

    A rate limit or a refused token is retried at once: the pacer's next turn, or the new
    token, is the wait. Other errors back off with full jitter, so that retries of many chunks
    that failed together do not return together.
    """
    if isinstance(error, RateLimited | TokenRejected):
        return True
    delay = backoff_delay(attempts.counted, context.backoff_base, context.backoff_cap)
    with context.telemetry.backoff(), anyio.move_on_after(delay):
        await context.stopping.wait()
    return not context.stopping.is_set()


def _doubt_after(error: RetryableApiError) -> str:
    """An attempt the server may have carried out leaves its chunk in doubt: say why.

    The collector decides what the chunk's row says: one already in doubt from an earlier pass
    keeps that pass's reason.
    """
    return f"{DOUBT_AFTER_ATTEMPT} ({error})" if error.may_have_applied else ""


DOUBT_AFTER_ATTEMPT = (
    "sent again after an attempt of this pass that may have been applied, so numbers not "
    "found were probably deleted by it"
)


async def worker(
    chunks: MemoryObjectReceiveStream[Chunk],
    results: MemoryObjectSendStream[ChunkResult],
    context: WorkerContext,
) -> None:
    async with chunks, results:
        while True:
            try:
                chunk = await streams.receive(chunks)
            except anyio.EndOfStream:
                return
            if context.stopping.is_set():
                return  # chunks still buffered are not sent: they stay for the resume
            try:
                result = await send_chunk(chunk, context)
            except FatalApiError as error:
                if error.chunk_id is None:
                    error.chunk_id = chunk.id
                raise
            if result is None:
                return  # stopping: the chunk stays unfinished and is re-sent on resume
            await streams.send(results, result)
