"""engine.state_file: producer states are data, read back exactly, and nothing else is believed."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import stat

import orjson
import pytest

from engine import state_file
from engine.batcher import Producer, ProducerState
from engine.numbers import Normalizer
from engine.producer_child import load_state, write_state
from engine.settings import InputSettings
from tests._helpers import PlantedPayload


def states_of(paths: tuple[str, ...], every: int = 1_000) -> list[ProducerState]:
    states: list[ProducerState] = []
    producer = Producer(InputSettings(paths=paths), Normalizer(), lambda _: None,
                        on_state=states.append, state_every=every)  # fmt: skip
    for _ in producer.chunks():
        pass
    return states


@pytest.fixture
def state(sample_csv, tmp_path) -> ProducerState:
    first = sample_csv(1_500, name="a.csv")
    second = sample_csv(3_000, name="b.csv", seed=8)
    states = states_of((str(first), str(second)))
    # One past the first file: it carries a layout, a read position and a partial chunk.
    return next(s for s in states if s.file_index == 1 and s.numbers)


def reseal(body: bytes) -> bytes:
    """``body`` with a right checksum: what someone who read this module could write."""
    return body + hashlib.blake2b(body, digest_size=32).digest()


def with_header(state: ProducerState, change: dict[str, object]) -> bytes:
    """A well-formed file whose header fields are changed as given."""
    data = state_file.encode(state)
    offset = len(state_file.MAGIC) + 2
    (length,) = state_file._HEADER_LENGTH.unpack_from(data, offset)
    start = offset + 4
    header = orjson.loads(data[start : start + length])
    header.update(change)
    encoded = orjson.dumps(header)
    body = data[:offset] + state_file._HEADER_LENGTH.pack(len(encoded)) + encoded
    return reseal(body + data[start + length : -32])


def test_a_state_reads_back_exactly(state) -> None:
    """encode then decode gives the very same state, layouts, bitmap and partial chunk included."""
    assert state_file.decode(state_file.encode(state)) == state


def test_written_states_continue_the_producer_exactly(sample_csv, tmp_path) -> None:
    """A producer started from a state read from disk gives the chunks the first one gave."""
    source = str(sample_csv(5_000))
    states: list[ProducerState] = []
    first = Producer(InputSettings(paths=(source,)), Normalizer(), lambda _: None,
                     on_state=states.append, state_every=1_500)  # fmt: skip
    chunks = [(chunk.id, list(chunk.numbers)) for chunk in first.chunks()]
    name = write_state(tmp_path / "states", states[0])
    loaded = load_state(tmp_path / "states" / name)
    assert loaded == states[0]
    resumed = Producer(InputSettings(paths=(source,)), Normalizer(), lambda _: None, start=loaded)
    rest = [(chunk.id, list(chunk.numbers)) for chunk in resumed.chunks()]
    assert rest == chunks[states[0].counts.chunks :]
    assert resumed.counts == first.counts


def test_a_state_file_and_its_folder_are_the_owners_alone(state, tmp_path) -> None:
    """0600 for the file, 0700 for the folder, whatever the umask: they hold phone numbers."""
    previous = os.umask(0o022)
    try:
        name = write_state(tmp_path / "states", state)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "states").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "states" / name).stat().st_mode) == 0o600


def test_a_planted_pickle_is_refused_and_its_payload_never_runs(tmp_path, caplog) -> None:
    """A crafted pickle in place of a state: a warning, a read from the start, no code run."""
    marker = tmp_path / "payload-ran"
    planted = tmp_path / "state-7.ozstate"
    planted.write_bytes(pickle.dumps(PlantedPayload(marker)))
    with caplog.at_level(logging.WARNING):
        assert load_state(planted) is None
    assert not marker.exists()
    assert "reading the input from its start" in caplog.text
    assert "not an ozbulk producer state" in caplog.text


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "checksum mismatch"),
        (lambda data: data[:10], "truncated"),
        (lambda data: data[:-40] + bytes([data[-40] ^ 1]) + data[-39:], "checksum mismatch"),
        (lambda data: reseal(data[:8] + b"\x02\x00" + data[10:-32]), "format version 2"),
        (lambda data: reseal(data[:-32] + b"extra"), "trailing bytes"),
        (lambda data: b"", "not an ozbulk producer state"),
    ],
    ids=["cut-in-half", "cut-short", "flipped-bit", "newer-version", "trailing", "empty"],
)
def test_a_damaged_state_is_refused_with_its_reason(state, damage, reason) -> None:
    """Torn, flipped, of another version, or padded: refused as a whole, saying why."""
    with pytest.raises(state_file.MalformedState, match=reason):
        state_file.decode(damage(state_file.encode(state)))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"counts": [10, 10, 10, 10, 1, False]}, "do not add up"),
        ({"file_index": True}, "not a count"),
        ({"numbers": [-1]}, "not a count"),
        ({"numbers": [10**16]}, "more than 15 digits"),
        ({"numbers": list(range(101))}, "at most 100"),
        ({"lines": []}, "differ in length"),
        ({"layouts": []}, "one layout is needed"),
        ({"layouts": [["a", "rot13-evil", ",", 0, "c", True, False, False]]}, "unknown encoding"),
        ({"position": "0,0,0"}, "not a list"),
        ({"extra": 1}, "fields"),
    ],
)
def test_a_crafted_state_with_a_right_checksum_is_still_refused(state, change, reason) -> None:
    """Every field is checked for its type, range and consistency, not only the checksum."""
    with pytest.raises(state_file.MalformedState, match=reason):
        state_file.decode(with_header(state, change))


def test_a_bitmap_that_does_not_match_the_counts_is_refused(state) -> None:
    """The dedupe bitmap must hold exactly the numbers accepted so far, and deserialize."""
    data = state_file.encode(state)
    for seen in (b"\x00" * 16, state.seen[: len(state.seen) // 2]):
        forged = ProducerState(state.file_index, state.position, state.counts, state.numbers,
                               state.files, state.lines, seen, state.layouts)  # fmt: skip
        with pytest.raises(state_file.MalformedState, match="bitmap"):
            state_file.decode(state_file.encode(forged))
    assert state_file.decode(data) == state


def test_a_link_planted_where_a_state_is_written_is_not_followed(state, tmp_path) -> None:
    """A symbolic link in place of the partial file: the write fails, the target is untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "states"
    folder.mkdir()
    (folder / f"state-{state.counts.chunks}.ozstate.partial").symlink_to(victim)
    with pytest.raises(OSError):
        write_state(folder, state)
    assert victim.read_text() == "precious"
