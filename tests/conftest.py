"""Shared fixtures: the embedded fake API on loopback, and the real CLI run as a subprocess."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.mock import MockConfig, ThreadedMockServer
from engine.redact import REDACTOR
from engine.sample import write_sample_file
from tests._helpers import (
    API_KEY,
    GROUP,
    USER,
    CliResult,
    Recorded,
    cli_env,
    ozbulk_command,
    recording_servers,
)


@pytest.fixture(autouse=True)
def fresh_redactor() -> Iterator[None]:
    """Each test starts with a redactor that knows no secret: one test's key masks no other's."""
    yield
    REDACTOR.forget_all()


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., CliResult]:
    """Run the real `ozbulk` command in tmp_path; returns code and output."""

    def run(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
            input: str | None = None) -> CliResult:  # fmt: skip
        done = subprocess.run(
            ozbulk_command(*args),
            cwd=tmp_path,
            env=env or cli_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture
def fake_api() -> Iterator[Callable[..., ThreadedMockServer]]:
    """Start fake Ozonetel servers (a thread of this process) with the given MockConfig fields."""
    servers: list[ThreadedMockServer] = []

    def start(**config: Any) -> ThreadedMockServer:
        config.setdefault("user", USER)
        config.setdefault("api_key", API_KEY)
        config.setdefault("group_id", GROUP)
        server = ThreadedMockServer(MockConfig(**config))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def sample_csv(tmp_path: Path) -> Callable[..., Path]:
    """Write a realistic sample CSV of `rows` rows into tmp_path."""

    def make(rows: int, name: str = "numbers.csv", seed: int = 7) -> Path:
        path = tmp_path / name
        write_sample_file(path, rows, seed)
        return path

    return make


@pytest.fixture
def recording_api() -> Iterator[Callable[..., Recorded]]:
    """A fake API that records which chunk each request carried, in which run."""
    with recording_servers() as start:
        yield start
