"""What the live progress bar costs: ``python -m benchmarks.progress_cost [--seconds S]``.

The same paced run (``--rate 100`` against the raw benchmark server, so both sides take the same
wall time) twice over, alternating: once drawing rich's bar on a pseudo-terminal, once with
``--no-progress``. The difference in the ozbulk process's CPU seconds is what the bar costs;
printed per second of run and as a share of one core.
"""

from __future__ import annotations

import argparse
import os
import pty
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.harness import (
    Running,
    Server,
    client_env,
    machine,
    machine_line,
    ozbulk_delete,
)

RATE = 100


def _drain(fd: int, screen: list[bytes]) -> None:
    try:
        while data := os.read(fd, 65536):
            screen.append(data)
    except OSError:
        pass


def one_run(folder: Path, source: Path, url: str, bar: bool) -> tuple[float, float]:
    checkpoint = folder / f"progress-{bar}.ckpt"
    for suffix in ("", "-wal", "-shm", ".summary.json"):
        Path(f"{checkpoint}{suffix}").unlink(missing_ok=True)
    command = ozbulk_delete(source, url, checkpoint, rate=str(RATE))
    if not bar:
        finished = Running(command, cwd=folder).wait().check()
        return finished.cpu_s, finished.wall_s
    command.remove("--no-progress")
    leader, follower = pty.openpty()
    screen: list[bytes] = []
    drain = threading.Thread(target=_drain, args=(leader, screen), daemon=True)
    drain.start()
    started = time.monotonic()
    # The bar is drawn on stderr when stderr is a terminal: make it (and stdin) the pty.
    process = subprocess.Popen(command, cwd=folder, env=client_env(), stdin=follower,
                               stdout=subprocess.DEVNULL, stderr=follower)  # fmt: skip
    os.close(follower)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    drain.join(timeout=5)
    os.close(leader)
    if process.returncode != 0 or b"deleting" not in b"".join(screen):
        raise RuntimeError(f"ozbulk with the bar exited {process.returncode} or drew no bar")
    return usage.ru_utime + usage.ru_stime, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each run")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(machine_line(machine()))
    with tempfile.TemporaryDirectory(prefix="ozbulk-progress-") as name:
        folder = Path(name)
        source = folder / "numbers.csv"
        rows = int(args.seconds * RATE * 100)
        with source.open("w") as handle:
            handle.write("phone\n")
            for index in range(rows):
                handle.write(f"9{index:09d}\n")
        cpu: dict[bool, list[float]] = {True: [], False: []}
        wall: dict[bool, list[float]] = {True: [], False: []}
        with Server("raw", folder=folder) as server:
            for _ in range(args.repeats):
                for bar in (True, False):
                    spent, took = one_run(folder, source, server.url, bar)
                    cpu[bar].append(spent)
                    wall[bar].append(took)
        with_bar, without = statistics.median(cpu[True]), statistics.median(cpu[False])
        seconds = statistics.median(wall[True])
        print(f"ran: ozbulk delete, {rows:,} numbers at --rate {RATE} (~{seconds:.0f} s a run), "
              f"{args.repeats} runs each side, alternating")  # fmt: skip
        print(f"CPU with the bar on a terminal: {with_bar:.2f} s (runs {cpu[True]})")
        print(f"CPU with --no-progress:         {without:.2f} s (runs {cpu[False]})")
        cost = (with_bar - without) / seconds
        print(f"the bar costs {cost * 1000:.1f} ms of CPU per second of run "
              f"({cost * 100:.2f} % of one core)")  # fmt: skip


if __name__ == "__main__":
    main()
