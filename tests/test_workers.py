"""The workers' retry loop: which errors are retried, how long they wait, and when they give up.

Most run on the virtual-time loop of ``tests/test_pacing.py``, so backoff waits take no time and
can be measured exactly.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from engine import workers
from engine.client import OzonetelClient
from engine.errors import (
    AuthError,
    InvalidGroupError,
    RateLimited,
    ServerError,
    TokenRejected,
    TransportError,
)
from engine.mock import MockConfig, MockServer
from engine.pacing import Pacer
from engine.records import Chunk, ChunkResult, LiveStats, Verdict
from engine.settings import InputSettings, RunSettings, Secret
from engine.workers import WorkerContext, backoff_delay, send_chunk, worker
from tests.virtual_time import now, run_virtual

OK = Verdict(success=2, error=[], deleted=2)


@dataclass
class FakeAuth:
    """Records the token refusals the workers report."""

    generation: int = 1
    refreshes: int = 1
    rejected: list[int] = field(default_factory=list)

    async def headers(self) -> dict[str, str]:
        return {}

    def accepted(self, generation: int) -> None:
        pass

    async def token_rejected(self, generation: int) -> None:
        self.rejected.append(generation)


@dataclass
class ScriptedClient:
    """Stands in for OzonetelClient: each delete() takes the next answer of the chunk's script."""

    scripts: dict[int, list[Verdict | Exception]]
    auth: FakeAuth = field(default_factory=FakeAuth)
    sent_at: list[float] = field(default_factory=list)

    def body_from_json(self, numbers_json: bytes) -> bytes:
        return numbers_json

    async def delete(self, body: bytes, expected: object = None) -> Verdict:
        self.sent_at.append(now())
        chunk_id = int(orjson.loads(body)[0])
        script = self.scripts.get(chunk_id, [])
        answer = script.pop(0) if script else OK
        if isinstance(answer, Exception):
            raise answer
        return answer


def chunk(chunk_id: int) -> Chunk:
    return Chunk(chunk_id, [chunk_id, 919800000000 + chunk_id], [0, 0], [1, 2])


def context(
    client: ScriptedClient, *, max_attempts: int = 3, base: float = 1.0, cap: float = 8.0
) -> WorkerContext:
    return WorkerContext(
        client=client,  # type: ignore[arg-type]
        pacer=Pacer(1000),
        stats=LiveStats(),
        max_attempts=max_attempts,
        backoff_base=base,
        backoff_cap=cap,
        write=str,
    )


def at_most(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """Make the jitter always draw its upper bound; return the (low, high) ranges drawn."""
    ranges: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        ranges.append((low, high))
        return high

    monkeypatch.setattr(workers.random, "uniform", uniform)
    return ranges


# -- backoff ----------------------------------------------------------------------------------


def test_backoff_is_exponential_full_jitter_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempt n waits uniform(0, min(cap, base * 2**(n-1))): 0.5, 1, 2, 4, then the cap 5."""
    ranges = at_most(monkeypatch)
    waits = [backoff_delay(attempt, 0.5, 5.0) for attempt in range(1, 7)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert all(low == 0.0 for low, _ in ranges)


def test_backoff_jitter_spreads_over_the_whole_range() -> None:
    """Full jitter: draws cover [0, bound], averaging half of it (retries do not march together)."""
    random.seed(11)
    draws = [backoff_delay(3, 0.5, 30.0) for _ in range(4000)]
    assert min(draws) >= 0.0
    assert max(draws) <= 2.0
    assert min(draws) < 0.05
    assert max(draws) > 1.95
    assert sum(draws) / len(draws) == pytest.approx(1.0, abs=0.05)


# -- the retry loop ---------------------------------------------------------------------------


def test_a_success_takes_one_attempt() -> None:
    """An answer at the first try is the chunk's result; the pacer hears of the success."""
    client = ScriptedClient({})
    ctx = context(client)

    result = run_virtual(lambda: send_chunk(chunk(1), ctx))
    assert result == ChunkResult(chunk(1), 1, OK)
    assert ctx.stats.requests == 1 and ctx.stats.retries == 0
    assert ctx.pacer.in_flight == 0


def test_retryable_errors_back_off_exponentially_then_succeed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Transport and server errors are retried after 1 s, then 2 s (base 1), then succeed."""
    at_most(monkeypatch)
    client = ScriptedClient({1: [TransportError("reset"), ServerError("HTTP 502")]})
    ctx = context(client, max_attempts=3)

    result = run_virtual(lambda: send_chunk(chunk(1), ctx))
    assert result is not None and result.verdict == OK and result.attempts == 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(client.sent_at)]
    assert gaps == pytest.approx([1.0, 2.0], abs=0.01)
    assert (ctx.stats.transport_errors, ctx.stats.server_errors, ctx.stats.retries) == (1, 1, 2)


def test_a_chunk_that_exhausts_its_attempts_becomes_a_failed_result() -> None:
    """After max_attempts retryable failures the chunk is failed, with the last error's text."""
    client = ScriptedClient({1: [ServerError("HTTP 503: busy")] * 5})
    ctx = context(client, max_attempts=3, base=0.1)

    result = run_virtual(lambda: send_chunk(chunk(1), ctx))
    assert result is not None and result.failed
    assert result.attempts == 3
    assert result.reason == "HTTP 503: busy"
    assert len(client.sent_at) == 3
    assert ctx.pacer.in_flight == 0


def test_rate_limit_answers_do_not_use_up_attempts() -> None:
    """Five 429s then a success, with max_attempts 2: succeeds; the 429s waited on the pacer."""
    client = ScriptedClient({1: [RateLimited("429", retry_after=None)] * 5})
    ctx = context(client, max_attempts=2)

    result = run_virtual(lambda: send_chunk(chunk(1), ctx))
    assert result is not None and result.verdict == OK and result.attempts == 6
    assert ctx.stats.rate_limited == 5
    assert ctx.pacer.decreases >= 1


def test_rate_limit_answers_are_capped_too() -> None:
    """A server that only ever says "too fast" fails the chunk after 10x max_attempts tries."""
    client = ScriptedClient({1: [RateLimited("Max limit exceeded")] * 100})
    ctx = context(client, max_attempts=2)

    result = run_virtual(lambda: send_chunk(chunk(1), ctx))
    assert result is not None and result.failed
    assert result.attempts == 2 * workers.RATE_LIMITED_ATTEMPTS_FACTOR
    assert "Max limit exceeded" in result.reason


def test_token_refusal_reports_the_generation_and_retries_at_once() -> None:
    """TokenRejected tells auth which token was refused, then retries without backoff."""
    client = ScriptedClient({1: [TokenRejected("Token Expired", generation=4)]})
    ctx = context(client, max_attempts=1, base=100.0)

    result = run_virtual(lambda: send_chunk(chunk(1), ctx))
    assert result is not None and result.verdict == OK and result.attempts == 2
    assert client.auth.rejected == [4]
    assert client.sent_at[1] - client.sent_at[0] < 1.0


def test_endless_token_refusals_stop_the_run() -> None:
    """A chunk whose every token is refused stops the run with AuthError (exit 3)."""
    client = ScriptedClient({1: [TokenRejected("Invalid Token", generation=1)] * 20})
    ctx = context(client)

    with pytest.raises(AuthError, match="refused 6 tokens"):
        run_virtual(lambda: send_chunk(chunk(1), ctx))
    assert ctx.pacer.in_flight == 0


def test_a_stop_during_backoff_returns_at_once() -> None:
    """Stopping while a chunk waits out a long backoff ends the wait: no result, no more tries."""
    client = ScriptedClient({1: [TransportError("reset")] * 5})
    ctx = context(client, base=1000.0, cap=1000.0)

    async def main() -> tuple[ChunkResult | None, float]:
        start = now()
        async with anyio.create_task_group() as group:
            result: list[ChunkResult | None] = []

            async def send() -> None:
                result.append(await send_chunk(chunk(1), ctx))

            group.start_soon(send)
            await anyio.sleep(0.5)
            ctx.stopping.set()
        return result[0], now() - start

    random.seed(3)  # the draw must be longer than 0.5 s for the stop to land in the wait
    result, elapsed = run_virtual(main)
    assert result is None
    assert elapsed == pytest.approx(0.5)
    assert len(client.sent_at) == 1


def _run_worker(ctx: WorkerContext, ids: list[int]) -> list[ChunkResult]:
    async def main() -> list[ChunkResult]:
        chunks_tx, chunks_rx = anyio.create_memory_object_stream[Chunk](10)
        results_tx, results_rx = anyio.create_memory_object_stream[ChunkResult](10)
        async with anyio.create_task_group() as group:
            group.start_soon(worker, chunks_rx, results_tx, ctx)
            async with chunks_tx:
                for chunk_id in ids:
                    await chunks_tx.send(chunk(chunk_id))
            async with results_rx:
                return [result async for result in results_rx]

    return run_virtual(main)


def test_the_run_goes_on_after_a_failed_chunk() -> None:
    """A worker passes a failed chunk on like any other and goes on to the next ones."""
    client = ScriptedClient({2: [ServerError("HTTP 500")] * 3})
    results = _run_worker(context(client, max_attempts=3, base=0.01), [1, 2, 3])
    assert [(result.chunk.id, result.failed) for result in results] == [
        (1, False),
        (2, True),
        (3, False),
    ]


def test_a_fatal_answer_stops_the_worker_naming_the_chunk() -> None:
    """Invalid group id is not retried: it propagates at once, carrying the chunk's id."""
    client = ScriptedClient({2: [InvalidGroupError("Invalid group id")]})
    ctx = context(client)
    with pytest.raises(BaseExceptionGroup) as caught:
        _run_worker(ctx, [1, 2, 3])
    [error] = caught.value.exceptions
    assert isinstance(error, InvalidGroupError)
    assert error.chunk_id == 2
    assert len(client.sent_at) == 2  # chunk 3 was never sent
    assert ctx.pacer.in_flight == 0


# -- timeouts, in real time -----------------------------------------------------------------


def _settings(base_url: str, tmp_path: Path, **overrides: Any) -> RunSettings:
    return RunSettings(
        inputs=InputSettings(paths=("numbers.csv",)),
        group_id=1,
        user="demo",
        api_key=Secret("demo-key"),
        checkpoint=tmp_path / "c.ckpt",
        base_url=base_url,
        **overrides,
    )


@pytest.mark.slow
async def test_a_hanging_server_never_hangs_the_chunk(tmp_path: Path) -> None:
    """Against a server that never answers, each attempt ends at --read-timeout; then failed."""
    config = MockConfig(fault_rate=1.0, fault_kinds=("hang",), hang_s=60)
    async with MockServer(config) as server:
        settings = _settings(server.url, tmp_path, read_timeout=0.3, max_attempts=2)
        async with OzonetelClient.open_session(settings) as session:
            pacer = Pacer(None)
            client = OzonetelClient(settings, session, pacer=pacer)
            ctx = WorkerContext(
                client=client,
                pacer=pacer,
                stats=LiveStats(),
                max_attempts=2,
                backoff_base=0.01,
                backoff_cap=0.01,
                write=str,
            )
            started = time.monotonic()
            result = await send_chunk(chunk(1), ctx)
            elapsed = time.monotonic() - started
    assert result is not None and result.failed and result.attempts == 2
    assert "--read-timeout" in result.reason
    assert elapsed < 3.0
    assert ctx.stats.transport_errors == 2
