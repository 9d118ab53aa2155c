"""The leaky bucket that spaces the pacer's requests evenly: aiolimiter's, with a rate that can
change while tasks wait on it (:mod:`engine.pacing` decides the rate)."""

from __future__ import annotations

from aiolimiter import AsyncLimiter

# A request that leaves late (the event loop was busy) may be made up by the next leaving early,
# by at most this much: without it a busy loop loses every delay for good and the achieved rate
# sags to 80 % of the set one.
CATCH_UP_S = 0.01
CATCH_UP_MAX = 0.5  # of one spacing: the bucket never lets two requests leave back to back


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
