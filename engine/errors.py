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


class OzbulkError(Exception):
    """Base of every error ozbulk raises on purpose."""

    exit_code: int = 2


class UsageError(OzbulkError):
    """A bad command line, setting or credential source: refused before anything is sent."""

    exit_code = 2


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

    exit_code = 2

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class CheckpointMismatch(CheckpointError):
    """The checkpoint was made for other input or other settings."""


class CheckpointWriteError(OzbulkError):
    """The checkpoint cannot be written (disk full, read-only, removed); committed work is kept."""

    exit_code = 4

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class InputFailedMidRun(OzbulkError):
    """An input that turned out unreadable part-way (a truncated ``.gz``) after chunks were sent.

    Not a usage error (exit 2 promises that nothing was sent): the run stopped part-way, like a
    fatal answer, and what was sent is recorded. ``cause`` is the :class:`InputError` itself.
    """

    exit_code = 3

    def __init__(self, message: str, *, cause: InputError) -> None:
        super().__init__(message)
        self.cause = cause


class ApiError(OzbulkError):
    """One answer (or non-answer) of the Ozonetel API."""

    exit_code = 3

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
