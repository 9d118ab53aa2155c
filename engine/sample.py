"""Realistic sample input: Indian mobile numbers written the ways people write them.

Most rows are clean; a few are written with spaces, dashes, a leading 0 or +91; a few repeat an
earlier number; a few are bad (letters, too short, Excel's scientific notation, empty). The same
``seed`` always gives the same file.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import TextIO

DUPLICATE_SHARE = 0.01
BAD_SHARE = 0.005
BAD_VALUES = ("n/a", "12345", "9.19E+11", "", "98765-ABCDE", "+91 98765 4321 ext 12")


def _styles(national: str) -> list[str]:
    return [
        national,
        national,
        national,
        f"+91 {national[:5]} {national[5:]}",
        f"0{national}",
        f"91-{national[:5]}-{national[5:]}",
        f"({national[:5]}) {national[5:]}",
    ]


def write_sample(out: TextIO, rows: int, seed: int = 7) -> dict[str, int]:
    """Write ``rows`` data rows (plus a header); return how many of each kind were written."""
    rng = random.Random(seed)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "phone", "source"])
    written: list[str] = []
    kinds = {"unique": 0, "duplicate": 0, "bad": 0}
    for index in range(rows):
        roll = rng.random()
        if roll < BAD_SHARE:
            value, kind = rng.choice(BAD_VALUES), "bad"
        elif roll < BAD_SHARE + DUPLICATE_SHARE and written:
            value, kind = rng.choice(written[-1000:]), "duplicate"
        else:
            national = f"{rng.randint(6, 9)}{rng.randrange(10**9):09d}"
            value, kind = rng.choice(_styles(national)), "unique"
            written.append(national)
        kinds[kind] += 1
        writer.writerow([f"customer {index + 1}", value, rng.choice(("crm", "web", "import"))])
    return kinds


def write_sample_file(path: Path, rows: int, seed: int = 7) -> dict[str, int]:
    with path.open("w", newline="", encoding="utf-8") as handle:
        return write_sample(handle, rows, seed)
