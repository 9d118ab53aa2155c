"""The test suite's own layout: test modules share helpers through tests/_helpers.py only."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against the tests package."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "tests" if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_no_test_module_imports_another_or_the_conftest() -> None:
    """A test module imported by another runs its tests twice under two names, and its helpers
    hide among tests; conftest is pytest's to import (a plugin, not a module to import from)."""
    offenders = {
        path.name: sorted(
            name
            for name in imported_modules(path)
            if name.startswith(("tests.test_", "tests.conftest"))
        )
        for path in sorted(TESTS.glob("test_*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    """The check above would catch each way of writing such an import."""
    forms = {
        "from tests.test_pacing import now": "tests.test_pacing",
        "import tests.test_pacing": "tests.test_pacing",
        "from tests import test_pacing": "tests.test_pacing",
        "from .test_pacing import now": "tests.test_pacing",
        "from . import conftest": "tests.conftest",
    }
    for line, module in forms.items():
        path = tmp_path / "test_probe.py"
        path.write_text(line + "\n")
        assert module in imported_modules(path), line
