"""The whole network on the embedded chain, through real processes and the real CLI.

`LocalNetwork(chain="embedded")` is what `cocoon up` runs: a chain service, the registry, the
proxy's stake, the client's channel and the worker's channel deployed; every request charged
from the channel the client signs for, the proxy redeeming the client's vouchers and
publishing its commits, the worker cashing out its payout voucher, the client topping up,
closing and withdrawing. Skipped when Node or contracts/node_modules is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from cocoon.chain.embedded import find_toolchain
from cocoon.chain.localnet import NetworkParams
from cocoon.commands.up import LocalNetwork
from cocoon.errors import ToolchainMissing

try:
    find_toolchain()
except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

PRICE, FEE = 2, 1  # BillingConfig defaults, also the registry's
FUNDS = 1_000_000  # nanoTON in the demo client's channel
CLOSE_DELAY = 3
TON = 10**9


def cocoon(*args: str) -> dict[str, Any]:
    """Run the real CLI with --json; its parsed output (fails the test on a non-zero exit)."""
    out = subprocess.run([sys.executable, "-m", "cocoon", *args, "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def cocoon_fails(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "cocoon", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, (out.stdout, out.stderr)
    return out.stderr


def stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/stats", timeout=5) as resp:
        return json.load(resp)  # type: ignore[no-any-return]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def net() -> Iterator[LocalNetwork]:
    with LocalNetwork(engine="fake", billing=True, demo_funds=FUNDS, chain="embedded",
                      commit_interval_s=0.5, worker_sets=["engine.fake.chunks=20"],
                      proxy_sets=["billing.redeem_threshold=0"],  # redeem every tick
                      network_params=NetworkParams(client_close_delay=CLOSE_DELAY)) as n:
        n.start()
        yield n


@pytest.fixture(scope="module")
def configs(net: LocalNetwork) -> dict[str, Path]:
    return net.write_role_configs()


def test_requests_are_paid_on_chain(net: LocalNetwork, configs: dict[str, Path]) -> None:
    client_cfg, worker_cfg = str(configs["client"]), str(configs["worker-1"])
    before_c = cocoon("client", "balance", "-c", client_cfg)
    before_w = cocoon("worker", "earnings", "-c", worker_cfg)
    assert before_c["on_chain"]["balance_nanoton"] == FUNDS
    assert before_c["on_chain"]["status"] == "open"

    app = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0)
    unary = app.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hello there, worker"}],
        max_tokens=7)
    assert unary.usage is not None
    tokens = unary.usage.total_tokens
    for chunk in app.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "stream please"}],
            stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            tokens += chunk.usage.total_tokens

    # the client's and the worker's own copies change by exactly usage x price / fee
    def settled() -> bool:
        c = cocoon("client", "balance", "-c", client_cfg)
        return bool(c.get("signed")) and c["signed"]["cumulative_nanoton"] == tokens * PRICE

    wait_for(settled, "the client to sign its charges")
    c = cocoon("client", "balance", "-c", client_cfg)
    w = cocoon("worker", "earnings", "-c", worker_cfg)
    assert c["charged_nanoton"] - before_c["charged_nanoton"] == tokens * PRICE
    assert w["earned_nanoton"] - before_w["earned_nanoton"] == tokens * FEE
    assert w["payout_voucher"]["cumulative_nanoton"] == tokens * FEE

    # the proxy redeems the client's signed voucher on chain and publishes a commit
    assert net.proxy is not None
    wait_for(lambda: cocoon("client", "balance", "-c", client_cfg)["on_chain"]
             ["charged_nanoton"] == tokens * PRICE, "the proxy to redeem the client's voucher")
    on_chain = cocoon("client", "balance", "-c", client_cfg)["on_chain"]
    assert on_chain["balance_nanoton"] == FUNDS - tokens * PRICE
    wait_for(lambda: stats(net.proxy.http)["billing"]["chain"]["commits_published"] >= 1,
             "a published commit")

    # the worker cashes out exactly what it earned
    out = cocoon("worker", "withdraw", "-c", worker_cfg)
    assert out["paid_nanoton"] == tokens * FEE
    assert out["charged_nanoton"] == tokens * FEE
    again = cocoon("worker", "withdraw", "-c", worker_cfg)
    assert again["paid_nanoton"] == 0  # nothing new to cash out


def test_out_of_funds_then_topup(net: LocalNetwork, configs: dict[str, Path]) -> None:
    client_cfg = str(configs["client"])
    app = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0)
    big = {"model": "fake", "messages": [{"role": "user", "content": "x"}],
           "max_tokens": FUNDS}  # reserves ~2x FUNDS nanoTON: more than the channel holds
    with pytest.raises(openai.APIStatusError) as ei:
        app.chat.completions.create(**big)  # type: ignore[call-overload]
    assert ei.value.status_code == 402 and "top up" in str(ei.value)
    assert "positive" in cocoon_fails("client", "topup", "-1", "-c", client_cfg)
    out = cocoon("client", "topup", "0.01", "-c", client_cfg)  # TON: 10^7 nanoTON
    assert out["deposited_nanoton"] == 10**7
    # the proxy sees the top-up on chain when the reservation would fail, and serves it
    done = app.chat.completions.create(**big)  # type: ignore[call-overload]
    assert done.usage is not None and done.usage.completion_tokens == 20


def test_close_and_withdraw(net: LocalNetwork, configs: dict[str, Path]) -> None:
    client_cfg = str(configs["client"])
    assert "close" in cocoon_fails("client", "withdraw", "-c", client_cfg)  # open: close first
    closing = cocoon("client", "close", "-c", client_cfg)
    assert closing["status"] == "closing" and closing["close_at"]
    app = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0)
    refused: list[openai.APIStatusError] = []

    def refused_once_seen() -> bool:  # the proxy re-reads its channels every tick
        try:
            app.chat.completions.create(model="fake", max_tokens=5,
                                        messages=[{"role": "user", "content": "x"}])
        except openai.APIStatusError as exc:
            refused.append(exc)
            return True
        return False

    wait_for(refused_once_seen, "the proxy to refuse the closing channel")
    assert refused[0].status_code == 402 and "closing" in str(refused[0])
    assert "closes at" in cocoon_fails("client", "withdraw", "-c", client_cfg)
    time.sleep(CLOSE_DELAY + 1)  # the chain's clock follows the wall clock
    out = cocoon("client", "withdraw", "-c", client_cfg)
    assert out["status"] == "closed" and out["balance_nanoton"] == 0
    assert out["wallet_change_nanoton"] > 0  # what was left came back
    assert net.proxy is not None
    books = stats(net.proxy.http)["billing"]
    assert books["totals"]["charged"] == books["totals"]["earned"] + books["totals"]["commission"]
    assert books["chain"]["errors"] == 0


def test_open_channels_from_the_cli(net: LocalNetwork, configs: dict[str, Path]) -> None:
    """A client opens a channel to the proxy, the proxy one to a worker: the parties the
    contracts hold are what the network's nodes will check."""
    import asyncio

    from cocoon.chain.connect import channel_parties
    from cocoon.chain.embedded import EmbeddedChain

    assert net.proxy is not None and net.deployment is not None
    chain_info = stats(net.proxy.http)["billing"]["chain"]
    proxy_wallet, proxy_key = chain_info["wallet"], chain_info["voucher_key"]
    assert "64 hex" in cocoon_fails("client", "open", "0.5", "--payee", proxy_wallet,
                                    "--payee-key", "abc", "-c", str(configs["client"]))
    opened = cocoon("client", "open", "0.5", "--payee", proxy_wallet, "--payee-key", proxy_key,
                    "--close-delay", "120", "-c", str(configs["client"]))
    assert (opened["status"], opened["balance_nanoton"]) == ("open", TON // 2)
    assert opened["channel"] != net.deployment.client_channel
    worker = cocoon("proxy", "open-channel", net.deployment.worker_wallets[0], "0.2",
                    "-c", str(configs["proxy"]))
    assert worker["balance_nanoton"] == TON // 5

    async def parties() -> tuple[Any, Any]:
        chain = await EmbeddedChain.connect(net.chain_url, token=net.chain_token)
        try:
            return (await channel_parties(chain, opened["channel"]),
                    await channel_parties(chain, worker["channel"]))
        finally:
            await chain.aclose()

    client_side, worker_side = asyncio.run(parties())
    assert (client_side.kind, client_side.payee, client_side.payee_pubkey.hex()) == (
        "client", proxy_wallet, proxy_key)
    assert client_side.funder == net.deployment.client_wallet
    assert client_side.close_delay == 120
    assert (worker_side.kind, worker_side.funder, worker_side.payee) == (
        "worker", proxy_wallet, net.deployment.worker_wallets[0])
    assert worker_side.signer_pubkey.hex() == proxy_key


def test_worker_withdraws_offline_from_its_kept_voucher(net: LocalNetwork,
                                                        configs: dict[str, Path]) -> None:
    """A stopped worker still cashes out: its newest payout voucher is kept on disk. (The
    request after the top-up earned it more than it withdrew in the first test.)"""
    worker_cfg = str(configs["worker-1"])
    held = cocoon("worker", "earnings", "-c", worker_cfg)
    owed = held["payout_voucher"]["cumulative_nanoton"] - held["on_chain"]["charged_nanoton"]
    assert owed > 0
    worker = net.workers[0]
    worker.terminate()
    worker.reap(time.monotonic() + 10)
    out = cocoon("worker", "withdraw", "-c", worker_cfg)
    assert out["paid_nanoton"] == owed
    assert out["charged_nanoton"] == held["payout_voucher"]["cumulative_nanoton"]


def test_proxy_stake_from_the_cli(net: LocalNetwork, configs: dict[str, Path],
                                  tmp_path: Path) -> None:
    """The proxy adds to its stake; a proxy with another key gets its own stake contract (the
    address follows from owner, key, minimum and delay) and asks it back: refused before
    the delay."""
    proxy_cfg = str(configs["proxy"])
    assert net.deployment is not None
    before = cocoon("proxy", "stake", "1", "-c", proxy_cfg)
    assert before["contract"] == net.deployment.proxy_stake and before["state"] == "active"
    assert before["commit_seqno"] >= 1  # the proxy has been publishing its commits there
    again = cocoon("proxy", "stake", "2", "-c", proxy_cfg, "--set", "chain.contract=",
                   "--set", f"chain.registry={net.deployment.registry}")
    assert again["contract"] == net.deployment.proxy_stake  # the same key: the same contract
    assert again["stake_nanoton"] == before["stake_nanoton"] + 2 * TON
    other_key = ["--set", f"billing.signing_key_file={tmp_path / 'other-proxy.key'}"]
    fresh = cocoon("proxy", "stake", "12", "-c", proxy_cfg, "--set", "chain.contract=",
                   "--set", f"chain.registry={net.deployment.registry}", *other_key)
    assert fresh["contract"] != net.deployment.proxy_stake
    assert (fresh["state"], fresh["stake_nanoton"]) == ("active", 12 * TON)
    other = ["-c", proxy_cfg, "--set", f"chain.contract={fresh['contract']}"]
    unstaking = cocoon("proxy", "unstake", *other)
    assert unstaking["state"] == "unstaking" and unstaking["unlock_at"]
    assert "unlocks at" in cocoon_fails("proxy", "unstake", *other)
    assert "amount" in cocoon_fails("proxy", "stake", "-c", proxy_cfg)


def test_the_proxy_lists_itself_and_the_cli_lists_and_unlists(
        net: LocalNetwork, configs: dict[str, Path], tmp_path: Path) -> None:
    """Issue 13, item 1: the proxy `cocoon up` started listed itself through its stake at
    start (its /stats says so, `cocoon registry show` lists it with the address it
    listens on); another staked proxy lists itself from the CLI, `deregister` removes it,
    `register` again and `unstake` remove it too; an unstaked proxy cannot list."""
    assert net.deployment is not None and net.proxy is not None
    registry = net.deployment.registry
    proxy_cfg = str(configs["proxy"])
    show = ["registry", "show", registry, "-c", proxy_cfg]
    wait_for(lambda: stats(net.proxy.http)["registry_listing"]["state"] == "listed",
             "the proxy's own listing")
    own = stats(net.proxy.http)["registry_listing"]
    assert own["endpoint"] == net.proxy_addr
    listed = {p["stake_contract"]: p for p in cocoon(*show)["proxies"]}
    mine = listed[net.deployment.proxy_stake]
    assert (mine["client_endpoint"], mine["worker_endpoint"]) == (net.proxy_addr,) * 2
    assert mine["owner"] == net.deployment.proxy_wallet and mine["live"] is True

    other_key = ["--set", f"billing.signing_key_file={tmp_path / 'second-proxy.key'}"]
    fresh = cocoon("proxy", "stake", "10", "-c", proxy_cfg, "--set", "chain.contract=",
                   "--set", f"chain.registry={registry}", *other_key)
    second = ["-c", proxy_cfg, "--set", f"chain.contract={fresh['contract']}",
              "--set", "public_endpoint=proxy-2.example:8443", *other_key]
    done = cocoon("proxy", "register", *second)
    assert done["listed"] and done["sent"] and done["client_endpoint"] == "proxy-2.example:8443"
    assert cocoon("proxy", "register", *second)["sent"] is False  # already so: nothing sent
    assert fresh["contract"] in {p["stake_contract"] for p in cocoon(*show)["proxies"]}
    assert cocoon("proxy", "deregister", *second)["listed"] is False
    assert "no proxy listing to remove" in cocoon_fails("proxy", "deregister", *second)
    assert cocoon("proxy", "register", *second)["listed"]
    cocoon("proxy", "unstake", *second)
    assert fresh["contract"] not in {p["stake_contract"] for p in cocoon(*show)["proxies"]}
    assert "wrong state" in cocoon_fails("proxy", "register", *second)
    # the running proxy's listing is untouched by all that
    assert net.deployment.proxy_stake in {p["stake_contract"] for p in cocoon(*show)["proxies"]}


def test_a_worker_joins_by_the_registry_alone(net: LocalNetwork, configs: dict[str, Path],
                                              tmp_path: Path) -> None:
    """Issue 13, items 2 and 5: `cocoon worker --registry ADDRESS` with only its chain and
    attestation settings (no proxy address) finds the proxy listed there and serves it;
    when the proxy's listing goes, the worker lets it go; when it comes back, so does the
    worker."""
    assert net.deployment is not None and net.proxy is not None
    registry = net.deployment.registry
    proxy_cfg = str(configs["proxy"])
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cocoon", "worker", "-c", str(configs["worker-1"]),
         "--registry", registry, "--set", "proxy=", "--set", "node_id=joiner",
         "--set", "chain.contract=", "--set", "chain.registry_refresh_s=0.3",
         "--http", "127.0.0.1:0", "--engine", "fake", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready.exists, "the joining worker's ready file")
        http = json.loads(ready.read_text())["http"]

        def proxies() -> list[dict[str, Any]]:
            return stats(http)["proxies"]  # type: ignore[no-any-return]

        def joined() -> bool:
            return any(w["node_id"] == "joiner" and w["capacity"]
                       for w in stats(net.proxy.http)["workers"])

        wait_for(joined, "the proxy to see the worker that found it in the registry")
        assert [(p["address"], p["source"], p["state"]) for p in proxies()] == [
            (net.proxy_addr, "registry", "connected")]
        cocoon("proxy", "deregister", "-c", proxy_cfg)
        wait_for(lambda: proxies() == [], "the worker to let the unlisted proxy go")
        wait_for(lambda: not joined(), "the proxy to lose the worker")
        cocoon("proxy", "register", "-c", proxy_cfg)
        wait_for(joined, "the worker to come back to the proxy listed again")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert "left the registry" in err
