"""engine.numbers' mixed-batch path: exactly what indian_mobile decides, cell by cell, for any batch.

``_mixed_indian_mobiles`` reads a whole batch at C speed; these tests hold it to the per-cell
reference (``indian_mobile``, -1 for a missing cell) and ``normalize_batch`` to ``normalize``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.numbers import Normalizer, Rejected, _mixed_indian_mobiles, indian_mobile

E164 = 919876543210


def per_cell(cells: Sequence[str | None]) -> list[int]:
    return [-1 if cell is None else indian_mobile(cell) for cell in cells]


def cell_by_cell(cells: Sequence[str | None]) -> tuple[list[int], list[tuple[int, str]]]:
    """What normalize_batch must return: normalize's answer for each cell, in order."""
    india = Normalizer("IN")
    numbers: list[int] = []
    rejects: list[tuple[int, str]] = []
    for position, cell in enumerate(cells):
        try:
            numbers.append(india.normalize(cell))
        except Rejected as rejected:
            rejects.append((position, rejected.reason))
    return numbers, rejects


def agrees(cells: Sequence[str | None]) -> None:
    mixed = _mixed_indian_mobiles(cells)
    if mixed is not None:
        assert mixed == per_cell(cells)


NATIONALS = st.integers(6_000_000_000, 9_999_999_999).map(str)
# Every accepted style, and the near misses that must stay undecided.
STYLES = st.sampled_from(
    ["{n}", "0{n}", "91{n}", "+91{n}", "0091{n}", "+91 {a} {b}", "91-{a}-{b}", "({a}) {b}",
     "{a}.{b}", "0091 ({a}) {b}", " {n} ", "+91{n}.", "+{n}", "091{n}", "+091{n}", "+0091{n}",
     "9191{n}", "+9191{n}", "00{n}", "1{n}", "{a}", "{n}0", "+91{a}", "{a}+{b}", "{n}+",
     "9{n}", "+9{n}", "0 091{n}", "+ 91{n}", "9-1{n}", "{a}_{b}", "{n}\t", "\t{n}", "{n}\r",
     "{a}\n{b}", "{n}\u00a0", "\u00b2{n}", "{a}\u0966{b}", "+91+{n}", "++91{n}"]
)  # fmt: skip
JUNK = st.sampled_from(
    ["", " ", "n/a", "12345", "9.19E+11", "98765-ABCDE", "-", "+", "()", "0", "91", "+91",
     "0091", "5876543210", "१२३४५६७८९०", "９８７６５４３２１０", "x" * 60, "?" * 14, "??????????",
     "987654321_0", " +919876543210", "+919876543210 ext 5"]
)  # fmt: skip
CELLS = st.one_of(
    st.builds(
        lambda style, n: style.format(n=n, a=n[:5], b=n[5:]), STYLES, NATIONALS
    ),
    JUNK,
    st.none(),
    st.text(alphabet="0123456789+-. ()\n\t9१²_a", max_size=16),
    st.text(max_size=16),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(CELLS, max_size=60))
def test_mixed_batch_decides_exactly_as_indian_mobile_cell_by_cell(cells):
    """Any batch of any cells: the whole-batch answer is indian_mobile's for each cell."""
    agrees(cells)


@settings(max_examples=150, deadline=None)
@given(st.lists(CELLS, max_size=40))
def test_normalize_batch_still_gives_what_normalize_gives_cell_by_cell(cells):
    """Accepted numbers and (position, reason) rejects are unchanged by the whole-batch path."""
    assert Normalizer("IN").normalize_batch(cells) == cell_by_cell(cells)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.builds(lambda style, n: style.format(n=n, a=n[:5], b=n[5:]), STYLES, NATIONALS), min_size=200, max_size=400), st.lists(JUNK, max_size=8))
def test_a_batch_of_mostly_good_numbers_is_answered_whole(goods, junk):
    """A batch like a real file's (mostly numbers, a little junk) takes the whole-batch path."""
    cells = [*goods, *junk]
    mixed = _mixed_indian_mobiles(cells)
    if "\n" not in "".join(cells):
        assert mixed is not None
    agrees(cells)
