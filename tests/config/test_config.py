"""Typed role configuration: TOML files, dotted overrides, and errors that name key and file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cocoon.chain.config import ChainConfig
from cocoon.config import (
    ClientConfig,
    EngineConfig,
    ProxyConfig,
    WorkerConfig,
    load,
    parse_hostport,
)
from cocoon.engines.fake import FakeEngineConfig
from cocoon.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "cocoon.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- defaults and files ------------------------------------------------------------------

@pytest.mark.parametrize("cls", [ProxyConfig, WorkerConfig, ClientConfig])
def test_defaults_without_file(cls: type[Any]) -> None:
    assert load(cls, None) == cls()
    assert load(cls, None, {}) == cls()
    assert load(cls, "") == cls()


def test_proxy_from_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
[proxy]
listen = "0.0.0.0:9100"
http = "127.0.0.1:9000"
request_timeout_s = 30
idle_timeout_s = 2.5
node_id = "p1"
""")
    cfg = load(ProxyConfig, path)
    assert cfg == ProxyConfig(listen="0.0.0.0:9100", http="127.0.0.1:9000",
                              request_timeout_s=30.0, idle_timeout_s=2.5, node_id="p1")
    assert type(cfg.request_timeout_s) is float


def test_worker_from_file_with_engine_tables(tmp_path: Path) -> None:
    path = write(tmp_path, """
[worker]
proxy = "10.0.0.1:11100"
max_concurrent = 8
node_id = "w1"

[engine]
kind = "fake"

[engine.fake]
model = "tiny"
chunks = 3
chunk_bytes = 16
delay_ms = 1

[engine.openai-http]
base_url = "http://up:8000"
timeout_s = 5
""")
    cfg = load(WorkerConfig, path)
    assert cfg.proxy == "10.0.0.1:11100"
    assert cfg.max_concurrent == 8
    assert cfg.node_id == "w1"
    assert cfg.http == WorkerConfig().http
    assert cfg.engine.kind == "fake"
    assert cfg.engine.fake == FakeEngineConfig(model="tiny", chunks=3, chunk_bytes=16,
                                               delay_ms=1.0)
    assert cfg.engine.openai_http.base_url == "http://up:8000"
    assert cfg.engine.openai_http.timeout_s == 5.0
    assert cfg.engine.llama_cpp == EngineConfig().llama_cpp


def test_engine_llama_cpp_table_with_dash(tmp_path: Path) -> None:
    path = write(tmp_path, """
[engine]
kind = "llama-cpp"

[engine.llama-cpp]
model-path = "/models/x.gguf"
n_ctx = 4096
n-threads = 3
""")
    cfg = load(WorkerConfig, path)
    assert cfg.engine.kind == "llama-cpp"
    assert cfg.engine.llama_cpp.model_path == "/models/x.gguf"
    assert cfg.engine.llama_cpp.n_ctx == 4096
    assert cfg.engine.llama_cpp.n_threads == 3


def test_client_from_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[client]\nproxy = "[::1]:11100"\nrequest_timeout_s = 9\n')
    cfg = load(ClientConfig, path)
    assert cfg.proxy == "[::1]:11100"
    assert cfg.request_timeout_s == 9.0


def test_other_roles_tables_are_unknown_to_a_role(tmp_path: Path) -> None:
    path = write(tmp_path, '[proxy]\nnode_id = "p"\n[client]\nnode_id = "c"\n')
    with pytest.raises(ConfigError) as ei:
        load(ProxyConfig, path)
    assert "client" in str(ei.value)
    assert path in str(ei.value)


def test_configs_are_frozen() -> None:
    cfg = load(WorkerConfig, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_concurrent = 2  # type: ignore[misc]


# --- overrides ---------------------------------------------------------------------------

def test_overrides_are_coerced_to_field_types() -> None:
    cfg = load(WorkerConfig, None, {
        "engine.fake.chunks": "7",
        "engine.fake.delay_ms": "2.5",
        "engine.fake.model": "m",
        "engine.kind": "fake",
        "max_concurrent": "3",
        "engine.openai-http.base_url": "http://x:1",
        "http": None,  # None means "not given"
    })
    assert cfg.engine.fake.chunks == 7
    assert type(cfg.engine.fake.chunks) is int
    assert cfg.engine.fake.delay_ms == 2.5
    assert cfg.engine.fake.model == "m"
    assert cfg.engine.kind == "fake"
    assert cfg.max_concurrent == 3
    assert cfg.engine.openai_http.base_url == "http://x:1"
    assert cfg.http == WorkerConfig().http


def test_overrides_win_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
[worker]
max_concurrent = 8
[engine.fake]
chunks = 3
model = "from-file"
""")
    cfg = load(WorkerConfig, path, {"max_concurrent": 2, "engine.fake.chunks": "9"})
    assert cfg.max_concurrent == 2
    assert cfg.engine.fake.chunks == 9
    assert cfg.engine.fake.model == "from-file"


def test_proxy_float_override_from_string() -> None:
    cfg = load(ProxyConfig, None, {"request_timeout_s": "1.5", "idle_timeout_s": "3"})
    assert cfg.request_timeout_s == 1.5
    assert cfg.idle_timeout_s == 3.0
    assert type(cfg.idle_timeout_s) is float


# --- errors ------------------------------------------------------------------------------

ERROR_FILES: list[tuple[str, type[Any], str, tuple[str, ...]]] = [
    ("unknown key", ProxyConfig, '[proxy]\nlisten_port = 1\n', ("listen_port",)),
    ("unknown nested key", WorkerConfig, '[engine.fake]\nspeed = 1\n', ("speed",)),
    ("unknown table", ProxyConfig, '[proxy]\n[database]\nurl = "x"\n', ("database",)),
    ("unknown engine table", WorkerConfig, '[engine.vllm]\nx = 1\n', ("vllm",)),
    ("engine for proxy", ProxyConfig, '[engine]\nkind = "fake"\n', ("engine",)),
    ("wrong type int", WorkerConfig, '[worker]\nmax_concurrent = "four"\n',
     ("max_concurrent",)),
    ("wrong type float for int", WorkerConfig, '[worker]\nmax_concurrent = 1.5\n',
     ("max_concurrent",)),
    ("bool for int", WorkerConfig, '[worker]\nmax_concurrent = true\n', ("max_concurrent",)),
    ("wrong type str", ProxyConfig, '[proxy]\nnode_id = 5\n', ("node_id",)),
    ("wrong type float", ProxyConfig, '[proxy]\nrequest_timeout_s = "soon"\n',
     ("request_timeout_s",)),
    ("bool for float", ProxyConfig, '[proxy]\nidle_timeout_s = false\n', ("idle_timeout_s",)),
    ("table for scalar", ProxyConfig, '[proxy.listen]\nhost = "x"\n', ("listen",)),
    ("scalar for table", WorkerConfig, '[engine]\nfake = 3\n', ("fake", "table")),
    ("bad literal", WorkerConfig, '[engine]\nkind = "vllm"\n', ("kind", "vllm")),
    ("literal underscore", WorkerConfig, '[engine]\nkind = "llama_cpp"\n', ("kind",)),
    ("negative int", WorkerConfig, '[engine.fake]\nchunks = -1\n', ("chunks", "negative")),
    ("negative float", WorkerConfig, '[engine.fake]\ndelay_ms = -0.5\n', ("delay_ms",)),
    ("bad HOST:PORT", ProxyConfig, '[proxy]\nlisten = "localhost"\n', ("proxy.listen",)),
    ("port too big", WorkerConfig, '[worker]\nproxy = "h:70000"\n', ("worker.proxy",)),
    ("empty host", ClientConfig, '[client]\nhttp = ":80"\n', ("client.http",)),
    # (0 is the engine's default capacity: test_worker_capacity_defaults_...)
    ("max_concurrent -1", WorkerConfig, '[worker]\nmax_concurrent = -1\n',
     ("[worker].max_concurrent", "negative")),
    ("request timeout 0", ProxyConfig, '[proxy]\nrequest_timeout_s = 0\n',
     ("proxy.request_timeout_s",)),
    ("idle timeout 0", ProxyConfig, '[proxy]\nidle_timeout_s = 0.0\n',
     ("proxy.idle_timeout_s",)),
    ("client timeout 0", ClientConfig, '[client]\nrequest_timeout_s = 0\n',
     ("client.request_timeout_s",)),
]


@pytest.mark.parametrize(
    ("case", "cls", "text", "needles"), ERROR_FILES, ids=[c[0] for c in ERROR_FILES]
)
def test_file_errors_name_key_and_file(
    tmp_path: Path, case: str, cls: type[Any], text: str, needles: tuple[str, ...]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load(cls, path)
    msg = str(ei.value)
    assert path in msg
    for needle in needles:
        assert needle in msg


OVERRIDE_ERRORS: list[tuple[str, type[Any], dict[str, Any], tuple[str, ...]]] = [
    ("int from bad string", WorkerConfig, {"engine.fake.chunks": "seven"},
     ("engine.fake.chunks", "integer")),
    ("int from float string", WorkerConfig, {"max_concurrent": "1.5"}, ("max_concurrent",)),
    ("negative int string", WorkerConfig, {"engine.fake.chunk_bytes": "-3"},
     ("chunk_bytes", "negative")),
    ("float from bad string", ProxyConfig, {"request_timeout_s": "abc"},
     ("request_timeout_s",)),
    ("negative float string", ProxyConfig, {"idle_timeout_s": "-1"}, ("idle_timeout_s",)),
    ("zero timeout", ProxyConfig, {"request_timeout_s": "0"}, ("proxy.request_timeout_s",)),
    ("negative max_concurrent", WorkerConfig, {"max_concurrent": "-2"},
     ("[worker].max_concurrent", "negative")),
    ("unknown override", WorkerConfig, {"engine.fake.nope": "1"}, ("nope",)),
    ("unknown top override", ClientConfig, {"colour": "red"}, ("colour",)),
    ("bad engine kind", WorkerConfig, {"engine.kind": "gpt"}, ("kind", "gpt")),
    ("bad hostport", ClientConfig, {"proxy": "nohost"}, ("client.proxy",)),
    ("override into scalar", ProxyConfig, {"listen.host": "x"}, ("listen",)),
]


@pytest.mark.parametrize(
    ("case", "cls", "overrides", "needles"), OVERRIDE_ERRORS,
    ids=[c[0] for c in OVERRIDE_ERRORS],
)
def test_override_errors_name_key(
    case: str, cls: type[Any], overrides: dict[str, Any], needles: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as ei:
        load(cls, None, overrides)
    for needle in needles:
        assert needle in str(ei.value)


def test_override_error_names_file_when_loaded_from_one(tmp_path: Path) -> None:
    path = write(tmp_path, "[worker]\n")
    with pytest.raises(ConfigError) as ei:
        load(WorkerConfig, path, {"max_concurrent": "many"})
    assert path in str(ei.value)
    assert "max_concurrent" in str(ei.value)


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as ei:
        load(ProxyConfig, path)
    assert path in str(ei.value)
    assert "does not exist" in str(ei.value)


@pytest.mark.parametrize(
    "text", ["[proxy\n", "listen = \n", "[proxy]\nlisten = 'a'\nlisten = 'b'\n"]
)
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load(ProxyConfig, path)
    assert path in str(ei.value)
    assert "invalid TOML" in str(ei.value)


def test_no_role_for_other_classes() -> None:
    with pytest.raises(ConfigError):
        load(EngineConfig, None)


@pytest.mark.parametrize("text", ["worker = 5\n", 'worker = "ab"\n'])
def test_role_value_not_a_table(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError):
        load(WorkerConfig, path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[proxy]\nnode_id = "\xff"\n')
    with pytest.raises(ConfigError):
        load(ProxyConfig, str(path))


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(ProxyConfig, str(tmp_path))


@pytest.mark.parametrize("value", ["nan", "inf", "-nan"])
def test_non_finite_timeouts_rejected(value: str) -> None:
    with pytest.raises(ConfigError):
        load(ClientConfig, None, {"request_timeout_s": value})


# --- parse_hostport ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("localhost:0", ("localhost", 0)),
        ("example.com:65535", ("example.com", 65535)),
        ("[::1]:80", ("::1", 80)),
        ("[fe80::1%eth0]:11100", ("fe80::1%eth0", 11100)),
        ("0.0.0.0:11000", ("0.0.0.0", 11000)),
    ],
)
def test_parse_hostport_valid(value: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(value, "x.listen") == expected


@pytest.mark.parametrize(
    "value",
    ["", "localhost", "localhost:", ":80", "host:65536", "host:-1", "host:http", "host:8 0",
     "host: 80", "host:1e3", "[::1]"],
)
def test_parse_hostport_invalid(value: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_hostport(value, "worker.proxy")
    assert "worker.proxy" in str(ei.value)
    assert repr(value) in str(ei.value)


def test_parse_hostport_empty_brackets() -> None:
    with pytest.raises(ConfigError):
        parse_hostport("[]:80", "proxy.listen")


def test_worker_capacity_defaults_to_what_its_engine_can_run() -> None:
    """Issue 12: an OpenAI-compatible server batches, so a worker in front of one takes 256
    requests at once by default, as vLLM does (4 before: the proxy refused the rest); one
    llama.cpp model and the fake engine stay at 4; a capacity the config gives wins."""
    from cocoon.config import ENGINE_CAPACITY, EngineConfig, WorkerConfig

    assert WorkerConfig().max_concurrent == ENGINE_CAPACITY["llama-cpp"] == 4
    assert WorkerConfig(engine=EngineConfig(kind="openai-http")).max_concurrent == 256
    assert WorkerConfig(engine=EngineConfig(kind="fake")).max_concurrent == 4
    assert WorkerConfig(engine=EngineConfig(kind="openai-http"),
                        max_concurrent=7).max_concurrent == 7
    assert WorkerConfig(max_concurrent=0).max_concurrent == 4  # 0 asks for the default
    with pytest.raises(ConfigError):
        WorkerConfig(max_concurrent=-1)


def test_money_keys_are_ton_with_decimals(tmp_path: Path) -> None:
    """Issue 11: one unit for money wherever a person types it. The [billing] amounts are
    TON with decimals in a config file and in --set (nanoTON inside); a bare integer, which
    once meant nanoTON, is refused with the string to write instead."""
    from cocoon.config import dump_toml

    path = tmp_path / "proxy.toml"
    path.write_text('[billing]\nprice_per_token = "0.000000003"\nmax_unsigned = "1.5 TON"\n'
                    'redeem_threshold = "0"\n')
    cfg = load(ProxyConfig, str(path), {"billing.worker_fee_per_token": "0.000000002"})
    b = cfg.billing
    assert (b.price_per_token, b.worker_fee_per_token, b.max_unsigned, b.redeem_threshold) == (
        3, 2, 1_500_000_000, 0)
    text = dump_toml(cfg)
    assert 'max_unsigned = "1.5"' in text and 'price_per_token = "0.000000003"' in text
    again = tmp_path / "again.toml"
    again.write_text(text)
    assert load(ProxyConfig, str(again)).billing == b  # what cocoon up writes reads back
    path.write_text("[billing]\nmax_unsigned = 1000000000\n")
    with pytest.raises(ConfigError, match=r'max_unsigned: write TON with decimals, in quotes: '
                                          r'"1" for 1000000000 nanoTON'):
        load(ProxyConfig, str(path))
    for bad in ("1e9", "-1", "0.0000000001", "lots"):
        with pytest.raises(ConfigError, match="redeem_threshold"):
            load(ProxyConfig, None, {"billing.redeem_threshold": bad})
    path.write_text("[billing]\nmax_unsigned = 1.5\n")
    with pytest.raises(ConfigError, match="in quotes"):
        load(ProxyConfig, str(path))


def test_the_proxy_listing_endpoint() -> None:
    """What the registry listing says others dial: public_endpoint, else the listen host with
    the bound port; a wildcard listen host needs public_endpoint, named in the error."""
    assert ProxyConfig(listen="10.0.0.5:0").advertised_endpoint(4431) == "10.0.0.5:4431"
    assert ProxyConfig(listen="[::1]:0").advertised_endpoint(7) == "[::1]:7"
    assert ProxyConfig(listen="0.0.0.0:9", public_endpoint="p.example:443") \
        .advertised_endpoint(9) == "p.example:443"
    with pytest.raises(ConfigError, match=r"proxy\.public_endpoint"):
        ProxyConfig(listen="0.0.0.0:9").advertised_endpoint(9)
    with pytest.raises(ConfigError, match=r"proxy\.public_endpoint"):
        ProxyConfig(public_endpoint="no-port")
    with pytest.raises(ConfigError, match=r"proxy\.relist_interval_s"):
        ProxyConfig(relist_interval_s=-1)


def test_proxy_lists_and_channels_of_workers_and_clients() -> None:
    """Issue 13, item 2: a worker or client names several proxies (comma-separated) and one
    channel per proxy; with a registry it may name none (it finds them there)."""
    w = WorkerConfig(proxy="10.0.0.1:1, 10.0.0.2:2")
    assert w.static_proxies() == ("10.0.0.1:1", "10.0.0.2:2") and not w.discovers
    assert WorkerConfig().static_proxies() == ("127.0.0.1:11100",)  # nothing said: local
    chain = ChainConfig(backend="embedded", url="http://c", registry="0:" + "ab" * 32,
                        contract="0:" + "01" * 32 + ", 0:" + "02" * 32)
    found = WorkerConfig(chain=chain)
    assert found.discovers and found.static_proxies() == ()
    assert found.channels() == ("0:" + "01" * 32, "0:" + "02" * 32)
    c = ClientConfig(chain=chain)
    assert c.discovers and c.static_proxies() == () and len(c.channels()) == 2
    with pytest.raises(ConfigError, match=r"worker\.proxy"):
        WorkerConfig(proxy="10.0.0.1:1,nonsense")
    with pytest.raises(ConfigError, match=r"client\.max_proxies"):
        ClientConfig(max_proxies=1)
