"""Logging for operators: plain or JSON lines, and no secret in any of them, ever.

Every handler carries a :class:`RedactingFilter`: the run's one redactor
(:data:`engine.redact.REDACTOR`) replaces each secret with ``***`` in the final text of the record,
whatever code formatted it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Literal

from engine.redact import REDACTOR as REDACTOR  # re-exported: the CLI has it from here

LogFormat = Literal["text", "json"]


class RedactingFilter(logging.Filter):
    """Masks every secret the redactor knows in each record that passes through a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = REDACTOR.scrub(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = REDACTOR.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


REDACTING_FILTER = RedactingFilter()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["traceback"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(
    *, verbose: int = 0, quiet: bool = False, log_file: Path | None = None, fmt: LogFormat = "text"
) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose >= 2 else logging.INFO
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        # The file gets everything down to INFO whatever -q says: it is the record of the run.
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setLevel(min(level, logging.INFO))
        handlers.append(file_handler)
    formatter: logging.Formatter = (
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(REDACTING_FILTER)
        root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if log_file is not None else level)
    handlers[0].setLevel(level)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
