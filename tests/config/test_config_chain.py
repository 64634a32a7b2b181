"""dump_toml writes what load reads back (nested sections, escapes), and the [chain] section's
validation errors name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from cocoon.config import (
    AttestationConfig,
    BillingConfig,
    ChainConfig,
    ClientConfig,
    EngineConfig,
    ProxyConfig,
    WorkerConfig,
    dump_toml,
    load,
)
from cocoon.engines.fake import FakeEngineConfig
from cocoon.engines.llama_cpp import LlamaCppConfig
from cocoon.engines.openai_http import OpenAIHttpConfig
from cocoon.errors import ConfigError

TRICKY = 'say "hi" \\ C:\\keys\\x.key \\" \\\\ tab\there ünï ☃'


def round_trip(tmp_path: Path, config: Any) -> Any:
    text = dump_toml(config)
    tomllib.loads(text)  # valid TOML on its own
    path = tmp_path / "dumped.toml"
    path.write_text(text, encoding="utf-8")
    return load(type(config), str(path))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cocoon.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- dump_toml + load ------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [ClientConfig, WorkerConfig, ProxyConfig])
def test_defaults_dump_to_nothing(tmp_path: Path, cls: type[Any]) -> None:
    assert dump_toml(cls()).strip() == ""
    assert round_trip(tmp_path, cls()) == cls()


def test_client_round_trip(tmp_path: Path) -> None:
    cfg = ClientConfig(
        proxy="[::1]:9100", http="0.0.0.0:9000", request_timeout_s=0.25, node_id=TRICKY,
        key_file="/var/lib/cocoon/client key.pem",
        attestation=AttestationConfig(mode="fake", accept="fake-tdx, tdx", allow_debug=True,
                                      cert_lifetime_s=1e20, fake_dir='dir "quoted"'),
        chain=ChainConfig(backend="embedded", url="http://127.0.0.1:11200", wallet=TRICKY,
                          registry="0:" + "12" * 32, contract="0:" + "34" * 32,
                          key_file="C:\\Users\\me\\chain.key", registry_refresh_s=0.5),
    )
    text = dump_toml(cfg)
    assert "[client]" in text and "[attestation]" in text and "[chain]" in text
    assert "[engine" not in text and "[billing]" not in text
    assert round_trip(tmp_path, cfg) == cfg


def test_worker_round_trip_with_engine_tables(tmp_path: Path) -> None:
    cfg = WorkerConfig(
        proxy="10.0.0.1:11100", max_concurrent=16, node_id="w-\\1",
        engine=EngineConfig(
            kind="fake",
            fake=FakeEngineConfig(model=TRICKY, chunks=3, chunk_bytes=7, delay_ms=1.5,
                                  fail_after=2),
            llama_cpp=LlamaCppConfig(model_path="/m/\"x\".gguf", n_ctx=4096, seed=9),
            openai_http=OpenAIHttpConfig(base_url="http://gpu:8000", model="m",
                                         upstream_model='org/"m"', api_key_file="k\\f",
                                         timeout_s=12.5, connect_timeout_s=1.0,
                                         usage_fallback="error"),
        ),
        attestation=AttestationConfig(mode="tdx", require_tcb_status=True,
                                      min_tcb_status="SWHardeningNeeded",
                                      collateral_file="/c.json", max_evidence_age_s=60.0),
        chain=ChainConfig(backend="ton", mnemonic_file="/secrets/w.words",
                          network_config="/etc/ton/global.config.json",
                          contract="0:" + "56" * 32),
    )
    text = dump_toml(cfg)
    for table in ("[worker]", "[engine]", "[engine.fake]", "[engine.llama_cpp]",
                  "[engine.openai_http]", "[attestation]", "[chain]"):
        assert table in text.splitlines(), table
    assert round_trip(tmp_path, cfg) == cfg


def test_worker_engine_subtable_without_engine_scalars(tmp_path: Path) -> None:
    cfg = WorkerConfig(engine=EngineConfig(openai_http=OpenAIHttpConfig(timeout_s=3.0)))
    lines = dump_toml(cfg).splitlines()
    assert "[engine.openai_http]" in lines and "[engine]" not in lines and "[worker]" not in lines
    assert round_trip(tmp_path, cfg) == cfg


def test_proxy_round_trip_with_billing(tmp_path: Path) -> None:
    cfg = ProxyConfig(
        listen="0.0.0.0:9100", http="127.0.0.1:9001", request_timeout_s=30.0,
        idle_timeout_s=2.5, node_id=TRICKY,
        attestation=AttestationConfig(tls=False, allow_list_file="/allow.toml",
                                      fake_image="img\\1"),
        chain=ChainConfig(backend="embedded", url="http://h:1", wallet="proxy",
                          contract="0:" + "78" * 32, registry_refresh_s=120.0),
        billing=BillingConfig(enabled=True, ledger_path="/data/ledger.sqlite",
                              signing_key_file='/k/"v".key', price_per_token=10**12,
                              worker_fee_per_token=7, prompt_mult=5000, cached_mult=1,
                              completion_mult=20000, reasoning_mult=0, worker_coefficient=1500,
                              default_max_tokens=64, commit_interval_s=0.001,
                              max_unsigned=2**62),
    )
    text = dump_toml(cfg)
    assert "[billing]" in text.splitlines()
    loaded = round_trip(tmp_path, cfg)
    assert loaded == cfg
    assert type(loaded.billing.price_per_token) is int
    assert type(loaded.billing.commit_interval_s) is float


def test_dump_writes_only_non_default_values() -> None:
    text = dump_toml(ProxyConfig(node_id="p2", billing=BillingConfig(enabled=True)))
    parsed = tomllib.loads(text)
    assert parsed == {"proxy": {"node_id": "p2"}, "billing": {"enabled": True}}


@pytest.mark.parametrize("value", ['"', "\\", '\\"', '"\\', "\\\\\\", '""""', "'", "'''",
                                  "#not a comment", "a = 1", "[chain]", "\t"])
def test_strings_needing_escapes(tmp_path: Path, value: str) -> None:
    cfg = ClientConfig(node_id=value, chain=ChainConfig(wallet=value))
    assert round_trip(tmp_path, cfg) == cfg


@pytest.mark.parametrize("value", ["two\nlines", "cr\r", "nul\x00", "del\x7f", "esc\x1b"])
def test_strings_with_control_characters(tmp_path: Path, value: str) -> None:
    cfg = ClientConfig(node_id=value)
    assert round_trip(tmp_path, cfg) == cfg


def test_dump_refuses_a_non_role_config() -> None:
    with pytest.raises((ConfigError, KeyError)):
        dump_toml(ChainConfig())


# --- ChainConfig validation ------------------------------------------------------------------

def test_chain_defaults() -> None:
    chain = ChainConfig()
    assert chain.backend == "none" and not chain.enabled
    assert ChainConfig(backend="embedded", url="http://x:1").enabled
    assert ChainConfig(backend="ton", mnemonic_file="/w").enabled


def test_embedded_needs_url() -> None:
    with pytest.raises(ConfigError, match=r"chain\.url"):
        ChainConfig(backend="embedded")
    with pytest.raises(ConfigError, match=r"chain\.url"):
        ChainConfig(backend="embedded", mnemonic_file="/w")  # the ton key does not help


def test_ton_needs_mnemonic_file() -> None:
    with pytest.raises(ConfigError, match=r"chain\.mnemonic_file"):
        ChainConfig(backend="ton")
    with pytest.raises(ConfigError, match=r"chain\.mnemonic_file"):
        ChainConfig(backend="ton", url="http://x:1")


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan")])
def test_registry_refresh_must_be_positive(value: float) -> None:
    with pytest.raises(ConfigError, match=r"chain\.registry_refresh_s"):
        ChainConfig(registry_refresh_s=value)


@pytest.mark.parametrize(
    ("cls", "section", "key"),
    [(ClientConfig, 'backend = "embedded"', "chain.url"),
     (WorkerConfig, 'backend = "ton"', "chain.mnemonic_file"),
     (ProxyConfig, 'backend = "ton"\nurl = "http://x:1"', "chain.mnemonic_file"),
     (ClientConfig, "registry_refresh_s = 0", "chain.registry_refresh_s"),
     (ProxyConfig, "registry_refresh_s = 0.0", "chain.registry_refresh_s"),
     (WorkerConfig, "registry_refresh_s = -5", "chain.registry_refresh_s"),
     (ClientConfig, "registry_refresh_s = inf", "chain.registry_refresh_s"),
     (ClientConfig, 'backend = "solana"', "chain.backend"),
     (ClientConfig, "url = 5", "chain.url"),
     (ClientConfig, "walet = \"x\"", "walet")],
)
def test_chain_errors_from_a_file_name_key_and_file(
    tmp_path: Path, cls: type[Any], section: str, key: str
) -> None:
    path = write(tmp_path, f"[chain]\n{section}\n")
    with pytest.raises(ConfigError) as info:
        load(cls, path)
    assert key in str(info.value)
    assert path in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [({"chain.backend": "embedded"}, "chain.url"),
     ({"chain.backend": "ton"}, "chain.mnemonic_file"),
     ({"chain.registry_refresh_s": "0"}, "chain.registry_refresh_s"),
     ({"chain.registry_refresh_s": "-1"}, "chain.registry_refresh_s")],
)
def test_chain_errors_from_overrides_name_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(ClientConfig, None, overrides)


def test_chain_from_file_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, '[chain]\nbackend = "embedded"\nurl = "http://127.0.0.1:11200"\n'
                           'registry-refresh-s = 5\n')
    cfg = load(WorkerConfig, path, {"chain.wallet": "w1"})
    assert cfg.chain == ChainConfig(backend="embedded", url="http://127.0.0.1:11200",
                                    wallet="w1", registry_refresh_s=5.0)
    assert type(cfg.chain.registry_refresh_s) is float
