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
from engine.pacing import Pacer
from engine.records import Chunk, ChunkResult, LiveStats
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


async def send_chunk(chunk: Chunk, context: WorkerContext) -> ChunkResult | None:
    """Send one chunk until it has a verdict; None if the run is stopping before it has one."""
    if chunk.payload:  # encoded by the producer process, off this event loop's core
        body = context.client.body_from_json(chunk.payload)
    else:
        body = context.client.body(list(map(context.write, chunk.numbers)))
    expected = Expected(chunk.numbers, context.write)
    stats, pacer, telemetry = context.stats, context.pacer, context.telemetry
    attempts = rate_limited = token_refusals = 0
    doubt = ""  # why this pass put the chunk in doubt, if it did
    while True:
        ticket, waited = await telemetry.turn(pacer.acquire(context.stopping))
        if ticket is None:
            return None
        if attempts == 0:
            context.on_send(chunk)
        attempts += 1
        stats.requests += 1
        stats.in_flight += 1
        try:
            verdict = await telemetry.request(
                context.client.delete(body, expected), chunk.id, attempts, waited
            )
        except RateLimited as error:
            pacer.on_rate_limited(ticket, error.retry_after)
            stats.rate_limited += 1
            rate_limited += 1
            last: RetryableApiError = error
        except TokenRejected as error:
            pacer.on_other(ticket)
            token_refusals += 1
            if token_refusals > TOKEN_REFUSALS_MAX:
                raise AuthError(
                    f"the API refused {token_refusals} tokens in a row for chunk {chunk.id}; "
                    "check the account's token settings and --user",
                    chunk_id=chunk.id,
                ) from None
            last = error
            try:
                await context.client.auth.token_rejected(error.generation)
            except RetryableApiError as refresh_error:
                last = refresh_error  # the refresh itself failed: back off, then try again
        except TransportError as error:
            pacer.on_other(ticket)
            stats.transport_errors += 1
            last, doubt = error, doubt or _doubt_after(error)
        except ServerError as error:
            pacer.on_other(ticket)
            stats.server_errors += 1
            last, doubt = error, doubt or _doubt_after(error)
        except BaseException:
            pacer.on_other(ticket)  # fatal, or cancelled: the run is ending
            raise
        else:
            pacer.on_success(ticket)
            if request_log.isEnabledFor(logging.DEBUG):
                request_log.debug("chunk %d, attempt %d: %d numbers, deleted %d, error %d",
                                  chunk.id, attempts, len(chunk.numbers), verdict.deleted,
                                  len(verdict.error))  # fmt: skip
            if context.first_contact is not None:
                context.first_contact.succeeded()
            telemetry.chunk_finished(len(chunk.numbers), verdict)
            return ChunkResult(chunk, attempts, verdict, doubt=doubt)
        finally:
            stats.in_flight -= 1
        if context.first_contact is not None:
            context.first_contact.failed(last)
        counted = attempts - rate_limited - token_refusals
        if counted >= context.max_attempts or attempts >= context.max_attempts * (
            RATE_LIMITED_ATTEMPTS_FACTOR
        ):
            telemetry.chunk_finished(len(chunk.numbers), None)
            return ChunkResult(chunk, attempts, None, reason=str(last), doubt=doubt)
        if context.stopping.is_set():
            return None
        stats.retries += 1
        telemetry.retried(last)
        if retry_log.isEnabledFor(logging.INFO):
            retry_log.info("chunk %d, attempt %d failed (%s); retrying", chunk.id, attempts, last)
        if not isinstance(last, RateLimited | TokenRejected):
            # Full jitter: retries of many chunks that failed together do not return together.
            delay = backoff_delay(counted, context.backoff_base, context.backoff_cap)
            with telemetry.backoff(), anyio.move_on_after(delay):
                await context.stopping.wait()
            if context.stopping.is_set():
                return None


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
