"""What the benchmarks share: the server subprocess they measure, and their percentiles.

`bench/signaling.py` and `bench/forwarding.py` import it as `process`: run as scripts, their
folder is sys.path[0]. They import it before they take that folder off sys.path (their
`bench/signaling.py` would otherwise shadow the `signaling` package).
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
"""The unit of utime and stime in /proc/<pid>/stat."""


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK_S


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server subprocess on a loopback port, its output in a log file."""

    name = "server"

    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, port: int
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with open(log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd
            )

    @property
    def pid(self) -> int:
        """The server's process id (the process measured)."""
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        """The signalling WebSocket URL."""
        return self.url.replace("http", "ws", 1) + "/ws"

    def healthy(self) -> bool:
        """True when GET /healthz answers 200."""
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until GET /healthz answers 200; RuntimeError if the process dies or stalls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready:\n{self.output()}")

    def rss_kib(self) -> int:
        """The server's resident memory (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS in /proc/<pid>/status")

    def cpu_s(self) -> tuple[float, float]:
        """(utime, stime) of the process, all its threads, in seconds (10 ms resolution).

        Fields 14 and 15 of /proc/<pid>/stat."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return int(fields[11]) * CLOCK_TICK_S, int(fields[12]) * CLOCK_TICK_S

    def stop(self) -> float:
        """SIGTERM, wait, SIGKILL if it hangs; returns the seconds the shutdown took."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - start

    def output(self) -> str:
        """The end of what the server printed."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def percentile_ms(values: list[float], q: int) -> float | None:
    """The `q`-th percentile of `values` (seconds), in milliseconds; None if there are none."""
    if not values:
        return None
    if len(values) == 1:
        return round(values[0] * 1000, 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 2)
