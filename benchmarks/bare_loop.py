"""The floor: the same job as ``hand_loop.py`` with no HTTP library at all, on asyncio streams.

Each worker keeps one keep-alive connection, writes a hand-built ``DELETE`` (head and body in one
write) and reads the answer by its ``Content-Length``; no parsing beyond that, no verdict check
beyond ``"status":"success"``. It is not a client anyone should use: it is what asyncio and the
server cost by themselves, so the latency benchmark can show how close to the ideal any Python
client can come on this machine.

Prints one JSON line, like ``hand_loop.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import orjson

from benchmarks.hand_loop import command_line, run_workers


async def work(
    host: str,
    port: int,
    head: bytes,
    prefix: bytes,
    queue: asyncio.Queue[list[str] | None],
    counts: dict[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (chunk := await queue.get()) is not None:
            body = prefix + orjson.dumps(chunk) + b"}"
            writer.write(head % len(body) + body)
            answer_head = await reader.readuntil(b"\r\n\r\n")
            length = int(answer_head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            answer = await reader.readexactly(length)
            counts["requests"] += 1
            if b'"status":"success"' in answer:
                counts["sent"] += len(chunk)
            else:
                counts["failed"] += 1
    finally:
        writer.close()


async def main(args: argparse.Namespace) -> dict[str, float]:
    counts = {"rows": 0, "sent": 0, "requests": 0, "failed": 0}
    queue: asyncio.Queue[list[str] | None] = asyncio.Queue(maxsize=2 * args.concurrency)
    started = time.perf_counter()
    url = urlsplit(args.base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    path = url.path.rstrip("/") + "/ca_apis/deleteBlockNumberGroup"
    head = (
        f"DELETE {path} HTTP/1.1\r\nHost: {host}:{port}\r\napiKey: {args.api_key}\r\n"
        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    ).encode()
    prefix = orjson.dumps({"userName": args.user, "id": args.group_id})[:-1] + b',"blockNumbers":'
    workers = [work(host, port, head, prefix, queue, counts) for _ in range(args.concurrency)]
    await run_workers(workers, args, queue, counts)
    return {**counts, "elapsed_s": time.perf_counter() - started}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(command_line(__doc__)))))
    sys.exit(0)
