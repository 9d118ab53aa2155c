"""nginx as a fast, independent benchmark server: no Python, no GIL, a fixed success verdict.

The suite's own ``raw`` server is as fast as asyncio goes, yet it takes most of a core at full
speed: on two cores it competes with the client it measures. nginx answers the same verdict for a
fraction of that, so a comparison against it shows the client's own cost. The suite starts it
itself, unprivileged, from a configuration generated into a temporary folder: one worker,
``daemon off``, listening on 127.0.0.1 at a free port, its pid, logs and temp paths in that
folder, and no document root at all. Every request to the API path gets HTTP 200 and the verdict
(``return 200``, in the rewrite phase, so the DELETE method needs no module); nginx reads and
discards a request's body before it answers, so keep-alive connections stay in step.

nginx is an optional system package: :func:`find_nginx` says where it is, or why it cannot run,
and the suite prints that reason instead of the lines that need it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from benchmarks.servers import HOST, SUCCESS_BODY

API_PATH = "/ca_apis/deleteBlockNumberGroup"
START_TIMEOUT_S = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SEARCHED = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def find_nginx() -> tuple[str | None, str]:
    """(path to the nginx binary, "") or (None, why nginx cannot be used here)."""
    binary = shutil.which("nginx") or next((p for p in SEARCHED if os.access(p, os.X_OK)), None)
    if binary is None:
        return None, "nginx is not installed (e.g. `apt-get install nginx-light`)"
    return binary, ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def config(folder: Path, port: int) -> str:
    """nginx.conf for one unprivileged worker answering the verdict on the API path."""
    # nginx's single-quoted string: only ' and \ need escaping, and the verdict has neither.
    body = SUCCESS_BODY.decode()
    assert "'" not in body and "\\" not in body
    temp = folder / "temp"
    return f"""\
worker_processes 1;
daemon off;
master_process on;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    # A 100-number request is ~1.6 KB: kept in memory, never spooled to a temp file.
    client_body_buffer_size 16k;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen {HOST}:{port} backlog=1024;
        location = {API_PATH} {{
            default_type application/json;
            return 200 '{body}';
        }}
        location / {{ return 404; }}
    }}
}}
"""


class NginxServer:
    """nginx started from a generated config in ``folder``; a context manager like ``Server``."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "temp").mkdir(exist_ok=True)
        port = _free_port()
        conf = folder / "nginx.conf"
        conf.write_text(config(folder, port))
        self.process = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(folder), "-e", str(folder / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = f"http://{HOST}:{port}"
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                _, errors = self.process.communicate()
                raise RuntimeError(f"nginx exited {self.process.returncode}: {errors.strip()}")
            with contextlib.suppress(OSError):
                probe = urllib.request.Request(self.url + API_PATH, data=b"{}", method="DELETE")
                with urllib.request.urlopen(probe, timeout=1) as answer:
                    if answer.read() == SUCCESS_BODY:
                        return
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not answer on {self.url} within {START_TIMEOUT_S} s")

    def _pids(self) -> list[int]:
        """The master and its workers."""
        pids = [self.process.pid]
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.process.pid}/task").iterdir():
                pids += [int(child) for child in (task / "children").read_text().split()]
        return pids

    def cpu_s(self) -> float:
        """CPU seconds nginx (master and worker) has used so far."""
        total = 0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()

    def __enter__(self) -> NginxServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
