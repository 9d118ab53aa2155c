"""What the server's rate limit is, worked out from which requests it admitted and which it refused.

Ozonetel publishes no limit for this call, and the limits it publishes for its other calls count
per minute. A server's limit is a *quota* per *window*: at most ``quota`` requests in any
``window`` seconds (a sliding window), or in each ``window`` of the wall clock (a counter reset at
every minute, hour, ...). Nothing tells a client which: no header, and often no Retry-After.
Looking only at the last second, a per-minute quota looks like a tiny per-second one.

So the model keeps one :class:`Hypothesis` per candidate shape (each of ``WINDOWS``, sliding or
reset on the clock) with bounds on its quota, and lets the evidence rule them out:

* an **admitted** request that the server had counted at least ``n`` others before, in that
  shape's window, proves ``quota > n``: the lower bound ``lo`` rises to ``n + 1``;
* a **refused** one that the server can have counted at most ``n`` others before proves
  ``quota <= n``: the upper bound ``hi`` falls to ``n``;
* a shape whose bounds cross (``lo > hi``) cannot be the server's and is ruled out.

The counts are the request's own: which admissions surely or possibly fell into the server's
window when the server counted it, from the times the requests left and were answered (the
server counted each somewhere in between). Sending at a steady pace
for longer than a window rules a short window out as soon as the first refusal comes (the pace
was sustained above what it would allow); the requests admitted when a longer window frees up
rule out the still longer ones. The shortest shape still standing is the limit; its ``lo``, the
quota, is a count the server is known to have allowed.

While the server refuses, :meth:`LimitModel.surely_open` says when the first standing shape
surely lets the next request in, so the pacer sends one probe at a time, at that moment or sooner,
instead of hammering: a refused probe rules out the shape that predicted it, an admitted one ends
the pause. When the evidence rules out every shape, the limit has changed: a refusal below the
known quota means it dropped, and the bounds start again from that refusal; an admission above
every known bound means it rose, and the model forgets its quotas until the next refusal.
"""

from __future__ import annotations

import bisect
import math
import time
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Any

from engine.rates import UNIT_WORDS

WINDOWS = (1.0, 10.0, 60.0, 300.0, 3600.0)  # seconds; at least these, per the API's neighbours
LOG_AGE = WINDOWS[-1] + 60.0  # seconds of admissions kept, enough for the longest window
LOG_MAX = 200_000  # admissions kept at most: at a higher rate an hour's window is not the limit
REPLAY_MAX = 5_000  # admissions replayed for lower bounds when the first refusal comes
RTT_SAMPLES = 200  # the slowest round trip among this many recent admissions
# How long after a wall-clock boundary a reset counter is surely reset (clocks differ a little).
FIXED_SLACK_S = 0.25
FIXED_SLACK_SHARE = 0.05  # of the window, for short windows
NARROW_SHARE = 0.02  # bounds of a quota this close together (of it) are close enough


@dataclass(frozen=True, slots=True)
class Limit:
    """A learned limit: ``quota`` requests per ``window`` seconds.

    ``fixed`` is True for a counter reset on the wall clock, False for a sliding window, None
    while the evidence has not told the two apart. ``learned_at`` is wall-clock time, None while
    more than one window length still fits the evidence.
    """

    quota: int
    window: float
    fixed: bool | None
    learned_at: float | None

    @property
    def per_second(self) -> float:
        return self.quota / self.window

    def describe(self) -> str:
        """``120 a minute, sliding window``: the words an API document would use."""
        words = UNIT_WORDS.get(self.window)
        if words is None:
            words = (
                f"every {self.window / 60:g} min"
                if self.window >= 60
                else f"every {self.window:g} s"
            )
        shape = {True: "reset on the clock", False: "sliding window", None: "window kind unknown"}
        return f"{self.quota:,} {words}, {shape[self.fixed]}"

    def to_json(self) -> dict[str, Any]:
        return {
            "quota": self.quota,
            "window": self.window,
            "fixed": self.fixed,
            "learned_at": self.learned_at,
        }

    @classmethod
    def from_json(cls, data: object) -> Limit | None:
        """A limit read back from a checkpoint; None for anything that is not one."""
        if not isinstance(data, dict):
            return None
        quota, window, fixed = data.get("quota"), data.get("window"), data.get("fixed")
        learned_at = data.get("learned_at")
        if (
            type(quota) is not int
            or quota < 1
            or window not in WINDOWS
            or fixed not in (True, False, None)
            or not (learned_at is None or isinstance(learned_at, int | float))
        ):
            return None
        return cls(quota, float(window), fixed, None if learned_at is None else float(learned_at))


def describe_limit(stored: object) -> str | None:
    """A stored limit in words with when it was learned: ``120 a minute, sliding window, learned
    12:03``; None for none."""
    limit = Limit.from_json(stored)
    if limit is None:
        return None
    when = (
        ""
        if limit.learned_at is None
        else time.strftime(", learned %H:%M", time.localtime(limit.learned_at))
    )
    return limit.describe() + when


class Hypothesis:
    """One candidate shape of the server's limit, with what is known of its quota."""

    __slots__ = ("alive", "fixed", "hi", "lo", "window")

    def __init__(self, window: float, fixed: bool) -> None:
        self.window = window
        self.fixed = fixed
        self.lo = 1  # the quota is at least this (a limit of 0 would be no service at all)
        self.hi: int | None = None  # and at most this; None: no refusal says so
        self.alive = True

    @property
    def known(self) -> bool:
        """Its quota is known: the bounds are within a request or two percent of each other."""
        hi = self.hi
        return hi is not None and hi <= self.lo + max(1, math.ceil(NARROW_SHARE * self.lo))

    def __repr__(self) -> str:
        kind = "fixed" if self.fixed else "sliding"
        return f"Hypothesis({self.window:g}s {kind}, {self.lo}..{self.hi}, alive={self.alive})"


class LimitModel:
    """The evidence (admissions, refusals) and the hypotheses it leaves standing.

    Times are the event loop's clock; ``wall_offset`` turns them into wall-clock time, which a
    counter reset on the clock follows. Not thread-safe: one event loop.
    """

    def __init__(self, *, wall_offset: float | None = None, prior: Limit | None = None) -> None:
        self.wall_offset = time.time() - time.monotonic() if wall_offset is None else wall_offset
        self.hypotheses = [Hypothesis(w, fixed) for w in WINDOWS for fixed in (False, True)]
        # Machine arrays: 8 bytes an admission, where lists of floats would take 32.
        self._departed = array("d")
        self._answered = array("d")  # sorted: appended as answers arrive
        self._head = 0  # entries before it were dropped
        self._appended = 0  # admissions ever appended
        self._applied = 0  # admissions whose lower bounds are applied to the hypotheses
        self._round_trips: deque[float] = deque(maxlen=RTT_SAMPLES)
        self.refusals = 0
        self.learned_at: float | None = None  # wall clock, when the current limit was found
        # Whether any upper bound was ever set (a prior or a refusal): until then no shape is
        # constrained, and an admission need not ask the eleven of them on every answer.
        self._bounded = prior is not None
        if prior is not None:
            self._start_from(prior)

    def _start_from(self, prior: Limit) -> None:
        """A limit learned by an earlier pass: take it as known until the server says otherwise."""
        for hypothesis in self.hypotheses:
            same = hypothesis.window == prior.window and prior.fixed in (None, hypothesis.fixed)
            hypothesis.alive = same
            if same:
                hypothesis.lo = hypothesis.hi = prior.quota
        self.learned_at = prior.learned_at

    # -- evidence ------------------------------------------------------------------------------

    def admitted(self, departed: float, answered: float) -> None:
        """The server admitted a request that left at ``departed``, answered at ``answered``."""
        self._round_trips.append(answered - departed)
        self._departed.append(departed)
        self._answered.append(answered)
        self._appended += 1
        self._trim(answered)
        if self._bounded and self.constrained:
            self._apply_admissions()

    def refused(self, departed: float, answered: float, in_flight: int) -> None:
        """The server refused a request; ``in_flight`` others had left and were not yet answered."""
        self.refusals += 1
        self._bounded = True
        self._apply_admissions()
        alive = [h for h in self.hypotheses if h.alive]
        for hypothesis in alive:
            bound = self._possibly_before(hypothesis, departed, answered) + in_flight
            hypothesis.hi = bound if hypothesis.hi is None else min(hypothesis.hi, bound)
            if hypothesis.hi < hypothesis.lo:
                hypothesis.alive = False
        if not any(h.alive for h in self.hypotheses):
            # Refused below every quota still believed in: the limit dropped (or another client
            # shares it). Start again from this refusal alone.
            self._restart()
            for hypothesis in self.hypotheses:
                hypothesis.hi = self._possibly_before(hypothesis, departed, answered) + in_flight
                hypothesis.alive = hypothesis.hi >= hypothesis.lo
        self._note_learned(answered)

    def _apply_admissions(self) -> None:
        """Raise the lower bounds by the admissions not yet applied (the newest REPLAY_MAX)."""
        start = max(self._applied, self._appended - REPLAY_MAX, self._head_absolute)
        self._applied = self._appended
        if start >= self._appended:
            return
        first = start - self._head_absolute + self._head
        slack = max(self._round_trips)
        alive = [h for h in self.hypotheses if h.alive]
        for index in range(first, len(self._answered)):
            departed, answered = self._departed[index], self._answered[index]
            for hypothesis in alive:
                count = self._surely_before(hypothesis, departed, answered, slack, index)
                if count >= hypothesis.lo:
                    hypothesis.lo = count + 1
                    if hypothesis.hi is not None and hypothesis.lo > hypothesis.hi:
                        hypothesis.alive = False
            if any(h.alive for h in alive):
                alive = [h for h in alive if h.alive]
                continue
            # Admitted above every quota believed in: the limit rose (or changed shape). Start
            # again from this admission alone.
            self._restart()
            alive = self.hypotheses
            for hypothesis in alive:
                count = self._surely_before(hypothesis, departed, answered, slack, index)
                hypothesis.lo = count + 1
        self._note_learned(self._answered[-1])

    def _restart(self) -> None:
        """Forget every bound: the limit is not what it was."""
        for hypothesis in self.hypotheses:
            hypothesis.alive, hypothesis.lo, hypothesis.hi = True, 1, None
        self.learned_at = None

    def _note_learned(self, now: float) -> None:
        if self.learned_at is None and self.settled:
            self.learned_at = now + self.wall_offset

    # -- what the server can have counted ----------------------------------------------------

    def _window_start(self, hypothesis: Hypothesis, at: float) -> float:
        """Loop time at which the window counting a request at ``at`` began."""
        if not hypothesis.fixed:
            return at - hypothesis.window
        wall = at + self.wall_offset
        return math.floor(wall / hypothesis.window) * hypothesis.window - self.wall_offset

    def _surely_before(
        self, hypothesis: Hypothesis, departed: float, answered: float, slack: float, index: int
    ) -> int:
        """Admissions the server surely counted in this shape's window before this request.

        The server counts each request at some moment between when it left and when it was
        answered. Another admission was surely counted before this one if it was answered before
        this one left, and surely inside the window if it left after the latest moment the
        window can start (the start of the window counting at this request's answer).
        """
        if hypothesis.fixed and self._window_start(hypothesis, departed) != self._window_start(
            hypothesis, answered
        ):
            return 0  # counted in either of two windows: nothing is sure
        start = self._window_start(hypothesis, answered)
        answers, departures = self._answered, self._departed
        first = bisect.bisect_right(answers, start, self._head, index)
        last = bisect.bisect_left(answers, departed, self._head, index)
        count = last - first
        # Answered inside the window but left before it began: not sure. Only a round trip's
        # worth (``slack``, the slowest lately) of answers can have left that early.
        for position in range(first, last):
            if answers[position] > start + slack:
                break
            if departures[position] <= start:
                count -= 1
        return max(0, count)

    def _possibly_before(self, hypothesis: Hypothesis, departed: float, answered: float) -> int:
        """Admitted answers the server can have counted in this shape's window before this one."""
        start = self._window_start(hypothesis, departed)
        first = bisect.bisect_right(self._answered, start, self._head)
        last = bisect.bisect_right(self._answered, answered, self._head)
        return max(0, last - first)

    # -- what it says --------------------------------------------------------------------------

    @property
    def constrained(self) -> bool:
        """Some standing shape has a known upper bound: there is a limit to keep to."""
        return any(h.alive and h.hi is not None for h in self.hypotheses)

    @property
    def settled(self) -> bool:
        """Only one window length still stands."""
        return len({h.window for h in self.hypotheses if h.alive and h.hi is not None}) == 1

    def _standing(self) -> list[Hypothesis]:
        return [h for h in self.hypotheses if h.alive and h.hi is not None]

    def pinned(self) -> bool:
        """One window length stands and its quota is known: trust what it predicts."""
        binding = self.binding()
        return binding is not None and self.settled and binding.known

    def binding(self) -> Hypothesis | None:
        """The shortest standing shape with a known upper bound: the limit to pace by.

        Of a sliding window and a counter reset on the clock of the same length, the one that
        allows more: pacing by it tests the other (a refusal rules it out), where pacing by the
        stricter one would never learn whether it is right.
        """
        standing = self._standing()
        if not standing:
            return None
        return min(standing, key=lambda h: (h.window, -h.lo))

    def limit(self) -> Limit | None:
        """The limit to pace by, in words a person can check; None before any refusal."""
        binding = self.binding()
        if binding is None:
            return None
        twins = [
            h
            for h in self.hypotheses
            if h.alive and h.hi is not None and h.window == binding.window
        ]
        fixed = binding.fixed if len(twins) == 1 else None
        return Limit(binding.lo, binding.window, fixed, self.learned_at)

    def surely_open(self, now: float) -> float | None:
        """When the server surely lets a request in again, loop time, if a standing shape is right.

        Each standing shape predicts it from the admissions in its window: when fewer than its
        ``lo`` remain (a counter reset on the clock: at the next boundary). The earliest such
        moment tests the shortest shape first. None when no standing shape has a known bound.
        """
        surely = math.inf
        for hypothesis in self._standing():
            at = self._frees_up(hypothesis, now, hypothesis.lo)
            if hypothesis.fixed and at > now:
                at += min(FIXED_SLACK_S, FIXED_SLACK_SHARE * hypothesis.window)
            surely = min(surely, at)
        return None if surely == math.inf else surely

    def _frees_up(self, hypothesis: Hypothesis, now: float, quota: int) -> float:
        """When fewer than ``quota`` of the admissions answered by ``now`` are in the window."""
        start = self._window_start(hypothesis, now)
        first = bisect.bisect_right(self._answered, start, self._head)
        count = len(self._answered) - first
        if count < quota:
            return now
        if hypothesis.fixed:
            return start + hypothesis.window  # the counter resets
        # The oldest (count - quota + 1) must leave; each leaves a window after its answer.
        return self._answered[first + count - quota] + hypothesis.window + 1e-6

    def admissions(self) -> tuple[array[float], int]:
        """The answer times of the admissions kept, oldest first from the index given; read-only."""
        return self._answered, self._head

    # -- bookkeeping ---------------------------------------------------------------------------

    @property
    def _head_absolute(self) -> int:
        return self._appended - (len(self._answered) - self._head)

    def _trim(self, now: float) -> None:
        answered, head = self._answered, self._head
        size = len(answered) - head
        while size > LOG_MAX or (size and answered[head] < now - LOG_AGE):
            head += 1
            size -= 1
        if head > 4096 and head * 2 > len(answered):
            # Drop the dead front in one copy now and then, not an element at a time.
            del self._answered[:head], self._departed[:head]
            head = 0
        self._head = head
