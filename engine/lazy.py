"""Names a package exports but imports only when first used (PEP 562's module ``__getattr__``).

A package's ``__init__`` runs for every import of any of its modules, so an eager re-export of
a heavy module makes every light module heavy too: the producer process would load aiohttp, and
``ozbulk delete`` the fake API's web server.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], module: str, names: tuple[str, ...]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``module`` the first time one of ``names`` is read."""
    wanted = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name not in wanted:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # found directly from now on
        return value

    return __getattr__
