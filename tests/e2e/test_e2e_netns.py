"""Issue 13, item 7: the network as separate hosts. Each role runs in its own Linux network
namespace (created and removed by this test), joined by a bridge in the test's namespace,
which also holds the embedded chain: 2 proxies, 3 workers and 2 clients, each with its own
address; the workers and the clients find the proxies in the registry, and each client pays
each proxy through a channel of its own. Then the fault scenario of ``kill_scenario``:
SIGKILL to proxy-2, then to worker-2, under paced load through both clients.

Skipped, with the reason, unless the test runs as root with ``ip`` (iproute2) and the
embedded chain's toolchain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import get_stats, until
from kill_scenario import check, kill_a_proxy_then_a_worker
from traffic import CHUNKS

from cocoon.chain.base import ChannelSpec
from cocoon.chain.embedded import EmbeddedChain, find_toolchain
from cocoon.chain.registry import read_registry
from cocoon.chain.vouchers import public_key
from cocoon.commands.up import LocalNetwork
from cocoon.config import ClientConfig, dump_toml, load
from cocoon.crypto import load_or_create_ed25519_key
from cocoon.errors import ToolchainMissing

pytestmark = pytest.mark.e2e

if os.geteuid() != 0 or shutil.which("ip") is None:
    pytest.skip("network namespaces need root and iproute2 (`ip`)", allow_module_level=True)
try:
    find_toolchain()
except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

ROLES = ["proxy", "proxy-2", "worker-1", "worker-2", "worker-3", "client", "client-2"]
NET = f"10.{77 + os.getpid() % 100}.0"  # a /24 of our own; .1 is the bridge (the chain)
TAG = f"{os.getpid() % 100000}"
FUNDS = 10**12
DELAY_MS = 20


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def hosts() -> Iterator[dict[str, tuple[str, str]]]:
    """One namespace per role, on a bridge: role -> (namespace, address)."""
    bridge = f"cbr{TAG}"
    made: dict[str, tuple[str, str]] = {}
    ip("link", "add", bridge, "type", "bridge")
    try:
        ip("addr", "add", f"{NET}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        for i, role in enumerate(ROLES):
            ns, veth, addr = f"cocoon-{TAG}-{role}", f"cv{TAG}{i}", f"{NET}.{10 + i}"
            ip("netns", "add", ns)
            made[role] = (ns, addr)
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", veth, "master", bridge, "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield made
    finally:
        for ns, _ in made.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)


async def open_channels(net: LocalNetwork, key_file: Path) -> str:
    """Channels from the wallet ``client-2`` to each listed proxy, signed by ``key_file``'s
    key: the second client's chain.contract."""
    assert net.deployment is not None
    chain = await EmbeddedChain.connect(net.chain_url, token=net.chain_token)
    try:
        funder = await chain.wallet("client-2")
        signer = public_key(load_or_create_ed25519_key(key_file))
        listings = (await read_registry(chain, net.deployment.registry)).live_proxies()
        channels = []
        for i, p in enumerate(listings, start=1):
            spec = ChannelSpec(kind="client", funder=funder, payee=p.owner,
                               signer_pubkey=signer, payee_pubkey=p.pubkey, close_delay=60,
                               channel_id=100 + i)
            channels.append((await chain.deploy_channel(spec, sender="client-2",
                                                        deposit=FUNDS)).to)
        return ",".join(channels)
    finally:
        await chain.aclose()


def test_separate_hosts_survive_a_proxy_and_a_worker_killed(tmp_path: Path) -> None:
    with hosts() as where:
        def placement(name: str) -> tuple[str, list[str]]:
            if name == "chain":
                return f"{NET}.1", []
            ns, addr = where[name]
            return addr, ["ip", "netns", "exec", ns]

        with LocalNetwork(engine="fake", billing=True, demo_funds=FUNDS, chain="embedded",
                          proxies=2, workers=3, startup_timeout=120.0,
                          commit_interval_s=0.5, placement=placement,
                          worker_sets=[f"engine.fake.chunks={CHUNKS}",
                                       f"engine.fake.delay_ms={DELAY_MS}"]) as net:
            net.start()
            assert net.client is not None and net.deployment is not None
            # every role on its own address, the proxies found in the registry
            assert sorted(a.rpartition(":")[0] for a in net.proxy_addrs) == [
                where["proxy"][1], where["proxy-2"][1]]
            assert all(p["source"] == "registry" for p in get_stats(net.client.http)["proxies"])

            # the second client: its own key, account and channels, on its own host
            d = tmp_path
            key = d / "client-2-voucher.key"
            conf = load(ClientConfig, str(net.config_path("client")), {
                "node_id": "client-2", "key_file": str(d / "client-2.key"),
                "http": f"{where['client-2'][1]}:0", "chain.wallet": "client-2",
                "chain.key_file": str(key),
                "chain.contract": asyncio.run(open_channels(net, key))})
            (d / "client-2.toml").write_text(dump_toml(conf))
            ready = d / "client-2.ready"
            second = subprocess.Popen(
                ["ip", "netns", "exec", where["client-2"][0], sys.executable, "-m", "cocoon",
                 "client", "-c", str(d / "client-2.toml"), "--ready-file", str(ready)],
                stdout=subprocess.DEVNULL, stderr=(d / "client-2.log").open("wb"))
            try:
                assert until(ready.exists, 30.0), (d / "client-2.log").read_text()[-2000:]
                url = json.loads(ready.read_text())["http"]
                assert until(lambda: len(get_stats(url)["channels"]) == 2, 30.0)
                out = kill_a_proxy_then_a_worker(
                    net, [net.client.http, url],
                    [net.ledger_path, net.data_dir / "proxy-2-ledger.sqlite"])
                per_client = [get_stats(u)["requests"]["succeeded"]
                              for u in (net.client.http, url)]
            finally:
                second.terminate()
                second.wait(timeout=30)
    assert all(n > 0 for n in per_client), per_client
    check(out, min_completed=8)
