"""How fast: one pacer shared by every worker (how many at once is the workers' business).

Three things decide when a request may leave:

* an ``aiolimiter`` leaky bucket, so requests leave evenly spaced at ``SAFETY`` times the pacer's
  *rate*, with no burst at start-up and none at the start of a server's window;
* sliding-window guards: at most ``ceil(rate)`` requests in any ``ceil(rate) / rate`` seconds for
  a rate the user set, and at most the learned quota in the learned window. Each request counts
  from when it left until its *answer* came back plus that window. A server can only have counted
  a request before answering it, so a request delayed on the way (a busy network, a server that
  stalled and then handled a backlog at once) keeps its place in the window until it is answered:
  a strict sliding-window server set to the rate never refuses, whatever the delays. The delay
  every answer has (the fastest round trip seen lately) is taken off, so a distant server does not
  cost throughput, and a request still unanswered ``MAX_SERVER_DELAY`` after it left is taken to
  have been counted by then, so one that hangs until its read timeout does not hold its place;
* for a counter the server resets on the clock, at most the quota in each of its windows.

The rate follows the server's limit as :mod:`engine.limits` works it out (quota and window, from
which requests were admitted and which refused), under ``--rate`` as a ceiling that is never
exceeded:

* before any refusal: the ceiling; ``--rate auto`` (the default) starts at ``AUTO_START`` and grows
  25 % a second instead;
* on a refusal every worker stops. No Retry-After needed: one *probe* at a time goes out, at
  growing intervals up to one a minute, and never later than the moment a shape of limit still
  standing says the server surely admits again; a Retry-After is honoured as the earliest moment.
  The probe the server admits ends the pause, for every worker at once, and the rate is then the
  learned quota ÷ window (while the quota is known only within wide bounds, the upper one: the
  next refusal pins it);
* after holding a learned limit without a refusal for ``HOLD_S`` (or five windows, if longer), it
  probes upward once, sending a few percent over the quota for up to three windows: a refusal
  (one) confirms the limit, admissions above it show it rose, and the pacer grows again;
* a limit that drops shows as a refusal below the known quota: the pause and the probes above
  learn the new one, within two of its windows.

Every request that :meth:`Pacer.acquire` let go must be reported back once, with its ticket:
:meth:`~Pacer.on_success`, :meth:`~Pacer.on_rate_limited` or :meth:`~Pacer.on_other`. Times come
from the event loop's clock (``anyio.current_time``), the clock ``aiolimiter`` and ``anyio.sleep``
use too, so tests can run the pacer on a loop whose time is virtual; ``wall_offset`` turns them
into wall-clock time, which a counter reset on the clock follows.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio

from engine.limits import FIXED_SLACK_S, FIXED_SLACK_SHARE, Hypothesis, Limit, LimitModel
from engine.rates import UNIT_WORDS, pace_text

# The bucket (engine.bucket) is loaded by the first pace set, not with the pacer: aiolimiter
# reads its package's metadata as it loads (~5 ms), which a run at --rate 0 that no server
# refuses never needs.
if TYPE_CHECKING:
    from engine.bucket import AdjustableLimiter

log = logging.getLogger(__name__)

# The bucket lets requests leave at 98 % of the rate, so that the smooth bucket, not the guard,
# is what normally spaces them; the guard only steps in when answers come back late.
SAFETY = 0.98
GUARD_SLACK_S = 0.002  # the guard's window is this much longer than the server's
MAX_SERVER_DELAY = 1.0  # an unanswered request is taken to have been counted by then
RTT_SAMPLES = 200  # the fastest round trip among this many recent answers
AUTO_START = 5.0  # requests/s, --rate auto's first pace
AUTO_GROWTH = 1.25  # per second while no limit is known (per window of a limit that rose)
UNLIMITED_ABOVE = 20_000.0  # requests/s: growing past this without a ceiling, stop pacing at all
GROW_EVERY = 0.5  # seconds between two growth steps
HOLD_S = 30.0  # at a learned limit (at least five of its windows) before probing upward
HOLD_WINDOWS = 5
PROBE_UP_SHARE = 0.03  # of the quota, at least one request, above it when probing upward
PROBE_UP_WINDOWS = 3  # an upward probe lasts at most this many windows
FIRST_PROBE_SHARE = 1 / 60  # of the shortest standing window: the first gap between probes
MIN_PROBE_GAP = 0.02  # seconds between two probes at the least
MAX_PROBE_GAP = 60.0  # and at the most: one a minute while an hourly quota is spent
MAX_PAUSE = 86_400.0  # the longest Retry-After honoured (a day)
ANNOUNCE_PAUSE_S = 5.0  # pauses at least this long are logged at INFO, shorter ones at DEBUG


def loop_time() -> float:
    """``anyio.current_time`` without its lookup of the async backend on every read.

    The pacer reads the clock twice a request, and anyio finds the running backend each time,
    which costs more than the read itself. Under asyncio this is the same clock, the running
    loop's ``time`` (what anyio's asyncio backend returns); under another backend it is
    ``anyio.current_time``.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return anyio.current_time()  # another backend, or none (anyio then says so)
    return loop.time()


class Pacer:
    """Shared by all workers; every request first awaits :meth:`acquire`.

    ``rate`` is the pace held now, requests/s (at most ``ceiling``; None: no limit). ``limit`` is
    the server's limit as learned so far (None before any refusal); ``prior`` is one learned by
    an earlier pass of the same run, taken as known until the server says otherwise.
    """

    def __init__(
        self,
        ceiling: float | None,
        *,
        auto: bool = False,
        clock: Callable[[], float] = loop_time,
        wall_offset: float | None = None,
        prior: Limit | None = None,
        unit: float = 1.0,
    ) -> None:
        if ceiling is not None and not (ceiling > 0 and math.isfinite(ceiling)):
            raise ValueError(f"the pacer's ceiling must be > 0 requests/s (got {ceiling})")
        self.ceiling = ceiling
        self.unit = unit  # seconds of the unit --rate was given in, for display
        self._clock = clock
        # The default offset is right for the event loop's clock, which is time.monotonic.
        self.model = LimitModel(wall_offset=wall_offset, prior=prior)
        self.rate: float | None = None
        self._limiter: AdjustableLimiter | None = None
        self._growing = auto and prior is None
        self._last_growth: float | None = None  # set by the first success
        self._growth_window = 1.0  # seconds in which the rate grows by AUTO_GROWTH
        self._answered: list[float] = []  # answers that may still be in a guard's window
        self._answered_head = 0
        self._departures: list[float] = []  # tickets of the requests in flight, oldest first
        self._round_trips: deque[float] = deque(maxlen=RTT_SAMPLES)
        self._fastest_round_trip = 0.0
        self._changed: anyio.Event | None = None
        # The pause after a refusal, and its probes.
        self._paused = False
        self._paused_since = 0.0
        self._probe_at = math.inf
        self._probe_ticket: float | None = None
        self._last_probe = -math.inf
        self._probe_gap = 0.0
        self._retry_until = -math.inf
        self._announced_until = 0.0
        # The upward probe above a held limit.
        self._probe_quota: int | None = None
        self._probe_up_since = 0.0
        self._holding_since: float | None = None
        self._announced: Limit | None = prior
        self.decreases = 0  # pauses a refusal began
        self.pauses = 0  # of those, with a Retry-After
        self.probes = 0
        self.paused_s = 0.0  # seconds every worker waited for the server to admit again
        binding = self.model.binding()
        if binding is not None:
            self._set_rate(min(binding.lo / binding.window, ceiling or math.inf))
        elif auto:
            self._set_rate(min(AUTO_START, ceiling or math.inf))
        else:
            self._set_rate(ceiling)

    # -- what the display and the summary read ------------------------------------------------

    @property
    def limit(self) -> Limit | None:
        """The server's limit as learned so far; None before any refusal."""
        return self.model.limit()

    @property
    def limit_estimate(self) -> float | None:
        """The learned limit in requests per second; None before any refusal."""
        limit = self.limit
        return None if limit is None else limit.per_second

    @property
    def forced_down(self) -> bool:
        """The server's limit, not the ceiling, sets the pace."""
        return self._paused or (
            self.model.binding() is not None
            and (self.ceiling is None or (self.rate or math.inf) < self.ceiling)
        )

    @property
    def waiting_until(self) -> float | None:
        """While the server refuses, wall-clock time it is expected to admit again: when the
        limit surely frees up, if a learned shape says, else the next probe. None otherwise."""
        if not self._paused:
            return None
        now = self._clock()
        surely = self.model.surely_open(now)
        return max(surely if surely is not None else self._probe_at, now) + self.model.wall_offset

    @property
    def pace(self) -> str:
        """The pace held, in the learned window's unit or else --rate's: ``117.6/min``."""
        if self.rate is None:
            return "unlimited"
        limit = self.limit
        per = limit.window if limit is not None and limit.window in UNIT_WORDS else self.unit
        return pace_text(self.rate * SAFETY, per)

    @property
    def in_flight(self) -> int:
        """Requests let through and not yet reported back."""
        return len(self._departures)

    # -- before a request -------------------------------------------------------------------

    async def acquire(self, stopping: anyio.Event | None = None) -> float | None:
        """Wait for a request's turn; its ticket, or None (at once) if ``stopping`` is set."""
        if stopping is not None and stopping.is_set():
            return None
        limiter = self._limiter
        now = self._clock()
        if (
            not self._paused
            and (limiter is None or limiter.has_capacity())
            and self._guard_wait(now) == 0.0
        ):
            if limiter is not None:
                await limiter.acquire()  # has capacity: takes it without waiting
            return self._take(now)
        if stopping is None:
            return await self._wait_turn()
        # Waiting may take long (a pause, a slow rate): a graceful stop must not.
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
        return self._take(self._clock())

    def _take(self, ticket: float) -> float:
        self._departures.append(ticket)
        return ticket

    async def _wait_turn(self) -> float:
        """Return a ticket once a request may leave; cancelled, it holds nothing."""
        while True:
            if self._paused:
                now = self._clock()
                if self._probe_ticket is None and now >= self._probe_at:
                    self._probe_ticket = self._last_probe = self._take(now)
                    self.probes += 1
                    return now
                # Woken by any answer (the probe's ends the pause) or when the probe is due.
                wait = math.inf if self._probe_ticket is not None else self._probe_at - now
                await self._changes(wait)
                continue
            if self._limiter is not None:
                await self._limiter.acquire()
            # The guard is checked last and its place taken with no await in between, so the
            # requests that queued behind it cannot all slip through when room appears.
            while not self._paused and (wait := self._guard_wait(self._clock())) > 0:
                # Room appears when the oldest entry leaves the window, or sooner if a request
                # in flight is answered (it then counts from its answer, not from "maybe now").
                await self._changes(wait)
            if not self._paused:  # a pause may have begun while this request waited in line
                return self._take(self._clock())

    async def _changes(self, longest: float) -> None:
        """Wait until an answer arrives or a pause ends, or at most ``longest`` seconds."""
        if self._changed is None:
            self._changed = anyio.Event()
        with anyio.move_on_after(longest):
            await self._changed.wait()

    def _release(self, ticket: float) -> None:
        self._departures.remove(ticket)
        if ticket == self._probe_ticket:
            self._probe_ticket = None
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _ceiling_window(self) -> float:
        """The guard's window for --rate: ceil(rate) requests in ceil(rate) / rate seconds."""
        assert self.ceiling is not None
        return math.ceil(self.ceiling - 1e-9) / self.ceiling

    def _guard_wait(self, now: float) -> float:
        """Seconds until every window has room for one more request (0: room now)."""
        wait = 0.0
        if self.ceiling is not None:
            # Every answer counts here, an error too: the server may have counted it.
            window = self._ceiling_window()
            allowed = math.ceil(self.ceiling - 1e-9)
            wait = self._sliding_wait(
                now, allowed, window + GUARD_SLACK_S, self._answered, self._answered_head
            )
        binding = self.model.binding()
        if binding is None:
            return wait
        # The learned limit counts what the server admitted, over as long as its window.
        quota = self._working_quota(binding)[0]
        admitted, head = self.model.admissions()
        if binding.fixed:
            return max(wait, self._fixed_wait(now, quota, binding.window, admitted, head))
        window = binding.window + GUARD_SLACK_S
        return max(wait, self._sliding_wait(now, quota, window, admitted, head))

    def _sliding_wait(
        self, now: float, allowed: int, window: float, answered: Sequence[float], head: int
    ) -> float:
        """Room for ``allowed`` in any ``window``: answers from ``head`` on, requests in flight."""
        # An answer stays in the window until `window` after the server may have counted it:
        # when it arrived, less the round trip every answer takes.
        first = bisect.bisect_right(answered, now - window + self._fastest_round_trip, head)
        # A request still in flight may be counted any moment, but not later than
        # MAX_SERVER_DELAY after it left: one that hangs must not hold its place until timeout.
        in_flight = [
            departed for departed in self._departures if departed > now - window - MAX_SERVER_DELAY
        ]
        excess = len(in_flight) + len(answered) - first - allowed
        if excess < 0:
            return 0.0
        leaving = heapq.merge(
            (answered[i] - self._fastest_round_trip + window for i in range(first, len(answered))),
            (departed + MAX_SERVER_DELAY + window for departed in in_flight),
        )
        return max(next(itertools.islice(leaving, excess, None)) - now, 1e-6)

    def _fixed_wait(
        self, now: float, quota: int, window: float, answered: Sequence[float], head: int
    ) -> float:
        """A counter reset on the clock: wait for the next window once this one holds the quota."""
        offset = self.model.wall_offset
        start = math.floor((now + offset) / window) * window - offset
        sent = len(answered) - bisect.bisect_left(answered, start, head)
        sent += sum(departed >= start for departed in self._departures)
        if sent < quota:
            return 0.0
        return start + window + min(FIXED_SLACK_S, FIXED_SLACK_SHARE * window) - now

    # -- after a request --------------------------------------------------------------------

    def on_success(self, ticket: float) -> None:
        """The request was admitted and answered: learn from it, end a pause it probed."""
        now = self._answer(ticket, counted=True)
        self._note_round_trip(now - ticket)
        self.model.admitted(ticket, now)
        if ticket == self._probe_ticket:
            self._probe_ticket = None
            self._end_pause(now)
        if self._growing or self.model.refusals:  # otherwise the pace is the ceiling, as set
            self._retarget(now)

    def on_other(self, ticket: float) -> None:
        """Any other outcome (an error answer, no answer): the server may have counted it."""
        now = self._answer(ticket, counted=True)
        if ticket == self._probe_ticket:
            self._probe_ticket = None
            self._probe_at = now  # it told nothing: the next turn probes again

    def on_rate_limited(self, ticket: float, retry_after: float | None) -> None:
        """The server refused the request as too fast: pause everyone, probe, learn."""
        now = self._answer(ticket, counted=False)
        self.model.refused(ticket, now, len(self._departures))
        self._probe_quota = None
        self._holding_since = None
        if retry_after:
            self.pauses += 1
            self._retry_until = max(self._retry_until, now + min(retry_after, MAX_PAUSE))
        if ticket == self._probe_ticket:
            self._probe_ticket = None
            self._probe_gap = min(MAX_PROBE_GAP, self._probe_gap * 2)
        if not self._paused:
            self._paused, self._paused_since, self._last_probe = True, now, now
            self.decreases += 1
            binding = self.model.binding()
            shortest = binding.window if binding is not None else 1.0
            self._probe_gap = min(MAX_PROBE_GAP, max(0.5, shortest * FIRST_PROBE_SHARE))
        self._probe_at = self._next_probe(now)
        self._retarget(now)
        self._announce_pause(now)

    def _next_probe(self, now: float) -> float:
        """When the one request that asks whether the server admits again goes out."""
        last = self._last_probe
        at = last + self._probe_gap
        surely = self.model.surely_open(now)
        if surely is not None and self.model.pinned():
            # The limit is known: probe when it frees up, and meanwhile once a minute only.
            at = min(surely, last + MAX_PROBE_GAP)
        elif surely is not None:
            # No later than a standing shape says the server surely admits again; sooner if the
            # growing gap between probes comes first, since the limit may have changed to a
            # shape no longer standing.
            at = min(at, surely)
        binding = self.model.binding()
        spacing = MIN_PROBE_GAP
        if binding is not None:
            spacing = max(spacing, min(MAX_PROBE_GAP, binding.window * FIRST_PROBE_SHARE))
        if now - self._paused_since >= MAX_PROBE_GAP:
            # Refused for a minute: no window of a minute or less is the limit. An hour's quota
            # spent costs no more than a probe a minute until it resets.
            spacing = MAX_PROBE_GAP
        return max(at, self._retry_until, last + spacing)

    def _end_pause(self, now: float) -> None:
        if not self._paused:
            return
        self._paused, self._probe_at = False, math.inf
        self.paused_s += now - self._paused_since
        if self._announced_until:
            log.info("the server admits again, after %s", duration_words(now - self._paused_since))
            self._announced_until = 0.0
        self._wake_waiters()

    def _announce_pause(self, now: float) -> None:
        """Log a pause with its reason and length; again only when its end moves a lot."""
        wall_until = self.waiting_until
        assert wall_until is not None  # paused
        until = wall_until - self.model.wall_offset
        length = until - now
        if abs(until - self._announced_until) <= max(5.0, 0.1 * length):
            return
        limit = self.limit
        reason = "server limit reached" + (
            f" (about {limit.describe()})" if limit is not None and limit.learned_at else ""
        )
        if self._retry_until > now:
            reason += f", Retry-After {duration_words(self._retry_until - now)}"
        wall = time.strftime("%H:%M:%S", time.localtime(wall_until))
        level = logging.INFO if length >= ANNOUNCE_PAUSE_S else logging.DEBUG
        log.log(level, "%s: waiting until %s (about %s)", reason, wall, duration_words(length))
        self._announced_until = until if level == logging.INFO else 0.0

    def _answer(self, ticket: float, *, counted: bool) -> float:
        now = self._clock()
        self._departures.remove(ticket)
        if counted and self.ceiling is not None:
            self._answered.append(now)
            self._trim_answered(now)
        self._wake_waiters()
        return now

    def _trim_answered(self, now: float) -> None:
        """Forget answers older than the ceiling's guard window."""
        if self.ceiling is None:
            self._answered.clear()
            self._answered_head = 0
            return
        horizon = now - self._ceiling_window() - GUARD_SLACK_S
        answered = self._answered
        head = bisect.bisect_right(answered, horizon, self._answered_head)
        if head > 1024 and head * 2 > len(answered):
            del answered[:head]
            head = 0
        self._answered_head = head

    def _note_round_trip(self, round_trip: float) -> None:
        trips = self._round_trips
        evicted = trips[0] if len(trips) == trips.maxlen else None
        trips.append(round_trip)
        if evicted is not None and evicted <= self._fastest_round_trip:
            self._fastest_round_trip = min(trips)
        elif len(trips) == 1 or round_trip < self._fastest_round_trip:
            self._fastest_round_trip = round_trip

    # -- the pace ---------------------------------------------------------------------------

    def _retarget(self, now: float) -> None:
        """Set the pace from the learned limit, growth or the ceiling; log a new limit."""
        binding = self.model.binding()
        if binding is None:
            self._probe_quota = None
            rate = self._grown(now)
        else:
            # If the limit is ever forgotten (it rose), grow to find it again: by a quarter each
            # of its windows, since the server only refuses once a whole window has filled.
            self._growing = True
            if self.model.pinned():
                self._growth_window = binding.window
            self._probe_upward(now, binding.lo, binding.window)
            quota, filling = self._working_quota(binding)
            # Filling the window, the bucket lets exactly quota/window through.
            rate = quota / binding.window / (SAFETY if filling else 1.0)
        if rate is not None and self.ceiling is not None:
            rate = min(rate, self.ceiling)
        if rate != self.rate:
            self._set_rate(rate)
        self._announce_limit()

    def _working_quota(self, binding: Hypothesis) -> tuple[int, bool]:
        """The quota to keep to, and whether to fill the window up to it to learn more.

        At a known quota, its lower bound (a count the server allowed). While the bounds are
        still far apart (a pause ended late, after the limit dropped), the upper one: the window
        fills until the server refuses at its quota, which pins it with one refusal instead of a
        crawl at the lower bound. Probing upward, a few percent over the known quota.
        """
        if self._probe_quota is not None:
            return self._probe_quota, True
        assert binding.hi is not None  # a binding shape has been refused
        if not binding.known:
            return binding.hi, True
        return binding.lo, False

    def _grown(self, now: float) -> float | None:
        """The pace with no limit known: the ceiling, or growing towards it from where it is."""
        if not self._growing:
            return self.ceiling
        if self.rate is None:
            return AUTO_START if self.ceiling is None else min(AUTO_START, self.ceiling)
        if self._last_growth is None:
            self._last_growth = now
            return self.rate
        elapsed = now - self._last_growth
        if elapsed < GROW_EVERY:
            return self.rate
        self._last_growth = now
        grown = self.rate * math.pow(AUTO_GROWTH, elapsed / self._growth_window)
        if self.ceiling is None and grown > UNLIMITED_ABOVE:
            self._growing = False
            return None
        return grown

    def _probe_upward(self, now: float, quota: int, window: float) -> None:
        """Start or end the rare probe above a held limit (a limit may rise)."""
        if self._paused:
            return
        if self._holding_since is None:
            self._holding_since = now
        if self._probe_quota is not None:
            if now - self._probe_up_since > PROBE_UP_WINDOWS * window:
                self._probe_quota, self._holding_since = None, now  # nothing to learn: hold again
            return
        if now - self._holding_since < max(HOLD_S, HOLD_WINDOWS * window):
            return
        if self.ceiling is not None and quota / window >= self.ceiling:
            return  # at the ceiling already: nothing above it may be sent
        self._probe_quota = quota + max(1, math.ceil(PROBE_UP_SHARE * quota))
        self._probe_up_since = now
        log.debug("probing above the server's limit: %s in %gs", self._probe_quota, window)

    def _announce_limit(self) -> None:
        """Log the limit once it is pinned (one window length, bounds together), and again only
        when it changes: not every step of a quota still being narrowed down."""
        limit = self.limit
        if limit is None or limit.learned_at is None or not self.model.pinned():
            return
        before = self._announced
        if before is not None and (before.quota, before.window, before.fixed) == (
            limit.quota,
            limit.window,
            limit.fixed,
        ):
            return
        self._announced = limit
        log.info("server limit ≈ %s; pacing at %s", limit.describe(), self.pace)

    def _set_rate(self, rate: float | None) -> None:
        self.rate = rate
        if rate is None:
            self._limiter = None
        elif self._limiter is None:
            from engine.bucket import AdjustableLimiter

            self._limiter = AdjustableLimiter(rate * SAFETY)
        else:
            self._limiter.set_rate(rate * SAFETY)


def duration_words(seconds: float) -> str:
    """``37 min``, ``12 s``, ``1 h 05 min``: how long a person waits."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
