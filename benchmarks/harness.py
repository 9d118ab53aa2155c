"""What every benchmark needs: the machine, spreads of repeated figures, and measured processes.

Every client and server runs as its own process, so that no two share a GIL. A client's CPU time
and peak RSS come from ``os.wait4`` on exactly that child (``RUSAGE_CHILDREN`` would mix in every
earlier child); a server's CPU time from ``/proc/PID/stat``.

One caveat of ``ru_maxrss``: Linux counts the parent's resident memory at fork time in the child's
peak (``exec`` records the old address space's high-water mark). So this process stays small: it
never imports numpy (inputs are generated in a subprocess) nor matplotlib until the plots, and a
peak that does not clearly exceed this process's own RSS at fork is reported as unknown.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
HAND_LOOP = Path(__file__).resolve().parent / "hand_loop.py"
BARE_LOOP = Path(__file__).resolve().parent / "bare_loop.py"
USER = "bench"
API_KEY = "bench-key"
GROUP = 1
SERVER_START_TIMEOUT_S = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RSS_SAMPLE_S = 0.02


# -- the machine ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, Python and library versions: what every figure depends on."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("aiohttp", "anyio", "orjson", "aiolimiter", "pyroaring"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return {
        "revision": revision(),
        "cpu": model,
        "cores": os.cpu_count() or 1,
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
        "versions": versions,
    }


def revision() -> str:
    """The commit measured, with "+ uncommitted engine changes" when engine/ differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "engine"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{commit or 'unknown'}{' + uncommitted engine changes' if dirty else ''}"


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['implementation']} {info['python']}, "
        f"aiohttp {info['versions']['aiohttp']}, {info['os']}"
    )


def load_text(load: Sequence[float] | None = None) -> str:
    """The 1, 5 and 15-minute load averages: how much else was running on the machine."""
    values = os.getloadavg() if load is None else load
    return "load average " + ", ".join(f"{value:.2f}" for value in values)


# -- figures ----------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of repeated measurements, with the values themselves."""
    if not values:
        return {"median": None, "min": None, "max": None, "values": []}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def fmt_spread(figure: dict[str, Any], digits: int = 2, unit: str = "") -> str:
    """``1.23x [1.10-1.30]``: the median, then min-max of the repeats."""
    if figure["median"] is None:
        return "n/a"
    if len(figure["values"]) == 1:
        return f"{fmt(figure['median'], digits)}{unit}"
    return (
        f"{fmt(figure['median'], digits)}{unit} "
        f"[{fmt(figure['min'], digits)}-{fmt(figure['max'], digits)}]"
    )


def alternating(repeats: int, sides: Sequence[str]) -> list[tuple[int, str]]:
    """(repeat, side) in A B, B A, A B ... order, so drift in the machine's load cancels out."""
    order: list[tuple[int, str]] = []
    for repeat in range(repeats):
        turn = list(sides) if repeat % 2 == 0 else list(reversed(sides))
        order.extend((repeat, side) for side in turn)
    return order


# -- processes ------------------------------------------------------------------------------


@dataclass
class Finished:
    """A child process that ran to its end (or was killed), as wait4 saw it."""

    command: list[str]
    returncode: int
    started: float  # time.monotonic() just before the fork: comparable with server arrivals
    wall_s: float
    cpu_s: float
    max_rss_mb: float | None  # None: not distinguishable from this process's own RSS at fork
    stdout: str
    stderr: str
    # The process and all its descendants together (ozbulk + its producer process), sampled
    # every RSS_SAMPLE_S; None unless asked for. wait4's ru_maxrss is the largest one alone.
    tree_rss_mb: float | None = None

    def json_line(self) -> dict[str, Any]:
        """The last line of stdout that parses as a JSON object."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                value: dict[str, Any] = json.loads(line)
                return value
        raise RuntimeError(f"no JSON line in the output of {self.command}:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        return "\n".join((self.stdout + self.stderr).splitlines()[-lines:])

    def check(self, allowed: Sequence[int] = (0,)) -> Finished:
        if self.returncode not in allowed:
            raise RuntimeError(f"{' '.join(self.command)} exited {self.returncode}:\n{self.tail()}")
        return self


class Running:
    """A child started now; ``wait()`` reaps it with its own resource usage."""

    def __init__(
        self,
        command: list[str],
        *,
        cwd: Path,
        env: dict[str, str] | None = None,
        timeout: float = 900.0,
        cpu: int | None = None,
        sample_rss: bool = False,
    ) -> None:
        self.command = command
        self._out = _scratch(cwd, "stdout")
        self._err = _scratch(cwd, "stderr")
        preexec = None if cpu is None else _pin(cpu)
        self.parent_rss_mb = own_rss_mb()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env if env is not None else client_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            preexec_fn=preexec,
        )
        self._watchdog = threading.Timer(timeout, self.kill)
        self._watchdog.daemon = True
        self._watchdog.start()
        self._tree_peak: float | None = None
        self._reaped = threading.Event()
        self._sampler: threading.Thread | None = None
        if sample_rss:
            self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
            self._sampler.start()

    def _sample_rss(self) -> None:
        peak = 0.0
        while not self._reaped.is_set():
            peak = max(peak, tree_rss_mb(self.process.pid))
            self._reaped.wait(RSS_SAMPLE_S)
        self._tree_peak = peak

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)

    def wait(self) -> Finished:
        _, status, usage = os.wait4(self.process.pid, 0)
        wall = time.monotonic() - self.started
        self._watchdog.cancel()
        self._reaped.set()
        if self._sampler is not None:
            self._sampler.join()
        returncode = os.waitstatus_to_exitcode(status)
        self.process.returncode = returncode  # reaped here: Popen must not wait for it again
        peak = usage.ru_maxrss / 1024  # kilobytes on Linux
        return Finished(
            command=self.command,
            returncode=returncode,
            started=self.started,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            max_rss_mb=peak if peak > self.parent_rss_mb + 1 else None,
            stdout=_read_scratch(self._out),
            stderr=_read_scratch(self._err),
            tree_rss_mb=self._tree_peak,
        )


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants right now, in MB (0 once gone)."""
    total_kb, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
                    break
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total_kb / 1024


def own_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pin(cpu: int) -> Any:
    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def _scratch(folder: Path, name: str) -> TextIO:
    # Files, not pipes: a chatty child must never block on a pipe nobody reads yet.
    return open(folder / f".{name}-{time.monotonic_ns()}.txt", "w+")


def _read_scratch(handle: TextIO) -> str:
    handle.seek(0)
    text = handle.read()
    handle.close()
    os.unlink(handle.name)
    return text


def run(command: list[str], *, cwd: Path, timeout: float = 900.0, **kwargs: Any) -> Finished:
    return Running(command, cwd=cwd, timeout=timeout, **kwargs).wait()


def client_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OZONETEL_", "OZBULK_"))}
    env["OZONETEL_API_KEY"] = API_KEY
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def ozbulk_delete(
    source: Path,
    url: str,
    checkpoint: Path,
    *,
    rate: str = "0",
    concurrency: int = 16,
) -> list[str]:
    """``ozbulk delete`` as a user runs it for speed: checkpoint on, no progress bar, no prompt."""
    return [
        sys.executable, "-m", "engine", "delete", str(source),
        "--group-id", str(GROUP), "--user", USER, "--base-url", url,
        "--rate", rate, "--concurrency", str(concurrency),
        "--checkpoint", str(checkpoint), "--summary-json", str(summary_path(checkpoint)),
        "--no-progress", "--yes",
        # The benchmark servers' groups are empty or echo: the pace is measured, not deletions.
        "--allow-not-found",
    ]  # fmt: skip


def summary_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".summary.json")


def read_summary(checkpoint: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(summary_path(checkpoint).read_text())
    return value


def remove_checkpoint(checkpoint: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".summary.json"):
        Path(f"{checkpoint}{suffix}").unlink(missing_ok=True)
    for folder in (".report", ".states"):
        shutil.rmtree(f"{checkpoint}{folder}", ignore_errors=True)


def copy_checkpoint(source: Path, target: Path) -> None:
    """The checkpoint, its WAL and its producer states, as a resume finds them."""
    remove_checkpoint(target)
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
    if Path(f"{source}.states").is_dir():
        shutil.copytree(f"{source}.states", f"{target}.states")


def hand_loop(
    source: Path, url: str, *, concurrency: int = 16, script: Path = HAND_LOOP
) -> list[str]:
    """The baseline's command line; ``script=BARE_LOOP`` for the no-HTTP-library floor."""
    return [
        sys.executable, str(script), str(source), "--base-url", url, "--user", USER,
        "--group-id", str(GROUP), "--api-key", API_KEY, "--concurrency", str(concurrency),
    ]  # fmt: skip


@dataclass
class Arrivals:
    """What a server saw: arrival times (monotonic, system-wide) and the status of each answer."""

    times: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


class Server:
    """A benchmark server process (``benchmarks.servers``); use as a context manager."""

    def __init__(self, kind: str, *args: str, folder: Path, log: bool = False) -> None:
        self.log_path = folder / f".arrivals-{time.monotonic_ns()}.json" if log else None
        command = [sys.executable, "-m", "benchmarks.servers", kind, *args]
        if self.log_path is not None:
            command += ["--log", str(self.log_path)]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=client_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        banner = self._next_line(SERVER_START_TIMEOUT_S)
        if banner is None or "listening on" not in banner:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"benchmark server did not start: {banner!r}")
        self.url = banner.split()[-1]
        self.arrivals = Arrivals()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())

    def _next_line(self, timeout: float) -> str | None:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def first_request(self, timeout: float) -> float | None:
        """When the first request arrived (monotonic), waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            line = self._next_line(left)
            if line is not None and line.startswith("first "):
                return float(line.split()[1])
        return None

    def cpu_s(self) -> float:
        """CPU seconds the server has used so far (user + system)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> Arrivals:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_path is not None and self.log_path.exists():
            data = json.loads(self.log_path.read_text())
            self.arrivals = Arrivals(data["times"], data["statuses"])
            self.log_path.unlink()
        return self.arrivals

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
