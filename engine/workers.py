"""The workers: N tasks that each take a chunk, send it until it has a verdict, and pass it on.

Retries are decided by an explicit predicate: only :class:`~engine.errors.RetryableApiError` is
retried, with exponential backoff and full jitter; a :class:`~engine.errors.FatalApiError`
propagates and stops the whole run. A chunk whose attempts run out becomes a *failed* result,
recorded and re-sent by a later pass; rate-limit answers do not use up attempts (the pacer deals
with them), up to a generous cap.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.batcher import Chunk
from engine.client import OzonetelClient, Verdict
from engine.errors import AuthError, RateLimited, RetryableApiError, TokenRejected
from engine.pacing import Pacer

RATE_LIMITED_ATTEMPTS_FACTOR = 10
TOKEN_REFUSALS_MAX = 2


@dataclass(slots=True)
class LiveStats:
    """Counters the workers bump and the progress display reads; one event loop, no locks."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    in_flight: int = 0
    transport_errors: int = 0
    server_errors: int = 0


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """A chunk with its verdict, or with the reason it failed after every attempt."""

    chunk: Chunk
    attempts: int
    verdict: Verdict | None
    reason: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict is None


@dataclass
class WorkerContext:
    client: OzonetelClient
    pacer: Pacer
    stats: LiveStats
    max_attempts: int
    backoff_base: float
    backoff_cap: float
    write: Callable[[int], str]
    stopping: anyio.Event = field(default_factory=anyio.Event)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""
    return random.uniform(0.0, min(cap, base * 2 ** (attempt - 1)))


async def send_chunk(chunk: Chunk, context: WorkerContext) -> ChunkResult | None:
    """Send one chunk until it has a verdict; None if the run is stopping before it has one."""
    write = context.write
    body = context.client.body([write(number) for number in chunk.numbers])
    stats, pacer = context.stats, context.pacer
    attempts = rate_limited = token_refusals = 0
    while True:
        await pacer.acquire()
        attempts += 1
        stats.requests += 1
        stats.in_flight += 1
        try:
            verdict = await context.client.delete(body)
        except RateLimited as error:
            stats.rate_limited += 1
            rate_limited += 1
            pacer.on_rate_limited(error.retry_after)
            last: RetryableApiError = error
        except TokenRejected as error:
            token_refusals += 1
            if token_refusals > TOKEN_REFUSALS_MAX:
                raise AuthError(
                    "the API keeps refusing freshly generated tokens; check the account's "
                    "token settings and --user"
                ) from None
            await context.client.auth.token_rejected(error.generation)
            last = error
        except RetryableApiError as error:
            last = error
        else:
            pacer.on_success()
            return ChunkResult(chunk, attempts, verdict)
        finally:
            stats.in_flight -= 1
        counted = attempts - rate_limited - token_refusals
        if counted >= context.max_attempts or attempts >= context.max_attempts * (
            RATE_LIMITED_ATTEMPTS_FACTOR
        ):
            return ChunkResult(chunk, attempts, None, reason=str(last))
        if context.stopping.is_set():
            return None
        stats.retries += 1
        if not isinstance(last, RateLimited | TokenRejected):
            with anyio.move_on_after(
                backoff_delay(counted, context.backoff_base, context.backoff_cap)
            ):
                await context.stopping.wait()
            if context.stopping.is_set():
                return None


async def worker(
    chunks: MemoryObjectReceiveStream[Chunk],
    results: MemoryObjectSendStream[ChunkResult],
    context: WorkerContext,
) -> None:
    async with chunks, results:
        async for chunk in chunks:
            if context.stopping.is_set():
                return  # chunks still buffered are not sent: they stay for the resume
            result = await send_chunk(chunk, context)
            if result is None:
                return  # stopping: the chunk stays unfinished and is re-sent on resume
            await results.send(result)
