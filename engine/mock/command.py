"""`ozbulk mock-server`: run the fake Ozonetel API in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path

from engine.mock.quota import QuotaChange
from engine.mock.state import (
    AUTH_MODES,
    DEFAULT_API_KEY,
    DEFAULT_GROUP_ID,
    DEFAULT_GROUP_NAME,
    DEFAULT_HANG_S,
    DEFAULT_TOKEN_BUDGET,
    DEFAULT_TOKEN_TTL,
    DEFAULT_USER,
    FAULT_KINDS,
    RATE_LIMIT_STYLES,
    MockConfig,
    MockState,
    generate_mobile_numbers,
)
from engine.rates import Rate, parse_rate

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
EXIT_USAGE = 2
EXIT_CANNOT_LISTEN = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `ozbulk mock-server` on `parser`."""
    listen = parser.add_argument_group("listening")
    listen.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)"
    )
    listen.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="TCP port; 0 picks any free one, which the startup line names (default: %(default)s)",
    )

    account = parser.add_argument_group("account")
    account.add_argument(
        "--user", default=DEFAULT_USER, help="the account's userName (default: %(default)s)"
    )
    account.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        help="the apiKey clients must send (default: the demo key; it is never printed)",
    )
    account.add_argument(
        "--auth-mode",
        choices=AUTH_MODES,
        default="apikey",
        help="apikey: every call sends the apiKey header; token: calls send a Bearer token from "
        "generateToken (default: %(default)s)",
    )
    account.add_argument(
        "--token-ttl",
        type=float,
        default=DEFAULT_TOKEN_TTL,
        metavar="SECONDS",
        help="how long a token lives (default: %(default)s, Ozonetel's hour)",
    )
    account.add_argument(
        "--token-budget",
        type=int,
        default=DEFAULT_TOKEN_BUDGET,
        metavar="N",
        help="tokens the account may generate per rolling hour (default: %(default)s)",
    )

    group = parser.add_argument_group("the block-number group")
    group.add_argument(
        "--group-id",
        type=int,
        default=DEFAULT_GROUP_ID,
        help="id of the group created at start (default: %(default)s)",
    )
    group.add_argument(
        "--group-name",
        default=DEFAULT_GROUP_NAME,
        help="name of that group, as updateBlockNumbers addresses it (default: %(default)s)",
    )
    group.add_argument(
        "--seed-csv",
        type=Path,
        metavar="PATH",
        help="fill the group with the numbers of this CSV, read exactly as `ozbulk delete` "
        "reads it (phone column detected, bad rows skipped)",
    )
    group.add_argument(
        "--seed-count",
        type=int,
        default=0,
        metavar="N",
        help="also fill the group with N random distinct 10-digit Indian mobile numbers "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--random-seed",
        type=int,
        default=0,
        metavar="INT",
        help="seed for --seed-count numbers and for which calls get faults, so runs repeat "
        "(default: %(default)s)",
    )

    misbehave = parser.add_argument_group("misbehaviour")
    misbehave.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="wait this long before answering each API call (default: %(default)s)",
    )
    misbehave.add_argument(
        "--rate-limit",
        type=_rate,
        metavar="RATE",
        help="admit at most this many API requests per second, minute or hour: 50 (= 50/s), "
        "120/min, 2000/h; counted over a sliding window unless --rate-limit-reset; refused "
        "requests do not count (default: no limit)",
    )
    misbehave.add_argument(
        "--rate-limit-reset",
        action="store_true",
        help="count the limit with a counter reset at each wall-clock second, minute or hour "
        "(as many APIs do) instead of over a sliding window",
    )
    misbehave.add_argument(
        "--rate-limit-change",
        type=_rate_change,
        action="append",
        default=[],
        metavar="SECONDS:RATE",
        help="from SECONDS after the first request on, the limit is RATE (e.g. 120:60/min "
        "halves 120/min after two minutes); may be given several times",
    )
    misbehave.add_argument(
        "--rate-limit-style",
        choices=RATE_LIMIT_STYLES,
        default="http",
        help="how a refused request is answered: http = HTTP 429 with a Retry-After saying "
        "when the limit admits again; http-bare = HTTP 429 without Retry-After; body = HTTP "
        '200 with {"status":"error","message":"Max limit exceeded"}, as Ozonetel answers its '
        "other calls (default: %(default)s)",
    )
    misbehave.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="fraction (0..1) of delete calls that get a fault (default: %(default)s)",
    )
    misbehave.add_argument(
        "--fault-kinds",
        type=_comma_list,
        default=FAULT_KINDS,
        metavar="A,B",
        help=f"faults to draw from, comma-separated (default: all of {','.join(FAULT_KINDS)})",
    )
    misbehave.add_argument(
        "--hang-s",
        type=float,
        default=DEFAULT_HANG_S,
        metavar="SECONDS",
        help="how long a 'hang' fault waits before answering (default: %(default)s)",
    )


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _rate(text: str) -> Rate:
    try:
        return parse_rate(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--rate-limit {error}") from None


def _rate_change(text: str) -> tuple[float, Rate]:
    after, colon, rate = text.partition(":")
    try:
        seconds = float(after)
    except ValueError:
        seconds = -1.0
    if not colon or not (math.isfinite(seconds) and seconds >= 0):
        raise argparse.ArgumentTypeError(
            f"--rate-limit-change takes SECONDS:RATE, e.g. 120:60/min (got {text!r})"
        )
    return seconds, _rate(rate)


def config_from_args(args: argparse.Namespace) -> MockConfig:
    """The `MockConfig` the flags describe; ValueError (saying the fix) if they are invalid."""
    return MockConfig(
        user=args.user,
        api_key=args.api_key,
        auth_mode=args.auth_mode,
        group_id=args.group_id,
        group_name=args.group_name,
        token_ttl=args.token_ttl,
        token_budget=args.token_budget,
        latency_ms=args.latency_ms,
        rate_limit=None if args.rate_limit is None else args.rate_limit.count,
        rate_limit_window=1.0 if args.rate_limit is None else args.rate_limit.per,
        rate_limit_reset=args.rate_limit_reset,
        rate_limit_changes=[QuotaChange(after, rate) for after, rate in args.rate_limit_change],
        rate_limit_style=args.rate_limit_style,
        fault_rate=args.fault_rate,
        fault_kinds=args.fault_kinds,
        fault_seed=args.random_seed,
        hang_s=args.hang_s,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; 0 then, 2 on bad flags or seed file, 1 if it cannot listen."""
    # Imported here, not with the module: the CLI builds this command's options for every
    # command, `--help` included, and those must start without the event loop or the producer.
    import asyncio

    from engine.batcher import accepted_numbers

    try:
        config = config_from_args(args)
        if args.seed_count < 0:
            raise ValueError(f"--seed-count must be >= 0 (got {args.seed_count})")
        state = MockState(config)
        if args.seed_csv is not None:
            state.seed(config.group_id, accepted_numbers((str(args.seed_csv),)))
        if args.seed_count:
            state.seed(config.group_id, generate_mobile_numbers(args.seed_count, args.random_seed))
    except ValueError as error:
        print(f"ozbulk mock-server: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"ozbulk mock-server: cannot read --seed-csv: {error}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_serve(state, args.host, args.port))


async def _serve(state: MockState, host: str, port: int) -> int:
    import asyncio

    from engine.mock.server import MockServer  # aiohttp.web: only when a server is run

    server = MockServer(host=host, port=port, state=state)
    try:
        await server.start()
    except OSError as error:
        print(
            f"ozbulk mock-server: cannot listen on {host}:{port}: {error.strerror or error}; "
            "use --port 0 for any free port",
            file=sys.stderr,
        )
        return EXIT_CANNOT_LISTEN
    try:
        group_id = state.config.group_id
        print(
            f"ozbulk mock-server listening on {server.url} "
            f"(group {group_id}: {state.remaining(group_id)} numbers)",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
    finally:
        await server.stop()
    return 0
