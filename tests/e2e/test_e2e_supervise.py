"""`cocoon up` supervises its roles and keeps the network's state in a lasting data directory.

Each test runs the real `cocoon up` (fake engine, fake TDX, embedded chain) on loopback with
`--data-dir` in pytest's tmp_path, and kills its roles with SIGKILL:

* a worker killed under a stream of requests: the other worker's streams complete, new
  requests are served meanwhile, the killed worker comes back on its port and serves again,
  and `cocoon up` keeps running;
* the proxy killed under load: it comes back on the same ports with the same ledger, whose
  invariants hold (`cocoon proxy ledger -c proxy.toml --json`), and the network serves again;
* the client and the chain service killed: each comes back on its port (the chain with its
  state) and the network serves again;
* `cocoon up` stopped (SIGTERM) and started again on the same data directory: the same
  contracts (not redeployed, the demo channel not funded again), the client's balance and
  charges and the worker's earnings as they were, and the books carry on from there.

Skipped when Node or contracts/node_modules is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from cocoon.chain.embedded import find_toolchain
from cocoon.errors import ToolchainMissing

try:
    find_toolchain()
except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = pytest.mark.e2e

# streams of ~1.6 s; room for 8 on each worker, so one can take the other's load
STREAM = ["--worker-set", "engine.fake.chunks=40", "--worker-set", "engine.fake.delay_ms=40",
          "--worker-set", "max_concurrent=8"]


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    pytest.fail(f"not {what} within {timeout:g}s (last: {last!r})")


def cocoon(*args: str) -> dict[str, Any]:
    """The real CLI with --json; its parsed output (fails the test on a non-zero exit)."""
    out = subprocess.run([sys.executable, "-m", "cocoon", *args, "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.stdout, out.stderr)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


class Up:
    """A real `cocoon up` process on ``data_dir``; its output in ``data_dir``'s parent."""

    runs = 0

    def __init__(self, data_dir: Path, *args: str) -> None:
        Up.runs += 1
        self.data_dir = data_dir
        self.out = data_dir.parent / f"up-{Up.runs}.out"
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cocoon", "up", "--engine", "fake", "--port", "0",
                 "--data-dir", str(data_dir), "--timeout", "90", *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_up(self, timeout: float = 120.0) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"cocoon up exited ({self.proc.returncode}):\n{self.output()}")
            return "Press Ctrl-C to stop" in self.output()

        wait_for(up, "up", timeout)

    def running(self) -> bool:
        return self.proc.poll() is None

    def ready(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self.data_dir / f"{name}.ready").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def config(self, name: str) -> Path:
        return self.data_dir / f"{name}.toml"

    def http(self, name: str) -> str:
        return str(self.ready(name)["http"])

    def children(self) -> dict[str, int]:
        """The roles `cocoon up` runs: name (from its ready file) -> pid."""
        out = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rpartition(")")[2].split()[1])
                if ppid != self.proc.pid:
                    continue
                argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if b"--ready-file" in argv:
                ready = argv[argv.index(b"--ready-file") + 1].decode()
                out[Path(ready).stem] = int(stat.parent.name)
        return out

    def leftovers(self) -> list[int]:
        """Processes still running with a file of this data directory on their command line."""
        needle = str(self.data_dir).encode()
        return [int(c.parent.name) for c in Path("/proc").glob("[0-9]*/cmdline")
                if needle in _read(c) and int(c.parent.name) != self.proc.pid]

    def kill9(self, name: str) -> int:
        pid = self.children()[name]
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 30.0) -> dict[str, Any]:
        """Until ``name`` runs again under a new pid and has written its ready file."""
        def back() -> dict[str, Any] | None:
            assert self.running(), f"cocoon up exited:\n{self.output()}"
            pid = self.children().get(name)
            info = self.ready(name)
            return info if pid not in (None, old_pid) and info else None

        return wait_for(back, f"{name} restarted", timeout)  # type: ignore[no-any-return]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM; its exit code (SIGKILL to it and its roles past ``timeout``)."""
        if self.proc.poll() is None:
            roles = list(self.children().values())
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for pid in roles:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"cocoon up did not stop on SIGTERM:\n{self.output()}")
        return self.proc.returncode


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def stream_once(base_url: str, results: list[str], tag: str) -> None:
    """One streamed chat completion; appends ``tag`` + ok/failed to ``results``."""
    app = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    try:
        usage = None
        for chunk in app.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "stream please"}],
                stream=True, stream_options={"include_usage": True}):
            usage = chunk.usage or usage
        results.append(f"{tag}:ok" if usage is not None else f"{tag}:truncated")
    except openai.OpenAIError as exc:
        results.append(f"{tag}:failed {type(exc).__name__}")


def streams(base_url: str, n: int, tag: str) -> tuple[list[threading.Thread], list[str]]:
    results: list[str] = []
    threads = [threading.Thread(target=stream_once, args=(base_url, results, tag))
               for _ in range(n)]
    for t in threads:
        t.start()
    return threads, results


def join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(timeout=90)
        assert not t.is_alive(), "a request did not finish"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    u = Up(tmp_path_factory.mktemp("supervise") / "data", "--workers", "2", *STREAM)
    try:
        u.wait_up()
        yield u
    finally:
        u.stop()


def worker_stats(up: Up, name: str) -> dict[str, Any]:
    status, body = get_json(up.http(name) + "/stats")
    assert status == 200, f"{name} /stats answered {status}"
    return body  # type: ignore[no-any-return]


def test_a_killed_worker_comes_back_and_the_other_keeps_serving(up: Up) -> None:
    base = up.http("client") + "/v1"
    port = up.http("worker-1")
    # eight streams: about four on each worker (least-loaded routing)
    threads, results = streams(base, 8, "before")
    def placed() -> bool:  # all eight running (so worker-1's count is exact), on both
        active = [worker_stats(up, w)["active"] for w in ("worker-1", "worker-2")]
        return min(active) > 0 and sum(active) == 8

    wait_for(placed, "the streams running on both workers")
    w2 = worker_stats(up, "worker-2")
    on_w1 = worker_stats(up, "worker-1")["active"]
    old = up.kill9("worker-1")

    # the proxy drops worker-1; new requests are served (by worker-2) while it restarts
    proxy = up.http("proxy")
    wait_for(lambda: [w["node_id"] for w in get_json(proxy + "/stats")[1]["workers"]]
             == ["worker-2"] or up.children().get("worker-1", old) != old,
             "worker-1 dropped by the proxy or restarted")
    more, more_results = streams(base, 2, "during")
    join(threads)
    join(more)
    assert up.running(), up.output()
    failed = [r for r in results if not r.endswith(":ok")]
    assert len(failed) <= on_w1, results
    # every stream worker-2 was running completed
    after = worker_stats(up, "worker-2")
    assert after["requests"]["completed"] - w2["requests"]["completed"] >= w2["active"], after
    assert after["requests"]["failed"] == w2["requests"]["failed"], after
    assert more_results == ["during:ok"] * 2, more_results

    # worker-1 comes back on the same port, rejoins the proxy and serves again
    info = up.wait_restarted("worker-1", old)
    assert info["http"] == port
    assert "worker-1 died (killed by SIGKILL)" in up.output()

    def rejoined() -> bool:
        _, stats = get_json(proxy + "/stats")
        return sorted(w["node_id"] for w in stats["workers"]) == ["worker-1", "worker-2"]

    wait_for(rejoined, "worker-1 back in the proxy's registry")

    def recorded() -> bool:  # network.json names the restarted worker's new pid
        doc = json.loads((up.data_dir / "logs" / "network.json").read_text())
        entry = next(r for r in doc["roles"] if r["name"] == "worker-1")
        return bool(entry["pid"] == up.children()["worker-1"] != old and entry["restarts"])

    wait_for(recorded, "network.json updated with worker-1's new pid")
    threads, results = streams(base, 8, "after")
    join(threads)
    assert results == ["after:ok"] * 8, results
    assert worker_stats(up, "worker-1")["requests"]["completed"] >= 1
    assert up.running(), up.output()


def test_b_killed_proxy_comes_back_with_its_ledger(up: Up) -> None:
    base = up.http("client") + "/v1"
    before = up.ready("proxy")
    ledger_before = cocoon("proxy", "ledger", "-c", str(up.config("proxy")))
    threads, _results = streams(base, 6, "load")
    wait_for(lambda: get_json(up.http("proxy") + "/stats")[1]["requests"]["in_flight"] >= 3,
             "requests in flight through the proxy")
    old = up.kill9("proxy")
    join(threads)  # those in flight fail: the proxy was their only path

    info = up.wait_restarted("proxy", old)
    assert (info["http"], info["listen_port"]) == (before["http"], before["listen_port"])
    assert "proxy died (killed by SIGKILL)" in up.output()
    # the config cocoon up wrote names those ports: `cocoon proxy -c proxy.toml` alone
    # starts it there
    conf = tomllib.loads(up.config("proxy").read_text())["proxy"]
    assert conf["listen"].endswith(f":{before['listen_port']}")
    assert before["http"].endswith(conf["http"].rpartition(":")[2])

    def serving() -> bool:
        _, stats = get_json(info["http"] + "/stats")
        if not stats or len(stats["workers"]) != 2 or not stats["clients"]:
            return False
        return probe_ok(base)

    wait_for(serving, "the network serving through the restarted proxy", 60)
    assert up.running(), up.output()

    report = cocoon("proxy", "ledger", "-c", str(up.config("proxy")))
    assert report["ledger"] == ledger_before["ledger"]
    assert report["consistent"], report["problems"]
    after, prior = report["totals"], ledger_before["totals"]
    assert after["settled_requests"] > prior["settled_requests"]
    assert after["charged_nanoton"] > prior["charged_nanoton"]
    assert after["charged_nanoton"] == after["earned_nanoton"] + after["commission_nanoton"]


def probe_ok(base: str) -> bool:
    t, r = streams(base, 1, "probe")
    join(t)
    return r == ["probe:ok"]


def test_b2_killed_client_and_chain_come_back_on_their_ports(up: Up) -> None:
    for name in ("client", "chain"):
        before = up.ready(name)
        old = up.kill9(name)
        info = up.wait_restarted(name, old)
        assert info["http"] == before["http"], name
        assert f"{name} died (killed by SIGKILL)" in up.output()
        wait_for(lambda: probe_ok(up.http("client") + "/v1"),
                 f"the network serving after {name} restarted", 60)
    assert up.ready("chain")["restored"] is True  # the same chain state, not a new chain
    report = cocoon("proxy", "ledger", "-c", str(up.config("proxy")))
    assert report["consistent"], report["problems"]
    assert up.running(), up.output()


def account(role: str, config: Path) -> dict[str, Any]:
    return cocoon(role, "balance" if role == "client" else "earnings", "-c", str(config))


def test_c_a_second_up_on_the_same_data_dir_continues(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Up(data, "--workers", "1")
    try:
        first.wait_up()
        rival = Up(data, "--workers", "1")  # one network per data directory
        assert rival.proc.wait(timeout=30) == 1
        assert "another `cocoon up` is using" in rival.output()
        base = first.http("client") + "/v1"
        app = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=30)
        for i in range(3):
            app.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": f"request {i}"}],
                max_tokens=5)
        client_cfg, worker_cfg = first.config("client"), first.config("worker-1")

        def settled() -> dict[str, Any] | None:
            c = account("client", client_cfg)
            signed = (c.get("signed") or {}).get("cumulative_nanoton")
            return c if c["charged_nanoton"] and signed == c["charged_nanoton"] else None

        client_before = wait_for(settled, "the charges signed by the client", 60)
        worker_before = account("worker", worker_cfg)
        assert worker_before["earned_nanoton"] > 0
        deployment = (data / "deployment.json").read_text()
        assert first.stop() == 0
        assert first.leftovers() == [], "roles still running after cocoon up stopped"
    finally:
        first.stop()

    second = Up(data, "--workers", "1")
    try:
        second.wait_up()
        assert "continuing the network in" in second.output()
        assert "deploying" not in second.output()
        assert (data / "deployment.json").read_text() == deployment

        # the proxy re-sends each side its latest statement when it reconnects
        def restored() -> dict[str, Any] | None:
            c = account("client", client_cfg)
            return c if c.get("voucher") else None

        client_after = wait_for(restored, "the client's statement back", 30)
        for key in ("charged_nanoton", "deposited_nanoton"):
            assert client_after[key] == client_before[key], key
        # the same channel, not funded again (whether or not the proxy redeemed meanwhile)
        on_chain = [(c["on_chain"]["channel"], c["on_chain"]["status"],
                     c["on_chain"]["balance_nanoton"] + c["on_chain"]["charged_nanoton"])
                    for c in (client_before, client_after)]
        assert on_chain[0] == on_chain[1], on_chain
        worker_after = wait_for(lambda: (w := account("worker", worker_cfg)).get("voucher")
                                and w, "the worker's statement back", 30)
        assert worker_after["earned_nanoton"] == worker_before["earned_nanoton"]
        assert worker_after["payout_voucher"] == worker_before["payout_voucher"]

        # and the books carry on from there
        app = openai.OpenAI(base_url=second.http("client") + "/v1", api_key="unused",
                            max_retries=0, timeout=30)
        app.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "one more"}], max_tokens=5)
        wait_for(lambda: account("client", client_cfg)["charged_nanoton"]
                 > client_before["charged_nanoton"],
                 "the next request charged on top")
        report = cocoon("proxy", "ledger", "-c", str(second.config("proxy")))
        assert report["consistent"], report["problems"]
        assert second.stop() == 0
    finally:
        second.stop()


def test_fresh_deletes_only_a_data_directory(tmp_path: Path) -> None:
    """``--fresh`` starts over, saying so; it never deletes a directory that is not one."""
    stranger = tmp_path / "not-cocoon"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    up = Up(stranger, "--fresh", "--chain", "none")
    assert up.proc.wait(timeout=30) == 1
    assert "is not a cocoon data directory" in up.output()
    assert (stranger / "notes.txt").read_text() == "keep me"

    data = tmp_path / "data"
    for fresh in (False, True):
        up = Up(data, "--chain", "none", *(["--fresh"] if fresh else []))
        try:
            up.wait_up()
            out = up.output()
            assert ("--fresh: deleting" in out) == fresh
            assert "new network in" in out
        finally:
            assert up.stop() == 0


def test_d_roles_stop_by_themselves_when_up_is_killed(tmp_path: Path) -> None:
    """kill -9 of `cocoon up` itself cannot stop its roles; they see it gone and stop on their
    own (so nothing keeps holding the ports or writing the ledger), and a new `cocoon up` on
    the same data directory starts."""
    first = Up(tmp_path / "data", "--chain", "none", "--workers", "2")
    try:
        first.wait_up()
        roles = first.children()
        assert {"proxy", "worker-1", "worker-2", "client"} <= set(roles), roles
        first.proc.kill()
        first.proc.wait(timeout=10)
        wait_for(lambda: not first.leftovers(), "every role stopped by itself", 20)
    finally:
        first.stop()
        for pid in first.leftovers():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    second = Up(tmp_path / "data", "--chain", "none", "--workers", "2")
    try:
        second.wait_up()
        assert second.stop() == 0
    finally:
        second.stop()
