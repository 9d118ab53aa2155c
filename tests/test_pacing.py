"""The pacer: even spacing, the sliding-window guard, AIMD, Retry-After, and the rate targets.

Most tests run on :class:`VirtualTimeLoop`, an asyncio loop whose clock jumps to the next timer
whenever nothing is ready (aiolimiter's ``MockLoopTime`` idea, taken to the whole loop): a minute
of pacing takes milliseconds and is exactly reproducible. The ``slow`` tests check the same
promises in real time, and the targets of issue 4 against the real CLI and the fake API.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from engine import bucket, pacing
from engine.bucket import AdjustableLimiter
from engine.mock import ThreadedMockServer
from engine.pacing import SAFETY, Pacer
from tests._helpers import cli_env, delete_args, ozbulk_command
from tests.virtual_time import now, run_virtual

T = TypeVar("T")


# -- the bucket -----------------------------------------------------------------------------


def test_limiter_spaces_requests_evenly_at_its_rate() -> None:
    """At 10/s, sequential acquisitions leave 0.1 s apart (the first two a catch-up closer)."""

    async def main() -> list[float]:
        limiter = AdjustableLimiter(10)
        times = []
        for _ in range(8):
            await limiter.acquire()
            times.append(now())
        return times

    times = run_virtual(main)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] == pytest.approx((1 - bucket.CATCH_UP_S * 10) / 10)
    assert gaps[1:] == pytest.approx([0.1] * 6)


def test_set_rate_reschedules_the_request_already_waiting() -> None:
    """A faster rate brings the waiting request forward; a slower one pushes it back."""

    async def departure_after_change(new_rate: float) -> float:
        limiter = AdjustableLimiter(10)
        await limiter.acquire()
        await limiter.acquire()
        start = now()
        async with anyio.create_task_group() as group:
            done: list[float] = []

            async def wait() -> None:
                await limiter.acquire()
                done.append(now())

            group.start_soon(wait)
            await anyio.sleep(0.02)
            limiter.set_rate(new_rate)
        return done[0] - start

    faster = run_virtual(lambda: departure_after_change(20))
    slower = run_virtual(lambda: departure_after_change(5))
    # 0.02 s at 10/s drained 0.2 of the 1.1 in the bucket; the other 0.9 drain at the new rate,
    # less the new rate's catch-up allowance.
    assert faster == pytest.approx(0.02 + 0.9 / 20 - bucket.CATCH_UP_S, abs=1e-6)
    assert slower == pytest.approx(0.02 + 0.9 / 5 - bucket.CATCH_UP_S, abs=1e-6)


# -- a strict sliding-window server, simulated -----------------------------------------------


@dataclass
class StrictServer:
    """Admits at most ``limit`` requests in any sliding second, like the fake API's window."""

    limit: int
    retry_after: float | None = None
    window: deque[float] = field(default_factory=deque)
    admitted: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)

    def admit(self, at: float) -> bool:
        while self.window and self.window[0] <= at - 1.0:
            self.window.popleft()
        if len(self.window) >= self.limit:
            self.refused.append(at)
            return False
        self.window.append(at)
        self.admitted.append(at)
        return True

    def rate_between(self, start: float, end: float) -> float:
        return sum(start <= at < end for at in self.admitted) / (end - start)


@dataclass
class Network:
    """Delays of a simulated request; ``stall`` of the forward ones are long (a busy server)."""

    forward: float = 0.001
    back: float = 0.001
    stall_share: float = 0.0
    stall: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(4))

    def forward_delay(self) -> float:
        if self.stall_share and self.rng.random() < self.stall_share:
            return self.forward + self.rng.uniform(0, self.stall)
        return self.forward


async def simulate(
    pacer: Pacer,
    server: StrictServer,
    seconds: float,
    *,
    workers: int = 16,
    network: Network | None = None,
    departures: list[float] | None = None,
) -> float:
    """Drive ``workers`` clients through ``pacer`` against ``server``; return the start time."""
    network = network or Network()
    start = now()

    async def client() -> None:
        while now() - start < seconds:
            ticket = await pacer.acquire()
            assert ticket is not None
            if departures is not None:
                departures.append(ticket)
            await anyio.sleep(network.forward_delay())
            admitted = server.admit(now())
            await anyio.sleep(network.back)
            if admitted:
                pacer.on_success(ticket)
            else:
                pacer.on_rate_limited(ticket, server.retry_after)

    async with anyio.create_task_group() as group:
        for _ in range(workers):
            group.start_soon(client)
    return start


def test_no_start_up_burst() -> None:
    """Sixteen workers starting at once leave evenly spaced: at most 6 in the first 0.1 s."""
    departures: list[float] = []

    async def main() -> float:
        return await simulate(Pacer(50), StrictServer(1000), 2.0, departures=departures)

    start = run_virtual(main)
    first = sorted(departures)[:10]
    assert sum(at < start + 0.1 for at in departures) <= 6
    gaps = [b - a for a, b in itertools.pairwise(first)]
    sending = 50 * SAFETY
    catch_up = min(bucket.CATCH_UP_MAX, bucket.CATCH_UP_S * sending)
    assert min(gaps) >= (1 - catch_up) / sending - 1e-9
    assert sum(gaps[1:]) / len(gaps[1:]) == pytest.approx(1 / sending)


def test_at_the_servers_rate_nothing_is_refused_despite_stalls() -> None:
    """--rate R against a strict R/s window: 0 refusals although 5 % of requests stall ≤ 150 ms."""
    server = StrictServer(50)
    network = Network(stall_share=0.05, stall=0.15)

    async def main() -> float:
        return await simulate(Pacer(50), server, 60.0, network=network)

    start = run_virtual(main)
    assert server.refused == []
    assert server.rate_between(start + 5, start + 60) >= 0.9 * 50


def test_without_the_guard_the_same_stalls_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard is what prevents those refusals: even spacing alone lets stalled ones bunch."""
    monkeypatch.setattr(Pacer, "_guard_wait", lambda self, at: 0.0)
    server = StrictServer(50)
    network = Network(stall_share=0.05, stall=0.15)

    async def main() -> float:
        return await simulate(Pacer(50), server, 60.0, network=network)

    run_virtual(main)
    assert server.refused != []


def test_a_rate_limit_drops_the_rate_to_what_the_server_admitted() -> None:
    """At twice the server's rate, one pause learns R: the rate is R once the server admits."""
    server = StrictServer(50, retry_after=None)
    pacer = Pacer(100)

    async def main() -> None:
        await simulate(pacer, server, 3.0)

    run_virtual(main)
    assert pacer.decreases == 1
    assert pacer.limit_estimate is not None
    assert 45 <= pacer.limit_estimate <= 50
    assert len(server.refused) <= 2


def test_retry_after_pauses_every_worker() -> None:
    """After a refusal with Retry-After: 2, no worker sends anything for 2 s."""
    server = StrictServer(50, retry_after=2.0)
    departures: list[float] = []

    async def main() -> None:
        await simulate(Pacer(100), server, 6.0, departures=departures)

    run_virtual(main)
    first_refusal = server.refused[0]
    during = [at for at in departures if first_refusal + 0.01 < at < first_refusal + 2.0]
    assert during == []
    assert any(at >= first_refusal + 2.0 for at in departures)


def test_holds_the_learned_limit_then_probes_above_it_rarely() -> None:
    """After learning R, the pace holds at R for HOLD_S, then one probe above costs one refusal."""
    pacer = Pacer(100)
    server = StrictServer(50)
    watched: list[tuple[float, float]] = []

    async def main() -> float:
        start = now()
        async with anyio.create_task_group() as group:
            group.start_soon(simulate, pacer, server, 75.0)
            while now() - start < 75.0:
                assert pacer.rate is not None
                watched.append((now(), pacer.rate))
                await anyio.sleep(0.1)
        return start

    run_virtual(main)
    refused_at = server.refused[0]
    held = [rate for at, rate in watched if refused_at + 1.5 <= at < refused_at + pacing.HOLD_S]
    assert held == pytest.approx([50.0] * len(held))  # the learned quota per second
    later = [at for at in server.refused if at > refused_at + 1.5]
    # One refusal per upward probe, the first after the hold: none before it.
    assert later and min(later) >= refused_at + pacing.HOLD_S
    assert len(later) <= 75 // pacing.HOLD_S
    assert pacer.limit is not None and pacer.limit.quota == 50


def test_aimd_against_twice_the_servers_rate_keeps_refusals_rare_and_rate_high() -> None:
    """--rate 2R with Retry-After: ≤ 2 % refused and ≥ 0.9 R achieved after the first 10 s."""
    server = StrictServer(50, retry_after=1.0)

    async def main() -> float:
        return await simulate(
            Pacer(100), server, 60.0, network=Network(stall_share=0.02, stall=0.1)
        )

    start = run_virtual(main)
    requests = len(server.admitted) + len(server.refused)
    assert len(server.refused) <= 0.02 * requests
    assert server.rate_between(start + 10, start + 60) >= 0.9 * 50


def test_auto_finds_the_servers_rate() -> None:
    """--rate auto starts low, grows, and settles within 0.6-1.0 R of a strict server."""
    server = StrictServer(50, retry_after=1.0)
    pacer = Pacer(None, auto=True)

    async def main() -> float:
        return await simulate(pacer, server, 40.0)

    start = run_virtual(main)
    assert server.admitted[0] - start < 0.5  # it starts at once, slowly
    assert server.rate_between(start, start + 1) <= pacing.AUTO_START + 1
    assert 0.6 * 50 <= server.rate_between(start + 25, start + 40) <= 50
    assert pacer.limit_estimate is not None and 0.6 * 50 <= pacer.limit_estimate <= 50


def test_rate_at_most_one_per_second_sends_one_at_a_time() -> None:
    """Below 1/s the guard allows one request in the window: never two in flight."""
    pacer = Pacer(0.5)
    most_in_flight = 0

    async def main() -> None:
        nonlocal most_in_flight

        async def client() -> None:
            nonlocal most_in_flight
            for _ in range(3):
                ticket = await pacer.acquire()
                assert ticket is not None
                most_in_flight = max(most_in_flight, pacer.in_flight)
                await anyio.sleep(2.5)  # slower than the spacing: the guard must wait for it
                pacer.on_success(ticket)

        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(client)

    run_virtual(main)
    assert most_in_flight == 1


def test_a_request_that_hangs_holds_its_place_only_so_long() -> None:
    """An unanswered request stops blocking the window MAX_SERVER_DELAY + 1 s after it left."""
    pacer = Pacer(1)

    async def main() -> float:
        hung = await pacer.acquire()
        assert hung is not None  # never answered (until a read timeout, much later)
        second = await pacer.acquire()
        assert second is not None
        return second - hung

    waited = run_virtual(main)
    assert waited == pytest.approx(pacing.MAX_SERVER_DELAY + 1.0 + pacing.GUARD_SLACK_S)


def test_a_stop_ends_a_long_wait_at_once() -> None:
    """A worker waiting out a 100 s Retry-After returns None as soon as the run stops."""
    pacer = Pacer(10)

    async def main() -> tuple[float | None, float]:
        stopping = anyio.Event()
        pacer.on_rate_limited(pacer.unpaced(), 100.0)
        start = now()
        async with anyio.create_task_group() as group:
            result: list[float | None] = []

            async def wait() -> None:
                result.append(await pacer.acquire(stopping))

            group.start_soon(wait)
            await anyio.sleep(1.0)
            stopping.set()
        return result[0], now() - start

    ticket, waited = run_virtual(main)
    assert ticket is None
    assert waited == pytest.approx(1.0)
    assert pacer.in_flight == 0


def test_unpaced_requests_count_in_the_window() -> None:
    """A token request sent without waiting still takes a place the next request waits for."""
    pacer = Pacer(1)

    async def main() -> float:
        pacer.on_other(pacer.unpaced())  # answered at t0: in the window until t0 + 1 s
        start = now()
        ticket = await pacer.acquire()
        assert ticket is not None
        return ticket - start

    waited = run_virtual(main)
    assert waited == pytest.approx(1.0 + pacing.GUARD_SLACK_S, abs=1e-6)


def test_a_ceiling_must_be_positive() -> None:
    """A zero or infinite ceiling is refused with a message that names the problem."""
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="ceiling must be > 0"):
            Pacer(bad)


# -- real time --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_real_time_set_rate_spacing() -> None:
    """In real time, a bucket at 20/s then 40/s spaces acquisitions 50 ms then 25 ms apart."""
    limiter = AdjustableLimiter(20)
    loop = asyncio.get_running_loop()
    times = []
    for count in range(30):
        if count == 15:
            limiter.set_rate(40)
        await limiter.acquire()
        times.append(loop.time())
    slow = (times[14] - times[1]) / 13
    fast = (times[29] - times[16]) / 13
    assert slow == pytest.approx(0.05, rel=0.15)
    assert fast == pytest.approx(0.025, rel=0.15)


@pytest.mark.slow
async def test_real_time_no_burst_drop_pause_and_climb() -> None:
    """In real time: no start-up burst; a refusal drops the rate, pauses all, and it climbs back."""
    server = StrictServer(40, retry_after=1.0)
    departures: list[float] = []
    pacer = Pacer(80)
    start = await simulate(pacer, server, 6.0, departures=departures)
    assert sum(at < start + 0.1 for at in departures) <= 10  # 80/s: 8 in 0.1 s, no burst
    first_refusal = server.refused[0]
    assert not [at for at in departures if first_refusal + 0.05 < at < first_refusal + 0.95]
    assert pacer.limit_estimate is not None and 30 <= pacer.limit_estimate <= 40
    assert pacer.rate == pytest.approx(pacer.limit_estimate, rel=0.05)  # climbed back
    assert len(server.refused) <= 3


# -- the targets, against the real CLI and the fake API ---------------------------------------

LIMIT = 50


@dataclass
class RateRun:
    """Samples of the fake API's counters taken while the CLI ran: (seconds, requests, refused)."""

    samples: list[tuple[float, int, int]]
    returncode: int | None

    def admitted_rate(self, start: float, end: float) -> float:
        first = next(s for s in self.samples if s[0] >= start)
        last = [s for s in self.samples if s[0] <= end][-1]
        admitted = (last[1] - last[2]) - (first[1] - first[2])
        return admitted / (last[0] - first[0])

    @property
    def requests(self) -> int:
        return self.samples[-1][1]

    @property
    def refused(self) -> int:
        return self.samples[-1][2]


def run_against_limit(
    fake_api: Callable[..., ThreadedMockServer],
    sample_csv: Callable[..., Path],
    rate: str,
    seconds: float,
    style: str = "http",
    limit: int = LIMIT,
) -> RateRun:
    """Run the CLI at ``--rate rate`` against a server limited to limit/s; stop it after a while."""
    server = fake_api(rate_limit=limit, rate_limit_style=style)
    # Ten numbers a request: requests are what is paced, and small chunks keep the input small.
    source = sample_csv(int(1.6 * limit * seconds * 10))
    # The group is empty: only the pace is measured here, so the not-found guard stands aside.
    args = delete_args(server, source, rate=rate, concurrency=16, batch_size=10,
                       allow_not_found=True)  # fmt: skip
    process = subprocess.Popen(
        ozbulk_command(*args),
        cwd=source.parent,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples = []
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds and process.poll() is None:
            stats = server.stats()
            samples.append((elapsed, stats["delete_requests"], stats["rate_limited"]))
            time.sleep(0.25)
    finally:
        process.terminate()
        process.wait(timeout=30)
    stats = server.stats()
    samples.append((time.monotonic() - started, stats["delete_requests"], stats["rate_limited"]))
    return RateRun(samples, process.returncode)


@pytest.mark.slow
def test_cli_at_the_servers_rate_is_never_refused(fake_api, sample_csv) -> None:
    """--rate R against a strict R/s server (HTTP 429 style): zero rate-limit answers."""
    run = run_against_limit(fake_api, sample_csv, str(LIMIT), 11.0)
    assert run.requests > 8 * LIMIT * 0.8, run.samples[-3:]
    assert run.refused == 0
    assert run.admitted_rate(3, 11) >= 0.85 * LIMIT


@pytest.mark.slow
def test_cli_at_twice_the_servers_rate_adapts(fake_api, sample_csv) -> None:
    """--rate 2R: ≤ 2 % rate-limited, ≥ 0.9 R admitted after the first 10 s."""
    run = run_against_limit(fake_api, sample_csv, str(2 * LIMIT), 21.0)
    assert run.refused <= 0.02 * run.requests, run.samples
    assert run.admitted_rate(10, 21) >= 0.9 * LIMIT, run.samples


@pytest.mark.slow
def test_cli_auto_rate_finds_the_servers_rate(fake_api, sample_csv) -> None:
    """--rate auto against a strict 30/s server answering in the body: settles in 0.6-1.0 R."""
    run = run_against_limit(fake_api, sample_csv, "auto", 15.0, style="body", limit=30)
    assert 0.6 * 30 <= run.admitted_rate(10, 15) <= 30, run.samples
    assert run.refused <= 0.05 * run.requests, run.samples


def test_a_long_pause_is_honoured_and_logged_with_its_reason_and_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Retry-After of a day is waited out whole, and the log says why and until when."""
    pacer = Pacer(10)

    async def main() -> float:
        pacer.on_rate_limited(pacer.unpaced(), 86_400.0)
        start = now()
        ticket = await pacer.acquire()
        assert ticket is not None
        return ticket - start

    with caplog.at_level(logging.INFO, logger="engine.pacing"):
        waited = run_virtual(main)
    assert waited == pytest.approx(86_400.0, abs=0.1)
    assert "server limit reached, Retry-After 24 h 00 min: waiting until" in caplog.text
    assert "(about 24 h 00 min)" in caplog.text


def test_the_pacer_s_default_clock_is_the_event_loop_s_as_anyio_reads_it() -> None:
    """loop_time (read twice a request) is anyio.current_time without the backend lookup: the
    same value on a loop whose clock jumps, before and after time passes; none outside a loop."""
    from engine.pacing import loop_time

    async def main() -> list[tuple[float, float]]:
        readings = [(loop_time(), anyio.current_time())]
        await anyio.sleep(12.5)
        readings.append((loop_time(), anyio.current_time()))
        return readings

    (before, anyio_before), (after, anyio_after) = run_virtual(main)
    assert (before, after) == (anyio_before, anyio_after)
    assert after - before == pytest.approx(12.5, abs=1e-6)
    assert Pacer(None)._clock is loop_time
    with pytest.raises(Exception) as outside:  # anyio's own error, whatever it is
        anyio.current_time()
    with pytest.raises(type(outside.value)):
        loop_time()
