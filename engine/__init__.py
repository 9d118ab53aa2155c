"""ozbulk: delete millions of phone numbers from an Ozonetel CloudAgent block-number group.

The public API, used by the ``ozbulk`` command and by Python callers alike::

    import anyio
    from engine import InputSettings, RunSettings, Secret, delete

    settings = RunSettings(
        inputs=InputSettings(paths=("numbers.csv",)),
        group_id=42, user="acme", api_key=Secret("..."), checkpoint=Path("run.ckpt"),
    )
    outcome = anyio.run(delete, settings)
    print(outcome.summary["deleted"], outcome.exit_code)
"""

from __future__ import annotations

from engine.errors import (
    ApiError,
    AuthError,
    CheckpointError,
    CheckpointMismatch,
    CheckpointWriteError,
    CircuitOpen,
    FatalApiError,
    InputError,
    InvalidGroupError,
    OzbulkError,
    RateLimited,
    RetryableApiError,
    UsageError,
)
from engine.pipeline import RunOutcome, StopControl, delete, open_checkpoint
from engine.settings import InputSettings, RunSettings, Secret

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AuthError",
    "CheckpointError",
    "CheckpointMismatch",
    "CheckpointWriteError",
    "CircuitOpen",
    "FatalApiError",
    "InputError",
    "InputSettings",
    "InvalidGroupError",
    "OzbulkError",
    "RateLimited",
    "RetryableApiError",
    "RunOutcome",
    "RunSettings",
    "Secret",
    "StopControl",
    "UsageError",
    "__version__",
    "delete",
    "open_checkpoint",
]
