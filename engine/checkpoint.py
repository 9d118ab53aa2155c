"""The checkpoint: one SQLite file per run, the only durable state ozbulk keeps.

Why SQLite in WAL mode: a committed transaction survives ``kill -9`` and power loss (with
``synchronous=FULL``), a crash at any instant leaves a file that opens, and one row per finished
chunk makes resume a single indexed read. The collector commits results in batches every fraction
of a second, so durability costs one fsync per batch, not one per chunk.

What is stored: the run's identity (inputs and every setting that shapes the chunks), one row per
finished chunk (done or failed, with counts and the numbers the API put in ``error``), the rejected
rows, the run's counters and what the input held. Successes are not stored: the input and the
chunk ids regenerate them.

What is never done to a file ozbulk did not just create: write to it before it has been read,
through a read-only connection, and recognised as a healthy checkpoint of this very run. A file
that is corrupt, of a newer schema, of another run, or in use by another process is refused as it
is, byte for byte.

A checkpoint that lost part of itself is refused too, because resuming from what is left would
re-send chunks that were done and report their numbers as not found. Two things can be lost:

- the ``-wal`` file, which holds every commit since SQLite last copied the log into the main
  file. A run marks the main file itself "open for writing" (``writer_open`` in ``meta``, made
  durable in the main file by a checkpoint of the log before the first request) and marks it
  closed in its last commit, just before SQLite folds the log in and deletes it. SQLite deletes
  a ``-wal`` only on such a clean close: a killed run leaves it behind, even when empty, and a
  run whose last commit fails (a full disk) keeps it on purpose. So a main file that says
  "open" with no ``-wal`` beside it has lost its log.
- the main file's contents (a zero-byte or table-less file). Every run creates
  ``CHECKPOINT.states/run.json`` once its schema is durable in the main file and before anything
  is sent; a crash before that leaves nothing worth keeping, so an empty file is reused only
  when that marker is absent. (A checkpoint that is missing altogether was removed on purpose:
  a new run starts, and its leftovers are set aside.)

Both refusals say what was lost and offer ``--restart``, which keeps the remains aside.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroaring import BitMap

from engine.errors import CheckpointError, CheckpointMismatch, CheckpointWriteError
from engine.files import PRIVATE_FILE, make_private_dir, write_private_text
from engine.records import Reject
from engine.redact import REDACTOR

# Every text a row stores passes the redactor: a reason may quote a server that echoed a secret.
scrub = REDACTOR.scrub

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
DONE = "done"
FAILED = "failed"
# SQLite's companions of a WAL-mode database: they belong to the main file and move with it.
COMPANIONS = ("-wal", "-shm")

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
CREATE TABLE IF NOT EXISTS producer_states (next_chunk INTEGER PRIMARY KEY, file TEXT NOT NULL);
"""

# Statements that bring a checkpoint of schema N up to N + 1, applied in one transaction by
# _migrate. Version 2 keeps the producer's states, so a resume need not re-read from the start.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE IF NOT EXISTS producer_states "
        "(next_chunk INTEGER PRIMARY KEY, file TEXT NOT NULL)",
    ),
}
# The newest producer states kept: a resume takes the newest one that lies before every
# unfinished chunk, and the newest may lie just past one (the producer reads ahead of the sends).
# A state is a file the producer process writes into STATES_SUFFIX beside the checkpoint (it
# holds the dedupe bitmap, megabytes that the event loop's process never has to hold); a row
# here names it, committed with the rejects read before it.
STATES_KEPT = 2
# The detail of almost every chunk (done, no number refused): its JSON, written once.
NO_DETAIL = "[]"
STATES_SUFFIX = ".states"
# In the states folder: written once a run's checkpoint is durable, before anything is sent.
RUN_MARKER = "run.json"
# The only names a producer_states row may give: a crafted row cannot point outside the folder.
STATE_NAME = re.compile(r"state-[0-9]{1,18}\.ozstate")
STATE_FILE = re.compile(r"state-([0-9]{1,18})\.ozstate(?:\.partial)?")
# The run's 10-second timeline (engine.telemetry), one row per bucket and pass. Created by the
# first write that needs it rather than by a schema version: nothing depends on it being there
# (a reader finds no rows), and an older ozbulk that reads schema 2 ignores a table it does not
# know, so adding it needs no migration.
_TIMELINE = (
    "CREATE TABLE IF NOT EXISTS timeline "
    "(start REAL NOT NULL, pass INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (start, pass))"
)


def states_dir(path: Path) -> Path:
    """Where the producer states of the checkpoint at ``path`` live."""
    return Path(f"{path}{STATES_SUFFIX}")


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """The outcome of one chunk, as the checkpoint keeps it.

    ``detail`` holds what the report needs and the input cannot regenerate: for a done chunk,
    the numbers the API listed in ``error`` with their file and line; for a failed one, every
    number with its origin so that errors.csv and failed_chunks.csv can name them. ``reason`` says
    why a failed chunk failed, or why a done one is in doubt.
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


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot change the file, nor leave new files beside it.

    Without a -wal file every commit is in the main file, and ``immutable`` reads it with no
    -wal or -shm created (a plain read-only open of a WAL database leaves both behind). With a
    -wal file (a live or killed run) SQLite must read it through the -shm index, which exists.
    """
    # as_uri() percent-encodes, so a name with '?', '#' or '%' cannot be read as URI syntax.
    uri = f"{path.absolute().as_uri()}?mode=ro"
    if not Path(f"{path}-wal").exists():
        uri += "&immutable=1"
    return sqlite3.connect(uri, uri=True, isolation_level=None)


class Checkpoint:
    """Open with :meth:`for_run` (writing) or :meth:`read` (status, report)."""

    def __init__(
        self, path: Path, connection: sqlite3.Connection, lock_descriptor: int | None = None
    ) -> None:
        self.path = path
        self._db = connection
        self._lock_descriptor = lock_descriptor

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def for_run(cls, path: Path, identity: dict[str, Any], settings: dict[str, Any]) -> Checkpoint:
        """Create the checkpoint, or reopen it if it belongs to this very run; refuse otherwise.

        The file is locked for as long as the run holds it: two processes sending the same
        chunks would count nothing twice, but would send everything twice.
        """
        if path.is_dir():
            raise CheckpointError(
                f"the checkpoint {path} is a folder; pass a file name to --checkpoint",
                path=str(path),
            )
        existed = path.exists()
        if not existed:
            _set_orphans_aside(path)
        descriptor = _lock(path)
        created = not existed
        try:
            if existed and _has_tables(path):
                # Every check reads through a read-only connection: a file that fails one is
                # left exactly as it was (a read-write open could replay or fold in its WAL).
                inspected = cls.read(path)
                try:
                    stored = inspected.identity()
                    version = inspected.schema_version()
                    inspected._refuse_lost_wal()
                finally:
                    inspected.close()
                if stored != identity:
                    raise CheckpointMismatch(
                        f"the checkpoint {path} belongs to another run "
                        f"({_explain_difference(stored, identity)}); re-run with --restart to "
                        "start over (the old file is kept aside), or pass another --checkpoint",
                        path=str(path),
                    )
                fresh = False
            else:
                # Absent, empty, or a SQLite file without a table: a crash before the first
                # commit leaves exactly that, and there is nothing in it to keep, unless a run
                # had got as far as marking the states folder.
                if existed:
                    _refuse_emptied(path)
                version, fresh = SCHEMA_VERSION, True
            connection = _connect(path)
        except BaseException:
            os.close(descriptor)
            if created:
                _remove_quietly(path)
            raise
        checkpoint = cls(path, connection, descriptor)
        try:
            checkpoint._prepare(identity, settings, fresh=fresh, version=version)
            checkpoint._fold_log()
            _mark_states_folder(path, identity)
        except BaseException:
            checkpoint.close()
            if created:
                _remove_quietly(path)
            raise
        return checkpoint

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        """Open for reading only; refuse a file that is not a healthy checkpoint ozbulk reads."""
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path}", path=str(path))
        try:
            connection = _open_read_only(path)
        except sqlite3.Error as error:
            raise CheckpointError(
                f"cannot open the checkpoint {path}: {error}", path=str(path)
            ) from None
        checkpoint = cls(path, connection)
        try:
            version = checkpoint.schema_version()
            if version > SCHEMA_VERSION:
                raise CheckpointError(
                    f"{path} was written by a newer ozbulk (checkpoint schema {version}, this "
                    f"one reads up to {SCHEMA_VERSION}); it was left untouched: upgrade ozbulk "
                    "to resume it",
                    path=str(path),
                )
            checkpoint._check_integrity()
        except BaseException:
            connection.close()
            raise
        return checkpoint

    def schema_version(self) -> int:
        """The schema the file was written with; CheckpointError if it is no ozbulk checkpoint."""
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as error:
            raise self._unreadable(str(error)) from None
        if row is None:
            raise self._unreadable("it has no schema version")
        try:
            version = json.loads(row[0])
        except ValueError:
            version = None
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise self._unreadable(f"its schema version {row[0]!r} makes no sense")
        return version

    def _check_integrity(self) -> None:
        # quick_check reads every page once (milliseconds for a million chunks): a torn or
        # overwritten page is refused here, not discovered halfway through a resume.
        try:
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check")]
            for table in ("meta", "chunks", "rejects"):
                self._db.execute(f"SELECT * FROM {table} LIMIT 0")
        except sqlite3.DatabaseError as error:
            raise self._unreadable(str(error)) from None
        if problems != ["ok"]:
            raise self._unreadable("it is damaged: " + "; ".join(problems[:3]))

    def _unreadable(self, why: str) -> CheckpointError:
        return CheckpointError(
            f"{self.path} is not a readable ozbulk checkpoint ({why}); it was left untouched: "
            "move it away, pass another --checkpoint, or --restart to set it aside",
            path=str(self.path),
        )

    def _refuse_lost_wal(self) -> None:
        """Refuse a main file that says a run had it open, when its ``-wal`` is gone."""
        if Path(f"{self.path}-wal").exists() or not self.meta("writer_open", False):
            return
        raise CheckpointError(
            f"{self.path} was left open by a run that did not finish cleanly, but its "
            f"{self.path.name}-wal file, which holds that run's latest commits, is missing "
            "(deleted, or not copied along). Resuming without it would send finished chunks "
            "again and report their numbers as not found. Put the -wal file back beside it, "
            "or start over with --restart (the old files are kept aside)",
            path=str(self.path),
        )

    def _keep_log_on_close(self) -> sqlite3.Connection | None:
        """The closing commit failed (a full disk): SQLite must not fold the log in and delete
        it on close, or the main file, still marked open, would be taken for one whose -wal was
        lost. Returns a connection to close after this one, when that is how it is done."""
        setconfig = getattr(self._db, "setconfig", None)  # Python 3.12+
        option = getattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE", None)
        if setconfig is not None and option is not None:
            with contextlib.suppress(sqlite3.Error):
                setconfig(option, True)
                return None
        # Python 3.11: while a reader holds the log, the writer's close leaves it in place,
        # and a read-only connection never folds it in.
        with contextlib.suppress(sqlite3.Error):
            reader = _open_read_only(self.path)
            reader.execute("SELECT COUNT(*) FROM meta").fetchone()
            return reader
        return None

    def _prepare(
        self, identity: dict[str, Any], settings: dict[str, Any], *, fresh: bool, version: int
    ) -> None:
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
                else:
                    self._migrate(version)
                self._set_meta(
                    settings=REDACTOR.scrub_value(settings),
                    updated_at=time.time(),
                    writer_open=True,
                )

        self._guard(write)

    def _fold_log(self) -> None:
        """Copy the log into the main file now, so that the main file alone holds the schema,
        the identity and ``writer_open`` before anything is sent (see the module docstring).

        A reader (``ozbulk status``) holding an old snapshot can hold the copy up: it is tried
        a few times, then left to SQLite's own checkpoints (the states folder's marker still
        guards the file).
        """

        def fold() -> None:
            for _ in range(20):
                busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if not busy:
                    return
                time.sleep(0.01)
            log.debug("%s: the log could not be folded in yet (a reader holds it)", self.path)

        self._guard(fold)

    def _migrate(self, version: int) -> None:
        """Bring an older checkpoint up to SCHEMA_VERSION, inside the caller's transaction."""
        for step in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[step]:
                self._db.execute(statement)
        if version != SCHEMA_VERSION:
            self._set_meta(schema_version=SCHEMA_VERSION)

    # -- writing ---------------------------------------------------------------------------
    def record(
        self,
        chunks: Iterable[ChunkRecord],
        rejects: Iterable[Reject],
        counters: dict[str, Any],
        *,
        input_counts: dict[str, Any] | None = None,
        producer_state: tuple[int, str] | None = None,
        unsettled: dict[str, Any] | None = None,
        telemetry: tuple[dict[str, Any], list[tuple[float, int, dict[str, Any]]]] | None = None,
    ) -> None:
        """Commit a batch of outcomes in one transaction: all of them survive a crash, or none.

        ``unsettled`` is what the collector knows of the chunks sent but not recorded (see
        :mod:`engine.collector`), stored with the outcomes it was computed against.
        ``telemetry`` is (the run's figures, timeline rows changed since the last commit).

        ``producer_state`` is (next chunk id, file name in :func:`states_dir`): recorded with
        the rejects read before it, so a resume that starts from it has every earlier reject.
        State files no longer recorded are removed once the transaction is committed.
        """
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
                            int(c.in_doubt), scrub(c.reason),
                            scrub(json.dumps(c.detail)) if c.detail else NO_DETAIL, now,
                        )
                        for c in chunks
                    ],
                )  # fmt: skip
                self._db.executemany(
                    "INSERT OR IGNORE INTO rejects VALUES (?,?,?,?)",
                    [(r.file, r.line, scrub(r.raw), scrub(r.reason)) for r in rejects],
                )
                if input_counts is not None:
                    self._set_meta(input=input_counts)
                if unsettled is not None:
                    self._set_meta(unsettled=unsettled)
                if producer_state is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO producer_states VALUES (?, ?)", producer_state
                    )
                    self._db.execute(
                        "DELETE FROM producer_states WHERE next_chunk NOT IN (SELECT next_chunk "
                        "FROM producer_states ORDER BY next_chunk DESC LIMIT ?)",
                        (STATES_KEPT,),
                    )
                self._set_meta(counters=counters, updated_at=now)
                if telemetry is not None:
                    self._write_telemetry(*telemetry)
            if producer_state is not None:
                self._prune_states()

        self._guard(write)

    def _write_telemetry(
        self, figures: dict[str, Any], rows: list[tuple[float, int, dict[str, Any]]]
    ) -> None:
        self._db.execute(_TIMELINE)
        self._db.executemany(
            "INSERT OR REPLACE INTO timeline VALUES (?, ?, ?)",
            [(start, number, json.dumps(data)) for start, number, data in rows],
        )
        self._set_meta(telemetry=figures)

    def _prune_states(self) -> None:
        """Remove state files no longer recorded, but not those the producer wrote ahead.

        The producer process writes a state before the collector hears of it: a file newer
        than every recorded one is about to be recorded, not stale.
        """
        rows = list(self._db.execute("SELECT next_chunk, file FROM producer_states"))
        kept = {file for _, file in rows}
        newest = max((next_chunk for next_chunk, _ in rows), default=-1)
        with contextlib.suppress(OSError):
            for entry in states_dir(self.path).iterdir():
                if entry.name in kept or entry.name == RUN_MARKER:
                    continue
                ahead = STATE_FILE.fullmatch(entry.name)
                if ahead and int(ahead[1]) > newest:
                    continue
                entry.unlink(missing_ok=True)

    def set_horizon(self, horizon: int, unsettled: dict[str, Any] | None = None) -> None:
        """Promise that every chunk at or past ``horizon`` is recorded or was never sent.

        A statement of its own, committed (and fsynced) before the chunks it covers are sent.
        See :mod:`engine.collector` for how the horizon and the in-doubt set work together.
        """
        values: dict[str, Any] = {"horizon": horizon, "updated_at": time.time()}
        if unsettled is not None:
            values["unsettled"] = unsettled

        def write() -> None:
            with self._transaction():
                self._set_meta(**values)

        self._guard(write)

    def settle(self, in_doubt: list[int]) -> None:
        """With nothing in flight: ``in_doubt`` is exactly what may have been sent unrecorded."""

        def write() -> None:
            with self._transaction():  # both or neither: a lowered horizon needs its set
                self._set_meta(in_doubt=sorted(in_doubt), horizon=0, updated_at=time.time())

        self._guard(write)

    def _set_meta(self, **values: Any) -> None:
        self._db.executemany(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            [(key, json.dumps(value)) for key, value in values.items()],
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _guard(self, write: Callable[[], None]) -> None:
        try:
            write()
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise  # a bug in ozbulk, not trouble with the disk
        except sqlite3.DatabaseError as error:
            # Disk full, read-only, removed, I/O error: every earlier commit is intact (SQLite
            # rolls back the one that failed), so the message promises a resume, not a restart.
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

    def ids(self, state: str, *, in_doubt: bool | None = None) -> BitMap:
        """Ids of the chunks in ``state`` (optionally only those in doubt, or not in doubt)."""
        query = "SELECT id FROM chunks WHERE state = ?"
        parameters: tuple[Any, ...] = (state,)
        if in_doubt is not None:
            query += " AND in_doubt = ?"
            parameters += (int(in_doubt),)
        return BitMap(row[0] for row in self._db.execute(query, parameters))

    def producer_state(self, before: int) -> Path | None:
        """The file of the newest producer state from which chunk ``before`` is still ahead."""
        row = self._db.execute(
            "SELECT file FROM producer_states WHERE next_chunk <= ? "
            "ORDER BY next_chunk DESC LIMIT 1",
            (before,),
        ).fetchone()
        if row is None:
            return None
        if not isinstance(row[0], str) or not STATE_NAME.fullmatch(row[0]):
            log.warning("%s: ignoring a producer state named %r", self.path, row[0])
            return None
        return states_dir(self.path) / row[0]

    def sums(self) -> dict[str, int]:
        """Totals over finished chunks; each chunk is one row, so none is counted twice."""
        row = self._db.execute(
            "SELECT COUNT(*), "
            "COALESCE(SUM(state='done'), 0), COALESCE(SUM(state='failed'), 0), "
            "COALESCE(SUM(CASE WHEN state='done' THEN sent END), 0), "
            "COALESCE(SUM(success), 0), COALESCE(SUM(error), 0), COALESCE(SUM(deleted), 0), "
            "COALESCE(SUM(CASE WHEN state='failed' THEN sent END), 0), "
            "COALESCE(SUM(in_doubt), 0), "
            "COALESCE(SUM(CASE WHEN state='done' AND in_doubt=1 THEN sent-deleted-error END), 0) "
            "FROM chunks"
        ).fetchone()
        keys = (
            "chunks_finished", "chunks_done", "chunks_failed", "sent", "success", "error",
            "deleted", "failed_numbers", "in_doubt_chunks", "probably_deleted_earlier",
        )  # fmt: skip
        return dict(zip(keys, (int(value) for value in row), strict=True))

    def chunk_rows(self, where: str = "1") -> Iterator[sqlite3.Row]:
        cursor = self._db.cursor()
        cursor.row_factory = sqlite3.Row
        yield from cursor.execute(f"SELECT * FROM chunks WHERE {where} ORDER BY id")

    def timeline_rows(self) -> list[tuple[float, int, dict[str, Any]]]:
        """The run's timeline, (bucket start, pass, figures) in time order; [] if none kept."""
        try:
            rows = self._db.execute("SELECT start, pass, data FROM timeline ORDER BY start, pass")
            return [(start, number, json.loads(data)) for start, number, data in rows]
        except sqlite3.OperationalError:  # no such table: written before telemetry, or empty
            return []

    def reject_rows(self) -> Iterator[tuple[int, int, str, str]]:
        yield from self._db.execute(
            "SELECT file, line, raw, reason FROM rejects ORDER BY file, line"
        )

    def close(self) -> None:
        holder = None
        if self._lock_descriptor is not None:
            # The last commit: a clean close. SQLite then folds the log in and deletes it.
            try:
                with self._transaction():
                    self._set_meta(writer_open=False)
            except sqlite3.Error:
                holder = self._keep_log_on_close()
        self._db.close()
        if holder is not None:
            holder.close()
        # Only after SQLite has let go: closing any descriptor of the file drops every POSIX
        # lock this process holds on it, SQLite's own included.
        if self._lock_descriptor is not None:
            os.close(self._lock_descriptor)
            self._lock_descriptor = None


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is None:
            try:
                self._db.execute("COMMIT")
            except BaseException:
                # A COMMIT that failed (disk full) may leave the transaction open: end it, so
                # that the next attempt starts clean instead of piling onto a doomed one.
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the error being raised says more
                self._db.execute("ROLLBACK")


def move_aside(path: Path) -> Path:
    """Rename ``path``, its companions and its states folder to ``<name>.<time>.old`` (a fresh
    name, never reused).

    The WAL moves first: if this is interrupted halfway, the main file left in place still opens
    (missing at most its last commits), rather than a WAL left behind without its database.
    """
    if path.exists():
        descriptor = _lock(path)  # refuse to pull the file from under a live run
        os.close(descriptor)
    target = _fresh_name(path, ".old")
    for suffix in (*COMPANIONS, STATES_SUFFIX, ""):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{target}{suffix}"))
    return target


def _fresh_name(path: Path, ending: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        tag = stamp if attempt == 0 else f"{stamp}-{attempt}"
        target = path.with_name(f"{path.name}.{tag}{ending}")
        if not any(Path(f"{target}{suffix}").exists() for suffix in ("", *COMPANIONS)):
            return target
    raise CheckpointError(f"too many set-aside copies of {path}; clean some up", path=str(path))


def _mark_states_folder(path: Path, identity: dict[str, Any]) -> None:
    """Leave the evidence that a run began in this checkpoint (see the module docstring)."""
    folder = states_dir(path)
    marker = folder / RUN_MARKER
    if marker.exists():
        return
    try:
        make_private_dir(folder)
        write_private_text(marker, json.dumps({"fingerprint": fingerprint(identity)}) + "\n")
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # the marker must outlive a power cut that follows a send
        finally:
            os.close(descriptor)
    except OSError as error:
        raise CheckpointWriteError(
            f"cannot create {marker}: {error.strerror}; make the checkpoint's folder writable "
            "or choose another --checkpoint (nothing was sent)",
            path=str(path),
        ) from None


def _refuse_emptied(path: Path) -> None:
    """An empty checkpoint whose states folder says a run began in it lost its contents."""
    if not (states_dir(path) / RUN_MARKER).exists():
        return
    size = path.stat().st_size
    what = "is empty (0 bytes)" if size == 0 else f"holds no checkpoint tables ({size} bytes)"
    raise CheckpointError(
        f"{path} {what}, but {states_dir(path).name}/{RUN_MARKER} shows that a run already "
        "used it: its contents were lost (truncated, overwritten, or copied without them). "
        "Starting in it would send finished chunks again and report their numbers as not "
        "found. Restore the file, or start over with --restart (the old files are kept aside)",
        path=str(path),
    )


def _set_orphans_aside(path: Path) -> None:
    """A WAL without its database must not be replayed into a new one, nor an old run's states
    folder taken for the new run's: keep them, renamed."""
    suffixes = (*COMPANIONS, STATES_SUFFIX)
    orphans = [Path(f"{path}{suffix}") for suffix in suffixes if Path(f"{path}{suffix}").exists()]
    if not orphans:
        return
    target = _fresh_name(path, ".orphan")
    for orphan in orphans:
        orphan.rename(Path(f"{target}{orphan.name[len(path.name) :]}"))
    log.warning(
        "%s was missing but files of an earlier run beside it were not (%s); they were moved "
        "to %s*",
        path,
        ", ".join(orphan.name for orphan in orphans),
        target,
    )


def _lock(path: Path) -> int:
    """Open (creating if need be) and exclusively lock ``path``; return the descriptor."""
    try:
        # Owner-only: it holds phone numbers. SQLite gives -wal and -shm the same mode.
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    except OSError as error:
        raise CheckpointWriteError(
            f"cannot create or write the checkpoint {path}: {error.strerror}; make its folder "
            "writable or choose another --checkpoint (nothing was sent)",
            path=str(path),
        ) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise CheckpointError(
            f"the checkpoint {path} is in use by another ozbulk run; wait for it to finish "
            "(ozbulk status shows where it stands), or stop it first",
            path=str(path),
        ) from None
    return descriptor


def _connect(path: Path) -> sqlite3.Connection:
    try:
        # The collector commits from a worker thread, one write at a time (it holds a lock), so
        # the connection may be used from a thread other than the one that opened it.
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise CheckpointWriteError(
            f"cannot open the checkpoint {path} for writing: {error}; choose a writable "
            "--checkpoint",
            path=str(path),
        ) from None


def _has_tables(path: Path) -> bool:
    """False for a file a crash left before its first commit: SQLite reads it as empty."""
    if path.stat().st_size == 0 and not Path(f"{path}-wal").exists():
        return False
    try:
        connection = _open_read_only(path)
        try:
            count: int = connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
            return count > 0
        finally:
            connection.close()
    except sqlite3.DatabaseError:
        return True  # not SQLite at all: let read() refuse it with a clear message


def _remove_quietly(path: Path) -> None:
    """Remove a checkpoint this very call created and could not finish; nothing else."""
    for suffix in (*COMPANIONS, ""):
        with contextlib.suppress(OSError):
            Path(f"{path}{suffix}").unlink()
