"""An event loop whose clock jumps, and clients that drive a pacer against a simulated server.

:class:`VirtualTimeLoop` is aiolimiter's ``MockLoopTime`` idea taken to the whole loop: its clock
jumps to the next timer whenever nothing is ready, so an hour of pacing takes a second and is
exactly reproducible. :func:`drive` runs workers that take turns from a pacer and ask a server
(any ``admit() -> (admitted, retry_after)``) whether it admits each request.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from engine.pacing import Pacer

T = TypeVar("T")
START = 1000.0  # the loop's clock when it starts


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without blocking; when the loop would sleep, moves its clock forward instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if events:
            return events
        if timeout is None:
            raise RuntimeError("deadlock: every task waits and no timer is set")
        # At least a nanosecond a turn, as on a real clock: code that re-arms a timer for a time
        # float rounding makes "now" (aiolimiter does) must still see time pass.
        self._loop.now += max(timeout, 1e-9)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose time passes only when every task waits for a timer."""

    def __init__(self) -> None:
        self.now = START
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` to completion on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def now() -> float:
    return asyncio.get_running_loop().time()


@dataclass
class Traffic:
    """What the server saw: when it admitted and refused, and when the pacer let each go."""

    start: float
    admitted: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    departures: list[float] = field(default_factory=list)

    def admitted_between(self, start: float, end: float) -> int:
        """Admissions in [start, end) seconds after the start."""
        return sum(self.start + start <= at < self.start + end for at in self.admitted)

    def refused_between(self, start: float, end: float) -> int:
        return sum(self.start + start <= at < self.start + end for at in self.refused)


async def drive(
    pacer: Pacer,
    admit: Callable[[], tuple[bool, float | None]],
    seconds: float,
    *,
    workers: int = 16,
    round_trip: float = 0.002,
) -> Traffic:
    """``workers`` clients send through ``pacer`` for ``seconds``; the server decides mid-way."""
    traffic = Traffic(now())
    end = traffic.start + seconds

    async def client() -> None:
        while now() < end:
            ticket = await pacer.acquire()
            assert ticket is not None
            if ticket >= end:
                pacer.on_other(ticket)  # past the end: not sent
                return
            traffic.departures.append(ticket)
            await anyio.sleep(round_trip / 2)
            admitted, retry_after = admit()
            (traffic.admitted if admitted else traffic.refused).append(now())
            await anyio.sleep(round_trip / 2)
            if admitted:
                pacer.on_success(ticket)
            else:
                pacer.on_rate_limited(ticket, retry_after)

    async with anyio.create_task_group() as group:
        for _ in range(workers):
            group.start_soon(client)
    return traffic
