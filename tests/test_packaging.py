"""Package metadata: the version written once, types shipped, every dependency pinned for CI."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import engine

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_is_written_once_in_pyproject_and_read_from_the_metadata() -> None:
    """engine.__version__ and `ozbulk --version` read what pyproject.toml says; no copy in code."""
    assert engine.__version__ == version("ozbulk") == PROJECT["project"]["version"]
    copies = [
        path.relative_to(ROOT)
        for path in (ROOT / "engine").rglob("*.py")
        if re.search(r"""^__version__\s*=\s*["']""", path.read_text(), re.MULTILINE)
    ]
    assert copies == []


def test_the_package_declares_its_types_and_posix_only() -> None:
    """py.typed ships with engine (PEP 561); the classifiers say typed, POSIX, 3.11 to 3.13."""
    assert (ROOT / "engine" / "py.typed").is_file()
    assert "py.typed" in PROJECT["tool"]["setuptools"]["package-data"]["engine"]
    classifiers = PROJECT["project"]["classifiers"]
    assert {"Typing :: Typed", "Operating System :: POSIX"} <= set(classifiers)
    assert not any(c.startswith("Operating System ::") and c != "Operating System :: POSIX"
                   for c in classifiers)  # fmt: skip
    pythons = sorted(c.rsplit(" ", 1)[1] for c in classifiers if re.search(r":: 3\.\d+$", c))
    assert pythons[0] == PROJECT["project"]["requires-python"].removeprefix(">=")


def test_every_dependency_ci_installs_is_pinned_to_one_version() -> None:
    """constraints.txt pins with == only, and pins each package pyproject.toml asks for."""
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            assert re.fullmatch(r"[\w.-]+", name) and re.fullmatch(r"[\w.+]+", pinned), line
            pins[canonicalize_name(name)] = pinned
    project = PROJECT["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["test"], *extras["bench"]]  # as `make venv`
    for requirement in map(Requirement, wanted):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in constraints.txt: run `make constraints`"
        assert requirement.specifier.contains(pins[name]), (name, pins[name])
