"""Shared fixtures: the embedded fake API on loopback, and the real CLI run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.mock import MockConfig, ThreadedMockServer
from engine.redact import REDACTOR
from engine.sample import write_sample_file

API_KEY = "test-key-5f1c9a7e2b"  # a recognisable fake, so leak checks can grep for it
USER = "tester"
GROUP = 1


@pytest.fixture(autouse=True)
def fresh_redactor() -> Iterator[None]:
    """Each test starts with a redactor that knows no secret: one test's key masks no other's."""
    yield
    REDACTOR.forget_all()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OZONETEL_", "OZBULK_"))}
    env["OZONETEL_API_KEY"] = API_KEY
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def ozbulk_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


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


def delete_args(server: ThreadedMockServer, *inputs: str | Path, **flags: Any) -> list[str]:
    """Arguments of `ozbulk delete` against `server`; flags as --name value (True = bare flag)."""
    args = ["delete", *map(str, inputs), "--group-id", str(GROUP), "--user", USER,
            "--base-url", server.url, "--yes", "--no-progress"]  # fmt: skip
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    return args
