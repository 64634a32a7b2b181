"""kill -9 of the chain service under load (issue 10, item 3): the proxy keeps serving from
its ledger, reports the outage in ``/stats`` (``billing.chain``), retries with backoff, and
when the chain service comes back on the same address and state file it redeems and
publishes what accrued, so the ledger and the chain agree to the nanoTON.

Skipped when Node or contracts/node_modules is missing.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from e2e_support import get_stats, until

from cocoon.chain.embedded import EmbeddedChain, find_toolchain
from cocoon.commands.up import LocalNetwork
from cocoon.errors import ToolchainMissing
from cocoon.ledger import Ledger

try:
    find_toolchain()
except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = pytest.mark.e2e

CHUNKS = 4
THREADS = 3


def _until(check: Callable[[], bool], seconds: float = 20.0) -> bool:
    return until(check, seconds)


class Traffic:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.completed = 0
        self.failed: list[str] = []

    def drive(self, base_url: str, stop: threading.Event) -> None:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=15)
        try:
            while not stop.is_set():
                try:
                    for _ in client.chat.completions.create(
                            model="fake", messages=[{"role": "user", "content": "hi"}],
                            max_tokens=CHUNKS, stream=True):
                        pass
                except Exception as exc:  # counted: none is allowed
                    with self.lock:
                        self.failed.append(f"{type(exc).__name__}: {exc}"[:200])
                    stop.wait(0.05)
                    continue
                with self.lock:
                    self.completed += 1
        finally:
            client.close()


def _chain_state(net: LocalNetwork) -> dict[str, Any]:
    return dict(get_stats(net.proxy.http)["billing"]["chain"])  # type: ignore[union-attr]


def _restart_chain_service(net: LocalNetwork, argv: list[str]) -> None:
    """Start ``cocoon chain run`` again with the command it was started with, bound to the
    address it had (same state file, same token file)."""
    role = net.chain_role
    assert role is not None
    role.ready_path.unlink(missing_ok=True)
    with role.log_path.open("ab") as log:
        role.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
    role.wait_until(role.read_ready, "ready after a restart", time.monotonic() + 60)
    assert role.http == net.chain_url


def test_kill_9_of_the_chain_is_survived_and_settled_when_it_returns(tmp_path: Path) -> None:
    with LocalNetwork(engine="fake", billing=True, demo_funds=10**12, chain="embedded",
                      commit_interval_s=0.5, log_dir=tmp_path / "logs",
                      proxy_sets=["billing.redeem_threshold=0"],  # redeem every tick
                      worker_sets=[f"engine.fake.chunks={CHUNKS}",
                                   "engine.fake.delay_ms=10"]) as net:
        net.start()
        assert net.proxy is not None and net.client is not None
        assert net.chain_role is not None and net.chain_role.proc is not None
        assert net.deployment is not None
        traffic, stop = Traffic(), threading.Event()
        threads = [threading.Thread(target=traffic.drive, args=(net.base_url, stop),
                                    daemon=True) for _ in range(THREADS)]
        for t in threads:
            t.start()
        try:
            assert _until(lambda: traffic.completed >= 10), traffic.failed
            assert _chain_state(net)["state"] == "up"

            # kill -9 the chain service, the same address will serve it again
            argv = [str(a) for a in net.chain_role.proc.args]  # type: ignore[union-attr]
            port = net.chain_url.rpartition(":")[2]
            argv[argv.index("--http") + 1] = f"127.0.0.1:{port}"
            net.chain_role.proc.kill()
            net.chain_role.proc.wait(timeout=10)

            assert _until(lambda: _chain_state(net)["state"] == "down"), _chain_state(net)
            went_down, during = time.monotonic(), traffic.completed
            # served while the chain is down, and retried more than once meanwhile
            assert _until(lambda: traffic.completed >= during + 30
                          and _chain_state(net)["retries"] >= 3), (traffic.failed[:3],
                                                                   _chain_state(net))
            down = _chain_state(net)
            assert net.proxy.alive(), net.proxy.log_tail()
            assert down["state"] == "down" and down["since"] and down["last_error"], down
            # the retries back off (0.25-0.5 s, then doubling): no busy loop
            assert down["retries"] <= 3 + 4 * (time.monotonic() - went_down), down
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=20)
        assert not any(t.is_alive() for t in threads), "a request hung"
        assert traffic.failed == [], traffic.failed[:5]
        assert net.proxy.alive()

        # Still down: everything served is in the ledger, signed by the client, committed.
        def settled() -> bool:
            with Ledger(net.ledger_path) as ledger:
                return not ledger.open_reservations()

        assert _until(settled, 10), "reservations left open"
        with Ledger(net.ledger_path) as ledger:
            assert ledger.check_invariants() == []
            account = ledger.balance(net.client_account)
            totals = ledger.totals()
        charged = account.charged
        assert charged > 0 and account.reserved == 0

        def client_signed_all() -> bool:
            b = get_stats(net.client.http)["billing"]  # type: ignore[union-attr]
            return b.get("charged") == charged and b["signed"]["cumulative_nanoton"] == charged

        assert _until(client_signed_all), get_stats(net.client.http)["billing"]

        def committed_all() -> bool:
            with Ledger(net.ledger_path) as ledger:
                commits = ledger.commits()
            return bool(commits) and commits[-1].charged == totals.charged

        assert _until(committed_all), "the proxy did not commit its totals"
        assert _chain_state(net)["state"] == "down"

        # The chain service comes back on the same address and state: what accrued while it
        # was away (the client's newest signature, the newest commit) reaches it.
        _restart_chain_service(net, argv)
        # (the next try is at most ChainHealth.cap_s = 30 s away)
        assert _until(lambda: _chain_state(net)["state"] == "up", 40), _chain_state(net)
        assert _chain_state(net)["outages"] == 1
        token = net.chain_token

        async def on_chain() -> tuple[int, int, bytes]:
            chain = await EmbeddedChain.connect(net.chain_url, token=token)
            try:
                assert net.deployment is not None
                st = await chain.channel_state(net.deployment.client_channel)
                stake = await chain.proxy_state(net.deployment.proxy_stake)
                return st.charged, stake.commit_seqno, stake.commit_hash
            finally:
                await chain.aclose()

        def agree() -> bool:
            redeemed, seqno, digest = asyncio.run(on_chain())
            with Ledger(net.ledger_path) as ledger:
                last = ledger.commits()[-1]
            return (redeemed == charged and seqno == last.seqno
                    and digest == last.state_hash())

        assert _until(agree, 30), (asyncio.run(on_chain()), charged)
        redeemed, _, _ = asyncio.run(on_chain())
        assert redeemed == charged  # to the nanoTON

        # and the network serves on
        again = Traffic()
        done = threading.Event()
        runner = threading.Thread(target=again.drive, args=(net.base_url, done), daemon=True)
        runner.start()
        try:
            assert _until(lambda: again.completed >= 5), again.failed
        finally:
            done.set()
            runner.join(timeout=20)
        assert again.failed == []
