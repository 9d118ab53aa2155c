"""nginx as a fast, independent benchmark server: no Python, no GIL, a success verdict.

The suite's own ``raw`` server is as fast as asyncio goes, yet it takes most of a core at full
speed: on two cores it competes with the client it measures. nginx answers the same kind of
verdict for a fraction of that, so a comparison against it shows the client's own cost. The suite
starts it itself, unprivileged, from a configuration generated into a temporary folder: one
worker, ``daemon off``, listening on 127.0.0.1 at a free port, its pid, logs and temp paths
in that folder, and no document root at all. Every request to the API path gets
HTTP 200 and a verdict that names the request's own numbers (see :func:`config`): ozbulk refuses
a verdict naming numbers it did not send, as a real server's answer would never do.

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

from benchmarks.servers import HOST

API_PATH = "/ca_apis/deleteBlockNumberGroup"
START_TIMEOUT_S = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROBE = b'{"userName":"bench","id":1,"blockNumbers":["919876500000"]}'
PROBE_VERDICT = (
    b'{"status":"success","message":"deleted","input":{"id":1,"blockNumbers":["919876500000"]},'
    b'"output":{"success":["919876500000"],"error":[],"deleted":0}}'
)
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


# The request's JSON array of numbers (the client writes ``"blockNumbers":[...]`` with no spaces)
# and whether it holds a full chunk of 100: nginx cannot count, a regex can.
NUMBERS_PATTERN = r'"blockNumbers":(?<list>\[[^\]]*\])'
FULL_CHUNK_PATTERN = r'^\[("[^"]*",){99}"[^"]*"\]$'


def verdict_template(numbers: str, deleted: str) -> str:
    """The success verdict naming the request's own numbers, as ``servers.success_for`` does."""
    return (
        '{"status":"success","message":"deleted","input":{"id":1,"blockNumbers":' + numbers
        + '},"output":{"success":' + numbers + ',"error":[],"deleted":' + deleted + "}}"
    )  # fmt: skip


def config(folder: Path, port: int, inner_port: int) -> str:
    """nginx.conf for one unprivileged worker answering a verdict that echoes the request.

    ozbulk checks that a verdict names only numbers it sent, so a canned body will not do, and
    core nginx has no way to write a request's body into its answer in one step: ``$request_body``
    exists only once a proxying module has read the body. So the API location proxies, without
    the body, to a second server on ``inner_port`` (keep-alive), handing it the request's numbers
    in a header; that server returns the verdict built from them. A full chunk of 100 is counted
    as deleted; a shorter one (the last) as not found, which the benchmark allows.
    """
    body = verdict_template("$http_x_numbers", "$http_x_deleted")
    # nginx's single-quoted string: only ' and \ need escaping, and the verdict has neither.
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
    # Every body nginx takes (up to client_max_body_size, 1 MB) stays in memory, where
    # $request_body can see it; a 100-number request is ~1.6 KB.
    client_body_buffer_size 1m;
    client_body_in_single_buffer on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    map $request_body $numbers {{
        '~{NUMBERS_PATTERN}' $list;
        default '[]';
    }}
    map $numbers $deleted {{
        '~{FULL_CHUNK_PATTERN}' 100;
        default 0;
    }}
    upstream verdict {{
        server {HOST}:{inner_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{port} backlog=1024;
        location = {API_PATH} {{
            proxy_pass http://verdict;
            proxy_http_version 1.1;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Connection "";
            proxy_set_header X-Numbers $numbers;
            proxy_set_header X-Deleted $deleted;
        }}
        location / {{ return 404; }}
    }}
    server {{
        listen {HOST}:{inner_port};
        large_client_header_buffers 4 16k;
        keepalive_requests 1000000;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
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
        conf.write_text(config(folder, port, _free_port()))
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
                probe = urllib.request.Request(self.url + API_PATH, data=PROBE, method="DELETE")
                with urllib.request.urlopen(probe, timeout=1) as answer:
                    if answer.read() == PROBE_VERDICT:
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
