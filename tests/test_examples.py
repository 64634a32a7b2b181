"""Every shipped example config loads and validates (a stale key would fail start-up)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocoon import config as cfg

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(("name", "cls"), [("proxy.toml", cfg.ProxyConfig),
                                           ("client.toml", cfg.ClientConfig),
                                           ("worker.toml", cfg.WorkerConfig)])
def test_example_loads(name: str, cls: type) -> None:
    loaded = cfg.load(cls, str(EXAMPLES / name))
    assert loaded.chain.backend == "none"  # examples run without a chain unless told
    assert loaded.chain.wallet  # but name the wallet each role would send from
