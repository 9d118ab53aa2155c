"""An embedded fake of Ozonetel's block-number API, for tests, demos and benchmarks.

`MockState` holds the account and decides every verdict without HTTP; `build_app` serves it with
aiohttp; `MockServer` (async) and `ThreadedMockServer` (its own thread) run that app on a port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_exports
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
__getattr__ = lazy_exports(
    globals(), "engine.mock.server", ("MockServer", "ThreadedMockServer", "build_app")
)


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
