"""engine.selection: which chunks a pass sends, in the parent and (serialized) in the child."""

from __future__ import annotations

import ast
import itertools
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroaring import BitMap

import engine.selection
from engine.selection import Selection

ids = st.sets(st.integers(min_value=0, max_value=300), max_size=60)


def _first_never_sent(done: BitMap) -> int:
    return next(i for i in itertools.count() if i not in done)


def test_a_resume_sends_every_chunk_not_done_and_starts_after_the_done_prefix() -> None:
    done, failed = BitMap([0, 1, 2, 5, 6]), BitMap([3])
    selection = Selection.build(done=done, failed=failed, retry_failed=False)
    assert [i for i in range(10) if selection.wants(i)] == [3, 4, 7, 8, 9]
    assert selection.first() == 3  # a failed chunk is sent again on a plain resume


def test_retry_failed_sends_only_the_failed_chunks_from_the_lowest_one() -> None:
    done, failed = BitMap([0, 1, 2, 5, 6]), BitMap([4, 9])
    selection = Selection.build(done=done, failed=failed, retry_failed=True)
    assert [i for i in range(12) if selection.wants(i)] == [4, 9]
    assert selection.first() == 4


def test_empty_sets_a_first_pass_sends_everything_and_a_retry_nothing() -> None:
    first_pass = Selection.build(done=BitMap(), failed=BitMap(), retry_failed=False)
    assert all(first_pass.wants(i) for i in range(100)) and first_pass.first() == 0
    nothing_failed = Selection.build(done=BitMap(range(5)), failed=BitMap(), retry_failed=True)
    assert not any(nothing_failed.wants(i) for i in range(100)) and nothing_failed.first() == 0


@given(done=ids, failed=ids, retry_failed=st.booleans())
def test_wants_and_first_match_the_plain_definitions(
    done: set[int], failed: set[int], retry_failed: bool
) -> None:
    """wants: not done (or, retrying, failed); first: the end of the done prefix (or the lowest
    failed id, 0 if none)."""
    selection = Selection.build(done=BitMap(done), failed=BitMap(failed), retry_failed=retry_failed)
    for chunk_id in range(310):
        expected = chunk_id in failed if retry_failed else chunk_id not in done
        assert selection.wants(chunk_id) is expected
    if retry_failed:
        assert selection.first() == min(failed, default=0)
    else:
        assert selection.first() == _first_never_sent(BitMap(done))


@given(done=ids, failed=ids, retry_failed=st.booleans())
def test_the_serialized_form_reads_back_to_the_same_selection(
    done: set[int], failed: set[int], retry_failed: bool
) -> None:
    """What the child rebuilds from the bytes decides exactly as the parent's selection does."""
    selection = Selection.build(done=BitMap(done), failed=BitMap(failed), retry_failed=retry_failed)
    copy = Selection.from_bytes(selection.to_bytes())
    assert copy == selection
    assert [copy.wants(i) for i in range(310)] == [selection.wants(i) for i in range(310)]
    assert copy.first() == selection.first()


@pytest.mark.parametrize("data", [b"", b"not a serialized bitmap", b"X" + BitMap([1]).serialize()])
def test_bytes_that_are_no_selection_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        Selection.from_bytes(data)


def test_the_module_imports_only_pyroaring_and_the_standard_library() -> None:
    """The producer process loads it: it must not pull in the rest of the engine."""
    tree = ast.parse(Path(engine.selection.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}  # fmt: skip
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in imported}
    assert roots - sys.stdlib_module_names - {"__future__"} == {"pyroaring"}
