"""A client's payment channel through the real CLI, in TON, on the embedded chain.

* ``balance`` shows a top-up at once (its deposit is read on chain, not from the proxy's last
  statement), amounts in TON, nanoTON only in ``*_nanoton`` JSON fields, dates in ISO-8601;
* a top-up the wallet cannot pay is a clear error saying what the wallet has and what the
  top-up needs (it used to be "exit code -1 (transaction failed)");
* after ``close`` and ``withdraw``, ``open`` (to the same proxy by default) switches the
  client's config to the new channel, and the supervised network restarts the client on it:
  it is served and charged through the new channel with nothing edited by hand;
* ``switch_channel`` edits one line of a hand-written config and nothing else.

The chain tests are skipped when Node or contracts/node_modules is missing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cocoon import config as cfg
from cocoon.chain.embedded import find_toolchain
from cocoon.chain.localnet import NetworkParams
from cocoon.commands.chain import switch_channel
from cocoon.commands.roles import client_balance, format_client_balance
from cocoon.commands.up import LocalNetwork, http_json
from cocoon.errors import ConfigError, ToolchainMissing

TON = 10**9
FUNDS = TON // 10  # the demo channel: 0.1 TON
CLOSE_DELAY = 2
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
NEW = "0:" + "ab" * 32


def _chain_missing() -> str:
    try:
        find_toolchain()
    except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
        return str(exc)
    return ""


needs_chain = pytest.mark.skipif(bool(_chain_missing()), reason=_chain_missing())


def cocoon(*args: str, json_out: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cocoon", *args,
                           *(["--json"] if json_out else [])],
                          capture_output=True, text=True, timeout=60)


def ok(*args: str) -> dict[str, Any]:
    out = cocoon(*args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def fails(*args: str) -> str:
    out = cocoon(*args, json_out=False)
    assert out.returncode == 2, (out.stdout, out.stderr)
    return out.stderr


def ask(net: LocalNetwork, max_tokens: int = 3) -> int:
    """One chat completion through the client; its HTTP status."""
    assert net.client is not None
    req = {"model": "fake", "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "pay me"}]}
    import urllib.error
    import urllib.request
    r = urllib.request.Request(net.client.http + "/v1/chat/completions",
                               data=json.dumps(req).encode(),
                               headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def until(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"not {what} within {timeout:g}s")


@pytest.fixture(scope="module")
def net() -> Iterator[LocalNetwork]:
    with LocalNetwork(engine="fake", billing=True, demo_funds=FUNDS, chain="embedded",
                      worker_sets=["engine.fake.chunks=5"],
                      network_params=NetworkParams(client_close_delay=CLOSE_DELAY)) as n:
        n.start()
        yield n


@pytest.fixture(scope="module")
def client_cfg(net: LocalNetwork) -> str:
    return str(net.write_role_configs()["client"])


@needs_chain
@pytest.mark.e2e
def test_a_topup_shows_in_balance_at_once(net: LocalNetwork, client_cfg: str) -> None:
    assert ask(net) == 200
    # the proxy's statement arrived and the client signed it: the old balance read its
    # deposit from that statement, so a top-up showed only after the next paid request
    first = until(lambda: (b := ok("client", "balance", "-c", client_cfg))["voucher"] and b,
                  "a statement")
    assert first["deposited_nanoton"] == FUNDS
    assert first["charged_nanoton"] > 0
    assert first["available_nanoton"] == FUNDS - first["charged_nanoton"]

    topped = ok("client", "topup", "0.5", "-c", client_cfg)
    assert topped["deposited_nanoton"] == TON // 2
    assert topped["balance_nanoton"] == FUNDS + TON // 2 - topped["charged_nanoton"]
    after = ok("client", "balance", "-c", client_cfg)
    assert after["deposited_nanoton"] == FUNDS + TON // 2
    assert after["available_nanoton"] == (FUNDS + TON // 2 - after["charged_nanoton"]
                                          - after["reserved_nanoton"])
    assert after["voucher"] == first["voucher"]  # no new statement was needed

    # people read TON: no nanoTON figure in the text
    text = cocoon("client", "balance", "-c", client_cfg, json_out=False).stdout
    assert "deposited    0.6 TON (on chain now)" in text
    assert str(FUNDS) not in text and "nanoTON" not in text


@needs_chain
@pytest.mark.e2e
def test_a_topup_beyond_the_wallet_says_so(net: LocalNetwork, client_cfg: str) -> None:
    before = ok("client", "balance", "-c", client_cfg)["deposited_nanoton"]
    err = fails("client", "topup", "1000000000", "-c", client_cfg)
    assert "exit code -1" not in err
    assert re.search(r"wallet 0:[0-9a-f]{64} \(client\) has [0-9.]+ TON, a top-up of "
                     r"1000000000 TON needs 1000000000\.01 TON plus up to 0\.05 TON of fees",
                     err), err
    assert ok("client", "balance", "-c", client_cfg)["deposited_nanoton"] == before


@needs_chain
@pytest.mark.e2e
def test_open_after_withdraw_switches_the_running_client(net: LocalNetwork,
                                                         client_cfg: str) -> None:
    old = net.client_channel
    closing = ok("client", "close", "-c", client_cfg)
    assert closing["status"] == "closing" and ISO.fullmatch(closing["close_at"])
    early = cocoon("client", "withdraw", "-c", client_cfg, json_out=False)
    if early.returncode:  # the close delay is short: the chain may be past it already
        assert re.search(r"closes at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in \d+ s\)", early.stderr)
    until(lambda: cocoon("client", "withdraw", "-c", client_cfg).returncode == 0
          or ok("client", "balance", "-c", client_cfg)["status"] == "closed",
          "the channel closed and withdrawn")
    assert ask(net) == 402  # the closed channel pays for nothing

    # a new channel to the same proxy: payee, its key and the close delay from the old one
    opened = ok("client", "open", "0.3", "-c", client_cfg)
    new = opened["channel"]
    assert new != old and opened["status"] == "open"
    assert opened["balance_nanoton"] == 3 * TON // 10
    assert (opened["previous_channel"], opened["previous_status"]) == (old, "closed")
    assert cfg.load(cfg.ClientConfig, client_cfg).chain.contract == new

    # the supervisor sees the config name a new channel and restarts the client on it
    said: list[str] = []

    def switched() -> bool:
        net.supervise(said.append)
        return any("is back" in s for s in said) and http_json(
            net.client.http + "/healthz")[0] == 200  # type: ignore[union-attr]

    until(switched, "the client restarted on the new channel")
    assert any(f"names channel {new}" in s for s in said), said
    assert net.client_channel == new
    assert ask(net) == 200

    def charged_on_new() -> dict[str, Any] | None:
        b = ok("client", "balance", "-c", client_cfg)
        v = b["voucher"]
        return b if v and v["channel"].endswith(new) and b["charged_nanoton"] else None

    b = until(charged_on_new, "a charge on the new channel")
    assert (b["channel"], b["status"]) == (new, "open")
    assert b["deposited_nanoton"] == 3 * TON // 10
    assert net.client_account.endswith(new)


def test_client_balance_reads_the_deposit_on_chain() -> None:
    billing = {"rejected_statements": 0, "deposited": 5, "charged": 2, "reserved": 1,
               "available": 2, "channel": NEW, "voucher": {
                   "channel": f"channel:{NEW}", "seqno": 3, "cumulative_nanoton": 2,
                   "cumulative_tokens": 1, "proxy_key": "aa" * 32}}
    on_chain = {"channel": NEW, "status": "closing", "balance_nanoton": 1_500_000_000,
                "charged_nanoton": 0, "last_seqno": 0, "close_at": "2026-12-06T21:11:30Z"}
    r = client_balance(billing, on_chain)
    assert (r["deposited_nanoton"], r["charged_nanoton"], r["reserved_nanoton"],
            r["available_nanoton"]) == (1_500_000_000, 2, 1, 1_499_999_997)
    text = format_client_balance(r)
    assert "closes at    2026-12-06T21:11:30Z" in text
    assert "available    1.499999997 TON" in text
    assert "0.000000002 TON for 1 tokens" in text
    # without a chain, the statement's figures
    off = client_balance(billing, None)
    assert (off["deposited_nanoton"], off["available_nanoton"]) == (5, 2)


def test_switch_channel_edits_one_line(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    original = ('# my client\n[client]\nhttp = "127.0.0.1:10001"  # the API\n\n'
                '[chain]\nbackend = "embedded"\nurl = "http://127.0.0.1:1"\n'
                'contract = "0:old"   # the demo channel\nkey_file = "k.key"\n')
    path.write_text(original)
    path.chmod(0o600)
    switch_channel(str(path), NEW)
    assert path.read_text() == original.replace(
        'contract = "0:old"   # the demo channel', f'contract = "{NEW}"')
    assert path.stat().st_mode & 0o777 == 0o600

    # no contract line yet: added to the [client.chain] table; no chain table: one added
    path.write_text('[client.chain]\nbackend = "embedded"\nurl = "http://x:1"\n')
    switch_channel(str(path), NEW)
    assert cfg.load(cfg.ClientConfig, str(path)).chain.contract == NEW
    path.write_text('[client]\nnode_id = "c"')
    switch_channel(str(path), NEW)
    loaded = cfg.load(cfg.ClientConfig, str(path))
    assert (loaded.node_id, loaded.chain.contract) == ("c", NEW)

    # written another way (an inline table): refused, the file untouched; a dry run too
    inline = '[client]\nchain = { backend = "embedded", url = "http://x:1" }\n'
    path.write_text(inline)
    for dry in (True, False):
        with pytest.raises(ConfigError, match="set it by hand"):
            switch_channel(str(path), NEW, dry_run=dry)
        assert path.read_text() == inline
    assert [p.name for p in tmp_path.iterdir()] == ["client.toml"]
