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

from typing import TYPE_CHECKING, Any

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
from engine.lazy import lazy_exports
from engine.settings import InputSettings, RunSettings, Secret

if TYPE_CHECKING:
    from engine.exporters import TelemetryOptions  # read from engine.pipeline, which uses it
    from engine.pipeline import RunOutcome, StopControl, delete, open_checkpoint

    __version__: str

# The pipeline (aiohttp, anyio, SQLite) is imported on first use, not with the package: the
# producer process imports ``engine.producer_child`` and must start in milliseconds.
_pipeline_export = lazy_exports(
    globals(),
    "engine.pipeline",
    ("RunOutcome", "StopControl", "delete", "open_checkpoint", "TelemetryOptions"),
)


def __getattr__(name: str) -> Any:
    if name != "__version__":
        return _pipeline_export(name)
    # Written once, in pyproject.toml; read from the installed metadata when asked for, as
    # `ozbulk --version` does (importing importlib.metadata costs the producer milliseconds).
    from importlib.metadata import version

    value = globals()["__version__"] = version("ozbulk")
    return value


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
    "TelemetryOptions",
    "UsageError",
    "__version__",
    "delete",
    "open_checkpoint",
]
