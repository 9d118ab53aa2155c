"""One producer measurement in its own process: ``python -m benchmarks.producer_run STAGE FILE``.

The stages add one step each, so their differences show where the producer's time goes:

``read``       ``CsvSource.batches()``: decode, parse CSV, pick the phone column
``normalize``  the above, plus ``Normalizer.normalize_batch`` on every batch (the producer's path)
``full``       ``Producer(...).chunks()``: the above, plus dedupe (roaring bitmap) and chunking,
               exactly what ``ozbulk delete`` runs before the network

No network, no event loop; the parent pins this process to one core. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

from engine.batcher import Producer
from engine.numbers import Normalizer
from engine.settings import InputSettings
from engine.source import CsvSource

STAGES = ("read", "normalize", "full")


def measure(stage: str, path: str) -> dict[str, float | int | str]:
    normalizer = Normalizer()
    rows = accepted = chunks = 0
    wall, cpu = time.perf_counter(), time.process_time()
    source = CsvSource(path, None, normalizer.looks_like_phone)
    if stage == "read":
        for _lines, cells in source.batches():
            rows += len(cells)
        accepted = rows
    elif stage == "normalize":
        normalize_batch = normalizer.normalize_batch
        for _lines, cells in source.batches():
            rows += len(cells)
            accepted += len(normalize_batch(cells)[0])
    else:
        producer = Producer(InputSettings(paths=(path,)), normalizer, lambda _reject: None)
        for _chunk in producer.chunks():
            chunks += 1
        rows, accepted = producer.counts.rows, producer.counts.accepted
    return {
        "stage": stage,
        "rows": rows,
        "accepted": accepted,
        "chunks": chunks,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("input")
    args = parser.parse_args()
    print(json.dumps(measure(args.stage, args.input)))
