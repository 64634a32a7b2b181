"""``cocoon up``: start a whole local network as separate processes (also what the e2e tests
and the bench start).

Each role runs as ``python -m cocoon ROLE`` with its ports chosen by the OS (port 0) and
reported through a ready file, so several networks can run side by side. Readiness is
polled from health endpoints with a deadline, never slept for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cocoon import config as cfg
from cocoon.attestation.fake_tdx import FakeTdxAuthority, fake_measurements
from cocoon.attestation.ratls import public_key_der
from cocoon.chain.embedded import EmbeddedChain, find_toolchain
from cocoon.chain.localnet import LocalDeployment, NetworkParams, deploy_local_network
from cocoon.crypto import load_or_create_ec_key, load_or_create_ed25519_key
from cocoon.engines.llama_cpp import default_model_path, model_file_hash
from cocoon.errors import LaunchError, ToolchainMissing
from cocoon.ledger import Ledger
from cocoon.ledger.accounts import channel_account, client_account
from cocoon.ledger.config import BillingConfig

__all__ = ["ATTESTATION_MODES", "CHAIN_MODES", "LocalNetwork", "Role", "add_up_arguments",
           "http_json", "run_up"]

# fake: simulated TDX evidence over RA-TLS; none: RA-TLS without evidence (tier unattested);
# off: plain TCP, no TLS (benchmark baseline only).
ATTESTATION_MODES = ("fake", "none", "off")
# embedded: a local TON chain (TVM emulator) with the network's contracts; none: balances
# are ledger entries only.
CHAIN_MODES = ("embedded", "none")


def http_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET ``url``; (status, parsed JSON or None). Connection errors give status 0."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


@dataclass
class Role:
    """One child process: ``python -m MODULE ARGS --ready-file F``, logging to ``log_path``."""

    name: str
    log_path: Path
    ready_path: Path
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def spawn(self, module: str, args: list[str]) -> None:
        self.ready_path.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", module, *args, "--ready-file", str(self.ready_path)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def http(self) -> str:
        return str(self.info["http"])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def read_ready(self) -> bool:
        """Load the ready file the process writes once it serves; False until then."""
        try:
            self.info = json.loads(self.ready_path.read_text())
            return True
        except (OSError, ValueError):
            return False

    def wait_until(self, check: Callable[[], bool], what: str, deadline: float) -> None:
        """Poll ``check`` until it holds; LaunchError (with the log's tail) if the process
        dies or ``deadline`` (monotonic) passes."""
        while time.monotonic() < deadline:
            if not self.alive():
                raise LaunchError(f"{self.name} exited while {what}:\n{self.log_tail()}")
            if check():
                return
            time.sleep(0.05)
        raise LaunchError(f"{self.name} not {what} in time:\n{self.log_tail()}")

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def reap(self, deadline: float) -> None:
        """Wait for the process to exit until ``deadline`` (monotonic), then SIGKILL it."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


class LocalNetwork:
    """One proxy, N workers and one client on this machine."""

    def __init__(
        self,
        *,
        workers: int = 1,
        engine: str = "llama-cpp",
        upstream: str | None = None,
        host: str = "127.0.0.1",
        client_port: int = 0,
        worker_sets: list[str] | None = None,
        proxy_sets: list[str] | None = None,
        client_sets: list[str] | None = None,
        log_dir: str | Path | None = None,
        startup_timeout: float = 120.0,
        attestation: str = "fake",
        billing: bool = False,
        demo_funds: int = 10 * 10**9,
        chain: str = "none",
        commit_interval_s: float | None = None,
        network_params: NetworkParams | None = None,
    ) -> None:
        if workers < 1:
            raise LaunchError("--workers must be at least 1")
        if attestation not in ATTESTATION_MODES:
            raise LaunchError(f"--attestation must be one of {', '.join(ATTESTATION_MODES)}")
        if engine == "openai-http" and not upstream:
            raise LaunchError("--engine openai-http needs --upstream URL")
        if chain not in CHAIN_MODES:
            raise LaunchError(f"--chain must be one of {', '.join(CHAIN_MODES)}")
        if chain != "none" and not billing:
            raise LaunchError("an on-chain network needs billing (--demo-funds > 0)")
        self.host = host
        self.engine = engine
        self.n_workers = workers
        self.upstream = upstream
        self.client_port = client_port
        self.worker_sets = worker_sets or []
        self.proxy_sets = proxy_sets or []
        self.client_sets = client_sets or []
        self.startup_timeout = startup_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="cocoon-up-")
        self.log_dir = Path(log_dir) if log_dir else Path(self._tmp.name)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.attestation = attestation
        self._attestation_sets(attestation)
        self.client_account = ""
        self.chain_mode = chain
        self.network_params = network_params
        self.demo_funds = demo_funds
        self.deployment: LocalDeployment | None = None  # once deployed
        self.chain_url = ""
        self.chain_role: Role | None = None
        if billing:
            self._billing_sets(demo_funds)
            if commit_interval_s is not None:
                self.proxy_sets = [f"billing.commit_interval_s={commit_interval_s}",
                                   *self.proxy_sets]
        self.proxy: Role | None = None
        self.workers: list[Role] = []
        self.client: Role | None = None

    def _attestation_sets(self, mode: str) -> None:
        """Proxy and workers present ``mode`` evidence; the client (an app's gateway, not a
        TEE) presents none and accepts the proxy's tier. ``fake``: one simulated TDX
        authority for this network, its keys 0600 in a private temporary directory."""
        if mode == "off":
            sets = ["attestation.tls=false"]
            self.proxy_sets, self.worker_sets, self.client_sets = (
                sets + self.proxy_sets, sets + self.worker_sets, sets + self.client_sets)
            return
        node = [f"attestation.mode={mode}"]
        client = ["attestation.mode=none"]
        if mode == "fake":
            fake_dir = Path(self._tmp.name) / "fake-tdx"
            FakeTdxAuthority.load_or_generate(fake_dir, datetime.now(UTC))
            shared = [f"attestation.fake_dir={fake_dir}"]
            node += shared
            client += [*shared, "attestation.accept=fake-tdx"]
        self.proxy_sets = node + self.proxy_sets
        self.worker_sets = node + self.worker_sets
        self.client_sets = client + self.client_sets

    def _billing_sets(self, funds: int) -> None:
        """Proxy bills every request into a ledger in this network's directory; the client
        gets a persistent key (its account) funded with ``funds`` nanoTON up front, as the
        on-chain deposit will do."""
        d = Path(self._tmp.name)
        key_file, ledger_path = d / "client.key", d / "proxy-ledger.sqlite"
        # on chain, the client's account is its channel and deposits come from the chain
        # (set by _start_chain); off chain, the ledger holds its funds from the start
        if self.chain_mode == "none":
            if self.attestation == "off":
                self.client_account = client_account(None, "client-1")
            else:
                key = load_or_create_ec_key(key_file)
                self.client_account = client_account(public_key_der(key.public_key()),
                                                     "client-1")
            with Ledger(ledger_path) as ledger:
                ledger.deposit(self.client_account, funds)
        self.ledger_path = ledger_path
        self.proxy_sets = ["billing.enabled=true", f"billing.ledger_path={ledger_path}",
                           f"billing.signing_key_file={d / 'proxy-voucher.key'}",
                           *self.proxy_sets]
        self.client_sets = [f"key_file={key_file}", "node_id=client-1", *self.client_sets]

    # --- processes ----------------------------------------------------------------------

    def _spawn(self, name: str, role: str, args: list[str]) -> Role:
        r = Role(name, self.log_dir / f"{name}.log", Path(self._tmp.name) / f"{name}.ready")
        r.spawn("cocoon", [role, *args])
        return r

    def _start_chain(self, deadline: float, progress: Callable[[str], None]) -> None:
        """Start the embedded chain service and deploy this network's contracts on it."""
        try:
            find_toolchain()
        except ToolchainMissing as exc:
            raise LaunchError(f"{exc}; or start without a chain: `cocoon up --chain none`"
                              ) from None
        d = Path(self._tmp.name)
        progress("starting the embedded chain (TVM emulator)")
        role = self.chain_role = Role("chain", self.log_dir / "chain.log", d / "chain.ready")
        role.spawn("cocoon", ["chain", "run", "--state", str(d / "chain-state.json"),
                              "--http", f"{self.host}:0"])
        role.wait_until(role.read_ready, "ready", deadline)
        self.chain_url = role.http
        progress(f"chain at {self.chain_url}: deploying registry, proxy stake, channels")
        dep = self.deployment = asyncio.run(self._deploy())
        common = ["chain.backend=embedded", f"chain.url={self.chain_url}"]
        if self.attestation == "fake":  # allow-lists from the registry
            common.append(f"chain.registry={dep.registry}")
        self.proxy_sets = [*common, "chain.wallet=proxy", f"chain.contract={dep.proxy_stake}",
                           *self.proxy_sets]
        self.client_sets = [*common, "chain.wallet=client",
                            f"chain.contract={dep.client_channel}",
                            f"chain.key_file={d / 'client-voucher.key'}", *self.client_sets]
        self.worker_sets = [*common, *self.worker_sets]
        self.client_account = channel_account(dep.client_channel)
        progress(f"registry {dep.registry}; client channel {dep.client_channel} holds "
                 f"{self.demo_funds} nanoTON")

    async def _deploy(self) -> LocalDeployment:
        d = Path(self._tmp.name)
        billing = cfg.load(cfg.ProxyConfig, None, dict(
            s.split("=", 1) for s in self.proxy_sets if s.startswith("billing."))).billing
        assert isinstance(billing, BillingConfig)
        images = ([fake_measurements("cocoon").image_hash] if self.attestation == "fake"
                  else [])
        models = []
        if (self.attestation == "fake" and self.engine == "llama-cpp"
                and not any(x.startswith("engine.llama_cpp.model_path") for x in self.worker_sets)):
            # the model the workers load (a worker certifies its file's SHA-256)
            models = [model_file_hash(default_model_path())]
        chain = await EmbeddedChain.connect(self.chain_url)
        try:
            return await deploy_local_network(
                chain, billing=billing,
                proxy_key=load_or_create_ed25519_key(d / "proxy-voucher.key"),
                client_key=load_or_create_ed25519_key(d / "client-voucher.key"),
                workers=self.n_workers, client_funds=self.demo_funds, image_hashes=images,
                model_hashes=models, params=self.network_params)
        finally:
            await chain.aclose()

    def role_config(self, name: str) -> str:
        """The TOML config of a started role (its HTTP address and chain settings), what the
        ``cocoon client|worker|proxy`` commands take with ``-c``."""
        role = {r.name: r for r in self.roles()}[name]
        kind, sets = (("client", self.client_sets) if name == "client" else
                      ("proxy", self.proxy_sets) if name == "proxy" else
                      ("worker", [*self.worker_sets, *self._worker_chain_sets(name)]))
        cls = {"client": cfg.ClientConfig, "proxy": cfg.ProxyConfig,
               "worker": cfg.WorkerConfig}[kind]
        overrides = dict(s.split("=", 1) for s in sets)
        overrides["http"] = role.http.removeprefix("http://")
        overrides.pop("node_id", None)
        return cfg.dump_toml(cfg.load(cls, None, overrides))

    def _worker_chain_sets(self, name: str) -> list[str]:
        if self.deployment is None:
            return []
        i = int(name.rpartition("-")[2])
        return [f"chain.wallet={name}", f"chain.contract={self.deployment.worker_channels[i - 1]}",
                f"chain.voucher_file={Path(self._tmp.name) / (name + '-payout.boc')}"]

    def write_role_configs(self) -> dict[str, Path]:
        """Write each role's TOML next to its log; returns name -> path."""
        out = {}
        for r in self.roles():
            if r is self.chain_role:
                continue
            path = self.log_dir / f"{r.name}.toml"
            path.write_text(self.role_config(r.name))
            out[r.name] = path
        return out

    def start(self, progress: Callable[[str], None] = lambda s: None) -> None:
        """Start every role and wait until the client serves all workers' models."""
        deadline = time.monotonic() + self.startup_timeout
        try:
            if self.chain_mode == "embedded":
                self._start_chain(deadline, progress)
            progress("starting proxy")
            proxy = self.proxy = self._spawn("proxy", "proxy", [
                "--listen", f"{self.host}:0", "--http", f"{self.host}:0",
                *_sets(self.proxy_sets)])
            proxy.wait_until(proxy.read_ready, "ready", deadline)
            proxy_addr = f"{self.host}:{proxy.info['listen_port']}"
            progress(f"proxy listening on {proxy_addr}")
            for i in range(self.n_workers):
                args = ["--proxy", proxy_addr, "--http", f"{self.host}:0",
                        "--engine", self.engine, *_sets(self.worker_sets),
                        *_sets(self._worker_chain_sets(f"worker-{i + 1}")),
                        "--set", f"node_id=worker-{i + 1}"]
                if self.upstream:
                    args += ["--upstream", self.upstream]
                self.workers.append(self._spawn(f"worker-{i + 1}", "worker", args))
            for w in self.workers:
                progress(f"{w.name}: loading engine {self.engine}")
                self._wait_worker(w, deadline)
                status, stats = http_json(w.http + "/stats")
                models = ", ".join(stats["engine"]["models"]) if status == 200 else "?"
                progress(f"{w.name}: ready, serving {models}")
            progress("starting client")
            client = self.client = self._spawn("client", "client", [
                "--proxy", proxy_addr, "--http", f"{self.host}:{self.client_port}",
                *_sets(self.client_sets)])
            client.wait_until(client.read_ready, "ready", deadline)

            def serving() -> bool:
                status, body = http_json(client.http + "/healthz")
                if status != 200:
                    return False
                _, stats = http_json(proxy.http + "/stats")
                return bool(body["models"]) and len(stats["workers"]) == self.n_workers

            client.wait_until(serving, "serving models", deadline)
        except BaseException:
            self.stop()
            raise

    def restart_proxy(self, kill: bool = True, timeout: float | None = None) -> Role:
        """Stop the proxy (SIGKILL when ``kill``, else SIGTERM) and start it again with the
        same settings on the same listen and HTTP ports, so the workers and the client, which
        redial the same address, find it. Returns once it is ready and every worker and the
        client are connected to it again (LaunchError past ``timeout`` seconds)."""
        old = self.proxy
        assert old is not None and old.info, "restart_proxy needs a started network"
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        listen_port, http_port = old.info["listen_port"], urlsplit(old.http).port
        if old.alive():
            assert old.proc is not None
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    old.proc.kill()
            else:
                old.terminate()
        old.reap(deadline)
        proxy = self.proxy = self._spawn("proxy", "proxy", [
            "--listen", f"{self.host}:{listen_port}", "--http", f"{self.host}:{http_port}",
            *_sets(self.proxy_sets)])
        proxy.wait_until(proxy.read_ready, "ready after a restart", deadline)

        def reconnected() -> bool:
            _, stats = http_json(proxy.http + "/stats")
            if (not stats or len(stats["workers"]) != self.n_workers
                    or not all(w["models"] for w in stats["workers"])):
                return False
            if self.client is None:
                return True
            return bool(stats["clients"]) and http_json(self.client.http + "/healthz")[0] == 200

        proxy.wait_until(reconnected, "rejoined by the workers and the client", deadline)
        return proxy

    def _wait_worker(self, w: Role, deadline: float) -> None:
        w.wait_until(w.read_ready, "ready", deadline)
        w.wait_until(lambda: http_json(w.http + "/healthz")[0] == 200,
                     "connected to the proxy", deadline)

    @property
    def base_url(self) -> str:
        assert self.client is not None
        return self.client.http + "/v1"

    def models(self) -> list[str]:
        assert self.client is not None
        _, body = http_json(self.client.http + "/v1/models")
        return [m["id"] for m in body["data"]] if body else []

    def attestation_summary(self) -> list[str]:
        """What the client verified about the proxy and the workers (from its stats)."""
        assert self.client is not None
        _, stats = http_json(self.client.http + "/stats")
        if not stats:
            return []
        p = stats["proxy"].get("attestation") or {}
        out = [f"client verified proxy: tier {p.get('tier')}, image {p.get('image_hash')}"]
        out += [f"proxy verified {w['node_id']}: tier {w['tier']}, image {w['image_hash']}"
                for w in stats.get("workers", [])]
        return out

    def roles(self) -> list[Role]:
        return [r for r in (self.chain_role, self.proxy, *self.workers, self.client)
                if r is not None]

    def dead(self) -> list[Role]:
        return [r for r in self.roles() if not r.alive()]

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every role (client first), then SIGKILL what is left after ``grace``."""
        order = [r for r in (self.client, *reversed(self.workers), self.proxy) if r]
        if self.chain_role is not None:
            order.append(self.chain_role)  # last: the proxy may still be committing
        for r in order:
            r.terminate()
        end = time.monotonic() + grace
        for r in order:
            r.reap(end)

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> LocalNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


# --- cocoon up -------------------------------------------------------------------------

def add_up_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=10000, help="client API port (default 10000)")
    p.add_argument("--host", default="127.0.0.1", help="address every role binds")
    p.add_argument("--workers", type=int, default=1, help="number of workers (default 1)")
    p.add_argument("--engine", choices=["llama-cpp", "openai-http", "fake"],
                   default="llama-cpp", help="worker engine (default llama-cpp + SmolLM2)")
    p.add_argument("--upstream", help="OpenAI-compatible base URL for --engine openai-http")
    p.add_argument("--worker-set", action="append", default=[], metavar="KEY=VALUE",
                   help="worker config override, e.g. engine.fake.delay_ms=20")
    p.add_argument("--attestation", choices=ATTESTATION_MODES, default="fake",
                   help="fake (default): simulated TDX quotes over RA-TLS; none: RA-TLS, "
                        "unattested; off: plain TCP")
    p.add_argument("--demo-funds", type=int, default=10 * 10**9, metavar="NANOTON",
                   help="the demo client's starting balance (default 10 TON); 0 disables "
                        "billing")
    p.add_argument("--chain", choices=CHAIN_MODES, default="embedded",
                   help="embedded (default): a local TON chain running the network's "
                        "contracts in the TVM emulator (needs Node.js and `npm ci` in "
                        "contracts/, which scripts/setup does); none: ledger balances only")
    p.add_argument("--log-dir", default=".cocoon/logs", help="where role logs and configs go")
    p.add_argument("--timeout", type=float, default=300.0, help="start-up deadline (s)")


def _snippets(base: str, model: str) -> str:
    return f"""
  OpenAI API:  {base}
  model:       {model}

  curl {base}/chat/completions -H 'Content-Type: application/json' -d \\
    '{{"model": "{model}", "stream": true,
      "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="{base}", api_key="unused")
for chunk in client.chat.completions.create(
        model="{model}", stream=True,
        messages=[{{"role": "user", "content": "Hello!"}}]):
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
EOF
"""


def run_up(args: argparse.Namespace) -> int:
    started = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    net = LocalNetwork(workers=args.workers, engine=args.engine, upstream=args.upstream,
                       host=args.host, client_port=args.port, worker_sets=args.worker_set,
                       log_dir=args.log_dir, startup_timeout=args.timeout,
                       attestation=args.attestation, billing=args.demo_funds > 0,
                       demo_funds=args.demo_funds,
                       chain=args.chain if args.demo_funds > 0 else "none",
                       commit_interval_s=5.0)
    interrupted = False

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        net.start(progress)
        models = net.models()
        progress(f"network up: 1 proxy, {args.workers} worker(s), 1 client; "
                 f"attestation {args.attestation}; logs in {net.log_dir}")
        for line in net.attestation_summary():
            progress(line)
        if net.client_account:
            configs = net.write_role_configs()
            c, w = configs["client"], configs["worker-1"]
            progress(f"billing on: demo client {net.client_account} funded with "
                     f"{args.demo_funds} nanoTON; `cocoon proxy ledger -c {configs['proxy']}` "
                     "shows the books")
            progress(f"accounts: `cocoon client balance -c {c}`, "
                     f"`cocoon worker earnings -c {w}`")
            if net.deployment is not None:
                progress(f"on chain: `cocoon client topup 1 -c {c}`, `cocoon client close "
                         f"-c {c}`, `cocoon client withdraw -c {c}`, "
                         f"`cocoon worker withdraw -c {w}`")
        print(_snippets(net.base_url, models[0] if models else "?"), flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(0.5)
            dead = net.dead()
            if dead:
                for r in dead:
                    print(f"{r.name} exited unexpectedly:\n{r.log_tail()}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        interrupted = True
        return 0
    except LaunchError as exc:
        print(f"cocoon up: {exc}", file=sys.stderr)
        return 1
    finally:
        if interrupted:
            progress("stopping")
        net.close()
        if interrupted:
            progress("stopped")
