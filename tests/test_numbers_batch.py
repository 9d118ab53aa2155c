"""engine.numbers' mixed-batch path: what indian_mobile decides, cell by cell, for any batch.

``_mixed_indian_mobiles`` reads a whole batch at C speed; these tests hold it to the per-cell
reference (``indian_mobile``, -1 for a missing cell) and ``normalize_batch`` to ``normalize``.
"""

from __future__ import annotations

from collections.abc import Sequence
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.numbers import _WIDTH, Normalizer, Rejected, _mixed_indian_mobiles, indian_mobile
from engine.sample import BAD_VALUES

E164 = 919876543210


def per_cell(cells: Sequence[str | None]) -> list[int]:
    """The reference: what indian_mobile decides for each cell, -1 for a missing one."""
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


def read_whole(cells: Sequence[str | None]) -> list[int] | None:
    """The whole-batch answer, however many cells are bad (a real batch that is mostly bad is
    declined, which would leave the tests' small junk-laden batches unchecked)."""
    with mock.patch("engine.numbers._most_undecided", return_value=len(cells) * _WIDTH):
        return _mixed_indian_mobiles(cells)


def assert_agrees(cells: Sequence[str | None]) -> None:
    """The whole-batch answer is the per-cell one; only a cell with a line break declines."""
    mixed = read_whole(cells)
    if any(cell is not None and "\n" in cell for cell in cells):
        assert mixed is None
    else:
        assert mixed == per_cell(cells)


def styled(style: str, national: str) -> str:
    return style.format(n=national, a=national[:5], b=national[5:], c=national[6:])


NATIONALS = st.integers(6_000_000_000, 9_999_999_999).map(str)
# Ten characters that are not an Indian mobile: a first digit 0-5, or one character that int()
# or str.isdigit() would take (or that is simply wrong) in place of a digit.
BAD_NATIONALS = st.one_of(
    st.integers(0, 5_999_999_999).map("{:010d}".format),
    st.builds(
        lambda national, at, character: national[:at] + character + national[at + 1 :],
        NATIONALS,
        st.integers(0, 9),
        st.sampled_from(["+", "_", "\t", "\r", "?", "a", "\u00b2", "\u0966", "\uff19", "/"]),
    ),
)
# Every way indian_mobile accepts, with its separators anywhere...
ACCEPTED = st.sampled_from(
    ["{n}", "0{n}", "91{n}", "+91{n}", "0091{n}", "+91 {a} {b}", "91-{a}-{b}", "({a}) {b}",
     "{a}.{b}", "0091 ({a}) {b}", " {n} ", "+91{n}.", "0-{a}-{b}", "+ 91{n}", "9-1{n}",
     "0 091{n}", "(+91) {n}", "..{n}--"]
)  # fmt: skip
# ...and the near misses it must leave undecided: a "+" not before 91 or not alone, 13 digits
# without "+", 14 characters starting "+0", other prefixes and lengths, characters int() or
# str.isdigit() would take but indian_mobile does not (_, whitespace, non-ASCII digits).
NEAR_MISSES = st.sampled_from(
    ["+{n}", "091{n}", "+091{n}", "+0091{n}", "9191{n}", "+9191{n}", "00{n}", "1{n}", "{a}",
     "{n}0", "+91{a}", "{a}+{b}", "{n}+", "9{n}", "+9{n}", "+91+{n}", "++91{n}", "0+91{n}",
     "91+{n}", "{a}_{b}", "_{n}", "{n}\t", "\t{n}", "{n}\r", "{n}\x0b", "{n}\u00a0",
     "\u00b2{n}", "{a}\u0966{b}", "{a}\u00b2{b}", "91{a}", "+91{n}0", "0091{n}1", "00091{n}",
     "+910{n}", "91 0{n}", "{a}\n{b}", "{n}\n", "99{n}", "88{n}", "+99{n}", "0099{n}",
     "9991{n}", "5591{n}", "1191{n}", "+191{n}", "0+91{n}", "9+91{n}", "{a}+{c}", "{a}_{c}",
     "0{a}+{c}", "91{a}_{c}", "+91{a}\u00b2{c}", "0091{a}+{c}"]
)  # fmt: skip
FULL_WIDTH = "".join(chr(0xFF10 + int(digit)) for digit in "9876543210")  # full-width digits
JUNK = st.sampled_from(
    ["", " ", "n/a", "12345", "9.19E+11", "98765-ABCDE", "-", "+", "()", "0", "91", "+91",
     "0091", "5876543210", "1234567890", "१२३४५६७८९०", FULL_WIDTH, "x" * 60, "?" * 14,
     "??????????", " +919876543210", "+919876543210 ext 5", "%s", "%14s"]
)  # fmt: skip
CELLS = st.one_of(
    st.builds(styled, ACCEPTED, NATIONALS),
    st.builds(styled, NEAR_MISSES, NATIONALS),
    st.builds(styled, ACCEPTED, BAD_NATIONALS),
    JUNK,
    st.none(),
    st.text(alphabet="0123456789+-. ()\n\t_१²a", max_size=18),
    st.text(max_size=18),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(CELLS, max_size=60))
def test_mixed_batch_decides_exactly_as_indian_mobile_cell_by_cell(cells):
    """Any batch of any cells: the whole-batch answer is indian_mobile's for each cell."""
    assert_agrees(cells)


@settings(max_examples=150, deadline=None)
@given(st.lists(CELLS, max_size=40))
def test_normalize_batch_still_gives_what_normalize_gives_cell_by_cell(cells):
    """Accepted numbers and (position, reason) rejects are unchanged by the whole-batch path."""
    expected = cell_by_cell(cells)
    assert Normalizer("IN").normalize_batch(cells) == expected
    with mock.patch("engine.numbers._most_undecided", return_value=len(cells) * _WIDTH):
        assert Normalizer("IN").normalize_batch(cells) == expected  # never declined for junk


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.builds(styled, ACCEPTED, NATIONALS), min_size=300, max_size=1000),
    st.lists(st.tuples(st.integers(0, 999), st.one_of(JUNK, st.none())), max_size=10),
)
def test_a_batch_like_a_real_files_is_decided_whole(numbers, junk):
    """Mostly numbers in every style, a little junk anywhere: the per-cell answer, in one go."""
    cells: list[str | None] = list(numbers)
    for position, cell in junk:
        cells.insert(position % (len(cells) + 1), cell)
    assert_agrees(cells)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("+919876543210", E164),
        ("+91 98765 43210", E164),
        ("0091 (98765) 43210", E164),
        ("0-98765-43210", E164),
        ("9876543210", E164),
        ("0919876543210", -1),  # 13 digits without "+"
        ("9919876543210", -1),
        ("+0919876543210", -1),  # 14 characters starting "+0"
        ("+9876543210", -1),  # "+" before a national number
        ("+9191234567", -1),  # "+91" and 8 digits: its last ten would pass as a national number
        ("+91+876543210", -1),
        ("9876+43210", -1),  # a "+" inside the national number
        ("919876_43210", -1),
        ("05876543210", -1),  # a national number starting 5
        ("9991" + "9876543210", -1),  # prefixes that look right column by column
        ("5591" + "9876543210", -1),
        ("99" + "9876543210", -1),
        ("+99" + "9876543210", -1),
        ("98765_43210", -1),  # int() reads "_" between digits
        ("9876543210\t", -1),  # int() strips surrounding whitespace
        ("\u00b99876543210", -1),  # str.isdigit() takes a superscript
        ("९८७६५४३२१०", -1),  # int() reads Devanagari digits
        ("98765\u00a043210", -1),  # a no-break space is not one of " -()."
        ("00919876543210000", -1),  # longer than any row: must not shift the rows after it
        ("", -1),
        (None, -1),
    ],
)
def test_each_trap_between_good_neighbours(cell, expected):
    """Each trap is decided as indian_mobile decides it; its neighbours' answers are unmoved."""
    cells = ["9876543211", "+91 98765 43212", cell, "09876543213", "91-98765-43214"]
    assert read_whole(cells) == [E164 + 1, E164 + 2, expected, E164 + 3, E164 + 4]
    assert_agrees(cells)


def test_a_batch_like_the_benchmarks_is_read_whole():
    """A thousand numbers in every style and a few of the benchmark's bad values: no decline."""
    nationals = [str(9_000_000_000 + 7_919 * index) for index in range(1000)]
    cells: list[str | None] = [
        styled(("{n}", "+91 {a} {b}", "0{n}", "91-{a}-{b}")[index % 4], national)
        for index, national in enumerate(nationals)
    ]
    for index, bad in enumerate(BAD_VALUES):
        cells[index * 150] = bad
    cells[999] = None
    expected = [910_000_000_000 + int(national) for national in nationals]
    for index in range(len(BAD_VALUES)):
        expected[index * 150] = -1
    expected[999] = -1
    assert _mixed_indian_mobiles(cells) == expected == per_cell(cells)


@pytest.mark.parametrize(
    "cells",
    [
        [f"customer {index}" for index in range(200)],  # the wrong column
        [f"+1 212 555 {index:04d}" for index in range(200)],  # another country's numbers
        [f"+44 7911 {index:06d}" for index in range(200)],  # only the prefix is wrong
        [f"81 98765 {index:05d}" for index in range(200)],  # a prefix of the allowed characters
        [f"{index:012d}" for index in range(200)],
        [f"5{index:09d}" for index in range(200)],  # only the national numbers are wrong
    ],
    ids=["names", "US numbers", "UK numbers", "81", "zeros", "starting 5"],
)
def test_a_batch_of_something_else_goes_cell_by_cell(cells):
    """Mostly not Indian mobiles: declined (searching each bad row would cost more)."""
    assert _mixed_indian_mobiles(cells) is None
    assert Normalizer("IN").normalize_batch(cells[:20]) == cell_by_cell(cells[:20])


def test_a_cell_with_a_line_break_sends_the_batch_cell_by_cell():
    """A line break inside a cell would shift every row after it, so the batch is declined."""
    cells = ["9876543210", "98765\n43210", "9876543211"]
    assert _mixed_indian_mobiles(cells) is None
    assert Normalizer("IN").normalize_batch(cells) == cell_by_cell(cells)


def test_repeated_junk_is_decided_once():
    """The slow path's answer for a cell is remembered: the same junk costs one decision."""
    india = Normalizer("IN")
    cells = ["n/a", "9876543210", "n/a", "12345", "n/a", "12345"]
    with mock.patch.object(india, "_slow", wraps=india._slow) as slow:
        first = india.normalize_batch(cells)
        second = india.normalize_batch(cells)
    assert first == second == cell_by_cell(cells)
    assert sorted(call.args[0] for call in slow.call_args_list) == ["12345", "n/a"]


def test_remembered_decisions_are_bounded():
    """Only so many decisions are kept, none for an over-long cell; the answers are unchanged."""
    india = Normalizer("IN")
    cells = ["x" * 60, "abc", "12", "n/a", "abc", "5"]
    with mock.patch("engine.numbers._DECIDED_CELLS", 2):
        assert india.normalize_batch(cells) == cell_by_cell(cells)
    assert set(india._decided) == {"abc", "12"}
