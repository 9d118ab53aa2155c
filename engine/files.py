"""Files ozbulk writes: the owner's alone, and checked before anything is sent.

The checkpoint, its SQLite companions, the producer states, the reports and the log hold the
customers' phone numbers, so each is created readable and writable by its owner only (files
0600, folders 0700) whatever the umask. SQLite gives the ``-wal`` and ``-shm`` files the mode of
their database, so a private checkpoint has private companions.

Every path a run will write to is checked before the first request (:func:`check_output_paths`):
a run that cannot write its summary or its report would otherwise do the whole job and fail at
the very end.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from engine.errors import UsageError
from engine.redact import REDACTOR

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def open_private(path: Path, *, append: bool = False) -> IO[str]:
    """Open ``path`` for writing text (truncated unless ``append``), owner-only.

    A file that already exists keeps its contents rule (truncate or append) but loses any wider
    permission it had: it is about to hold what this run writes.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    descriptor = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(descriptor, PRIVATE_FILE)
        return os.fdopen(descriptor, "a" if append else "w", encoding="utf-8", newline="")
    except BaseException:
        os.close(descriptor)
        raise


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (owner-only), replacing what was there."""
    with open_private(path) as handle:
        handle.write(text)


def make_private_dir(path: Path) -> None:
    """Create ``path`` and any missing parents; the folders created are owner-only."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by someone else: theirs
            folder.mkdir(mode=PRIVATE_DIR)
            os.chmod(folder, PRIVATE_DIR)  # mkdir's mode is filtered by the umask


def prepare_log_file(path: Path) -> None:
    """Create the log file owner-only before the logging module opens it (it appends).

    Raises :class:`UsageError` when it cannot be written, before anything else happens.
    """
    _check_file_target(path, "--log-file")
    try:
        open_private(path, append=True).close()
    except OSError as error:
        raise UsageError(f"--log-file {path}: cannot write it: {error.strerror}") from None


def check_output_paths(
    files: Iterable[tuple[str, Path]], folders: Iterable[tuple[str, Path]]
) -> None:
    """Refuse, with the flag to fix, any output that could not be written; creates nothing.

    ``files`` and ``folders`` are (flag, path) pairs: a file must be a writable file or a new
    name in a writable folder; a folder must be a writable folder or creatable under one.
    """
    for flag, path in files:
        _check_file_target(path, flag)
    for flag, path in folders:
        _check_folder_target(path, flag)


def _check_file_target(path: Path, flag: str) -> None:
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UsageError(f"{flag} {path}: not writable (permission denied)")
        return
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(
            f"{flag} {path}: the folder {parent} does not exist; create it or choose another path"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot create it in {parent} (permission denied)")


def _check_folder_target(path: Path, flag: str) -> None:
    current = path
    while not current.exists():
        if current == current.parent:
            break
        current = current.parent
    if not current.is_dir():
        raise UsageError(
            f"{flag} {path}: {current} is a file, not a folder; choose another report folder"
        )
    if not os.access(current, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write in {current} (permission denied)")


# -- CSV files meant for a spreadsheet ------------------------------------------------------

# What a spreadsheet may run as a formula, and what it reads as a plain number instead.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


def spreadsheet_safe(value: Any) -> Any:
    """``value``, made inert for a spreadsheet if it is text that would start a formula."""
    if (
        isinstance(value, str)
        and value.startswith(_FORMULA_START)
        and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


class SafeCsvWriter:
    """A csv writer whose text cells cannot run as spreadsheet formulas."""

    def __init__(self, handle: Any) -> None:
        self._writer = csv.writer(handle)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([spreadsheet_safe(cell) for cell in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """A CSV for people: owner-only, written whole or not at all (a rename), every text cell
    redacted and safe to open in a spreadsheet."""
    with csv_file(path, header) as write:
        for row in rows:
            write(row)


@contextlib.contextmanager
def csv_file(path: Path, header: list[str]) -> Iterator[Callable[[Iterable[Any]], None]]:
    """:func:`write_csv` for rows that come from callbacks: yields the function that writes a
    row; the file takes its name when the block ends without an error, and not at all otherwise."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open_private(temporary) as handle:
            writer = SafeCsvWriter(handle)
            writer.writerow(header)
            scrub = REDACTOR.scrub

            def write(row: Iterable[Any]) -> None:
                writer.writerow(scrub(cell) if isinstance(cell, str) else cell for cell in row)

            yield write
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
