"""--producer auto: the child process only where it pays for itself, or where states need it."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from engine.batcher import accepted_numbers
from engine.producer_choice import CHILD_MIN_BYTES, SHORTEST_ROW_BYTES, choose_producer
from engine.settings import STATE_EVERY_ROWS, InputSettings
from tests._helpers import GROUP, delete_args

TWO = 2


def _file(tmp_path: Path, size: int, name: str = "numbers.csv") -> InputSettings:
    path = tmp_path / name
    path.write_bytes(b"phone\n" + b"9876543210\n" * ((size - 6) // 11))
    return InputSettings(paths=(str(path),))


def _auto(inputs: InputSettings, cores: int, state_rows: int = STATE_EVERY_ROWS) -> bool:
    return choose_producer("auto", inputs, state_rows, cores).in_child


def test_explicit_choices_are_obeyed_whatever_the_input_and_machine(tmp_path: Path) -> None:
    small = _file(tmp_path, 100)
    assert choose_producer("process", small, STATE_EVERY_ROWS, 1).in_child
    assert not choose_producer("inline", _file(tmp_path, 3 * CHILD_MIN_BYTES), 10, TWO).in_child


def test_a_small_input_is_read_inline_even_with_cores_to_spare(tmp_path: Path) -> None:
    assert not _auto(_file(tmp_path, CHILD_MIN_BYTES - 100), 8)


def test_a_large_input_takes_the_child_only_with_a_second_core(tmp_path: Path) -> None:
    inputs = _file(tmp_path, 2 * CHILD_MIN_BYTES)
    assert _auto(inputs, TWO)
    assert _auto(inputs, 8)
    assert not _auto(inputs, 1)


def test_several_files_count_together(tmp_path: Path) -> None:
    first = _file(tmp_path, CHILD_MIN_BYTES // 2 + 100, "a.csv")
    second = _file(tmp_path, CHILD_MIN_BYTES // 2 + 100, "b.csv")
    assert _auto(InputSettings(paths=first.paths + second.paths), TWO)
    assert not _auto(first, TWO)


def test_an_input_that_may_reach_a_producer_state_always_takes_the_child(tmp_path: Path) -> None:
    """States are written by the child only: a resume must not lose them, even on one core."""
    rows = 500
    inputs = _file(tmp_path, rows * SHORTEST_ROW_BYTES + 6)
    for cores in (1, TWO):
        assert _auto(inputs, cores, state_rows=rows)
        assert not _auto(inputs, cores, state_rows=rows + 10)


def test_gzip_takes_the_child_and_stdin_and_missing_files_do_not(tmp_path: Path) -> None:
    packed = tmp_path / "numbers.csv.gz"
    packed.write_bytes(gzip.compress(b"phone\n9876543210\n"))
    assert _auto(InputSettings(paths=(str(packed),)), 1)
    assert not _auto(InputSettings(paths=("-",)), TWO)
    assert not _auto(InputSettings(paths=(str(tmp_path / "absent.csv"),)), TWO)


def test_a_fifo_is_never_opened_and_goes_to_the_child(tmp_path: Path) -> None:
    """Opening a pipe to look at it would block here, or take bytes from the producer."""
    fifo = tmp_path / "numbers.fifo"
    os.mkfifo(fifo)
    assert _auto(InputSettings(paths=(str(fifo),)), 1)  # returns: nothing opened it


@pytest.mark.parametrize(
    ("flags", "where"),
    [({}, "inline"), ({"producer_state_rows": 50}, "in a child process")],
)
def test_the_cli_says_where_the_producer_ran_and_deletes_alike(
    run_cli, fake_api, sample_csv, flags: dict[str, object], where: str
) -> None:
    """A small file is read inline by default; one that reaches a state goes to the child; the
    run deletes the same numbers either way."""
    server = fake_api()
    source = sample_csv(300)
    seeded = server.state.seed(GROUP, accepted_numbers((str(source),)))
    result = run_cli("-vv", *delete_args(server, source, rate=0, summary_json="s.json", **flags))
    assert result.returncode == 0, result.output
    assert f"the producer runs {where}:" in result.output
    # The command forks its child: nothing else runs a thread that early.
    assert ("forked" in result.output) is (where != "inline")
    summary = json.loads((source.parent / "s.json").read_text())
    assert summary["deleted"] == seeded and summary["complete"] is True
    assert server.state.remaining(GROUP) == 0
