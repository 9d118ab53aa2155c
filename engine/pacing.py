"""How fast: one pacer shared by every worker (how many at once is the workers' business).

The pacer is an ``aiolimiter`` leaky bucket of capacity one, so requests leave evenly spaced with
no burst at start-up; a strict server that counts requests over a sliding second never sees more
than the rate. ``--rate`` is a ceiling, and the pacer adapts below it (AIMD):

* on a rate-limit answer it drops at once to a little under what the server was admitting over the
  last second (or halves, if nothing was admitted), at most once per second so that one burst of
  refusals counts once, and it pauses every worker for the server's ``Retry-After``;
* while nothing is refused it climbs back: quickly up to 90 % of the rate where it was last
  refused, then slowly, so that it probes the limit rarely.

``--rate auto`` has no ceiling: it starts low and grows 25 % a second until the first refusal.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import anyio
from aiolimiter import AsyncLimiter

# Send at 99 % of the set rate: a request delayed by the network must not make R + 1 requests
# land within one second of a strict server's window.
SAFETY = 0.99
FLOOR = 0.05  # requests/s; never stop altogether
AUTO_START = 5.0
AUTO_GROWTH = 1.25
BACKOFF_TO_OBSERVED = 0.95
PLATEAU = 0.9
FAST_STEP = 0.05  # of the ceiling, per second, below the plateau
SLOW_STEP = 0.005  # of the last refused rate, per second, above it
DECREASE_COOLDOWN = 1.0
MAX_PAUSE = 120.0


class AdjustableLimiter(AsyncLimiter):
    """An aiolimiter bucket whose rate can change while tasks wait on it.

    aiolimiter fixes the rate at construction; replacing the limiter would forget when the last
    request left and let two leave back to back. So the bucket is drained at the old rate up to
    now, then the rate changes and the next waiter's wake-up is rescheduled. This touches two
    private names of aiolimiter 1.x (pinned below 2); ``tests/test_pacing.py`` checks the spacing
    a change produces, so an aiolimiter that renamed them would fail the tests, not the users.
    """

    __slots__ = ()

    def __init__(self, rate: float) -> None:
        super().__init__(1, 1.0 / rate)

    def set_rate(self, rate: float) -> None:
        self._leak()
        self.time_period = 1.0 / rate
        self._rate_per_sec = rate
        self._wake_next()


class Pacer:
    """Shared by all workers; every request first awaits :meth:`acquire`."""

    def __init__(
        self,
        ceiling: float | None,
        *,
        auto: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = ceiling
        self.auto = auto
        self._clock = clock
        self.rate: float | None = AUTO_START if auto else ceiling
        self._limiter = self._make_limiter()
        self._pause_until = 0.0
        self._last_decrease = -1e9
        self._last_increase = clock()
        self._refused_at: float | None = None
        self._admitted: deque[float] = deque()
        self.forced_down = False
        self.decreases = 0

    def _make_limiter(self) -> AdjustableLimiter | None:
        return None if self.rate is None else AdjustableLimiter(self.rate * SAFETY)

    async def acquire(self) -> None:
        while True:
            await self._wait_pause()
            if self._limiter is None:
                return
            await self._limiter.acquire()
            # A pause may have begun while this request waited in line.
            if self._clock() >= self._pause_until:
                return

    async def _wait_pause(self) -> None:
        # The pause can be extended while sleeping (another Retry-After), hence the loop.
        while (delay := self._pause_until - self._clock()) > 0:  # noqa: ASYNC110
            await anyio.sleep(delay)

    def on_success(self) -> None:
        now = self._clock()
        self._admitted.append(now)
        while self._admitted and now - self._admitted[0] > 1.0:
            self._admitted.popleft()
        if self.rate is not None and now - self._last_increase >= 1.0:
            self._increase(now)

    def on_rate_limited(self, retry_after: float | None) -> None:
        now = self._clock()
        if retry_after:
            self._pause_until = max(self._pause_until, now + min(retry_after, MAX_PAUSE))
        self.forced_down = True
        if now - self._last_decrease < DECREASE_COOLDOWN:
            return
        while self._admitted and now - self._admitted[0] > 1.0:
            self._admitted.popleft()
        observed = float(len(self._admitted))
        current = self.rate if self.rate is not None else max(observed, 1.0) * 2
        target = observed * BACKOFF_TO_OBSERVED if observed else current / 2
        self._refused_at = max(observed, FLOOR)
        self._set_rate(max(FLOOR, min(current * BACKOFF_TO_OBSERVED, target)))
        self._last_decrease = self._last_increase = now
        self.decreases += 1

    def _increase(self, now: float) -> None:
        assert self.rate is not None
        seconds = now - self._last_increase
        self._last_increase = now
        if self._refused_at is None:
            if not self.auto:
                return  # at the ceiling, where it started
            new = self.rate * AUTO_GROWTH**seconds
        elif self.rate < self._refused_at * PLATEAU:
            new = self.rate + FAST_STEP * (self.ceiling or self._refused_at) * seconds
        else:
            new = self.rate + SLOW_STEP * self._refused_at * seconds
        if self.ceiling is not None:
            new = min(new, self.ceiling)
            if new >= self.ceiling:
                self.forced_down = False
        if new != self.rate:
            self._set_rate(new)

    def _set_rate(self, rate: float) -> None:
        self.rate = rate
        if self._limiter is None:
            self._limiter = AdjustableLimiter(rate * SAFETY)
        else:
            self._limiter.set_rate(rate * SAFETY)
