"""Typed configuration for each role, loaded from TOML plus command-line overrides.

Each role has one frozen dataclass. :func:`load` builds it from a TOML file (optional) and
``section.key=value`` overrides, checking every key and type once, at start-up; errors name
the key and where it came from.

The tables a domain reads live in that domain (``[attestation]`` in
:mod:`cocoon.attestation.config`, ``[chain]`` in :mod:`cocoon.chain.config`, ``[engine]`` in
:mod:`cocoon.engines.config`, ``[billing]`` in :mod:`cocoon.ledger.config`); this module
composes them per role and re-exports them. Domains never import it.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from cocoon.attestation.config import AttestationConfig
from cocoon.chain.config import ChainConfig
from cocoon.engines.config import EngineConfig
from cocoon.errors import ConfigError
from cocoon.ledger.config import BillingConfig
from cocoon.money import parse_config_ton, ton_decimal
from cocoon.validation import parse_hostport, require_positive

__all__ = [
    "ENGINE_CAPACITY",
    "HTTP_BODY_TIMEOUT_S",
    "HTTP_IDLE_TIMEOUT_S",
    "PARENT_PID_ENV",
    "AttestationConfig",
    "BillingConfig",
    "ChainConfig",
    "ClientConfig",
    "EngineConfig",
    "ProxyConfig",
    "WorkerConfig",
    "build_table",
    "dump_toml",
    "load",
    "parse_hostport",
    "read_toml",
]


HTTP_IDLE_TIMEOUT_S: Final = 60.0
"""Every role's HTTP server closes a connection with no request in progress after this long:
an idle keep-alive connection, or one whose request headers have not all arrived."""
HTTP_BODY_TIMEOUT_S: Final = 60.0
"""A request body must arrive whole within this long (408): 4 MB at 70 kB/s."""


PARENT_PID_ENV = "COCOON_PARENT_PID"
"""Set by a supervisor (``cocoon up``) in the environment of the roles it starts: a role stops
by itself when that process is gone, even if it was killed with SIGKILL and could not stop
them (``nodes.common.run_until_signal``)."""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: str = "127.0.0.1:11100"  # workers and clients connect here
    http: str = "127.0.0.1:11000"  # health and stats
    request_timeout_s: float = 120.0  # longest a request may run, end to end
    training_timeout_s: float = 21600.0  # longest a fine-tuning job may run (6 hours)
    idle_timeout_s: float = 60.0  # longest gap between two messages of a stream
    # requests that find every worker slot busy wait (per model, fair across clients) ...
    queue_limit: int = 1024  # ... at most this many per model (more: 429)
    queue_timeout_s: float = 30.0  # ... at most this long (then 503)
    node_id: str = "proxy"
    # where clients and workers on other hosts dial this proxy, as its registry listing says
    # (empty: `listen`, which must then name a host others can reach, not 0.0.0.0)
    public_endpoint: str = ""
    # with chain.registry and chain.contract (its stake) set: list itself in the registry at
    # start, and again when its listing differs (stake with `cocoon proxy stake` first)
    register: bool = True
    # list again when the models it routes change, at most this often (each listing is a
    # transaction); 0: only at start
    relist_interval_s: float = 600.0
    attestation: AttestationConfig = field(default_factory=AttestationConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    billing: BillingConfig = field(default_factory=BillingConfig)

    def __post_init__(self) -> None:
        parse_hostport(self.listen, "proxy.listen")
        if self.public_endpoint:
            parse_hostport(self.public_endpoint, "proxy.public_endpoint")
        parse_hostport(self.http, "proxy.http")
        require_positive(self.request_timeout_s, "proxy.request_timeout_s")
        require_positive(self.training_timeout_s, "proxy.training_timeout_s")
        require_positive(self.idle_timeout_s, "proxy.idle_timeout_s")
        require_positive(self.queue_timeout_s, "proxy.queue_timeout_s")
        if self.relist_interval_s < 0:
            raise ConfigError("proxy.relist_interval_s must be >= 0 (0: list only at start)")
        if self.queue_limit < 0:
            raise ConfigError(f"proxy.queue_limit must be >= 0 (0: never wait), got "
                              f"{self.queue_limit}")

    def advertised_endpoint(self, port: int) -> str:
        """The ``host:port`` the registry listing gives: ``public_endpoint``, else the
        ``listen`` host with the ``port`` bound; ConfigError when that host is a wildcard."""
        if self.public_endpoint:
            return self.public_endpoint
        host, _ = parse_hostport(self.listen, "proxy.listen")
        if host in ("0.0.0.0", "::"):
            raise ConfigError(f"proxy.listen is {self.listen}: set proxy.public_endpoint to "
                              "the host:port others dial, for the registry listing")
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


ENGINE_CAPACITY: Final[dict[str, int]] = {"openai-http": 256, "llama-cpp": 4, "fake": 4}
"""``worker.max_concurrent`` when the config leaves it 0 (the default), per engine."""


DEFAULT_PROXY: Final = "127.0.0.1:11100"
"""Where a worker or client looks for its proxy when nothing else says."""


def split_proxies(value: str, key: str) -> tuple[str, ...]:
    """A comma-separated list of ``host:port``, each checked (ConfigError naming ``key``)."""
    out = tuple(x.strip() for x in value.split(",") if x.strip())
    for x in out:
        parse_hostport(x, key)
    return out


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    # the proxies to serve, comma-separated host:port; with chain.registry set the worker
    # also serves every proxy listed there whose attestation passes (empty and no
    # registry: 127.0.0.1:11100)
    proxy: str = ""
    http: str = "127.0.0.1:12000"
    # requests run at once; 0: the engine's default (ENGINE_CAPACITY: an OpenAI-compatible
    # server batches, so openai-http takes 256, as vLLM does; llama.cpp and fake take 4)
    max_concurrent: int = 0
    node_id: str = ""  # empty: worker-<pid>
    # SIGTERM drains: no new requests, those in flight finish (at most this long), then exit
    drain_timeout_s: float = 120.0
    # The price this worker asks (COCOON's worker coefficient): its requests are billed at
    # price_per_token x coefficient / 1000, and routing weighs it against its speed.
    coefficient: int = 1000
    # fine-tuning jobs (LoRA, on the GGUF the llama-cpp engine serves): "auto" offers them
    # when the engine is llama-cpp and torch, transformers and peft are installed (the
    # `train` extra); "on" requires that; "off" never trains
    train: str = "auto"
    engine: EngineConfig = field(default_factory=EngineConfig)
    attestation: AttestationConfig = field(default_factory=AttestationConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)

    def __post_init__(self) -> None:
        split_proxies(self.proxy, "worker.proxy")
        if self.train not in ("auto", "on", "off"):
            raise ConfigError(f"worker.train must be auto, on or off, got {self.train!r}")
        parse_hostport(self.http, "worker.http")
        if self.max_concurrent == 0:
            object.__setattr__(self, "max_concurrent", ENGINE_CAPACITY[self.engine.kind])
        require_positive(self.max_concurrent, "worker.max_concurrent")
        if self.drain_timeout_s < 0:
            raise ConfigError("worker.drain_timeout_s must be >= 0")
        if not 1 <= self.coefficient <= 1_000_000:
            raise ConfigError("worker.coefficient must be from 1 to 1000000 (1000 = 1.0x)")

    @property
    def discovers(self) -> bool:
        """Whether the proxies listed in the registry are served too."""
        return self.chain.enabled and bool(self.chain.registry)

    def static_proxies(self) -> tuple[str, ...]:
        """The proxies named in the config (the default one when none is named and none is
        found in a registry)."""
        return _static_proxies(self.proxy, self.discovers, "worker.proxy")

    def channels(self) -> tuple[str, ...]:
        """The payout channels this worker is paid through (``chain.contract``, comma-
        separated: one per proxy that pays it)."""
        return _channels(self.chain.contract)


def _channels(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _static_proxies(value: str, discovers: bool, key: str) -> tuple[str, ...]:
    named = split_proxies(value, key)
    return named or (() if discovers else (DEFAULT_PROXY,))


@dataclass(frozen=True, slots=True)
class ClientConfig:
    # the proxies to send requests through, comma-separated host:port; with chain.registry
    # set, also those listed there (empty and no registry: 127.0.0.1:11100). A request goes
    # through one; one that had no answer yet when its proxy's connection dropped is sent
    # again through another.
    proxy: str = ""
    # with a registry: connect to at most this many of the proxies found there (at least 2
    # stay warm when 2 exist), those this client has a payment channel to first
    max_proxies: int = 3
    http: str = "127.0.0.1:10000"  # the OpenAI API
    request_timeout_s: float = 120.0
    http_idle_timeout_s: float = HTTP_IDLE_TIMEOUT_S  # idle or header-less connections close
    http_body_timeout_s: float = HTTP_BODY_TIMEOUT_S  # a request body arrives whole in this
    node_id: str = ""  # empty: client-<pid>
    key_file: str = ""  # persistent P-256 key = the client's account (0600); "": ephemeral
    # Browser origins allowed to call the API (CORS), comma-separated, e.g.
    # "http://localhost:3000"; "*": any; "": none (no CORS headers).
    cors_origins: str = ""
    # The most this client's apps pay: only workers whose price coefficient (1000 = 1.0x) is
    # at most this serve them; 0: no cap. A request's own max_coefficient may only lower it.
    max_coefficient: int = 0
    # Seal each request to the worker chosen for it, so nobody else (the proxy included)
    # reads it or its answer: "on" (the worker's certificate must pass this client's
    # attestation policy), "require" (and its key must be backed by TDX or fake-TDX
    # evidence, never "unattested"), "off" (requests and answers cross the proxy in the
    # clear: for debugging and comparisons).
    seal: str = "on"
    # Where receipts are kept (a JSON line each, in receipts-YYYY-MM-DD.jsonl, 0600); "":
    # only in memory (the newest 4096, at GET /v1/receipts/{id}).
    receipt_dir: str = ""
    # Where uploaded files (purpose fine-tune) and fine-tuning jobs are kept (0600); "": only
    # in memory.
    finetune_dir: str = ""
    attestation: AttestationConfig = field(default_factory=AttestationConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)

    def __post_init__(self) -> None:
        split_proxies(self.proxy, "client.proxy")
        if self.seal not in ("on", "require", "off"):
            raise ConfigError(f"client.seal must be on, require or off, not {self.seal!r}")
        if self.max_proxies < 2:
            raise ConfigError("client.max_proxies must be at least 2 (a spare stays warm)")
        parse_hostport(self.http, "client.http")
        require_positive(self.request_timeout_s, "client.request_timeout_s")
        require_positive(self.http_idle_timeout_s, "client.http_idle_timeout_s")
        require_positive(self.http_body_timeout_s, "client.http_body_timeout_s")
        if not 0 <= self.max_coefficient <= 1_000_000:
            raise ConfigError("client.max_coefficient must be from 0 (no cap) to 1000000 "
                              "(1000 = 1.0x)")

    @property
    def discovers(self) -> bool:
        """Whether the proxies listed in the registry are used too."""
        return self.chain.enabled and bool(self.chain.registry)

    def static_proxies(self) -> tuple[str, ...]:
        return _static_proxies(self.proxy, self.discovers, "client.proxy")

    def channels(self) -> tuple[str, ...]:
        """The payment channels this client pays through (``chain.contract``, comma-
        separated: one per proxy it pays)."""
        return _channels(self.chain.contract)


T = TypeVar("T")


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key not in known:
            raise ConfigError(f"{where}: unknown key {raw_key!r} "
                              f"(known: {', '.join(sorted(known))})")
        if known[key].metadata.get("money"):
            kwargs[key] = parse_config_ton(value, f"{where}.{raw_key}")
        else:
            kwargs[key] = _coerce(hints[key], value, f"{where}.{raw_key}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where.split('[')[0]}: {exc}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        return _build(tp, value, where)  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{where}: expected one of {choices}, got {value!r}")
        return value
    if isinstance(tp, types.UnionType):  # pragma: no cover - no unions in configs yet
        raise ConfigError(f"{where}: unsupported type")
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if type(value) is not bool:
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if type(value) is not int:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: must not be negative")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if type(value) not in (int, float) or value < 0:
            raise ConfigError(f"{where}: expected a non-negative number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {p} is not a table")
        node = child
    node[parts[-1]] = value


def read_toml(path: str) -> dict[str, Any]:
    """The TOML file at ``path`` as a dict; ConfigError naming the file otherwise."""
    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def build_table(cls: type[T], data: dict[str, Any], where: str) -> T:
    """One config table (e.g. ``[chain]``) as ``cls``, every key and type checked."""
    return _build(cls, data, where)


def load(cls: type[T], path: str | None, overrides: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from the TOML file at ``path`` (its table named after the role, plus
    ``[engine...]`` for workers) and ``overrides`` (``"a.b": value``), validating all."""
    tree: dict[str, Any] = read_toml(path) if path else {}
    where = path or "defaults"
    role = {ProxyConfig: "proxy", WorkerConfig: "worker", ClientConfig: "client"}.get(cls)
    if role is None:
        raise ConfigError(f"no role for {cls}")
    raw_section = tree.pop(role, {})
    if not isinstance(raw_section, dict):
        raise ConfigError(f"{where}: {role} must be a table ([{role}])")
    section = dict(raw_section)
    for table in ("engine", "attestation", "billing", "chain"):
        if table in tree:
            section[table] = tree.pop(table)
    if tree:
        raise ConfigError(f"{where}: unknown table(s) {', '.join(sorted(tree))}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(section, dotted, value)
    return _build(cls, section, f"{where}[{role}]")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):  # a JSON string is a TOML basic string, once DEL is escaped too
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(config: Any) -> str:
    """The TOML that :func:`load` reads back into ``config`` (only non-default values)."""
    role = {ProxyConfig: "proxy", WorkerConfig: "worker", ClientConfig: "client"}.get(
        type(config))
    if role is None:
        raise ConfigError(f"dump_toml: {type(config).__name__} is not a role's config")
    out: list[str] = []

    def table(name: str, obj: Any) -> None:
        scalars, nested = [], []
        default = type(obj)()
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                nested.append((f.name, value))
            elif value != getattr(default, f.name):
                if f.metadata.get("money"):  # TON with decimals, as people write it
                    value = ton_decimal(value)
                scalars.append(f"{f.name} = {_toml_value(value)}")
        if scalars:
            out.append(f"[{name}]")
            out.extend(scalars)
            out.append("")
        for sub, value in nested:
            table(sub if name == role else f"{name}.{sub}", value)

    table(role, config)
    return "\n".join(out)
