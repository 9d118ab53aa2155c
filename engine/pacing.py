"""How fast: one pacer shared by every worker (how many at once is the workers' business).

Two things decide when a request may leave:

* an ``aiolimiter`` leaky bucket, so requests leave evenly spaced at ``SAFETY`` times the pacer's
  *rate*, with no burst at start-up;
* a sliding-window guard: at most ``ceil(rate)`` requests in any ``ceil(rate) / rate`` seconds
  (``rate`` in one second, for a whole rate), counting each request from when it left until its
  *answer* came back plus that window. A server can only have counted a request before answering
  it, so a request delayed on the way (a busy network, a server that stalled and then handled a
  backlog at once) keeps its place in the window until it is answered: a strict sliding-window
  server set to the rate never refuses, whatever the delays. The delay every answer has (the
  fastest round trip seen lately) is taken off, so a distant server does not cost throughput,
  and a request still unanswered ``MAX_SERVER_DELAY`` after it left is taken to have been
  counted by then, so one that hangs until its read timeout does not hold its place meanwhile.

``--rate`` is a ceiling, and the rate adapts below it:

* on a rate-limit answer it takes what the server admitted over the last second as its estimate of
  the server's limit and drops at once to a little under it (or halves, if nothing was admitted);
  a burst of refusals counts once, and the server's ``Retry-After`` pauses every worker;
* while nothing is refused it climbs back: quickly to the estimate, then holds there for a while
  (each probe above a strict server's limit costs a refusal and a ``Retry-After`` pause), then
  probes upward slowly, in case the limit has risen.

``--rate auto`` has no ceiling: it starts low and grows 25 % a second until the first refusal.

Every request that :meth:`Pacer.acquire` let go must be reported back once, with its ticket:
:meth:`~Pacer.on_success`, :meth:`~Pacer.on_rate_limited` or :meth:`~Pacer.on_other`. Times come
from the event loop's clock (``anyio.current_time``), the clock ``aiolimiter`` and ``anyio.sleep``
use too, so tests can run the pacer on a loop whose time is virtual.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable

import anyio
from aiolimiter import AsyncLimiter

# The bucket lets requests leave at 98 % of the rate, so that the smooth bucket, not the guard,
# is what normally spaces them; the guard only steps in when answers come back late.
SAFETY = 0.98
# A request that leaves late (the event loop was busy) may be made up by the next leaving early,
# by at most this much: without it a busy loop loses every delay for good and the achieved rate
# sags to 80 % of the set one.
CATCH_UP_S = 0.01
CATCH_UP_MAX = 0.5  # of one spacing: the bucket never lets two requests leave back to back
GUARD_SLACK_S = 0.002  # the guard's window is this much longer than the server's
MAX_SERVER_DELAY = 1.0  # an unanswered request is taken to have been counted by then
RTT_SAMPLES = 200  # the fastest round trip among this many recent answers
FLOOR = 0.05  # requests/s; never stop altogether
AUTO_START = 5.0
AUTO_GROWTH = 1.25  # per second, until the first refusal
BACKOFF_TO_OBSERVED = 0.97  # of the rate the server admitted when it refused
FAST_STEP = 0.05  # of the estimate, per second, back up to the estimate
HOLD_S = 30.0  # at the estimate before probing above it
PROBE_STEP = 0.005  # of the estimate, per second, above it
DECREASE_COOLDOWN = 1.0  # seconds: refusals of one burst count once
INCREASE_EVERY = 0.5  # seconds between two rate increases
MAX_PAUSE = 120.0  # the longest Retry-After honoured as given


class AdjustableLimiter(AsyncLimiter):
    """An aiolimiter bucket whose rate can change while tasks wait on it.

    aiolimiter fixes the rate at construction; replacing the limiter would forget when the last
    request left and let two leave back to back. So the bucket is drained at the old rate up to
    now, then the rate changes and the next waiter's wake-up is rescheduled. This touches private
    names of aiolimiter 1.x (pinned below 2); ``tests/test_pacing.py`` checks the spacing a change
    produces, so an aiolimiter that renamed them would fail the tests, not the users.

    The bucket holds one request plus a small catch-up allowance (``CATCH_UP_S`` worth of the
    rate, at most half a request): a request may leave that much early to make up for the one
    before it having left late.
    """

    __slots__ = ()

    def __init__(self, rate: float) -> None:
        capacity = self._capacity(rate)
        super().__init__(capacity, capacity / rate)

    @staticmethod
    def _capacity(rate: float) -> float:
        return 1.0 + min(CATCH_UP_MAX, CATCH_UP_S * rate)

    @property
    def rate(self) -> float:
        """Requests per second this bucket lets through."""
        return self._rate_per_sec

    def set_rate(self, rate: float) -> None:
        self._leak()
        capacity = self._capacity(rate)
        self.max_rate = capacity
        self.time_period = capacity / rate
        self._rate_per_sec = rate
        self._wake_next()


class Pacer:
    """Shared by all workers; every request first awaits :meth:`acquire`.

    ``rate`` is what the pacer believes the server allows (at most ``ceiling``; None: no limit).
    ``limit_estimate`` is what the server admitted over the second before its last refusal, None
    until one.
    """

    def __init__(
        self,
        ceiling: float | None,
        *,
        auto: bool = False,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        if ceiling is not None and not (ceiling > 0 and math.isfinite(ceiling)):
            raise ValueError(f"the pacer's ceiling must be > 0 requests/s (got {ceiling})")
        self.ceiling = ceiling
        self.auto = auto
        self._clock = clock
        start = min(AUTO_START, ceiling) if auto and ceiling is not None else AUTO_START
        self.rate: float | None = start if auto else ceiling
        self.limit_estimate: float | None = None
        self._limiter = None if self.rate is None else AdjustableLimiter(self.rate * SAFETY)
        self._pause_until = -math.inf
        self._last_decrease = -math.inf
        self._last_increase: float | None = None  # set by the first success
        self._admitted: deque[float] = deque()  # successes over the last second
        self._answered: deque[float] = deque()  # answers that may still be in the server's window
        self._departures: list[float] = []  # tickets of the requests in flight, oldest first
        self._round_trips: deque[float] = deque(maxlen=RTT_SAMPLES)
        self._fastest_round_trip = 0.0
        self._answer_arrived: anyio.Event | None = None
        self.forced_down = False
        self.decreases = 0
        self.pauses = 0

    @property
    def sending_rate(self) -> float | None:
        """Requests per second the bucket lets through now (None: no limit)."""
        return None if self._limiter is None else self._limiter.rate

    @property
    def in_flight(self) -> int:
        """Requests let through and not yet reported back."""
        return len(self._departures)

    @property
    def paused_for(self) -> float:
        """Seconds left of the current Retry-After pause (0 when none)."""
        return max(0.0, self._pause_until - self._clock())

    # -- before a request -------------------------------------------------------------------

    async def acquire(self, stopping: anyio.Event | None = None) -> float | None:
        """Wait for a request's turn; its ticket, or None (at once) if ``stopping`` is set."""
        if stopping is not None and stopping.is_set():
            return None
        limiter = self._limiter
        now = self._clock()
        if (
            now >= self._pause_until
            and (limiter is None or limiter.has_capacity())
            and self._guard_wait(now) == 0.0
        ):
            self._departures.append(now)
            if limiter is not None:
                await limiter.acquire()  # has capacity: takes it without waiting
            return now
        if stopping is None:
            return await self._wait_turn()
        # Waiting may take long (a Retry-After pause, a slow rate): a graceful stop must not.
        ticket: float | None = None
        async with anyio.create_task_group() as group:

            async def stop_waiting() -> None:
                await stopping.wait()
                group.cancel_scope.cancel()

            group.start_soon(stop_waiting)
            ticket = await self._wait_turn()  # cancelled by a stop, it holds nothing
            group.cancel_scope.cancel()
        if ticket is not None and stopping.is_set():
            self._release(ticket)  # let through just as the run began stopping
            return None
        return ticket

    def unpaced(self) -> float:
        """A ticket for a request that must not wait its turn (the token a request waits for).

        It still counts in the guard's window, so the requests after it make room for it.
        """
        ticket = self._clock()
        self._departures.append(ticket)
        return ticket

    async def _wait_turn(self) -> float:
        """Return a ticket once a request may leave; cancelled, it holds nothing."""
        while True:
            # The pause can be extended while sleeping (another Retry-After), hence the loop.
            while (delay := self._pause_until - self._clock()) > 0:  # noqa: ASYNC110
                await anyio.sleep(delay)
            if self._limiter is not None:
                await self._limiter.acquire()
            # The guard is checked last and its place taken with no await in between, so the
            # requests that queued behind it cannot all slip through when room appears.
            while (wait := self._guard_wait(self._clock())) > 0:
                # Room appears when the oldest entry leaves the window, or sooner if a request
                # in flight is answered (it then counts from its answer, not from "maybe now").
                if self._answer_arrived is None:
                    self._answer_arrived = anyio.Event()
                with anyio.move_on_after(wait):
                    await self._answer_arrived.wait()
            # A pause may have begun while this request waited in line.
            now = self._clock()
            if now >= self._pause_until:
                self._departures.append(now)
                return now

    def _release(self, ticket: float) -> None:
        self._departures.remove(ticket)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        if self._answer_arrived is not None:
            self._answer_arrived.set()
            self._answer_arrived = None

    def _guard_wait(self, now: float) -> float:
        """Seconds until the window has room for one more request (0: room now)."""
        rate = self.rate
        if rate is None:
            return 0.0
        allowed = math.ceil(rate - 1e-9)
        window = allowed / rate + GUARD_SLACK_S
        # An answer stays in the window until `window` after the server may have counted it:
        # when it arrived, less the round trip every answer takes.
        horizon = now - window + self._fastest_round_trip
        answered = self._answered
        while answered and answered[0] <= horizon:
            answered.popleft()
        # A request still in flight may be counted any moment, but not later than
        # MAX_SERVER_DELAY after it left: one that hangs must not hold its place until timeout.
        in_flight = [
            departed for departed in self._departures if departed > now - window - MAX_SERVER_DELAY
        ]
        excess = len(in_flight) + len(answered) - allowed
        if excess < 0:
            return 0.0
        leaving = heapq.merge(
            (answer - self._fastest_round_trip + window for answer in answered),
            (departed + MAX_SERVER_DELAY + window for departed in in_flight),
        )
        return max(next(itertools.islice(leaving, excess, None)) - now, 1e-6)

    # -- after a request --------------------------------------------------------------------

    def on_success(self, ticket: float) -> None:
        """The request was admitted and answered: count it, and climb back if it is time to."""
        now = self._answer(ticket, counted=True)
        self._note_round_trip(now - ticket)
        admitted = self._admitted
        admitted.append(now)
        while now - admitted[0] > 1.0:
            admitted.popleft()
        if self._last_increase is None:
            self._last_increase = now
        elif self.rate is not None and now - self._last_increase >= INCREASE_EVERY:
            self._increase(now)

    def on_other(self, ticket: float) -> None:
        """Any other outcome (an error answer, no answer): the server may have counted it."""
        self._answer(ticket, counted=True)

    def on_rate_limited(self, ticket: float, retry_after: float | None) -> None:
        """The server refused the request as too fast: pause everyone, slow down once a burst."""
        now = self._answer(ticket, counted=False)
        if retry_after:
            self.pauses += 1
            self._pause_until = max(self._pause_until, now + min(retry_after, MAX_PAUSE))
        self.forced_down = True
        if now - self._last_decrease < DECREASE_COOLDOWN:
            return
        admitted = self._admitted
        while admitted and now - admitted[0] > 1.0:
            admitted.popleft()
        # A strict server refuses exactly when its window is full, so what it admitted over the
        # last second is its limit, give or take the requests whose answers are still on the way.
        observed = float(len(admitted))
        if observed:
            self.limit_estimate = observed
            target = min(self.rate or math.inf, observed) * BACKOFF_TO_OBSERVED
        else:
            # Refused with nothing admitted lately: halve, or (no limit until now) start where
            # --rate auto starts.
            target = self.rate / 2 if self.rate is not None else AUTO_START
            self.limit_estimate = max(target, FLOOR)
        self._set_rate(max(FLOOR, target))
        self._last_decrease = self._last_increase = now
        self.decreases += 1

    def _note_round_trip(self, round_trip: float) -> None:
        trips = self._round_trips
        evicted = trips[0] if len(trips) == trips.maxlen else None
        trips.append(round_trip)
        if evicted is not None and evicted <= self._fastest_round_trip:
            self._fastest_round_trip = min(trips)
        elif len(trips) == 1 or round_trip < self._fastest_round_trip:
            self._fastest_round_trip = round_trip

    def _answer(self, ticket: float, *, counted: bool) -> float:
        now = self._clock()
        self._departures.remove(ticket)
        if counted and self.rate is not None:
            self._answered.append(now)
        self._wake_waiters()
        return now

    def _increase(self, now: float) -> None:
        assert self.rate is not None and self._last_increase is not None
        seconds = now - self._last_increase
        self._last_increase = now
        estimate = self.limit_estimate
        if estimate is None:
            if not self.auto:
                return  # at the ceiling, where it started
            new = self.rate * AUTO_GROWTH**seconds
        elif self.rate < estimate:
            new = min(estimate, self.rate + FAST_STEP * estimate * seconds)
        elif now - self._last_decrease < HOLD_S:
            return
        else:
            new = self.rate + PROBE_STEP * estimate * seconds
        if self.ceiling is not None and new >= self.ceiling:
            new = self.ceiling
            self.forced_down = False
        if new != self.rate:
            self._set_rate(new)

    def _set_rate(self, rate: float) -> None:
        self.rate = rate
        if self._limiter is None:
            self._limiter = AdjustableLimiter(rate * SAFETY)
        else:
            self._limiter.set_rate(rate * SAFETY)
