"""The fake API's rate limits, in the shapes real APIs set them.

A :class:`Quota` admits at most ``quota`` requests per ``window`` seconds, counted over a sliding
window or by a counter reset at every wall-clock boundary of the window (each minute, each hour),
and can change to another quota at set times (a limit that halves mid-run). Refused requests do
not count: a client that is refused and waits is not locked out for good. Pure and synchronous
apart from the clocks it is given, so tests drive it on virtual time.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine.rates import Rate


@dataclass(frozen=True, slots=True)
class QuotaChange:
    """From ``after`` seconds past the first request on, the limit is ``rate``."""

    after: float
    rate: Rate


@dataclass
class Quota:
    """A server's limit: ``rate.count`` requests per ``rate.per`` seconds (a fraction rounds up).

    ``clock`` is monotonic time; ``wall`` is wall-clock time, whose boundaries a counter reset on
    the clock (``fixed``) follows.
    """

    rate: Rate
    fixed: bool = False
    changes: Sequence[QuotaChange] = ()
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _admitted: deque[float] = field(default_factory=deque)
    _bucket: float = -math.inf
    _in_bucket: int = 0
    _started: float | None = None

    def current(self, now: float) -> Rate:
        """The limit in force at ``now`` (after the changes that are due)."""
        if self._started is None:
            return self.rate
        due = bisect.bisect_right(self.changes, now - self._started, key=lambda c: c.after)
        return self.changes[due - 1].rate if due else self.rate

    def admit(self) -> bool:
        """Count a request if the limit lets it through; False: refused."""
        now = self.clock()
        if self._started is None:
            self._started = now
        rate = self.current(now)
        quota, window = math.ceil(rate.count), rate.per
        if self.fixed:
            bucket = math.floor(self.wall() / window)
            if bucket != self._bucket:
                self._bucket, self._in_bucket = bucket, 0
            if self._in_bucket >= quota:
                return False
            self._in_bucket += 1
            return True
        admitted = self._admitted
        while admitted and admitted[0] <= now - window:
            admitted.popleft()
        if len(admitted) >= quota:
            return False
        admitted.append(now)
        return True

    def retry_after(self) -> float:
        """Seconds until the next request would be admitted, as an honest Retry-After."""
        now = self.clock()
        rate = self.current(now)
        if self.fixed:
            wall = self.wall()
            return (math.floor(wall / rate.per) + 1) * rate.per - wall
        admitted = self._admitted
        excess = len(admitted) - math.ceil(rate.count)
        if excess < 0 or not admitted:
            return 0.0
        return max(0.0, admitted[excess] + rate.per - now)
