"""Issue 13, items 2, 6 and 7 (on one host): `cocoon up --proxies 2 --workers 3` on the
embedded chain. Both proxies list themselves in the registry; the workers and the client
find them there (no proxy address is given to them); the client pays each proxy through its
own channel, and each worker is paid by each proxy through its own channel; once workers
serve them, each proxy lists itself again with the model it routes. Then the fault
scenario of ``kill_scenario`` (SIGKILL to proxy-2, then to worker-2, under paced load)."""

from __future__ import annotations

import pytest
from e2e_support import get_stats, until
from kill_scenario import check, kill_a_proxy_then_a_worker
from traffic import CHUNKS

from cocoon.chain.embedded import find_toolchain
from cocoon.commands.up import LocalNetwork
from cocoon.errors import ToolchainMissing

pytestmark = pytest.mark.e2e

try:
    find_toolchain()
except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

APPS = 4
DELAY_MS = 20  # per chunk: a request streams for ~160 ms


def test_two_proxies_three_workers_survive_a_proxy_and_a_worker_killed() -> None:
    with LocalNetwork(engine="fake", billing=True, demo_funds=10**12, chain="embedded",
                      proxies=2, workers=3, startup_timeout=90.0, commit_interval_s=0.5,
                      proxy_sets=["relist_interval_s=1"],
                      worker_sets=[f"engine.fake.chunks={CHUNKS}",
                                   f"engine.fake.delay_ms={DELAY_MS}"]) as net:
        net.start()
        assert net.client is not None and len(net.proxies) == 2 and net.deployment is not None
        # found in the registry, not configured
        client = get_stats(net.client.http)
        assert sorted((p["address"], p["source"]) for p in client["proxies"]) == sorted(
            (a, "registry") for a in net.proxy_addrs)
        for w in net.workers:
            assert [p["source"] for p in get_stats(w.http)["proxies"]] == ["registry"] * 2
        # a payment channel to each proxy, both bound
        assert until(lambda: len(get_stats(net.client.http)["channels"]) == 2)
        # listed at start for any model (no worker yet), then again with the model routed
        for p in net.proxies:
            assert until(lambda p=p: get_stats(p.http)["registry_listing"].get("models")
                         == ["fake"], 20.0), get_stats(p.http)["registry_listing"]
        out = kill_a_proxy_then_a_worker(
            net, [net.client.http], [net.ledger_path, net.data_dir / "proxy-2-ledger.sqlite"],
            apps_per_client=APPS)
    check(out, min_completed=2 * APPS)
