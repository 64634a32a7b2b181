"""`cocoon registry`, the root registry's owner tool, through the real CLI against a real
chain service (`cocoon chain run`, manual clock). Skipped when Node or contracts/node_modules
is missing."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cocoon.chain.embedded import EmbeddedChain, find_toolchain
from cocoon.chain.localnet import NetworkParams
from cocoon.chain.token import read_token
from cocoon.config import BillingConfig
from cocoon.errors import ToolchainMissing

try:
    find_toolchain()
except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

H1, H2, H3 = "11" * 32, "ab" * 32, "CD" * 32


@pytest.fixture(scope="module")
def chain_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The chain service's URL and its RPC token file."""
    tmp = tmp_path_factory.mktemp("registry-chain")
    ready, log = tmp / "ready.json", tmp / "chain.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cocoon", "chain", "run", "--state", str(tmp / "state.json"),
             "--http", "127.0.0.1:0", "--clock", "manual", "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.stat().st_size):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chain service did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        yield str(info["http"]), str(info["token_file"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def chain_url(chain_service: tuple[str, str]) -> str:
    return chain_service[0]


@pytest.fixture(scope="module")
def token_file(chain_service: tuple[str, str]) -> str:
    return chain_service[1]


@pytest.fixture(scope="module")
def config(chain_url: str, token_file: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TOML file whose [chain] table names the chain service (wallet: the default owner)."""
    path = tmp_path_factory.mktemp("registry-cfg") / "owner.toml"
    path.write_text(f'[chain]\nbackend = "embedded"\nurl = "{chain_url}"\n'
                    f'token_file = "{token_file}"\n')
    return str(path)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cocoon", "registry", *args],
                          capture_output=True, text=True, timeout=60)


def ok(*args: str) -> dict[str, Any]:
    out = run(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def fails(*args: str) -> str:
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("cocoon registry: "), out.stderr
    return out.stderr


def wallet_address(url: str, name: str, token_file: str) -> str:
    async def get() -> str:
        chain = await EmbeddedChain.connect(url, token=read_token(token_file))
        try:
            return await chain.wallet(name)
        finally:
            await chain.aclose()

    return asyncio.run(get())


def test_deploy_show_update_and_hand_over(config: str, chain_url: str, token_file: str) -> None:
    deployed = ok("deploy", "-c", config, "--price", "0.000000007",
                  "--min-client-stake", "0.000000123", "--image", H1)
    reg = deployed["registry"]
    assert deployed["existed"] is False
    assert deployed["owner"] == wallet_address(chain_url, "owner", token_file)

    # deploy -> show: every value round-trips; unspecified ones are cocoon up's defaults
    billing, net = BillingConfig(), NetworkParams()
    shown = ok("show", reg, "-c", config)
    assert shown["params"] == {
        "price_per_token_nanoton": 7, "worker_fee_nanoton": billing.worker_fee_per_token,
        "prompt_mult": billing.prompt_mult, "cached_mult": billing.cached_mult,
        "completion_mult": billing.completion_mult, "reasoning_mult": billing.reasoning_mult,
        "proxy_close_delay": net.proxy_close_delay,
        "client_close_delay": net.client_close_delay,
        "min_proxy_stake_nanoton": net.min_proxy_stake, "min_client_stake_nanoton": 123,
        "training_mult": billing.training_mult}
    assert (shown["version"], shown["params_version"]) == (0, 0)
    assert shown["image_hashes"] == [H1] and shown["model_hashes"] == []
    assert shown["owner"] == deployed["owner"]

    # the text form names the same things
    text = run("show", reg, "-c", config)
    assert text.returncode == 0 and reg in text.stdout and H1 in text.stdout
    assert "price_per_token    0.000000007 TON" in text.stdout  # amounts read in TON
    assert f"min_proxy_stake    {net.min_proxy_stake // 10**9} TON" in text.stdout

    # add/del image and model hashes: show reflects them, every op bumps the version
    assert ok("add-image", reg, H2, "-c", config)["image_hashes"] == sorted([H1, H2])
    assert ok("add-model", reg, H3, "-c", config)["model_hashes"] == [H3.lower()]
    assert ok("del-image", reg, H1, "-c", config)["image_hashes"] == [H2]
    after = ok("del-model", reg, H3, "-c", config)
    assert after["model_hashes"] == [] and after["version"] == 4
    assert ok("show", reg, "-c", config)["image_hashes"] == [H2]

    # a duplicate add, or deleting an absent hash, is refused with the reason in words
    err = fails("add-image", reg, H2, "-c", config)
    assert "exit code 110" in err and "hash already present" in err
    err = fails("del-model", reg, H3, "-c", config)
    assert "exit code 111" in err and "hash not present" in err
    assert ok("show", reg, "-c", config)["version"] == 4

    # set-params changes only what is given (flags or --set, same thing)
    updated = ok("set-params", reg, "--set", "chain.backend=embedded",
                 "--set", f"chain.url={chain_url}", "--set", "chain.wallet=owner",
                 "--set", f"chain.token_file={token_file}",
                 "--worker-fee", "0.000000005", "--client-close-delay", "9",
                 "--training-mult", "20000")
    assert updated["params"] == {**shown["params"], "worker_fee_nanoton": 5,
                                 "client_close_delay": 9, "training_mult": 20000}
    assert (updated["version"], updated["params_version"]) == (5, 1)
    err = fails("set-params", reg, "-c", config, "--price", "0.000000004")
    assert "must not exceed the price" in err and "0.000000005 TON" in err

    # set-owner: the new owner may update, the old one is refused
    new_owner = wallet_address(chain_url, "owner-2", token_file)
    assert ok("set-owner", reg, new_owner, "-c", config)["owner"] == new_owner
    err = fails("add-image", reg, H3, "-c", config)
    assert "exit code 100" in err and "wrong sender" in err and new_owner in err
    ok("add-image", reg, H3, "-c", config, "--set", "chain.wallet=owner-2")

    # the same deploy again is the same registry, left as it is
    again = ok("deploy", "-c", config, "--price", "0.000000007",
               "--min-client-stake", "0.000000123", "--image", H1)
    assert again["registry"] == reg and again["existed"] is True
    assert again["owner"] == new_owner


def test_bad_input_is_a_config_error(config: str, tmp_path: Path) -> None:
    reg = "0:" + "00" * 32
    for bad in ("xyz", "11" * 31, "g" * 64, "11" * 33):
        assert "HASH: expected 64 hex digits" in fails("add-image", reg, bad, "-c", config)
    assert "--image: expected 64 hex digits" in fails("deploy", "-c", config, "--image", "0x1")
    assert "REGISTRY: not a TON address" in fails("show", "nowhere", "-c", config)
    assert "ADDRESS: not a TON address" in fails("set-owner", reg, "bob", "-c", config)
    assert "out of range" in fails("deploy", "-c", config, "--prompt-mult", str(1 << 32))
    assert "--prompt-mult: not an integer" in fails("deploy", "-c", config, "--prompt-mult", "x")
    # amounts are TON: at most 9 decimals, no garbage, no sign
    assert "--price: at most 9 decimals" in fails("deploy", "-c", config,
                                                  "--price", "0.0000000001")
    assert "--min-proxy-stake: not an amount of TON" in fails(
        "deploy", "-c", config, "--min-proxy-stake", "ten")
    assert "--worker-fee" in fails("deploy", "-c", config, "--worker-fee", "-1")
    assert "nothing to change" in fails("set-params", reg, "-c", config)
    assert "no chain configured" in fails("show", reg)
    assert "chain.url is required" in fails("show", reg, "--set", "chain.backend=embedded")
    assert "--set expects chain.KEY=VALUE" in fails("show", reg, "--set", "url=x")
    assert "unknown key 'nope'" in fails("show", reg, "-c", config, "--set", "chain.nope=1")
    no_table = tmp_path / "empty.toml"
    no_table.write_text("[proxy]\n")
    assert "no [chain] table" in fails("show", reg, "-c", str(no_table))
    assert "no active root registry" in fails("show", reg, "-c", config)
