"""An embedded fake of Ozonetel's block-number API, for tests, demos and benchmarks.

`MockState` holds the account and decides every verdict without HTTP; `build_app` serves it with
aiohttp; `MockServer` (async) and `ThreadedMockServer` (its own thread) run that app on a port.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from engine.mock.state import (
    CREATE_PATH,
    DELETE_ALIAS_PATH,
    DELETE_PATH,
    FAULT_KINDS,
    TOKEN_PATH,
    UPDATE_PATH,
    MockConfig,
    MockState,
    canonicalise,
    generate_mobile_numbers,
)

if TYPE_CHECKING:
    from engine.mock.server import MockServer, ThreadedMockServer, build_app

# The server half needs aiohttp's web framework, which ``ozbulk delete`` never uses: it is imported
# on first use, so the CLI (which builds the mock-server's arguments) starts without it.
_SERVER = frozenset(("MockServer", "ThreadedMockServer", "build_app"))


def __getattr__(name: str) -> Any:
    if name in _SERVER:
        value = getattr(importlib.import_module("engine.mock.server"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine.mock' has no attribute {name!r}")


__all__ = [
    "CREATE_PATH",
    "DELETE_ALIAS_PATH",
    "DELETE_PATH",
    "FAULT_KINDS",
    "TOKEN_PATH",
    "UPDATE_PATH",
    "MockConfig",
    "MockServer",
    "MockState",
    "ThreadedMockServer",
    "build_app",
    "canonicalise",
    "generate_mobile_numbers",
]
