"""The chain service's RPC token (issue 10, item 7) and a connection that outlives a kill -9
of the service (item 3): ``cocoon chain run`` as a real process.

Skipped when Node or contracts/node_modules is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from cocoon.chain.config import ChainConfig
from cocoon.chain.connect import open_chain
from cocoon.chain.embedded import EmbeddedChain, find_toolchain
from cocoon.chain.errors import ChainError, ChainUnauthorized, ChainUnavailable
from cocoon.chain.token import load_or_create_token, read_token
from cocoon.errors import ConfigError, ToolchainMissing

try:
    find_toolchain()
except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)


def _serve(tmp: Path, http: str = "127.0.0.1:0") -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    ready = tmp / "ready.json"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cocoon", "chain", "run", "--state", str(tmp / "state.json"),
         "--http", http, "--clock", "manual", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=(tmp / "chain.log").open("ab"))
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.stat().st_size):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"chain service did not start: {(tmp / 'chain.log').read_text()}")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_rpc_needs_the_token_and_a_connection_survives_a_kill_9(tmp_path: Path) -> None:
    proc, info = _serve(tmp_path)
    try:
        token_file = Path(info["token_file"])
        assert token_file == tmp_path / "state.token"  # next to the state file
        assert _mode(token_file) == 0o600
        token = read_token(token_file)
        url = info["http"]

        # no token, a wrong token: 401, a typed error naming the key that gives it
        for given in ("", "not-the-token"):
            with pytest.raises(ChainUnauthorized, match=r"chain\.token_file"):
                await EmbeddedChain.connect(url, token=given)
        async with (aiohttp.ClientSession() as s,
                    s.post(url + "/rpc", json={"cmd": "treasury", "name": "x"}) as r):
            assert r.status == 401 and not (await r.json())["ok"]
        with pytest.raises(ChainUnauthorized):
            await open_chain(ChainConfig(backend="embedded", url=url))
        with pytest.raises(ConfigError, match=r"chain\.token_file"):
            await open_chain(ChainConfig(backend="embedded", url=url,
                                         token_file=str(tmp_path / "missing")))
        assert issubclass(ChainUnauthorized, ChainError)

        # the roles' way in: chain.token_file
        chain = await open_chain(ChainConfig(backend="embedded", url=url,
                                             token_file=str(token_file)))
        try:
            assert isinstance(chain.inner, EmbeddedChain)  # type: ignore[attr-defined]
            wallet = await chain.wallet("alice")
            before = await chain.balance(wallet)

            # kill -9: the same connection fails with ChainUnavailable, and reaches the
            # service again once it serves the same state on the same address
            proc.kill()
            proc.wait(timeout=10)
            with pytest.raises(ChainUnavailable):
                await chain.now()
            proc, again = _serve(tmp_path, url.removeprefix("http://"))
            assert again["http"] == url and again["token_file"] == str(token_file)
            assert read_token(token_file) == token  # kept: the roles' configs stay valid
            assert await chain.wallet("alice") == wallet
            assert await chain.balance(wallet) == before
        finally:
            await chain.aclose()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_token_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "chain.token"
    token = load_or_create_token(path)
    assert len(token) >= 40 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(path) == token == read_token(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"chain\.token_file.*readable by others"):
        read_token(path)
    path.write_text("")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="empty"):
        read_token(path)
