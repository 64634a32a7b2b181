"""`cocoon up` starts cleanly and stops cleanly: its ports are checked before anything starts,
each run's role logs start fresh (earlier runs rotated), and stopping it (SIGTERM, also in the
middle of its start) leaves no process, no warning and no traceback behind.

The real `cocoon up` runs with the fake engine and no chain (the quickest network), with
Python's warnings on (``PYTHONWARNINGS=default``, inherited by every role)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cocoon.commands.up import LOG_GENERATIONS, LocalNetwork, check_ports_free, rotate_log
from cocoon.errors import LaunchError

pytestmark = pytest.mark.e2e

BAD = ("Traceback", "never awaited", "ResourceWarning", "RuntimeWarning", "Task was destroyed",
       "Unclosed", "still running")
ROLES = ("proxy", "worker-1", "client")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port this process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_busy_port_is_named_with_its_holder(busy_port: int) -> None:
    with pytest.raises(LaunchError) as ei:
        check_ports_free("127.0.0.1", {0: "anything", busy_port: "the client's API, --port"})
    msg = str(ei.value)
    assert f"port {busy_port} on 127.0.0.1 (the client's API, --port) is in use" in msg
    assert f"by pid {os.getpid()} (" in msg  # this test's own process holds it
    check_ports_free("127.0.0.1", {0: "any port"})  # 0 is always free


def test_a_network_on_a_busy_port_starts_nothing(busy_port: int, tmp_path: Path) -> None:
    with LocalNetwork(engine="fake", client_port=busy_port, data_dir=tmp_path / "data") as net:
        with pytest.raises(LaunchError, match=f"port {busy_port} .* is in use"):
            net.start()
        assert net.roles() == []  # no process was started in vain
    assert not list((tmp_path / "data").glob("*.log"))


def test_rotate_log_keeps_a_few_generations(tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    rotate_log(log)  # nothing to rotate yet
    assert not list(tmp_path.iterdir())
    for run in range(1, LOG_GENERATIONS + 3):
        rotate_log(log)
        log.write_text(f"run {run}\n")
    runs = LOG_GENERATIONS + 2
    assert log.read_text() == f"run {runs}\n"
    for i in range(1, LOG_GENERATIONS + 1):
        assert log.with_name(f"proxy.log.{i}").read_text() == f"run {runs - i}\n"
    assert not log.with_name(f"proxy.log.{LOG_GENERATIONS + 1}").exists()


class Up:
    """A real `cocoon up` on ``data``; stdout and stderr kept apart."""

    def __init__(self, data: Path, tag: str, *args: str) -> None:
        self.data, self.logs = data, data / "logs"
        self.out, self.err = data.parent / f"{tag}.out", data.parent / f"{tag}.err"
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="default")
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cocoon", "up", "--engine", "fake", "--port", "0",
                 "--chain", "none", "--data-dir", str(data), "--timeout", "60", *args],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)

    def wait_for_output(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {text!r} from cocoon up:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - the failure reported below
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"cocoon up did not stop on SIGTERM:\n{self.output()}")

    def output(self) -> str:
        return (self.out.read_text(errors="replace") + "\n--- stderr\n"
                + self.err.read_text(errors="replace"))

    def leftovers(self) -> list[int]:
        """Processes still running with this data directory on their command line."""
        needle = str(self.data).encode()
        pids = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if needle in cmdline.read_bytes():
                    pids.append(int(cmdline.parent.name))
            except OSError:
                continue
        return pids

    def assert_clean_exit(self) -> None:
        assert self.proc.returncode == 0, self.output()
        assert self.err.read_text(errors="replace") == "", self.output()
        for log in self.logs.glob("*.log*"):
            text = log.read_text(errors="replace")
            assert not [b for b in BAD if b in text], f"{log.name}:\n{text[-3000:]}"
        deadline = time.monotonic() + 10
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.leftovers() == [], "roles left running after cocoon up stopped"


def test_each_run_logs_afresh_and_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Up(data, "first")
    first.wait_for_output("Press Ctrl-C to stop")
    assert "funded with 10 TON" in first.output() and "nanoTON" not in first.output()
    assert "proxy: workers and clients dial 127.0.0.1:" in first.output()
    # network.json: every role, its live pid, addresses, config and log, for scripts
    network = json.loads((data / "logs" / "network.json").read_text())
    assert network["supervisor_pid"] == first.proc.pid
    assert network["api"].startswith("http://127.0.0.1:") and network["api"].endswith("/v1")
    by_name = {r["name"]: r for r in network["roles"]}
    assert set(by_name) == set(ROLES)
    for r in by_name.values():
        assert r["alive"] and Path(f"/proc/{r['pid']}").exists(), r
        assert Path(r["config"]).is_file() and Path(r["log"]).is_file(), r
        assert r["http"].startswith("http://127.0.0.1:"), r
    assert by_name["proxy"]["listen"].startswith("127.0.0.1:")
    first_logs = {r: (data / "logs" / f"{r}.log").read_text() for r in ROLES}
    assert first.stop() == 0
    first.assert_clean_exit()

    second = Up(data, "second")
    second.wait_for_output("Press Ctrl-C to stop")
    for role in ROLES:
        now = (data / "logs" / f"{role}.log").read_text()
        # this run's log holds this run's lines only; the first run's moved to .1
        assert first_logs[role] not in now, role
        assert first_logs[role] in (data / "logs" / f"{role}.log.1").read_text(), role
    assert second.stop() == 0
    second.assert_clean_exit()


@pytest.mark.parametrize("when", ["starting proxy", "worker-1: loading engine",
                                  "starting client"])
def test_stopping_in_the_middle_of_the_start_is_clean(tmp_path: Path, when: str) -> None:
    up = Up(tmp_path / "data", "mid-start")
    up.wait_for_output(when)
    assert up.stop() == 0
    assert "stopped" in up.out.read_text()
    up.assert_clean_exit()


def test_stopping_with_a_request_in_flight_settles_it_cleanly(tmp_path: Path) -> None:
    """The roles stop from the edge in (client, workers, proxy): the proxy, still running,
    settles the stream the client's going cut off, with no traceback in its log."""
    data = tmp_path / "data"
    up = Up(data, "in-flight", "--worker-set", "engine.fake.delay_ms=200",
            "--worker-set", "engine.fake.chunks=100")
    up.wait_for_output("Press Ctrl-C to stop")
    client = json.loads((data / "client.ready").read_text())["http"]
    body = json.dumps({"model": "fake", "stream": True,
                       "messages": [{"role": "user", "content": "a long one"}]}).encode()
    req = urllib.request.Request(client + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.readline().startswith(b"data: ")  # streaming
        time.sleep(1.0)  # well into the stream
        assert up.stop() == 0
    up.assert_clean_exit()
    out = subprocess.run([sys.executable, "-m", "cocoon", "proxy", "ledger", "--json",
                          "-c", str(data / "proxy.toml")], capture_output=True, text=True,
                         timeout=30)
    totals = json.loads(out.stdout)["totals"]
    assert (totals["settled_requests"], totals["open_reservations"]) == (1, 0), totals
    assert totals["charged_nanoton"] > 0
