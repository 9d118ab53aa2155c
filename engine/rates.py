"""Request rates in the units API documents use: ``5``, ``5/s``, ``300/min``, ``18000/h``.

A :class:`Rate` keeps the unit it was given in, so the plan, ``config show``, ``status`` and the
progress speak back in the words the user wrote (``300 a minute (5/s)``), while the engine works
in requests per second.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Each unit's length in seconds, under every spelling accepted.
UNITS: dict[str, float] = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
}  # fmt: skip
UNIT_WORDS = {1.0: "a second", 60.0: "a minute", 3600.0: "an hour"}
_FORM = re.compile(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([A-Za-z]+))?\s*")
HINT = "give requests per second (5), or with a unit: 5/s, 300/min, 18000/h"


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests every ``per`` seconds, as the user wrote it."""

    count: float
    per: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.count) and self.count > 0):
            raise ValueError(f"must be > 0 (got {self.count:g}); {HINT}")
        if self.per not in UNIT_WORDS:
            raise ValueError(f"must count per second, minute or hour (got per {self.per:g} s)")

    @property
    def per_second(self) -> float:
        return self.count / self.per

    def __str__(self) -> str:
        """The option's own spelling, which :func:`parse_rate` reads back: ``300/min``."""
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}[self.per]
        return f"{self.count:g}" if self.per == 1.0 else f"{self.count:g}/{unit}"

    def describe(self) -> str:
        """For people: ``300 a minute (5/s)``, ``5 a second``."""
        words = f"{self.count:g} {UNIT_WORDS[self.per]}"
        return words if self.per == 1.0 else f"{words} ({per_second_text(self.per_second)})"


def pace_text(per_second: float, per: float = 1.0) -> str:
    """A pace in the unit people think of it in: ``117.6/min``, ``5/s``, ``2,000/h``."""
    if per == 1.0:
        return per_second_text(per_second)
    count = per_second * per
    unit = "min" if per == 60.0 else "h"
    return (f"{count:.4g}" if count < 1000 else f"{count:,.0f}") + f"/{unit}"


def per_second_text(per_second: float) -> str:
    """``5/s``, ``0.033/s``: enough digits to tell a slow pace from a stop."""
    return f"{per_second:.3g}/s" if per_second < 10 else f"{per_second:,.0f}/s"


def parse_rate(text: str) -> Rate:
    """Read ``5``, ``5/s``, ``300/min``, ``300/m``, ``18000/h``; ValueError says how to fix it.

    Its message reads on from the option's name: ``--rate must be > 0 (got -2); ...``.
    """
    match = _FORM.fullmatch(text)
    if match is None:
        raise ValueError(f"cannot read {text!r} as a rate; {HINT}")
    number, unit = match.groups()
    per = 1.0 if unit is None else UNITS.get(unit.lower())
    if per is None:
        raise ValueError(f"has an unknown unit {unit!r} in {text!r}; {HINT}")
    return Rate(float(number), per)
