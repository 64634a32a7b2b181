"""Processes the bench measures: the direct server, and per-process CPU time accounting."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import psutil

from cocoon.commands.up import Role, http_json
from cocoon.errors import LaunchError

__all__ = ["CpuMeter", "DirectProcess"]


class DirectProcess:
    """``python -m cocoon.benchmark.direct ...`` on a free port, until ``close``."""

    def __init__(self, args: list[str], startup_timeout: float = 60.0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="cocoon-bench-direct-")
        tmp = Path(self._tmp.name)
        self.role = Role("direct server", tmp / "direct.log", tmp / "direct.ready")
        self.args = args
        self.startup_timeout = startup_timeout

    @property
    def pid(self) -> int:
        return self.role.pid

    @property
    def http(self) -> str:
        return self.role.http

    def start(self) -> None:
        role = self.role
        role.spawn("cocoon.benchmark.direct", self.args)
        deadline = time.monotonic() + self.startup_timeout
        try:
            role.wait_until(role.read_ready, "starting", deadline)
            role.wait_until(lambda: http_json(role.http + "/healthz")[0] == 200, "healthy",
                            deadline)
        except LaunchError:
            self.close()
            raise

    def close(self, grace: float = 5.0) -> None:
        self.role.terminate()
        self.role.reap(time.monotonic() + grace)
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
