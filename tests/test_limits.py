"""Learning a server's rate limit: every shape the fake API has, on virtual time, over hours.

Each scenario runs the real :class:`~engine.pacing.Pacer` against the fake API's own
:class:`~engine.mock.quota.Quota` on :class:`~tests.virtual_time.VirtualTimeLoop`, so four minutes
or two hours of pacing take a second and come out the same every time. The wall clock starts 17 s
into a minute (and into an hour), so a counter reset on the clock resets mid-run.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable

import pytest

from engine import pacing
from engine.limits import WINDOWS, Limit, LimitModel, describe_limit
from engine.mock.quota import Quota, QuotaChange
from engine.pacing import Pacer
from engine.rates import Rate, parse_rate
from tests.virtual_time import START, Traffic, drive, now, run_virtual

HOUR_BOUNDARY = 1_699_999_200.0  # a whole hour of the wall clock (and so a whole minute)
WALL_OFFSET = HOUR_BOUNDARY + 17.0 - START  # the wall clock reads hh:00:17 when a test starts
Server = Callable[[], tuple[bool, float | None]]


def fake_server(
    rate: str,
    *,
    fixed: bool = False,
    retry_after: bool = False,
    changes: tuple[tuple[float, str], ...] = (),
) -> tuple[Server, Quota]:
    """The fake API's limiter, answering in the body (no Retry-After) unless ``retry_after``."""
    quota = Quota(
        parse_rate(rate),
        fixed=fixed,
        changes=[QuotaChange(after, parse_rate(then)) for after, then in changes],
        clock=now,
        wall=lambda: now() + WALL_OFFSET,
    )

    def admit() -> tuple[bool, float | None]:
        if quota.admit():
            return True, None
        return False, quota.retry_after() if retry_after else None

    return admit, quota


def run(pacer: Pacer, server: Server, seconds: float, **options: float) -> Traffic:
    async def main() -> Traffic:
        return await drive(pacer, server, seconds, **options)  # type: ignore[arg-type]

    return run_virtual(main)


def make_pacer(ceiling: float | None = None, *, prior: Limit | None = None) -> Pacer:
    return Pacer(ceiling, auto=ceiling is None, wall_offset=WALL_OFFSET, prior=prior)


def learned_after(pacer: Pacer, traffic: Traffic) -> float:
    """Seconds from the start until the limit was known."""
    limit = pacer.limit
    assert limit is not None and limit.learned_at is not None
    return limit.learned_at - WALL_OFFSET - traffic.start


# -- the targets, per-minute shapes ---------------------------------------------------

PER_MINUTE = [
    pytest.param("120/min", False, id="120-a-minute-sliding"),
    pytest.param("60/min", False, id="60-a-minute-sliding"),
    pytest.param("120/min", True, id="120-a-minute-reset-on-the-minute"),
    pytest.param("60/min", True, id="60-a-minute-reset-on-the-minute"),
]


@pytest.mark.parametrize("ceiling", [None, 2.0], ids=["auto", "rate-2"])
@pytest.mark.parametrize(("rate", "fixed"), PER_MINUTE)
def test_per_minute_quota_is_learned_and_kept(
    rate: str, fixed: bool, ceiling: float | None
) -> None:
    """4 minutes: ≥ 0.90 of the allowed rate overall, ≥ 0.95 after learning, ≤ 5 % refused,
    at most one refusal a window after learning, and the limit reported as the server's."""
    server, _ = fake_server(rate, fixed=fixed)
    pacer = make_pacer(ceiling)
    seconds = 240.0
    traffic = run(pacer, server, seconds)
    allowed = parse_rate(rate).per_second
    requests = len(traffic.admitted) + len(traffic.refused)
    assert traffic.admitted_between(0, seconds) >= 0.90 * allowed * seconds
    assert len(traffic.refused) <= 0.05 * requests
    if ceiling is not None and ceiling <= allowed:
        assert traffic.refused == []  # the server's limit was never reached
        return
    learned = learned_after(pacer, traffic)
    assert learned <= 120.0  # within two windows
    assert traffic.admitted_between(learned, seconds) >= 0.95 * allowed * (seconds - learned)
    windows_after = math.ceil((seconds - learned) / 60)
    assert traffic.refused_between(learned, seconds) <= windows_after
    assert pacer.limit == Limit(parse_rate(rate).count, 60.0, fixed, pacer.limit.learned_at)


def test_a_ceiling_at_the_limit_is_never_refused() -> None:
    """--rate 60/min against a 60-a-minute server: 0 refused, ≥ 0.97 of what it allows."""
    server, _ = fake_server("60/min")
    pacer = make_pacer(parse_rate("60/min").per_second)
    traffic = run(pacer, server, 240.0)
    assert traffic.refused == []
    assert traffic.admitted_between(0, 240) >= 0.97 * 240


def test_ten_second_window() -> None:
    """50 in any 10 s (a window the fake API's units do not name) is told from its neighbours."""
    assert 10.0 in WINDOWS
    admitted: list[float] = []

    def admit() -> tuple[bool, float | None]:
        current = now()
        while admitted and admitted[0] <= current - 10.0:
            admitted.pop(0)
        if len(admitted) >= 50:
            return False, None
        admitted.append(current)
        return True, None

    pacer = make_pacer()
    traffic = run(pacer, admit, 120.0)
    assert pacer.limit is not None
    assert (pacer.limit.quota, pacer.limit.window, pacer.limit.fixed) == (50, 10.0, False)
    learned = learned_after(pacer, traffic)
    assert traffic.admitted_between(learned, 120) >= 0.95 * 5 * (120 - learned)


# -- per-second shapes keep today's figures -----------------------------------------------------


def test_per_second_at_the_rate_is_never_refused() -> None:
    """--rate 50 against 50 a second: 0 refused and ≥ 0.98 of it."""
    server, _ = fake_server("50/s")
    traffic = run(make_pacer(50.0), server, 60.0)
    assert traffic.refused == []
    assert traffic.admitted_between(0, 60) >= 0.98 * 50 * 60


@pytest.mark.parametrize("retry_after", [False, True], ids=["body", "429-retry-after"])
def test_per_second_at_twice_the_rate(retry_after: bool) -> None:
    """--rate 100 against 50 a second: learned at once, ≥ 0.97 of it, a refusal per probe up."""
    server, _ = fake_server("50/s", retry_after=retry_after)
    pacer = make_pacer(100.0)
    traffic = run(pacer, server, 120.0)
    learned = learned_after(pacer, traffic)
    assert learned < 2.0
    assert traffic.admitted_between(learned, 120) >= 0.97 * 50 * (120 - learned)
    upward_probes = 120 // pacing.HOLD_S
    assert traffic.refused_between(learned, 120) <= upward_probes + 1
    assert pacer.limit is not None and pacer.limit.quota == 50


def test_auto_finds_a_per_second_limit() -> None:
    """--rate auto against 50 a second: learned within 15 s, then ≥ 0.95 of it."""
    server, _ = fake_server("50/s")
    pacer = make_pacer()
    traffic = run(pacer, server, 60.0)
    learned = learned_after(pacer, traffic)
    assert learned < 15.0
    assert traffic.admitted_between(learned, 60) >= 0.95 * 50 * (60 - learned)


# -- hourly quotas: wait, do not hammer ---------------------------------------------------------


@pytest.mark.parametrize("fixed", [False, True], ids=["sliding", "reset-on-the-hour"])
def test_hourly_quota_waits_with_one_probe_a_minute(fixed: bool) -> None:
    """2,000 an hour: once the hour's quota is known, at most one probe a minute until it
    resets, a wait that names the moment it resets, and the next hour's quota used in full."""
    server, _ = fake_server("2000/h", fixed=fixed)
    pacer = make_pacer()
    waits: list[tuple[float, float | None]] = []

    async def main() -> Traffic:
        import anyio

        async def watch() -> None:
            while now() < START + 7200:
                waits.append((now(), pacer.waiting_until))
                await anyio.sleep(30)

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            traffic = await drive(pacer, server, 7200.0)
            group.cancel_scope.cancel()
        return traffic

    traffic = run_virtual(main)
    learned = learned_after(pacer, traffic)
    assert pacer.limit is not None and pacer.limit.describe().startswith("2,000 an hour")
    resets = (HOUR_BOUNDARY + 3600 - WALL_OFFSET) if fixed else traffic.admitted[0] + 3600
    # After the first minute of refusals (which rule out windows of a minute or less), and
    # surely once the hour is known: a probe a minute at most.
    quiet_from = min(traffic.refused[0] + 60, traffic.start + learned)
    probes = [at for at in traffic.departures if quiet_from <= at < resets - 1]
    assert len(probes) >= 10
    assert all(b - a >= 59.0 for a, b in itertools.pairwise(probes)), probes
    # The wait names the reset (or, until they are told apart, the next hour of the clock, when
    # a counter reset on the clock would reset): at most a minute late, never early.
    hour = HOUR_BOUNDARY + 3600 - WALL_OFFSET
    told = [until - WALL_OFFSET for at, until in waits if until and learned < at - START < 1800]
    assert told, waits
    assert all(min(resets, hour) - 1 <= moment <= resets + 61 for moment in told), (told, resets)
    # After the reset, the next hour's quota at the learned pace.
    after = traffic.admitted_between(resets - traffic.start + 1, 7200)
    assert after >= 0.95 * 2000 * (START + 7200 - resets) / 3600


# -- limits that change -----------------------------------------------------------------------


@pytest.mark.parametrize("ceiling", [None, 2.0], ids=["auto", "rate-2"])
def test_a_limit_that_halves_is_followed_within_two_windows(ceiling: float | None) -> None:
    """120 a minute becomes 60 at 2 min: learned within two windows, then kept at ≥ 0.95."""
    server, _ = fake_server("120/min", changes=((120.0, "60/min"),))
    pacer = make_pacer(ceiling)
    traffic = run(pacer, server, 420.0)
    learned = learned_after(pacer, traffic)
    assert 120 < learned <= 240
    assert pacer.limit is not None and (pacer.limit.quota, pacer.limit.window) == (60, 60.0)
    assert traffic.admitted_between(learned, 420) >= 0.95 * (420 - learned)
    assert traffic.refused_between(learned, 420) <= 2  # the one that pins the quota, one more


def test_a_limit_that_rises_is_found_by_a_rare_probe_upward() -> None:
    """60 a minute becomes 120 at 1 min: the upward probe after the hold finds the new quota."""
    server, _ = fake_server("60/min", changes=((60.0, "120/min"),))
    pacer = make_pacer()
    traffic = run(pacer, server, 1500.0)
    assert pacer.limit is not None and (pacer.limit.quota, pacer.limit.window) == (120, 60.0)
    assert traffic.admitted_between(1200, 1500) >= 0.95 * 2 * 300
    requests = len(traffic.admitted) + len(traffic.refused)
    assert len(traffic.refused) <= 0.02 * requests


# -- what an earlier pass learned -------------------------------------------------------------


def test_a_resume_starts_at_the_learned_limit() -> None:
    """A limit kept from an earlier pass: no refusal to relearn it, ≥ 0.97 from the start."""
    server, _ = fake_server("120/min")
    prior = Limit(120, 60.0, False, HOUR_BOUNDARY)
    pacer = make_pacer(prior=prior)
    traffic = run(pacer, server, 240.0)
    assert traffic.refused == []
    assert traffic.admitted_between(0, 240) >= 0.97 * 2 * 240


def test_a_ceiling_below_a_learned_limit_still_holds() -> None:
    """--rate is never exceeded, whatever was learned: 1/s under a prior of 2/s."""
    server, _ = fake_server("120/min")
    pacer = make_pacer(1.0, prior=Limit(120, 60.0, False, HOUR_BOUNDARY))
    traffic = run(pacer, server, 120.0)
    in_any_second = max(
        sum(at <= other < at + 1.0 for other in traffic.departures) for at in traffic.departures
    )
    assert in_any_second <= 1


# -- the model's parts --------------------------------------------------------------------------


def test_a_steady_pace_rules_out_short_windows_at_the_first_refusal() -> None:
    """At 5/s for 24 s, refused at 120: neither 1 s nor 10 s windows can explain it."""
    model = LimitModel(wall_offset=WALL_OFFSET)
    at = START
    for _ in range(120):
        model.admitted(at, at + 0.002)
        at += 0.21  # a little slower than 5/s, so that a 1 s window could not hold 5
    model.refused(at, at + 0.002, in_flight=0)
    standing = {(h.window, h.fixed) for h in model.hypotheses if h.alive}
    assert (1.0, False) not in standing and (10.0, False) not in standing
    assert (60.0, False) in standing
    assert model.limit() is not None and model.limit().quota == 120  # type: ignore[union-attr]


def test_limits_round_trip_through_json_and_junk_is_refused() -> None:
    """What a checkpoint keeps reads back the same; anything else reads back as None."""
    limit = Limit(2000, 3600.0, True, HOUR_BOUNDARY)
    assert Limit.from_json(limit.to_json()) == limit
    for junk in (None, 5, {"quota": "5"}, {"quota": 5, "window": 7, "fixed": None},
                 {"quota": True, "window": 60, "fixed": None, "learned_at": None}):  # fmt: skip
        assert Limit.from_json(junk) is None
    assert describe_limit(limit.to_json()).startswith("2,000 an hour, reset on the clock")
    assert describe_limit(None) is None


@pytest.mark.parametrize(
    ("text", "count", "per"),
    [("5", 5, 1), ("5/s", 5, 1), ("300/min", 300, 60), ("300/m", 300, 60), ("18000/h", 18000, 3600),
     ("0.5", 0.5, 1), (" 2 / minute ", 2, 60)],
)  # fmt: skip
def test_rates_read_in_the_units_api_documents_use(text: str, count: float, per: float) -> None:
    """Every spelling of a rate people copy from API docs reads as the same rate."""
    rate = parse_rate(text)
    assert (rate.count, rate.per) == (count, per)
    assert parse_rate(str(rate)) == rate


@pytest.mark.parametrize("text", ["fast", "5/week", "-1", "5/", "/min", "0/min", "inf"])
def test_a_wrong_rate_is_one_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"must be > 0|cannot read|unknown unit"):
        parse_rate(text)


def test_rates_speak_back_in_their_own_unit() -> None:
    assert parse_rate("300/min").describe() == "300 a minute (5/s)"
    assert parse_rate("18000/h").describe() == "18000 an hour (5/s)"
    assert parse_rate("5").describe() == "5 a second"


# -- the fake API's limiter ---------------------------------------------------------------------


def test_fake_sliding_quota_admits_the_quota_in_any_window() -> None:
    clock = [0.0]
    quota = Quota(Rate(3, 60.0), clock=lambda: clock[0])
    results = []
    for at in (0, 10, 20, 30, 59.9, 60.0, 60.1):
        clock[0] = at
        results.append(quota.admit())
    assert results == [True, True, True, False, False, True, False]
    assert quota.retry_after() == pytest.approx(10.0 + 60.0 - 60.1)


def test_fake_fixed_quota_resets_on_the_wall_clock() -> None:
    clock = [HOUR_BOUNDARY + 50.0]
    quota = Quota(Rate(2, 60.0), fixed=True, clock=lambda: clock[0], wall=lambda: clock[0])
    assert [quota.admit() for _ in range(3)] == [True, True, False]
    assert quota.retry_after() == pytest.approx(10.0)
    clock[0] = HOUR_BOUNDARY + 60.0
    assert quota.admit() is True


def test_fake_quota_changes_after_its_first_request() -> None:
    clock = [0.0]
    quota = Quota(Rate(10, 1.0), changes=[QuotaChange(5.0, Rate(1, 1.0))], clock=lambda: clock[0])
    assert sum(quota.admit() for _ in range(20)) == 10
    clock[0] = 6.0
    assert sum(quota.admit() for _ in range(20)) == 1


def test_the_limit_is_logged_once_when_pinned_not_at_every_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A limit that halves is narrowed down request by request: one log line for the old limit,
    one for the new, none for the quotas in between."""
    server, _ = fake_server("120/min", changes=((120.0, "60/min"),))
    with caplog.at_level(logging.INFO, logger="engine.pacing"):
        run(make_pacer(), server, 420.0)
    learned = [r.getMessage() for r in caplog.records if "server limit ≈" in r.getMessage()]
    assert [line.split(";")[0] for line in learned] == [
        "server limit ≈ 120 a minute, sliding window",
        "server limit ≈ 60 a minute, sliding window",
    ]
