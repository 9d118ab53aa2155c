"""Benchmark inputs: large CSVs of Indian mobile numbers, generated fast, never committed.

``engine.sample.write_sample_file`` writes the same kind of file (the same column layout, the
same ways of writing a number, about 1 % duplicates and 0.5 % bad rows) but draws every row
through ``random`` and ``csv.writer``: about 0.18 M rows/s here, a minute for the 10 M-row input.
This draws the numbers with numpy a block at a time and formats rows with plain f-strings, about
three times faster. Run as ``python -m benchmarks.data PATH ROWS`` (what the suite does, so that
numpy stays out of the measuring process) it prints the kinds as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

BLOCK = 200_000
DUPLICATE_SHARE = 0.01
BAD_SHARE = 0.005
BAD_VALUES = ("n/a", "12345", "9.19E+11", "", "98765-ABCDE")
SOURCES = ("crm", "web", "import")


def _styled(national: str, style: int) -> str:
    """One of the ways people write a number; plain digits most often (as in engine.sample)."""
    if style < 4:
        return national
    if style == 4:
        return f'"+91 {national[:5]} {national[5:]}"'
    if style == 5:
        return f"0{national}"
    return f"91-{national[:5]}-{national[5:]}"


def write_numbers_csv(path: Path, rows: int, seed: int = 7) -> dict[str, int]:
    """Write ``rows`` data rows (``name,phone,source``); return how many of each kind."""
    rng = np.random.default_rng(seed)
    kinds = {"unique": 0, "duplicate": 0, "bad": 0}
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("name,phone,source\n")
        for start in range(0, rows, BLOCK):
            size = min(BLOCK, rows - start)
            nationals = rng.integers(6_000_000_000, 10_000_000_000, size=size)
            roll = rng.random(size)
            bad = roll < BAD_SHARE
            wanted = ~bad & (roll < BAD_SHARE + DUPLICATE_SHARE)
            # A duplicate repeats a number from earlier in the block, as a re-export would; its
            # source is a good row that is no duplicate itself, so the counts below are exact.
            earlier = (rng.random(size) * np.arange(size)).astype(np.int64)
            duplicate = wanted & ~bad[earlier] & ~wanted[earlier] & (np.arange(size) > 0)
            nationals[duplicate] = nationals[earlier[duplicate]]
            styles = rng.integers(0, 7, size=size).tolist()
            bad_values = rng.integers(0, len(BAD_VALUES), size=size).tolist()
            lines = []
            for offset, (national, kind_roll, style) in enumerate(
                zip(nationals.tolist(), roll.tolist(), styles, strict=True)
            ):
                index = start + offset
                if kind_roll < BAD_SHARE:
                    value = BAD_VALUES[bad_values[offset]]
                else:
                    value = _styled(str(national), style)
                lines.append(f"customer {index + 1},{value},{SOURCES[index % 3]}\n")
            out.write("".join(lines))
            bad_count = int(bad.sum())
            duplicate_count = int(duplicate.sum())
            kinds["bad"] += bad_count
            kinds["duplicate"] += duplicate_count
            kinds["unique"] += size - bad_count - duplicate_count
    return kinds


if __name__ == "__main__":
    print(json.dumps(write_numbers_csv(Path(sys.argv[1]), int(sys.argv[2]))))
