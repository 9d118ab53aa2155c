"""The checkpoint: one SQLite file per run, the only durable state ozbulk keeps.

Why SQLite in WAL mode: a committed transaction survives ``kill -9`` and power loss (with
``synchronous=FULL``), a crash at any instant leaves a file that opens, and one row per finished
chunk makes resume a single indexed read. The collector commits results in batches every fraction
of a second, so durability costs one fsync per batch, not one per chunk.

What is stored: the run's identity (inputs and every setting that shapes the chunks), one row per
finished chunk (done or failed, with counts and the numbers the API put in ``error``), the rejected
rows, and the run's counters. Successes are not stored: the input and the chunk ids regenerate
them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroaring import BitMap

from engine.batcher import Reject
from engine.errors import CheckpointError, CheckpointMismatch, CheckpointWriteError

SCHEMA_VERSION = 1
DONE = "done"
FAILED = "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('done', 'failed')),
    sent INTEGER NOT NULL,
    success INTEGER NOT NULL,
    error INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    in_doubt INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejects (
    file INTEGER NOT NULL,
    line INTEGER NOT NULL,
    raw TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (file, line)
);
"""


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """The outcome of one chunk, as the checkpoint keeps it.

    ``detail`` holds what the report needs and the input cannot regenerate: for a done chunk,
    the numbers the API listed in ``error`` with their file and line; for a failed one, every
    number with its origin so that errors.csv and failed_chunks.csv can name them.
    """

    id: int
    state: str
    sent: int
    success: int
    error: int
    deleted: int
    attempts: int
    in_doubt: bool
    reason: str
    detail: list[tuple[str, int, int]]


def fingerprint_file(path: str) -> dict[str, Any]:
    """Identify an input by its content: a changed file must not resume an old run."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {
        "path": os.path.abspath(path),
        "size": os.path.getsize(path),
        "blake2b": digest.hexdigest(),
    }


def fingerprint(identity: dict[str, Any]) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=12).hexdigest()


def _explain_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "inputs":
            before = [item.get("path") for item in old.get(key, [])]
            after = [item.get("path") for item in new.get(key, [])]
            parts.append(
                f"inputs: {before} -> {after}" if before != after else "input file content changed"
            )
        else:
            parts.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return "; ".join(parts) or "identity differs"


class Checkpoint:
    """Open with :meth:`for_run` (writing) or :meth:`read` (status, report)."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def for_run(cls, path: Path, identity: dict[str, Any], settings: dict[str, Any]) -> Checkpoint:
        """Create the checkpoint, or reopen it if it belongs to this very run; refuse otherwise."""
        existed = path.exists() and _has_tables(path)
        try:
            connection = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as error:
            raise CheckpointWriteError(
                f"cannot create the checkpoint {path}: {error}; choose a writable --checkpoint",
                path=str(path),
            ) from None
        checkpoint = cls(path, connection)
        try:
            if existed:
                checkpoint._check_version()
                stored = checkpoint.identity()
                if stored != identity:
                    raise CheckpointMismatch(
                        f"the checkpoint {path} belongs to another run "
                        f"({_explain_difference(stored, identity)}); re-run with --restart to "
                        "start over (the old file is kept aside), or pass another --checkpoint",
                        path=str(path),
                    )
            checkpoint._prepare(identity, settings, fresh=not existed)
        except BaseException:
            connection.close()
            if not existed:
                _remove_quietly(path)
            raise
        return checkpoint

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path}", path=str(path))
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        checkpoint = cls(path, connection)
        checkpoint._check_version()
        return checkpoint

    def _check_version(self) -> None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as error:
            raise CheckpointError(
                f"{self.path} is not a readable ozbulk checkpoint ({error}); it was left "
                "untouched: move it away or pass another --checkpoint",
                path=str(self.path),
            ) from None
        if row is None:
            raise CheckpointError(
                f"{self.path} is not an ozbulk checkpoint; it was left untouched",
                path=str(self.path),
            )
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise CheckpointError(
                f"{self.path} was written by a newer ozbulk (checkpoint schema {version}, this "
                f"one reads up to {SCHEMA_VERSION}); upgrade ozbulk to resume it",
                path=str(self.path),
            )

    def _prepare(self, identity: dict[str, Any], settings: dict[str, Any], *, fresh: bool) -> None:
        def write() -> None:
            # WAL keeps readers (ozbulk status) unblocked while a run commits, and a commit is
            # one append; FULL makes each commit durable past a power cut, not just a kill -9.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._transaction():
                if fresh:
                    for statement in _SCHEMA.split(";"):
                        self._db.execute(statement)
                    self._set_meta(
                        schema_version=SCHEMA_VERSION,
                        identity=identity,
                        fingerprint=fingerprint(identity),
                        created_at=time.time(),
                        horizon=0,
                        counters={},
                    )
                self._set_meta(settings=settings, updated_at=time.time())

        self._guard(write)

    # -- writing ---------------------------------------------------------------------------
    def record(
        self,
        chunks: Iterable[ChunkRecord],
        rejects: Iterable[Reject],
        counters: dict[str, Any],
    ) -> None:
        """Commit a batch of outcomes in one transaction: all of them survive a crash, or none."""
        now = time.time()

        def write() -> None:
            with self._transaction():
                self._db.executemany(
                    # A done chunk is final; only a failed one may be overwritten by a later pass.
                    "INSERT INTO chunks VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE "
                    "SET state=excluded.state, sent=excluded.sent, success=excluded.success, "
                    "error=excluded.error, deleted=excluded.deleted, "
                    "attempts=chunks.attempts+excluded.attempts, in_doubt=excluded.in_doubt, "
                    "reason=excluded.reason, detail=excluded.detail, "
                    "finished_at=excluded.finished_at WHERE chunks.state = 'failed'",
                    [
                        (
                            c.id, c.state, c.sent, c.success, c.error, c.deleted, c.attempts,
                            int(c.in_doubt), c.reason, json.dumps(c.detail), now,
                        )
                        for c in chunks
                    ],
                )  # fmt: skip
                self._db.executemany(
                    "INSERT OR IGNORE INTO rejects VALUES (?,?,?,?)",
                    [(r.file, r.line, r.raw, r.reason) for r in rejects],
                )
                self._set_meta(counters=counters, updated_at=now)

        self._guard(write)

    def set_horizon(self, horizon: int) -> None:
        """Promise that no chunk at or past ``horizon`` has been sent (see :mod:`workers`)."""
        self._guard(lambda: self._set_meta(horizon=horizon, updated_at=time.time()))

    def _set_meta(self, **values: Any) -> None:
        self._db.executemany(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            [(key, json.dumps(value)) for key, value in values.items()],
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _guard(self, write: Any) -> None:
        try:
            write()
        except sqlite3.OperationalError as error:
            raise CheckpointWriteError(
                f"cannot write the checkpoint {self.path}: {error}. Everything committed before "
                "is kept; fix the disk or permissions and re-run the same command to resume",
                path=str(self.path),
            ) from None

    # -- reading ---------------------------------------------------------------------------
    def meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def identity(self) -> dict[str, Any]:
        value: dict[str, Any] = self.meta("identity", {})
        return value

    def ids(self, state: str) -> BitMap:
        return BitMap(
            row[0] for row in self._db.execute("SELECT id FROM chunks WHERE state = ?", (state,))
        )

    def sums(self) -> dict[str, int]:
        """Totals over finished chunks; each chunk is one row, so none is counted twice."""
        row = self._db.execute(
            "SELECT COUNT(*), "
            "COALESCE(SUM(state='done'), 0), COALESCE(SUM(state='failed'), 0), "
            "COALESCE(SUM(CASE WHEN state='done' THEN sent END), 0), "
            "COALESCE(SUM(success), 0), COALESCE(SUM(error), 0), COALESCE(SUM(deleted), 0), "
            "COALESCE(SUM(CASE WHEN state='failed' THEN sent END), 0), "
            "COALESCE(SUM(in_doubt), 0) FROM chunks"
        ).fetchone()
        keys = (
            "chunks_finished", "chunks_done", "chunks_failed", "sent", "success", "error",
            "deleted", "failed_numbers", "in_doubt_chunks",
        )  # fmt: skip
        return dict(zip(keys, (int(value) for value in row), strict=True))

    def chunk_rows(self, where: str = "1") -> Iterator[sqlite3.Row]:
        self._db.row_factory = sqlite3.Row
        try:
            yield from self._db.execute(f"SELECT * FROM chunks WHERE {where} ORDER BY id")
        finally:
            self._db.row_factory = None

    def reject_rows(self) -> Iterator[tuple[int, int, str, str]]:
        yield from self._db.execute(
            "SELECT file, line, raw, reason FROM rejects ORDER BY file, line"
        )

    def close(self) -> None:
        self._db.close()

    def move_aside(self) -> Path:
        """Rename the file (and its WAL companions) out of the way; never delete a checkpoint."""
        return move_aside(self.path)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:
            self._db.execute("ROLLBACK")


def move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{stamp}.old")
    for suffix in ("-wal", "-shm", ""):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{target}{suffix}"))
    return target


def _has_tables(path: Path) -> bool:
    """False for a file a crash left before its first commit: SQLite reads it as empty."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            count: int = connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
            return count > 0
        finally:
            connection.close()
    except sqlite3.DatabaseError:
        return True  # not SQLite at all: let the version check refuse it with a clear message


def _remove_quietly(path: Path) -> None:
    for suffix in ("-wal", "-shm", ""):
        with contextlib.suppress(OSError):
            Path(f"{path}{suffix}").unlink()
