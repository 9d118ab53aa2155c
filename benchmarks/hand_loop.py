"""The baseline: the short aiohttp script anyone would write for the job, without ozbulk.

It does what ``ozbulk delete`` does on a healthy server, in the plainest way: stream the CSV with
:mod:`csv`, keep the digits of the phone column, accept 10-digit Indian mobiles (after dropping a
leading ``0``/``91``), skip duplicates with a ``set``, cut chunks of 100, and let N workers send
one DELETE each with ``json=`` and read the verdict with ``response.json()``. No checkpoint, no
pacing, no retries, no report: everything ozbulk adds is missing here, which is the point.

It imports nothing from ``engine`` so that it measures aiohttp and the standard library alone.
Prints one JSON line: rows read, numbers sent, requests, failures, seconds (after imports).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import sys
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp

NON_DIGITS = re.compile(r"\D")


async def produce(
    path: str, column: int, queue: asyncio.Queue[list[str] | None], counts: dict[str, int]
) -> None:
    seen: set[str] = set()
    chunk: list[str] = []
    # Blocking reads between awaits, as ozbulk's producer does too: a local file is fast.
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:  # noqa: ASYNC230
        reader = csv.reader(handle)
        next(reader, None)  # the header
        for row in reader:
            counts["rows"] += 1
            digits = NON_DIGITS.sub("", row[column]) if column < len(row) else ""
            if len(digits) == 12 and digits.startswith("91"):
                digits = digits[2:]
            elif len(digits) == 11 and digits.startswith("0"):
                digits = digits[1:]
            if len(digits) != 10 or digits[0] not in "6789" or digits in seen:
                continue
            seen.add(digits)
            chunk.append("91" + digits)
            if len(chunk) == 100:
                await queue.put(chunk)
                chunk = []
    if chunk:
        await queue.put(chunk)


async def work(
    session: aiohttp.ClientSession,
    url: str,
    user: str,
    group_id: int,
    queue: asyncio.Queue[list[str] | None],
    counts: dict[str, int],
) -> None:
    while (chunk := await queue.get()) is not None:
        body = {"userName": user, "id": group_id, "blockNumbers": chunk}
        async with session.delete(url, json=body) as response:
            answer = await response.json()
        counts["requests"] += 1
        if answer.get("status") == "success":
            counts["sent"] += len(chunk)
            counts["deleted"] += answer["output"]["deleted"]
        else:
            counts["failed"] += 1


async def main(args: argparse.Namespace) -> dict[str, float]:
    counts = {"rows": 0, "sent": 0, "deleted": 0, "requests": 0, "failed": 0}
    queue: asyncio.Queue[list[str] | None] = asyncio.Queue(maxsize=2 * args.concurrency)
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    headers = {"apiKey": args.api_key}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        url = args.base_url.rstrip("/") + "/ca_apis/deleteBlockNumberGroup"
        workers = [
            work(session, url, args.user, args.group_id, queue, counts)
            for _ in range(args.concurrency)
        ]
        await run_workers(workers, args, queue, counts)
    return {**counts, "elapsed_s": time.perf_counter() - started}


async def run_workers(
    workers: list[Coroutine[Any, Any, None]],
    args: argparse.Namespace,
    queue: asyncio.Queue[list[str] | None],
    counts: dict[str, int],
) -> None:
    """Run the workers while the producer fills their queue, then end each with a None."""
    tasks = [asyncio.create_task(worker) for worker in workers]
    await produce(args.input, args.column, queue, counts)
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)


def command_line(description: str | None) -> argparse.Namespace:
    """The options both baselines take (``bare_loop.py`` too)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("input")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--user", default="bench")
    parser.add_argument("--group-id", type=int, default=1)
    parser.add_argument("--api-key", default="bench-key")
    parser.add_argument("--column", type=int, default=1, help="0-based index of the phone column")
    parser.add_argument("--concurrency", type=int, default=16)
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(command_line(__doc__)))))
    sys.exit(0)
