"""The checkpoint file: each chunk counted once, what it must not touch refused, kills survived."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.checkpoint import (
    DONE,
    FAILED,
    SCHEMA_VERSION,
    Checkpoint,
    fingerprint,
    move_aside,
    states_dir,
)
from engine.errors import CheckpointError, CheckpointMismatch, CheckpointWriteError
from engine.records import Reject
from tests._helpers import (
    IDENTITY,
    SETTINGS,
    bad_version_value,
    done,
    failed,
    garbage,
    newer_schema,
    open_run,
    other_sqlite,
    text_file,
    torn_pages,
    with_schema_version,
)

REPO = Path(__file__).resolve().parent.parent


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the states folder's included), by its relative path."""
    return {
        str(entry.relative_to(folder)): entry.read_bytes()
        for entry in sorted(folder.rglob("*"))
        if entry.is_file()
    }


# Child processes import only the checkpoint module (not pytest), so each starts in a blink.
CHILD_PRELUDE = """
import json, os, sys
from pathlib import Path
from engine.checkpoint import DONE, Checkpoint, ChunkRecord
IDENTITY, SETTINGS = json.loads(sys.argv[2]), json.loads(sys.argv[3])
def done(chunk_id):
    return ChunkRecord(chunk_id, DONE, 100, 100, 0, 100, 1, False, "", [])
checkpoint = Checkpoint.for_run(Path(sys.argv[1]), IDENTITY, SETTINGS)
"""


def child(code: str, path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", CHILD_PRELUDE + code, str(path), json.dumps(IDENTITY),
            json.dumps(SETTINGS), *extra]  # fmt: skip


def crash_after_writing(path: Path, records: int) -> None:
    """Leave ``path`` as a killed run leaves it: commits in the WAL, -wal and -shm beside it."""
    code = (
        "checkpoint.record([done(i) for i in range(int(sys.argv[4]))], [], {'requests': 1})\n"
        "os._exit(0)\n"
    )
    subprocess.run(child(code, path, str(records)), cwd=REPO, check=True)


# -- counting ------------------------------------------------------------------------------


def test_a_chunk_recorded_twice_counts_once(tmp_path: Path) -> None:
    """The same chunk recorded in two commits (and twice in one) is one row and counted once."""
    checkpoint = open_run(tmp_path / "c.ckpt")
    checkpoint.record([done(0), done(1)], [], {})
    checkpoint.record([done(1), done(2), done(2)], [], {})
    sums = checkpoint.sums()
    assert sums["chunks_done"] == 3
    assert sums["sent"] == 300
    assert sums["deleted"] == 300
    assert list(checkpoint.ids(DONE)) == [0, 1, 2]


def test_a_failed_chunk_may_become_done_but_a_done_one_never_changes(tmp_path: Path) -> None:
    """failed -> done replaces the row (attempts add up); done is final against failed or done."""
    checkpoint = open_run(tmp_path / "c.ckpt")
    checkpoint.record([failed(0), done(1, deleted=100)], [], {})
    checkpoint.record([done(0, deleted=60, attempts=2), failed(1), done(1, deleted=7)], [], {})
    rows = {row["id"]: dict(row) for row in checkpoint.chunk_rows()}
    assert rows[0]["state"] == DONE
    assert rows[0]["deleted"] == 60
    assert rows[0]["attempts"] == 3 + 2
    assert rows[1]["state"] == DONE
    assert rows[1]["deleted"] == 100
    assert rows[1]["attempts"] == 1
    sums = checkpoint.sums()
    assert (sums["chunks_done"], sums["chunks_failed"], sums["failed_numbers"]) == (2, 0, 0)


def test_a_failed_chunk_failing_again_stays_one_failed_row(tmp_path: Path) -> None:
    """A chunk that fails in two passes is still one failed chunk, with the latest reason."""
    checkpoint = open_run(tmp_path / "c.ckpt")
    checkpoint.record([failed(4, "HTTP 503")], [], {})
    checkpoint.record([failed(4, "timeout")], [], {})
    sums = checkpoint.sums()
    assert (sums["chunks_failed"], sums["failed_numbers"]) == (1, 100)
    assert [row["reason"] for row in checkpoint.chunk_rows()] == ["timeout"]


def test_rejects_and_counters_and_input_counts_are_kept(tmp_path: Path) -> None:
    """Rejected rows are stored once each; counters and input counts are the latest written."""
    path = tmp_path / "c.ckpt"
    checkpoint = open_run(path)
    reject = Reject(0, 7, "12ab", "letters")
    checkpoint.record([], [reject, reject], {"requests": 1}, input_counts={"rows": 10})
    checkpoint.record([], [Reject(0, 9, "", "empty")], {"requests": 5})
    checkpoint.close()
    reader = Checkpoint.read(path)
    assert list(reader.reject_rows()) == [(0, 7, "12ab", "letters"), (0, 9, "", "empty")]
    assert reader.meta("counters") == {"requests": 5}
    assert reader.meta("input") == {"rows": 10}
    reader.close()


# -- opening: same run, other run, files it must not touch ----------------------------------


def test_reopening_for_the_same_run_keeps_everything(tmp_path: Path) -> None:
    """A second pass of the same run sees every chunk the first committed."""
    path = tmp_path / "c.ckpt"
    first = open_run(path)
    first.record([done(0), failed(1)], [], {"passes": 1})
    first.close()
    second = open_run(path)
    assert list(second.ids(DONE)) == [0]
    assert list(second.ids(FAILED)) == [1]
    assert second.meta("counters") == {"passes": 1}
    assert second.schema_version() == SCHEMA_VERSION
    second.close()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"inputs": [{"path": "/data/other.csv", "size": 1, "blake2b": "aa"}]}, "other.csv"),
        ({"inputs": [{"path": "/data/numbers.csv", "size": 1234, "blake2b": "1111"}]},
         "input file content changed"),
        ({"batch_size": 50}, "batch_size: 100 -> 50"),
        ({"group_id": 2}, "group_id: 1 -> 2"),
    ],
)  # fmt: skip
def test_a_checkpoint_of_another_run_is_refused_untouched(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    """Other input or settings: CheckpointMismatch naming the difference; the file is unchanged."""
    path = tmp_path / "c.ckpt"
    checkpoint = open_run(path)
    checkpoint.record([done(0)], [], {})
    checkpoint.close()
    before = files_of(tmp_path)
    with pytest.raises(CheckpointMismatch) as refused:
        open_run(path, {**IDENTITY, **change})
    assert expected in str(refused.value)
    assert "--restart" in str(refused.value)
    assert refused.value.exit_code == 2
    assert files_of(tmp_path) == before


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (newer_schema, "newer ozbulk"),
        (garbage, "not a readable ozbulk checkpoint"),
        (text_file, "not a readable ozbulk checkpoint"),
        (other_sqlite, "not a readable ozbulk checkpoint"),
        (torn_pages, "not a readable ozbulk checkpoint"),
        (bad_version_value, "schema version"),
    ],
)
def test_a_file_ozbulk_cannot_read_is_refused_and_never_written(
    tmp_path: Path, make: Any, expected: str
) -> None:
    """Newer schema, garbage, text, another app's database, torn pages: refused, byte for byte."""
    path = tmp_path / "c.ckpt"
    make(path)
    before = files_of(tmp_path)
    for attempt in (lambda: open_run(path), lambda: Checkpoint.read(path)):
        with pytest.raises(CheckpointError) as refused:
            attempt()
        assert expected in str(refused.value)
        assert refused.value.exit_code == 2
        assert files_of(tmp_path) == before


def test_an_empty_file_left_by_a_crash_before_the_first_commit_is_reused(tmp_path: Path) -> None:
    """A zero-byte file holds nothing to keep: the run starts in it."""
    path = tmp_path / "c.ckpt"
    path.write_bytes(b"")
    checkpoint = open_run(path)
    checkpoint.record([done(0)], [], {})
    assert checkpoint.sums()["chunks_done"] == 1
    checkpoint.close()


def test_a_checkpoint_in_use_by_another_run_is_refused(tmp_path: Path) -> None:
    """Two runs on one checkpoint would send everything twice: the second is refused."""
    path = tmp_path / "c.ckpt"
    first = open_run(path)
    with pytest.raises(CheckpointError, match="in use by another ozbulk run"):
        open_run(path)
    with pytest.raises(CheckpointError, match="in use"):
        move_aside(path)
    first.record([done(0)], [], {})
    first.close()
    second = open_run(path)
    assert second.sums()["chunks_done"] == 1
    second.close()


def test_a_folder_is_refused_as_a_checkpoint(tmp_path: Path) -> None:
    """--checkpoint naming a folder is a usage error, not a write error."""
    with pytest.raises(CheckpointError, match="is a folder"):
        open_run(tmp_path)


def test_reading_never_writes(tmp_path: Path) -> None:
    """Checkpoint.read (status, report) opens read-only: a write through it fails."""
    path = tmp_path / "c.ckpt"
    open_run(path).close()
    before = path.read_bytes()
    reader = Checkpoint.read(path)
    with pytest.raises(CheckpointWriteError):
        reader.record([done(0)], [], {})
    reader.close()
    assert path.read_bytes() == before


def test_a_name_with_uri_characters_opens(tmp_path: Path) -> None:
    """'?', '#' and '%' in the file name are not taken for URI syntax by the read-only open."""
    path = tmp_path / "odd ?name#50%.ckpt"
    checkpoint = open_run(path)
    checkpoint.record([done(0)], [], {})
    checkpoint.close()
    reader = Checkpoint.read(path)
    assert reader.sums()["chunks_done"] == 1
    reader.close()


# -- disk trouble ----------------------------------------------------------------------------


def test_an_unwritable_folder_is_a_write_error_and_creates_nothing(tmp_path: Path) -> None:
    """A checkpoint under a regular file (not a folder; root cannot write there either): exit 4."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(CheckpointWriteError) as refused:
        open_run(blocker / "c.ckpt")
    assert refused.value.exit_code == 4
    assert "Not a directory" in str(refused.value)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["not-a-folder"]


class FailingCommits:
    """A connection whose COMMIT fails as on a full disk, until ``healthy`` is set."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self._real = real
        self.healthy = False

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and not self.healthy:
            raise sqlite3.OperationalError("database or disk is full")
        return self._real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_failed_commit_loses_nothing_committed_before_and_can_be_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full at COMMIT: CheckpointWriteError (exit 4), earlier commits kept, a retry works."""
    path = tmp_path / "c.ckpt"
    checkpoint = open_run(path)
    checkpoint.record([done(0), done(1)], [], {"requests": 2})
    failing = FailingCommits(checkpoint._db)
    monkeypatch.setattr(checkpoint, "_db", failing)
    with pytest.raises(CheckpointWriteError) as refused:
        checkpoint.record([done(2)], [], {"requests": 3})
    assert refused.value.exit_code == 4
    assert "committed before is kept" in str(refused.value)
    assert not failing.in_transaction  # the doomed transaction was rolled back
    reader = Checkpoint.read(path)
    assert list(reader.ids(DONE)) == [0, 1]
    assert reader.meta("counters") == {"requests": 2}
    reader.close()
    failing.healthy = True
    checkpoint.record([done(2)], [], {"requests": 3})
    assert list(checkpoint.ids(DONE)) == [0, 1, 2]
    checkpoint.close()


# -- moving aside ----------------------------------------------------------------------------


def test_move_aside_takes_the_wal_companions_along(tmp_path: Path) -> None:
    """After a kill the commits sit in -wal: all three files move, and the copy keeps them."""
    path = tmp_path / "c.ckpt"
    crash_after_writing(path, 5)
    assert {"c.ckpt", "c.ckpt-wal", "c.ckpt-shm"} <= {entry.name for entry in tmp_path.iterdir()}
    aside = move_aside(path)
    names = {entry.name for entry in tmp_path.iterdir()}
    assert not names & {"c.ckpt", "c.ckpt-wal", "c.ckpt-shm"}
    assert {aside.name, aside.name + "-wal", aside.name + "-shm"} <= names
    assert aside.name.startswith("c.ckpt.") and aside.name.endswith(".old")
    reader = Checkpoint.read(aside)
    assert reader.sums()["chunks_done"] == 5
    reader.close()


def test_move_aside_never_overwrites_an_earlier_copy(tmp_path: Path) -> None:
    """Two restarts within one second keep both old checkpoints, under different names."""
    path = tmp_path / "c.ckpt"
    copies = []
    for chunks in (1, 2, 3):
        checkpoint = open_run(path)
        checkpoint.record([done(n) for n in range(chunks)], [], {})
        checkpoint.close()
        copies.append(move_aside(path))
    assert len(set(copies)) == 3
    for chunks, copy in enumerate(copies, start=1):
        reader = Checkpoint.read(copy)
        assert reader.sums()["chunks_done"] == chunks
        reader.close()


def test_an_orphaned_wal_is_set_aside_not_replayed_into_a_new_checkpoint(tmp_path: Path) -> None:
    """A -wal whose database was removed is kept, renamed; the new checkpoint starts empty."""
    path = tmp_path / "c.ckpt"
    crash_after_writing(path, 4)
    wal = Path(f"{path}-wal").read_bytes()
    path.unlink()
    checkpoint = open_run(path)
    assert checkpoint.sums()["chunks_done"] == 0
    checkpoint.close()
    kept = [entry for entry in tmp_path.iterdir() if entry.name.endswith(".orphan-wal")]
    assert len(kept) == 1
    assert kept[0].read_bytes() == wal
    # The old run's states folder went with it: the new run's marker and states are its own.
    assert Path(str(kept[0]).removesuffix("-wal") + ".states").is_dir()


# -- crash safety ----------------------------------------------------------------------------

WRITER = """
next_id = checkpoint.sums()["chunks_done"]
while True:
    checkpoint.record([done(next_id + n) for n in range(50)], [], {"next": next_id + 50})
    next_id += 50
    print(next_id, flush=True)
"""


@pytest.mark.slow
def test_a_process_killed_while_committing_leaves_a_file_that_opens(tmp_path: Path) -> None:
    """kill -9 at random instants of a commit loop: it opens, is intact, keeps every commit."""
    path = tmp_path / "c.ckpt"
    rng = random.Random(11)
    acknowledged = 0
    for _ in range(8):
        writer = subprocess.Popen(
            child(WRITER, path),
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        first = writer.stdout.readline()  # committing for real now
        assert first.strip(), "the writer died before its first commit"
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(writer.pid, signal.SIGKILL)
        output, _ = writer.communicate()
        assert writer.returncode == -signal.SIGKILL
        lines = [first, *output.splitlines()]
        acknowledged = max(acknowledged, *(int(line) for line in lines if line.strip()))
        reader = Checkpoint.read(path)  # includes SQLite's quick_check
        done_ids = reader.ids(DONE)
        # Atomic: whole batches of 50 only. Durable: every batch reported committed is there.
        assert len(done_ids) % 50 == 0
        assert len(done_ids) >= acknowledged
        assert list(done_ids) == list(range(len(done_ids)))
        assert reader.meta("counters") == {"next": len(done_ids)}
        integrity = reader._db.execute("PRAGMA integrity_check").fetchone()[0]
        assert integrity == "ok"
        reader.close()
    assert acknowledged >= 8 * 50


def test_fingerprint_is_stable_and_order_independent() -> None:
    """The run's fingerprint depends on the identity's content, not on key order."""
    shuffled = dict(reversed(list(IDENTITY.items())))
    assert fingerprint(shuffled) == fingerprint(IDENTITY)
    assert fingerprint({**IDENTITY, "batch_size": 99}) != fingerprint(IDENTITY)


def test_producer_states_are_kept_newest_two_and_chosen_before_the_first_chunk_to_send(
    tmp_path: Path,
) -> None:
    """A state's file is recorded with the rejects of its commit; a resume gets the newest one
    that lies before the chunk it must send first; only the two newest are kept, files too."""
    path = tmp_path / "run.ckpt"
    folder = states_dir(path)
    folder.mkdir()
    (folder / "stray.pickle").write_bytes(b"left by a killed run")
    checkpoint = open_run(path)
    assert checkpoint.producer_state(10**9) is None
    for next_chunk in (10, 20, 30):
        name = f"state-{next_chunk}.ozstate"
        (folder / name).write_bytes(b"state")
        reject = Reject(0, next_chunk, "x", "letters")
        checkpoint.record([done(next_chunk - 1)], [reject], {},
                          producer_state=(next_chunk, name))  # fmt: skip
    checkpoint.close()
    assert sorted(entry.name for entry in folder.iterdir()) == [
        "run.json",  # the marker that a run began here, kept as long as the checkpoint
        "state-20.ozstate",
        "state-30.ozstate",
    ]
    reopened = open_run(path)
    assert reopened.producer_state(35) == folder / "state-30.ozstate"
    assert reopened.producer_state(30) == folder / "state-30.ozstate"
    assert reopened.producer_state(29) == folder / "state-20.ozstate"
    assert reopened.producer_state(19) is None  # state 10 was dropped: only two are kept
    assert len(list(reopened.reject_rows())) == 3
    reopened.close()
    aside = move_aside(path)
    assert states_dir(aside).is_dir() and not folder.exists()  # the states go with their run


def test_a_schema_1_checkpoint_is_migrated_and_resumes_without_producer_states(
    tmp_path: Path,
) -> None:
    """A file written before producer states existed opens for a run: the table is added."""
    path = tmp_path / "old.ckpt"
    with_schema_version(path, "1", "DROP TABLE producer_states")
    migrated = open_run(path)
    assert migrated.schema_version() == SCHEMA_VERSION == 2
    assert migrated.producer_state(5) is None
    migrated.record([done(1)], [], {}, producer_state=(2, "state-2.ozstate"))
    assert migrated.producer_state(5) == states_dir(path) / "state-2.ozstate"
    assert set(migrated.ids(DONE)) == {0, 1}
    migrated.close()


def test_a_state_the_producer_wrote_ahead_of_its_record_is_not_pruned(tmp_path: Path) -> None:
    """The producer writes a state before the collector records it: a commit that records an
    older one must not remove the newer file (the resume would lose it); stale ones go."""
    path = tmp_path / "run.ckpt"
    folder = states_dir(path)
    checkpoint = open_run(path)
    folder.mkdir(exist_ok=True)
    for name in ("state-5.ozstate", "state-10.ozstate", "state-20.ozstate", "state-9.pickle"):
        (folder / name).write_bytes(b"state")
    checkpoint.record([done(9)], [], {}, producer_state=(10, "state-10.ozstate"))
    assert sorted(entry.name for entry in folder.iterdir()) == [
        "run.json",
        "state-10.ozstate",
        "state-20.ozstate",  # written ahead: its record comes with the next commit
    ]
    checkpoint.record([done(19)], [], {}, producer_state=(20, "state-20.ozstate"))
    assert checkpoint.producer_state(25) == folder / "state-20.ozstate"
    assert (folder / "state-20.ozstate").exists()
    checkpoint.close()


def test_a_crafted_state_name_in_the_checkpoint_is_ignored(tmp_path: Path) -> None:
    """A producer_states row naming a path outside the states folder is never used."""
    checkpoint = open_run(tmp_path / "run.ckpt")
    checkpoint.record([done(0)], [], {}, producer_state=(1, "../../etc/passwd"))
    assert checkpoint.producer_state(5) is None
    checkpoint.close()


# -- a checkpoint that lost part of itself ----------------------------------------------------


def test_a_killed_run_whose_wal_is_lost_is_refused_with_the_way_out(tmp_path: Path) -> None:
    """kill -9 leaves the main file marked open: without its -wal it is refused, untouched."""
    path = tmp_path / "c.ckpt"
    crash_after_writing(path, 4)
    assert Path(f"{path}-wal").exists()  # a killed run leaves its log, even when folded in
    reader = Checkpoint.read(path)  # with its log, every commit is there
    assert reader.sums()["chunks_done"] == 4
    reader.close()
    Path(f"{path}-wal").unlink()
    before = files_of(tmp_path)
    with pytest.raises(CheckpointError, match=r"c\.ckpt-wal file, which holds .* is missing"):
        open_run(path)
    assert files_of(tmp_path) == before


def test_a_clean_close_leaves_no_wal_and_reopens(tmp_path: Path) -> None:
    """A run that closes cleanly folds its log in: no -wal, and the file alone is whole."""
    path = tmp_path / "c.ckpt"
    checkpoint = open_run(path)
    checkpoint.record([done(0), done(1)], [], {})
    checkpoint.close()
    assert not Path(f"{path}-wal").exists()
    reopened = open_run(path)
    assert reopened.sums()["chunks_done"] == 2
    reopened.close()


def test_an_emptied_checkpoint_of_a_run_that_began_is_refused(tmp_path: Path) -> None:
    """Cut to 0 bytes after a run began (its states folder says so): refused, not reused."""
    path = tmp_path / "c.ckpt"
    checkpoint = open_run(path)
    checkpoint.record([done(0)], [], {})
    checkpoint.close()
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\), but c\.ckpt\.states/run"):
        open_run(path)
    assert path.read_bytes() == b""
    aside = move_aside(path)  # what --restart does
    assert states_dir(aside).is_dir()
    open_run(path).close()


def test_the_checkpoint_its_companions_and_states_folder_are_owner_only(tmp_path: Path) -> None:
    """0600 for the file, -wal and -shm, 0700 for the states folder, even under umask 022."""
    previous = os.umask(0o022)
    try:
        checkpoint = open_run(tmp_path / "c.ckpt")
        checkpoint.record([done(0)], [], {})
        for name in ("c.ckpt", "c.ckpt-wal", "c.ckpt-shm", "c.ckpt.states/run.json"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE((tmp_path / "c.ckpt.states").stat().st_mode) == 0o700
        checkpoint.close()
    finally:
        os.umask(previous)


@pytest.mark.parametrize("python_311", [False, True], ids=["setconfig", "reader-holds-log"])
def test_a_run_whose_closing_commit_fails_keeps_its_wal_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_311: bool
) -> None:
    """Disk full at the last commit: the -wal is kept, so the file is not taken for one that
    lost it; the next run resumes with every earlier commit."""
    if python_311:  # no Connection.setconfig: a reader holds the log in place instead
        monkeypatch.delattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE", raising=False)
    path = tmp_path / "c.ckpt"
    checkpoint = open_run(path)
    checkpoint.record([done(0), done(1)], [], {})
    monkeypatch.setattr(checkpoint, "_db", FailingCommits(checkpoint._db))
    checkpoint.close()
    assert Path(f"{path}-wal").exists()
    reopened = open_run(path)
    assert reopened.sums()["chunks_done"] == 2
    reopened.close()
    assert not Path(f"{path}-wal").exists()
