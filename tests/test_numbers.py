"""engine.numbers: every way people write a number, every reason a cell is refused."""

from __future__ import annotations

from array import array

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import UsageError
from engine.numbers import Normalizer, Rejected, formatter, indian_mobile, numbers_json

E164 = 919876543210


@pytest.fixture(scope="module")
def india() -> Normalizer:
    return Normalizer("IN")


def reason(normalizer: Normalizer, cell: str | None) -> str:
    with pytest.raises(Rejected) as caught:
        normalizer.normalize(cell)
    return caught.value.reason


@pytest.mark.parametrize(
    "cell",
    [
        "9876543210",
        "+91 98765 43210",
        "+91-98765-43210",
        "+91 (98765) 43210",
        "098765 43210",
        "09876543210",
        "91-98765-43210",
        "919876543210",
        "(98765) 43210",
        "98765.43210",
        "98.765.432.10",
        "0091 98765 43210",
        "00919876543210",
        "  9876543210  ",
        "98765\u00a043210",
        "98765\u200b43210",
        "+91 (0) 98765 43210",
        "'9876543210",
        '="09876543210"',
        "9876543210.0",
        "9,876,543,210",
        "98,76,54,32,10",
        "tel:+91-98765-43210",
        "9876543210;",
        "\u096f\u096e\u096d\u096c\u096b\u096a\u0969\u0968\u0967\u0966",
        "\uff19\uff18\uff17\uff16\uff15\uff14\uff13\uff12\uff11\uff10",
    ],
)
def test_indian_mobile_written_any_common_way_becomes_one_number(india, cell):
    """Each common spelling of +91 98765 43210 normalizes to the same E.164 integer."""
    assert india.normalize(cell) == E164


@pytest.mark.parametrize(
    ("cell", "start"),
    [
        (None, "empty"),
        ("", "empty"),
        ("   ", "empty"),
        ("n/a", "empty"),
        ("NULL", "empty"),
        ("abc", "letters"),
        ("98765-ABCDE", "letters"),
        ("call me", "letters"),
        ("98765*43210", "symbol"),
        ("()", "symbol"),
        ("1", "too short: 1 digit"),
        ("12", "too short"),
        ("12345", "too short"),
        ("987654321", "too short: 9 digits after +91, IN numbers have 10"),
        ("0987654321", "too short: 9 digits after +91"),
        ("+91 98765 4321", "too short: 9 digits after +91"),
        ("98765432101", "too long: 11 digits after +91, IN numbers have 10"),
        ("12345678901234567890", "too long: 20 digits"),
        ("x" * 100, "letters"),
        ("9" * 60, "too long: 60 characters"),
        ("+91 55555 55555", "not valid for IN"),
        ("5555555555", "not valid for IN"),
        ("9.19E+11", "Excel scientific notation"),
        ("9,19E+11", "Excel scientific notation"),
        ("9.19e11", "Excel scientific notation"),
        ("9.1987654E+11", "Excel scientific notation"),
        ("+91 98765 43210 ext 12", "extension"),
        ("+91 98765 43210 ext. 12", "extension"),
        ("9876543210 x12", "extension"),
        ("9876543210x12", "extension"),
        ("9876543210 #3", "extension"),
        ("+91 98765 43210 extn. 5", "extension"),
        ("+999 1234567", "unknown country code"),
        ("9876543210 / 9876543211", "several numbers: 2 in one cell"),
        ("9876543210, 9876543211", "several numbers"),
        ("98765 43210 or 98765 43211", "several numbers"),
        ("+91 98765 43210 (mobile, call me after six in the evening)", "letters"),
    ],
)
def test_rejects_say_specifically_what_is_wrong(india, cell, start):
    """A refused cell's reason starts with the specific fault, not a generic 'invalid'."""
    assert reason(india, cell).startswith(start)


def test_nine_digit_indian_number_is_too_short_not_invalid(india):
    """A 9-digit Indian number is reported as too short, with the expected length."""
    assert reason(india, "987654321") == "too short: 9 digits after +91, IN numbers have 10"


def test_numbers_of_other_countries_are_kept_with_their_code(india):
    """A number written with another country's code is validated for that country."""
    assert india.normalize("+1 202 555 0123") == 12025550123
    assert india.normalize("+44 7911 123456") == 447911123456
    assert reason(india, "+1 202 555 01").startswith("too short")


def test_a_leading_zero_of_the_national_number_is_kept(india):
    """Italian numbers keep the 0 after +39 that is part of the number."""
    assert india.normalize("+39 06 1234 5678") == 390612345678
    assert formatter("e164", 91)(india.normalize("+39 06 1234 5678")) == "+390612345678"


def test_indian_landline_and_toll_free_are_valid(india):
    """Valid non-mobile Indian numbers go through phonenumbers and are accepted."""
    assert india.normalize("022 2654 3210") == 912226543210
    assert india.normalize("912226543210") == 912226543210
    assert india.normalize("1800123456") == 911800123456


def test_another_default_country_reads_national_numbers_for_it():
    """--country US reads a 10-digit number as a US one, and 1 + 10 digits as the same."""
    usa = Normalizer("US")
    assert usa.normalize("(202) 555-0123") == 12025550123
    assert usa.normalize("1 202 555 0123") == 12025550123
    assert usa.normalize("+91 98765 43210") == E164
    assert reason(usa, "202 555 012").startswith("too short")


def test_unknown_country_is_a_usage_error_that_names_the_fix():
    """An unknown --country is refused at once with an example of a valid one."""
    with pytest.raises(UsageError, match="two-letter code such as IN"):
        Normalizer("XX")


def test_looks_like_phone_is_true_only_for_accepted_cells(india):
    """looks_like_phone answers the same question normalize does."""
    assert india.looks_like_phone("+91 98765 43210")
    assert not india.looks_like_phone("phone")
    assert not india.looks_like_phone("12345")


def test_indian_mobile_leaves_undecidable_cells_to_the_slow_path():
    """The fast path answers -1 (undecided) for anything it does not fully recognise."""
    for cell in ("", "+", "5876543210", "19876543210", "929876543210", "+929876543210",
                 "0919876543210", "98765_43210", "+91+8765432109", "abc"):  # fmt: skip
        assert indian_mobile(cell) == -1, cell
    assert indian_mobile("6000000000") == 916000000000


def test_normalize_batch_of_one_uniform_form_uses_no_slow_path(india):
    """A batch written all one way (plain, 0-, 91-, +91-, 0091-prefixed) normalizes whole."""
    nationals = [f"{n}" for n in range(9876543210, 9876543210 + 50)]
    expected = [910000000000 + int(n) for n in nationals]
    for prefix in ("", "0", "91", "+91", "0091"):
        numbers, rejects = india.normalize_batch([prefix + n for n in nationals])
        assert (numbers, rejects) == (expected, []), prefix


def test_normalize_batch_reports_reject_positions_in_order(india):
    """Rejected cells come back as (position, reason); accepted numbers keep their order."""
    cells = ["9876543210", None, "abc", "+91 98765 43211", "", "09876543212"]
    numbers, rejects = india.normalize_batch(cells)
    assert numbers == [E164, E164 + 1, E164 + 2]
    assert [position for position, _ in rejects] == [1, 2, 4]
    assert rejects[0][1].startswith("empty") and rejects[1][1].startswith("letters")


def test_uniform_batch_with_a_stray_plus_or_bad_digit_falls_back(india):
    """The whole-batch path refuses a batch it cannot vouch for; cells then decide one by one."""
    numbers, rejects = india.normalize_batch(["+919876543210", "+91+876543210"])
    assert numbers == [E164] and [p for p, _ in rejects] == [1]
    numbers, rejects = india.normalize_batch(["9876543210", "5876543210"])
    assert numbers == [E164, 915876543210] and rejects == []


CELL_PARTS = st.sampled_from(
    ["9876543210", "6000000001", "+91 ", "0", "91", "0091", "-", " ", ".", "(", ")", "x", "ext 1",
     "E+11", "9.19", "#", "abc", "", "\u00a0", "१", "12", "+", "5"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(CELL_PARTS, max_size=4).map("".join)), max_size=30))
def test_normalize_batch_agrees_with_normalize_cell_by_cell(cells):
    """normalize_batch gives exactly what normalize gives for each cell, in order."""
    india = Normalizer("IN")
    expected_numbers: list[int] = []
    expected_rejects: list[tuple[int, str]] = []
    for position, cell in enumerate(cells):
        try:
            expected_numbers.append(india.normalize(cell))
        except Rejected as rejected:
            expected_rejects.append((position, rejected.reason))
    assert india.normalize_batch(cells) == (expected_numbers, expected_rejects)


@settings(max_examples=200, deadline=None)
@given(st.integers(6_000_000_000, 9_999_999_999), st.sampled_from(["", "0", "91", "+91", "0091"]))
def test_every_indian_mobile_with_any_prefix_is_accepted(national, prefix):
    """Any 10-digit number starting 6-9, with any usual prefix, is an Indian mobile."""
    assert Normalizer("IN").normalize(f"{prefix}{national}") == 910000000000 + national


def test_formatter_writes_the_configured_form():
    """digits, e164 and national forms of the same number."""
    assert formatter("digits", 91)(E164) == "919876543210"
    assert formatter("e164", 91)(E164) == "+919876543210"
    assert formatter("national", 91)(E164) == "9876543210"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 10**15 - 1), max_size=100, unique=True),
    st.sampled_from(["digits", "e164", "national"]),
)
def test_numbers_json_is_the_json_array_of_the_written_numbers(numbers, number_format):
    """The request's array, the digits form's shortcut included, for lists and machine arrays."""
    write = formatter(number_format, 91)
    wanted = orjson.dumps([write(number) for number in numbers])
    assert numbers_json(numbers, write) == wanted
    assert numbers_json(array("q", numbers), write) == wanted
