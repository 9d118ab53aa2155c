"""engine.batcher: chunks, stable ids, exact dedupe in bounded memory, every row accounted for."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from engine.batcher import Producer, SeenNumbers, accepted_numbers
from engine.numbers import Normalizer
from engine.records import Chunk, Reject
from engine.settings import InputSettings
from engine.source import BATCH_ROWS

MEGABYTE = 1024 * 1024


def produce(
    paths: list[Path], batch_size: int = 100, column: str | None = None
) -> tuple[Producer, list[Chunk], list[Reject]]:
    rejects: list[Reject] = []
    settings = InputSettings(paths=tuple(map(str, paths)), batch_size=batch_size, column=column)
    producer = Producer(settings, Normalizer("IN"), rejects.append)
    return producer, list(producer.chunks()), rejects


def test_chunks_hold_at_most_batch_size_and_ids_count_up(tmp_path):
    """Chunks are full except the last, ids are 0, 1, 2, ..., and counts add up."""
    path = tmp_path / "n.csv"
    path.write_text("phone\n" + "".join(f"9{i:09d}\n" for i in range(1_050)))
    producer, chunks, rejects = produce([path], batch_size=100)
    assert [len(chunk.numbers) for chunk in chunks] == [100] * 10 + [50]
    assert [chunk.id for chunk in chunks] == list(range(11))
    counts = producer.counts
    assert (counts.rows, counts.accepted, counts.chunks, counts.finished) == (1050, 1050, 11, True)
    assert rejects == []


def test_the_same_input_always_gives_the_same_chunks(tmp_path, sample_csv):
    """Two readings of one input give identical chunks: what makes resume exact."""
    path = sample_csv(5_000)
    _, first, _ = produce([path], batch_size=37)
    _, second, _ = produce([path], batch_size=37)

    def shape(chunks: list[Chunk]) -> list[tuple[int, list[int], list[int]]]:
        return [(chunk.id, chunk.numbers, chunk.lines) for chunk in chunks]

    assert shape(first) == shape(second)


def test_duplicates_across_files_and_spellings_are_dropped_exactly(tmp_path):
    """A number seen in any earlier row, any file, any spelling, is a duplicate, counted once."""
    (tmp_path / "a.csv").write_text("phone\n9876543210\n+91 98765 43211\n9876543210\n")
    (tmp_path / "b.csv").write_text("mobile\n098765 43211\n9876543212\n919876543210\n")
    producer, chunks, _ = produce([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert [n for c in chunks for n in c.numbers] == [919876543210, 919876543211, 919876543212]
    assert [(f, line) for c in chunks for f, line in zip(c.files, c.lines, strict=True)] == [
        (0, 2),
        (0, 3),
        (1, 3),
    ]
    counts = producer.counts
    assert (counts.rows, counts.accepted, counts.duplicates, counts.rejected) == (6, 3, 3, 0)


def test_every_reject_carries_its_file_line_raw_value_and_reason(tmp_path):
    """Rejected rows are reported with the file index, physical line, raw cell and reason."""
    (tmp_path / "a.csv").write_text('phone,note\n9876543210,x\nabc,"two\nlines"\n12345,y\n')
    (tmp_path / "b.csv").write_text("phone\n\n9.19E+11\n")
    producer, _, rejects = produce([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert [(r.file, r.line, r.raw) for r in rejects] == [
        (0, 3, "abc"),
        (0, 5, "12345"),
        (1, 3, "9.19E+11"),
    ]
    assert [r.reason.split(":")[0] for r in rejects] == [
        "letters",
        "too short",
        "Excel scientific notation",
    ]
    assert producer.counts.rejected == 3 and producer.counts.rows == 4


def test_a_huge_rejected_cell_is_reported_shortened(tmp_path):
    """The report keeps the first 80 characters of a rejected cell, not megabytes."""
    path = tmp_path / "huge.csv"
    path.write_bytes(b"9876543210\n" + b"7" * MEGABYTE + b"\n")
    producer, _, rejects = produce([path])
    assert len(rejects) == 1 and len(rejects[0].raw) == 80
    assert rejects[0].reason.startswith("too long") and rejects[0].line == 2
    assert producer.counts.rows == producer.counts.accepted + producer.counts.rejected == 2


def test_counts_add_up_while_chunks_are_being_taken(tmp_path, sample_csv):
    """Between any two chunks, rows == accepted + rejected + duplicates."""
    producer = Producer(
        InputSettings(paths=(str(sample_csv(3 * BATCH_ROWS + 11)),)), Normalizer(), lambda _: None
    )
    for _ in producer.chunks():
        counts = producer.counts
        assert counts.rows == counts.accepted + counts.rejected + counts.duplicates
    assert producer.counts.finished


def test_chunks_never_repeat_a_number_and_match_accepted_numbers(tmp_path, sample_csv):
    """No number appears twice across all chunks; accepted_numbers lists the same numbers."""
    path = sample_csv(20_000)
    producer, chunks, _ = produce([path], batch_size=100)
    numbers = [n for c in chunks for n in c.numbers]
    assert len(numbers) == len(set(numbers)) == producer.counts.accepted
    assert list(accepted_numbers((str(path),))) == [f"+{n}" for n in numbers]


def test_gzip_and_plain_inputs_in_one_run(tmp_path):
    """A .gz file and a plain file are read in order, with duplicates across them dropped."""
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(b"phone\n9876543210\n9876543211\n"))
    (tmp_path / "b.csv").write_text("9876543211\n9876543212\n")
    producer, chunks, _ = produce([tmp_path / "a.csv.gz", tmp_path / "b.csv"])
    assert [n for c in chunks for n in c.numbers] == [919876543210, 919876543211, 919876543212]
    assert producer.counts.duplicates == 1
    assert [layout.name for layout in producer.layouts] == [
        str(tmp_path / "a.csv.gz"),
        str(tmp_path / "b.csv"),
    ]


def test_seen_numbers_mark_reports_repeats_within_and_across_calls():
    """mark() returns the positions of numbers seen before, including earlier in the same list."""
    seen = SeenNumbers()
    assert seen.mark([5, 1, 5, 2, 1, 5]) == [2, 4, 5]
    assert seen.mark([3, 2, 4, 4]) == [1, 3]
    assert seen.mark([]) == []
    assert len(seen) == 5 and 4 in seen and 6 not in seen


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc to read RSS")
def test_ten_million_unique_numbers_fit_in_150_megabytes():
    """10 M distinct Indian mobiles in the dedupe bitmap: serialized and resident size ≤ 150 MB."""
    # The numbers are spread over the whole +91 6000000000-9999999999 range and added in 200
    # interleaved rounds, so every container grows piecemeal as with a shuffled input (a truly
    # random order measures the same, 40 MB resident, but takes ten seconds).
    start, step, count, rounds = 916_000_000_000, 400, 10_000_000, 200
    before = _rss_bytes()
    seen = SeenNumbers()
    for offset in range(rounds):
        first = start + offset * step
        assert seen.mark(list(range(first, start + count * step, rounds * step))) == []
    grown = _rss_bytes() - before
    stats = seen.statistics()
    assert len(seen) == stats["cardinality"] == count
    serialized = seen.serialized_size()
    assert serialized <= 150 * MEGABYTE, f"serialized {serialized / MEGABYTE:.1f} MB"
    assert grown <= 150 * MEGABYTE, f"resident growth {grown / MEGABYTE:.1f} MB"
    assert stats["n_bytes_array_containers"] == 2 * count  # 2 bytes a number, as designed


def _messy_inputs(tmp_path: Path, sample_csv) -> tuple[str, ...]:
    """Two files: a sample with a header, and one with quoted multi-line records, blank lines,
    rejects and numbers repeated from the first file."""
    first = sample_csv(5_000, name="first.csv", seed=11)
    repeats = [line.split(",")[1] for line in first.read_text().splitlines()[1:400:7]]
    second = tmp_path / "second.csv"
    rows = []
    for index in range(3_000):
        if index % 97 == 0:
            rows.append(f'"note\nover two lines {index}",98{index:08d}')
        elif index % 89 == 0:
            rows.append("")
        elif index % 53 == 0:
            rows.append(f"x,not a number {index}")
        elif index % 41 == 0:
            rows.append(f"r,{repeats[index % len(repeats)]}")
        else:
            rows.append(f"n,+91 9{index:09d}")
    second.write_text("name,phone\n" + "\n".join(rows) + "\n")
    return (str(first), str(second))


def test_a_producer_started_from_any_of_its_states_goes_on_exactly(tmp_path, sample_csv):
    """Chunks (ids, numbers, origins), rejects and counts after a state are the same whether the
    producer ran on or a new one started from that state: what a resume relies on."""
    import pickle

    settings = InputSettings(paths=_messy_inputs(tmp_path, sample_csv))
    rejects: list[Reject] = []
    states: list[tuple[int, int, bytes]] = []  # (chunks so far, rejects so far, state)
    chunks: list[Chunk] = []

    def keep(state) -> None:
        states.append((len(chunks), len(rejects), pickle.dumps(state)))

    full = Producer(settings, Normalizer(), rejects.append, on_state=keep, state_every=300)
    for chunk in full.chunks():
        chunks.append(chunk)
    assert len(states) >= 5 and {pickle.loads(s).file_index for _, _, s in states} == {0, 1}
    for taken, rejected, blob in states:
        state = pickle.loads(blob)
        assert state.counts.chunks == taken
        later: list[Reject] = []
        resumed = Producer(settings, Normalizer(), later.append, start=state)
        rest = list(resumed.chunks())
        assert [(c.id, c.numbers, c.files, c.lines) for c in rest] == [
            (c.id, c.numbers, c.files, c.lines) for c in chunks[taken:]
        ]
        assert later == rejects[rejected:]
        assert resumed.counts == full.counts
        assert [layout.name for layout in resumed.layouts] == [
            layout.name for layout in full.layouts
        ]
