"""Every error ozbulk raises on purpose, in one tree.

::

    OzbulkError                     exit  what the operator does
    ├── UsageError                     2  fix the command line or settings; nothing was sent
    │   └── InputError                 2  fix or choose another input file (file, line)
    ├── CheckpointError                2  the checkpoint is unreadable or of another run
    │   └── CheckpointMismatch         2  use --restart or another --checkpoint
    ├── CheckpointWriteError           4  free the disk / fix permissions, then resume
    ├── InputFailedMidRun              3  the input became unreadable after sending began
    ├── ApiError                          one answer of the API (chunk_id, http_status)
    │   ├── RetryableApiError             retried with backoff; the chunk fails when out
    │   │   ├── TransportError            connection refused/reset, timeout, DNS
    │   │   ├── ServerError               5xx, HTML page, garbled/oversized/impossible answer
    │   │   │   └── NotAVerdict           a page that is not a JSON verdict at all
    │   │   ├── RateLimited               HTTP 429 or "Max limit exceeded" (retry_after)
    │   │   └── TokenRejected             "Token Expired" / "Invalid Token": refresh once
    │   └── FatalApiError              3  no retry can help: the run stops, resumable
    │       ├── InvalidGroupError      3  the group id does not exist for this account
    │       ├── AuthError              3  bad user name, API key, or token budget spent
    │       ├── RequestRejected        3  "Parameters are mandatory": a bug in ozbulk
    │       ├── CircuitOpen            3  most recent chunks failed: the server is broken
    │       ├── NothingDeleted         3  none of the first ~2,000 numbers was in the group
    │       └── NoApiThere             3  no connection, or pages that are not the API

A run stopped by Ctrl-C or SIGTERM is not an error: it ends with exit code 130 after committing
(see :class:`engine.pipeline.StopControl`), and re-running the same command resumes it.

Errors that reach the operator are printed as one line (``str(error)``), never with a traceback;
each message says what is wrong and how to fix it. aiohttp's exceptions are translated into this
tree in exactly one place, :func:`engine.client.translate_transport_error`.
"""

from __future__ import annotations

import enum
import textwrap


class ExitCode(enum.IntEnum):
    """Every code the ``ozbulk`` command can exit with; :data:`EXIT_MEANINGS` says each."""

    OK = 0
    FAILED_CHUNKS = 1
    USAGE = 2
    STOPPED = 3
    CHECKPOINT_WRITE = 4
    INTERNAL = 70
    INTERRUPTED = 130

    @property
    def meaning(self) -> str:
        """What the code means and what to do, for ``--help`` (one line)."""
        return EXIT_MEANINGS[self]

    @property
    def outcome(self) -> str | None:
        """The words of the one-line result after a run; None: the stop's own reason says it."""
        return OUTCOME_WORDS.get(self)


EXIT_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "complete: every number has a verdict",
    ExitCode.FAILED_CHUNKS: "finished, but some chunks failed after all retries (re-run to retry "
    "them)",
    ExitCode.USAGE: "bad usage, settings, input or checkpoint (nothing was sent)",
    ExitCode.STOPPED: "stopped part-way by an answer no retry can fix (bad credentials, invalid "
    "group id), because none of the first 2,000 numbers sent was in the group (see "
    "--allow-not-found), because no API answered at --base-url, or by input unreadable past some "
    "point; what was sent is recorded; resumable",
    ExitCode.CHECKPOINT_WRITE: "the checkpoint could not be written (disk full, read-only); "
    "resumable once fixed",
    ExitCode.INTERNAL: "internal error: a bug in ozbulk (run again with -v for the traceback, and "
    "report it)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); re-run the same command to resume",
}

OUTCOME_WORDS: dict[ExitCode, str] = {
    ExitCode.OK: "complete: every number has a verdict",
    ExitCode.FAILED_CHUNKS: "finished with failed chunks: re-run the same command to retry them",
    ExitCode.INTERRUPTED: "interrupted: re-run the same command to resume",
}


def exit_codes_help() -> str:
    """The ``exit codes:`` section of ``ozbulk delete --help``."""
    lines = ["exit codes:"]
    for code in ExitCode:
        lines.append(
            textwrap.fill(
                code.meaning,
                width=95,
                initial_indent=f"  {code.value:<5}",
                subsequent_indent=" " * 7,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines) + "\n"


class OzbulkError(Exception):
    """Base of every error ozbulk raises on purpose."""

    exit_code: ExitCode = ExitCode.USAGE


class UsageError(OzbulkError):
    """A bad command line, setting or credential source: refused before anything is sent."""

    exit_code = ExitCode.USAGE


class InputError(UsageError):
    """An input file that cannot be read at all (a bad row is a reject, not an error)."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        where = file if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
        self.reason = message
        self.file = file
        self.line = line


class CheckpointError(OzbulkError):
    """The checkpoint file cannot be used for this run (corrupt, newer schema, other run)."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class CheckpointMismatch(CheckpointError):
    """The checkpoint was made for other input or other settings."""


class CheckpointWriteError(OzbulkError):
    """The checkpoint cannot be written (disk full, read-only, removed); committed work is kept."""

    exit_code = ExitCode.CHECKPOINT_WRITE

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class InputFailedMidRun(OzbulkError):
    """An input that turned out unreadable part-way (a truncated ``.gz``) after chunks were sent.

    Not a usage error (exit 2 promises that nothing was sent): the run stopped part-way, like a
    fatal answer, and what was sent is recorded. ``cause`` is the :class:`InputError` itself.
    """

    exit_code = ExitCode.STOPPED

    def __init__(self, message: str, *, cause: InputError) -> None:
        super().__init__(message)
        self.cause = cause


class ApiError(OzbulkError):
    """One answer (or non-answer) of the Ozonetel API."""

    exit_code = ExitCode.STOPPED

    def __init__(
        self, message: str, *, chunk_id: int | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.chunk_id = chunk_id
        self.http_status = http_status


class RetryableApiError(ApiError):
    """An answer that another attempt, later, may turn into a success.

    ``may_have_applied`` says whether the server may have carried the request out although no
    verdict came back (the connection dropped after sending, a 5xx, an answer too large or
    impossible to believe): a chunk sent again after such an attempt is *in doubt*, and its
    numbers that come back "not found" were probably deleted by that attempt.
    """

    may_have_applied = False

    def __init__(
        self,
        message: str,
        *,
        chunk_id: int | None = None,
        http_status: int | None = None,
        may_have_applied: bool | None = None,
    ) -> None:
        super().__init__(message, chunk_id=chunk_id, http_status=http_status)
        if may_have_applied is not None:
            self.may_have_applied = may_have_applied


class TransportError(RetryableApiError):
    """No usable HTTP answer: connection refused or reset, timeout, name resolution.

    Failures to connect cannot have reached the server (``may_have_applied=False``); any later
    one (reset, timeout, answer cut short) may have.
    """

    may_have_applied = True


class ServerError(RetryableApiError):
    """A 5xx, an HTML error page, a garbled, oversized or impossible answer, an odd verdict."""

    may_have_applied = True


class NotAVerdict(ServerError):
    """An answer that is no JSON verdict at all: a proxy's page, another web site, garbage.

    Unlike a verdict the server could not mean (an impossible count), it suggests that no
    Ozonetel API is at the other end (see :class:`engine.guard.FirstContact`).
    """


class RateLimited(RetryableApiError):
    """The server says we are going too fast (HTTP 429 or a "Max limit exceeded" body)."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        chunk_id: int | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, chunk_id=chunk_id, http_status=http_status)
        self.retry_after = retry_after


class TokenRejected(RetryableApiError):
    """The token was refused as expired or invalid: refresh it (single-flight) and retry.

    ``generation`` names the token that was refused (never the token itself), so that only the
    first of many workers refused at once triggers a refresh.
    """

    def __init__(self, message: str, *, generation: int, http_status: int | None = None) -> None:
        super().__init__(message, http_status=http_status)
        self.generation = generation


class FatalApiError(ApiError):
    """An answer no retry can fix: the run stops at once and stays resumable."""


class InvalidGroupError(FatalApiError):
    """The block-number group id does not exist for this account."""


class AuthError(FatalApiError):
    """Bad user name or API key, a token refused after a refresh, or the token budget spent."""


class RequestRejected(FatalApiError):
    """The API refused the request's shape ("Parameters are mandatory"): a bug in ozbulk."""


class CircuitOpen(FatalApiError):
    """Most of the recent chunks failed after all retries: the server looks broken."""


class NothingDeleted(FatalApiError):
    """None of the first numbers sent was in the group: a wrong form, group or user."""


class NoApiThere(FatalApiError):
    """Before any verdict, requests found no connection or pages that are not the API."""
