"""The architecture of ARCHITECTURE.md, held against the imports.

Every module of ``engine`` has a layer; a module may import only modules of its own layer or of
a layer below it. The stages come in the order a chunk travels (producer, workers, collector), so
no stage imports a later one, and the ledger imports no transport module. Every import counts:
at the top, inside a function (a lazy import is still a dependency) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"

# Bottom to top. Keep in step with ARCHITECTURE.md → Layers.
LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": (
        "errors", "records", "settings", "config", "rates", "limits", "redact", "files",
        "streams", "lazy", "logs", "sample",
    ),
    "instruments": ("pacing", "bucket", "guard", "telemetry"),
    "producer": (
        "source", "numbers", "batcher", "selection", "state_file", "producer_messages",
        "producer_child", "producer_process", "producer_choice",
    ),
    "transport": ("refusals", "auth", "client", "workers"),
    "ledger": ("checkpoint", "pass_start", "collector"),
    "views": (
        "summary", "report", "telemetry_report", "status", "run_view", "progress", "metrics",
        "exporters", "request_log",
    ),
    "run": ("pipeline", "plan", "interruption"),
    "command": ("cli", "arguments", "demo", "__main__", "__init__", "mock"),
}  # fmt: skip
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}
TRANSPORT = set(LAYERS["transport"])
LEDGER = set(LAYERS["ledger"])


def unit(module: str) -> str:
    """``engine.mock.server`` -> ``mock``: a package inside engine is one unit."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def engine_imports(path: Path) -> set[str]:
    """The engine modules a file imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "engine":  # from engine import streams
                found.update(f"engine.{alias.name}" for alias in node.names)
            elif node.module.startswith("engine."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("engine."))
    return found


def graph() -> dict[str, set[str]]:
    """Unit -> the units it imports (a package's relative imports stay inside it)."""
    edges: dict[str, set[str]] = {}
    for path in sorted(ENGINE.rglob("*.py")):
        module = ".".join(("engine", *path.relative_to(ENGINE).with_suffix("").parts))
        source = unit(module)
        targets = {unit(target) for target in engine_imports(path)} - {source}
        edges.setdefault(source, set()).update(targets)
    return edges


GRAPH = graph()


def upward(edges: dict[str, set[str]], module: str) -> set[str]:
    """What ``module`` imports from a layer above its own."""
    return {target for target in edges[module] if RANK[target] > RANK[module]}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules around it, or None."""
    finished: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in finished:
            return None
        for target in sorted(edges[module]):
            if cycle := visit(target, [*path, module]):
                return cycle
        finished.add(module)
        return None

    return next(filter(None, (visit(module, []) for module in sorted(edges))), None)


def test_every_module_has_a_layer() -> None:
    assert set(GRAPH) == set(RANK), "place a new module in LAYERS and in ARCHITECTURE.md"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_layer_above_its_own(module: str) -> None:
    above = upward(GRAPH, module)
    assert not above, f"{module} ({_layer(module)}) imports {sorted(above)} from a layer above"


def test_the_ledger_imports_no_transport_module() -> None:
    for module in LEDGER:
        assert not GRAPH[module] & TRANSPORT, module


def test_no_import_cycle_between_modules() -> None:
    assert find_cycle(GRAPH) is None


def test_the_checks_see_a_planted_violation() -> None:
    """A guard for the guard: the producer importing the collector, and a display importing
    the pipeline that imports it, are caught."""
    planted = {**GRAPH, "batcher": GRAPH["batcher"] | {"collector"}}
    assert upward(planted, "batcher") == {"collector"}
    planted = {**GRAPH, "progress": GRAPH["progress"] | {"pipeline"}}
    assert upward(planted, "progress") == {"pipeline"}
    cycle = find_cycle(planted)
    assert cycle is not None and {"progress", "pipeline"} <= set(cycle)


def _layer(module: str) -> str:
    return next(name for name, modules in LAYERS.items() if module in modules)
