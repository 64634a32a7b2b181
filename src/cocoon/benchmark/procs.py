"""Processes the bench measures: the direct server, and per-process CPU time accounting."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from cocoon.launch import LaunchError

__all__ = ["CpuMeter", "DirectProcess"]


class DirectProcess:
    """``python -m cocoon.benchmark.direct ...`` on a free port, until ``close``."""

    def __init__(self, args: list[str], startup_timeout: float = 60.0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="cocoon-bench-direct-")
        tmp = Path(self._tmp.name)
        self.log_path = tmp / "direct.log"
        self.ready_path = tmp / "direct.ready"
        self.args = args
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def http(self) -> str:
        return str(self.info["http"])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "cocoon.benchmark.direct",
               "--ready-file", str(self.ready_path), *self.args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise LaunchError(f"direct server exited while starting:\n{self.log_tail()}")
            try:
                self.info = json.loads(self.ready_path.read_text())
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            try:
                with urllib.request.urlopen(self.http + "/healthz", timeout=2.0) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.close()
        raise LaunchError(f"direct server not ready within {self.startup_timeout:g}s:\n"
                          f"{self.log_tail()}")

    def close(self, grace: float = 5.0) -> None:
        if self.proc is not None:
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._tmp.cleanup()

    def __enter__(self) -> DirectProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, kernel work included)."""
    t = psutil.cpu_times()
    return float(sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq")))


class CpuMeter:
    """CPU seconds (user + system, all threads) that each named process spends between
    ``start()`` and ``stop()``, plus ``other``: what the rest of the machine spent busy
    meanwhile (other processes, interrupts and kernel networking not billed to a process).
    A large ``other`` means something else competed for the cores during the measurement."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._before: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, proc in self._procs.items():
            t = proc.cpu_times()
            out[name] = float(t.user + t.system)
        out["other"] = _busy_cpu_s()
        return out

    def start(self) -> None:
        self._before = self._sample()

    def stop(self) -> dict[str, float]:
        after = self._sample()
        out = {name: after[name] - self._before[name] for name in after}
        out["other"] = max(0.0, out["other"] - sum(v for k, v in out.items() if k != "other"))
        return out
