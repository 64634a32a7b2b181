"""``cocoon up``: start a whole local network as separate processes (also what the e2e tests
and the bench start).

Each role runs as ``python -m cocoon ROLE`` with its ports chosen by the OS (port 0) and
reported through a ready file, so several networks can run side by side. Readiness is
polled from health endpoints with a deadline, never slept for.

Once a role serves, its config is written with the ports it bound (``proxy.toml``,
``worker-N.toml``, ``client.toml`` in the data directory) and every later start of that role
is ``cocoon ROLE -c FILE``: a role that dies comes back on the same ports with the same
state (:meth:`LocalNetwork.supervise`). All state (keys, ledger, chain state, the contracts'
deployment, payout vouchers) lives in the data directory: a temporary one that ``close``
deletes, or a lasting one (``cocoon up --data-dir``) that a later network continues from.
The client's channel is the one its config names: ``cocoon client open -c client.toml``
switches it, and the supervisor restarts the client on it
(:meth:`LocalNetwork.follow_client_channel`).

A start first checks that its fixed ports are free (:func:`check_ports_free`); each run's
role logs start fresh, the earlier runs' rotated (:func:`rotate_log`). SIGINT/SIGTERM only
set a flag that the start and the supervision loop poll, so no exception lands in the middle
of starting a process or a chain call; the roles then stop from the edge in (client,
workers, proxy, chain), so the proxy settles what the client's going cut off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import os
import shutil
import signal
import socket
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
from cocoon.chain.messages import default_contracts_dir
from cocoon.chain.token import read_token
from cocoon.crypto import load_or_create_ec_key, load_or_create_ed25519_key
from cocoon.engines.llama_cpp import default_model_path, model_file_hash
from cocoon.errors import CocoonError, LaunchError, ToolchainMissing
from cocoon.ledger import Ledger
from cocoon.ledger.accounts import channel_account, client_account
from cocoon.ledger.config import BillingConfig
from cocoon.money import format_ton, iso_utc, parse_ton

__all__ = ["ATTESTATION_MODES", "CHAIN_MODES", "LOG_GENERATIONS", "LocalNetwork", "Role",
           "add_up_arguments", "check_ports_free", "default_data_dir", "http_json",
           "port_holder", "rotate_log", "run_up"]

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


RESTART_BACKOFF_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Delay before restarting a role, by how many times in a row it died soon after starting."""
STABLE_AFTER_S = 30.0
"""A role that ran this long before dying is restarted at once (its back-off starts over)."""


@dataclass
class Role:
    """One child process: ``python -m MODULE ARGS --ready-file F``, logging to ``log_path``.

    ``args`` is how the role starts again (:meth:`respawn`): after its first start, its own
    config file with the ports it bound."""

    name: str
    log_path: Path
    ready_path: Path
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    module: str = "cocoon"
    args: list[str] = field(default_factory=list)
    started_at: float = 0.0  # monotonic
    quick_deaths: int = 0  # died soon after starting, in a row
    restarts: int = 0
    restart_at: float | None = None  # monotonic; set while a restart is pending
    awaiting_ready: bool = False  # restarted, not serving again yet
    # True once the network is asked to stop (SIGINT/SIGTERM): waits end at their next poll
    interrupted: Callable[[], bool] = lambda: False
    # what the command runs under, e.g. ["ip", "netns", "exec", NS] for a role on its own
    # network namespace (a test of separate hosts); it must exec, keeping the pid
    prefix: list[str] = field(default_factory=list)

    def spawn(self, module: str, args: list[str]) -> None:
        self.module, self.args = module, list(args)
        self.ready_path.unlink(missing_ok=True)
        cmd = [*self.prefix, sys.executable, "-m", module, *args, "--ready-file",
               str(self.ready_path)]
        # The role stops by itself if this process dies, even by SIGKILL (nodes.common).
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{cfg.PARENT_PID_ENV: str(os.getpid())})
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.started_at = time.monotonic()

    def respawn(self) -> None:
        """Start the role again exactly as it was last started."""
        self.spawn(self.module, self.args)

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
        dies or ``deadline`` (monotonic) passes; KeyboardInterrupt once :attr:`interrupted`."""
        while time.monotonic() < deadline:
            if self.interrupted():
                raise KeyboardInterrupt
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

    def exit_reason(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        if code is None:
            return "running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
            return f"killed by signal {-code}"
        return f"exit code {code}"


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
        data_dir: str | Path | None = None,
        proxies: int = 1,
        placement: Callable[[str], tuple[str, list[str]]] | None = None,
    ) -> None:
        if workers < 1:
            raise LaunchError("--workers must be at least 1")
        if proxies < 1:
            raise LaunchError("--proxies must be at least 1")
        if attestation not in ATTESTATION_MODES:
            raise LaunchError(f"--attestation must be one of {', '.join(ATTESTATION_MODES)}")
        if engine == "openai-http" and not upstream:
            raise LaunchError("--engine openai-http needs --upstream URL")
        if chain not in CHAIN_MODES:
            raise LaunchError(f"--chain must be one of {', '.join(CHAIN_MODES)}")
        if chain != "none" and not billing:
            raise LaunchError("an on-chain network needs billing (--demo-funds > 0)")
        self.host = host
        # role name -> (its address, its command prefix): every role on ``host`` by default;
        # a test of separate hosts puts each in its own network namespace
        self.placement: Callable[[str], tuple[str, list[str]]] = (
            placement or (lambda name: (host, [])))
        self.engine = engine
        self.n_workers = workers
        self.n_proxies = proxies
        self.upstream = upstream
        self.client_port = client_port
        self.worker_sets = worker_sets or []
        self.proxy_sets = proxy_sets or []
        self.startup_timeout = startup_timeout
        # data_dir None: a temporary directory, deleted by close (tests, the bench)
        self._tmp = (tempfile.TemporaryDirectory(prefix="cocoon-up-") if data_dir is None
                     else None)
        self.data_dir = Path(self._tmp.name if self._tmp is not None else data_dir or "")
        # the client keeps its receipts in the data directory
        self.client_sets = [f"receipt_dir={self.data_dir / 'receipts'}",
                            f"finetune_dir={self.data_dir / 'finetune'}", *(client_sets or [])]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock_data_dir()
        try:
            self._check_network_file(chain=chain, attestation=attestation, billing=billing)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.log_dir = Path(log_dir) if log_dir else self.data_dir
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
        self.more_proxies: list[Role] = []  # proxy-2, proxy-3, ...
        self.proxy_addr = ""  # host:port the workers and the client dial, once started
        self.proxy_addrs: list[str] = []  # every proxy's, in order
        self.workers: list[Role] = []
        self.client: Role | None = None
        self._interrupted = False
        self._fresh_logs: set[str] = set()  # role logs rotated by this network
        self.client_channel = ""  # the channel the client pays through (on chain)
        self._client_config_seen: tuple[int, int] | None = None  # (mtime_ns, size)

    NETWORK_FILE = "network.json"
    """What kind of network a data directory holds; also what marks it as cocoon's."""
    DEPLOYMENT_FILE = "deployment.json"
    """The contracts deployed on the data directory's chain (written once, after deploying)."""

    def _lock_data_dir(self) -> int:
        """One network per data directory: a second one would share its ledger and chain."""
        fd = os.open(self.data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LaunchError(f"another `cocoon up` is using {self.data_dir}") from None
        return fd

    def _check_network_file(self, **kind: object) -> None:
        """A data directory continues only the kind of network it was made for."""
        path = self.data_dir / self.NETWORK_FILE
        self.continued = False  # True: this data directory held a network before
        try:
            before = json.loads(path.read_text())
        except FileNotFoundError:
            _write_json(path, kind)
            return
        except ValueError as exc:
            raise LaunchError(f"{path}: {exc}") from None
        differs = [f"{k} {before.get(k)!r} (now {v!r})" for k, v in kind.items()
                   if before.get(k) != v]
        if differs:
            raise LaunchError(f"{self.data_dir} holds a network with {', '.join(differs)}: "
                              "start it as it was, use another --data-dir, or --fresh")
        self.continued = True

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
            fake_dir = self.data_dir / "fake-tdx"
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
        d = self.data_dir
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
            for path in [ledger_path, *(d / f"proxy-{k}-ledger.sqlite"
                                        for k in range(2, self.n_proxies + 1))]:
                if not path.exists():  # a lasting data dir's ledger was funded before
                    with Ledger(path) as ledger:
                        ledger.deposit(self.client_account, funds)
        self.ledger_path = ledger_path
        self.proxy_sets = ["billing.enabled=true", f"billing.ledger_path={ledger_path}",
                           f"billing.signing_key_file={d / 'proxy-voucher.key'}",
                           *self.proxy_sets]
        self.client_sets = [f"key_file={key_file}", "node_id=client-1", *self.client_sets]

    def proxy_sets_for(self, k: int) -> list[str]:
        """The config overrides of the ``k``-th proxy (1-based): the first's, each further
        one with its own node id, ledger, voucher key, wallet and stake."""
        if k == 1:
            return self.proxy_sets
        d = self.data_dir
        own = [f"node_id=proxy-{k}"]
        if any(x.startswith("billing.enabled=true") for x in self.proxy_sets):
            own += [f"billing.ledger_path={d / f'proxy-{k}-ledger.sqlite'}",
                    f"billing.signing_key_file={d / f'proxy-{k}-voucher.key'}"]
        if self.deployment is not None:
            own += [f"chain.wallet=proxy-{k}",
                    f"chain.contract={self.deployment.more_proxies[k - 2].stake}"]
        return [*self.proxy_sets, *own]

    @property
    def discovers(self) -> bool:
        """Whether workers and the client find the proxies in the registry (several proxies
        on the embedded chain with its registry) rather than being told their addresses."""
        return (self.n_proxies > 1 and self.deployment is not None
                and self.attestation == "fake")

    @property
    def dialled_proxies(self) -> str:
        """What workers and the client are given as ``proxy``: every proxy's address, or
        nothing when they find them in the registry."""
        return "" if self.discovers else ",".join(self.proxy_addrs)

    # --- processes ----------------------------------------------------------------------

    def interrupt(self) -> None:
        """Ask a start in progress to stop (what SIGINT/SIGTERM do): it stops at its next
        poll (KeyboardInterrupt from :meth:`start`), never in the middle of starting a process
        or a chain call, so nothing is left half-started."""
        self._interrupted = True

    def _check_interrupted(self) -> None:
        if self._interrupted:
            raise KeyboardInterrupt

    def _role(self, name: str) -> Role:
        """A role logging to ``LOG_DIR/<name>.log``: that log starts fresh for this network
        (the previous runs' are kept as ``<name>.log.1`` .. ``.N``, :func:`rotate_log`), and
        a restart of the role within this network appends to it."""
        log = self.log_dir / f"{name}.log"
        if name not in self._fresh_logs:
            rotate_log(log)
            self._fresh_logs.add(name)
        _, prefix = self.placement(name)
        return Role(name, log, self.data_dir / f"{name}.ready",
                    interrupted=lambda: self._interrupted, prefix=prefix)

    def host_of(self, name: str) -> str:
        """The address the role ``name`` binds and others reach it at."""
        return self.placement(name)[0]

    def _spawn(self, name: str, role: str, args: list[str]) -> Role:
        r = self._role(name)
        r.spawn("cocoon", [role, *args])
        return r

    def _start_chain(self, deadline: float, progress: Callable[[str], None]) -> None:
        """Start the embedded chain service and deploy this network's contracts on it."""
        try:
            find_toolchain()
        except ToolchainMissing as exc:
            raise LaunchError(f"{exc}; or start without a chain: `cocoon up --chain none`"
                              ) from None
        d = self.data_dir
        progress("starting the embedded chain (TVM emulator)")
        role = self.chain_role = self._role("chain")
        role.spawn("cocoon", ["chain", "run", "--state", str(d / "chain-state.json"),
                              "--http", f"{self.host_of('chain')}:0"])
        role.wait_until(role.read_ready, "ready", deadline)
        self.chain_url = role.http
        # a restart serves the same state on the same address
        role.args[role.args.index("--http") + 1] = (
            f"{self.host_of('chain')}:{urlsplit(self.chain_url).port}")
        dep = self._load_deployment()
        if dep is None:
            progress(f"chain at {self.chain_url}: deploying registry, proxy stake, channels")
            self._check_interrupted()
            dep = asyncio.run(self._deploy())
            _write_json(self.data_dir / self.DEPLOYMENT_FILE,
                        {**dataclasses.asdict(dep), "code_hashes": _code_hashes()})
        else:
            progress(f"chain at {self.chain_url}: continuing the network deployed in "
                     f"{self.data_dir}")
        self.deployment = dep
        # the client's channel; with several proxies, one to each
        channel = ",".join(dep.client_channels())
        named = self._configured_client_channel() if self.continued else ""
        if named and named != channel:
            channel = named
            progress(f"the client pays through channel {named}, as its config names it "
                     "(`cocoon client open` switched it)")
        self.client_channel = channel
        common = ["chain.backend=embedded", f"chain.url={self.chain_url}",
                  f"chain.token_file={role.info['token_file']}"]  # the service's RPC token
        if self.attestation == "fake":  # allow-lists (and, with several, proxies) from it
            common.append(f"chain.registry={dep.registry}")
        self.proxy_sets = [*common, "chain.wallet=proxy", f"chain.contract={dep.proxy_stake}",
                           *self.proxy_sets]
        self.client_sets = [*common, "chain.wallet=client",
                            f"chain.contract={channel}",
                            f"chain.key_file={d / 'client-voucher.key'}", *self.client_sets]
        self.worker_sets = [*common, *self.worker_sets]
        self.client_account = channel_account(channel.split(",")[0])
        progress(f"registry {dep.registry}; client channel {channel}")

    def _configured_client_channel(self) -> str:
        """The channel the client's config file names ("" without one, or unreadable)."""
        path = self.config_path("client")
        if not path.exists():
            return ""
        try:
            return cfg.load(cfg.ClientConfig, str(path)).chain.contract
        except CocoonError:
            return ""

    def follow_client_channel(self, report: Callable[[str], None] = lambda s: None) -> bool:
        """When the client's config names another channel than the one it runs on (what
        ``cocoon client open -c client.toml`` does), restart the client from it, on the same
        ports: it binds its connection to the new channel. True when it did."""
        client = self.client
        if client is None or not self.client_channel:
            return False
        try:
            st = self.config_path("client").stat()
        except OSError:
            return False
        seen = (st.st_mtime_ns, st.st_size)
        if seen == self._client_config_seen:
            return False
        self._client_config_seen = seen
        named = self._configured_client_channel()
        if not named or named == self.client_channel:
            return False
        old, self.client_channel = self.client_channel, named
        self.client_sets = [f"chain.contract={named}" if x.startswith("chain.contract=") else x
                            for x in self.client_sets]
        self.client_account = channel_account(named)
        report(f"client: its config names channel {named} (was {old}); restarting it on "
               f"{_ports(client)}")
        client.terminate()
        client.reap(time.monotonic() + 10)
        client.restart_at = None
        client.awaiting_ready = True
        client.respawn()
        return True

    def _load_deployment(self) -> LocalDeployment | None:
        """The contracts already deployed on this data directory's chain (None: a new
        chain). A chain that has state but no deployment record was cut off while deploying:
        it cannot be continued."""
        path = self.data_dir / self.DEPLOYMENT_FILE
        if not path.exists():
            if self.chain_role is not None and self.chain_role.info.get("restored"):
                raise LaunchError(f"{self.data_dir} has chain state but no {path.name} (cut "
                                  "off while deploying?): start over with --fresh")
            return None
        try:
            raw = json.loads(path.read_text())
            deployed_code = raw.pop("code_hashes", {})
            dep = LocalDeployment.from_json(raw)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise LaunchError(f"{path}: {exc}") from None
        changed = sorted(name for name, h in _code_hashes().items()
                         if deployed_code.get(name, h) != h)
        if changed:  # the proxy accepts only channels of the code it knows
            raise LaunchError(f"the contracts changed since the network in {self.data_dir} "
                              f"was deployed ({', '.join(changed)}): start over with --fresh")
        if not (self.chain_role is not None and self.chain_role.info.get("restored")):
            raise LaunchError(f"{path} names contracts but the chain state is gone: start "
                              "over with --fresh")
        if dep.proxies != self.n_proxies:
            raise LaunchError(f"the network in {self.data_dir} was deployed for "
                              f"{dep.proxies} prox{'y' if dep.proxies == 1 else 'ies'}: start "
                              "it with as many --proxies, or start over with --fresh")
        if len(dep.worker_channels) < self.n_workers:
            raise LaunchError(f"the network in {self.data_dir} was deployed for "
                              f"{len(dep.worker_channels)} worker(s): start at most that many, "
                              "or start over with --fresh")
        return dep

    @property
    def chain_token(self) -> str:
        """The chain service's RPC token (what `cocoon chain run` wrote; "" without one)."""
        info = self.chain_role.info if self.chain_role is not None else {}
        return read_token(info["token_file"]) if "token_file" in info else ""

    async def _deploy(self) -> LocalDeployment:
        d = self.data_dir
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
        chain = await EmbeddedChain.connect(self.chain_url, token=self.chain_token)
        try:
            return await deploy_local_network(
                chain, billing=billing,
                proxy_key=load_or_create_ed25519_key(d / "proxy-voucher.key"),
                client_key=load_or_create_ed25519_key(d / "client-voucher.key"),
                workers=self.n_workers, client_funds=self.demo_funds, image_hashes=images,
                model_hashes=models, params=self.network_params,
                more_proxy_keys=[load_or_create_ed25519_key(d / f"proxy-{k}-voucher.key")
                                 for k in range(2, self.n_proxies + 1)])
        finally:
            await chain.aclose()

    def role_config(self, name: str) -> str:
        """The TOML config that starts the role ``name`` again exactly: its address and
        ports, node id, keys, ledger, engine and chain settings; what ``cocoon
        client|worker|proxy`` take with ``-c``."""
        role = {r.name: r for r in self.roles()}[name]
        kind, sets = (("client", self.client_sets) if name == "client" else
                      ("proxy", self.proxy_sets_for(int(name.partition("-")[2] or 1)))
                      if name.startswith("proxy") else
                      ("worker", [*self.worker_sets, *self._worker_chain_sets(name)]))
        cls = {"client": cfg.ClientConfig, "proxy": cfg.ProxyConfig,
               "worker": cfg.WorkerConfig}[kind]
        overrides = dict(s.split("=", 1) for s in sets)
        # what the first start gave as command-line flags, with the ports it bound
        overrides["http"] = f"{self.host_of(name)}:{urlsplit(role.http).port}"
        if kind == "proxy":
            overrides["listen"] = f"{self.host_of(name)}:{role.info['listen_port']}"
        else:
            overrides["proxy"] = self.dialled_proxies
        if kind == "worker":
            overrides["node_id"] = name
            overrides["engine.kind"] = self.engine
            if self.upstream:
                overrides["engine.openai-http.base_url"] = self.upstream
        return cfg.dump_toml(cfg.load(cls, None, overrides))

    def config_path(self, name: str) -> Path:
        """Where the role ``name``'s config is (written once it serves)."""
        return self.data_dir / f"{name}.toml"

    def _pin(self, role: Role) -> None:
        """Write the role's config with the ports it bound; it restarts from that alone."""
        path = self.config_path(role.name)
        _write_text(path, self.role_config(role.name))
        role.args = [role.name.partition("-")[0], "-c", str(path)]

    def _worker_chain_sets(self, name: str) -> list[str]:
        if self.deployment is None:
            return []
        i = int(name.rpartition("-")[2])
        return [f"chain.wallet={name}",
                f"chain.contract={','.join(self.deployment.channels_of_worker(i))}",
                f"chain.voucher_file={self.data_dir / (name + '-payout.boc')}"]

    def write_role_configs(self) -> dict[str, Path]:
        """Each role's config (:meth:`role_config`, in the data directory, written again);
        returns name -> path."""
        out = {}
        for r in self.roles():
            if r is self.chain_role:
                continue
            _write_text(self.config_path(r.name), self.role_config(r.name))
            out[r.name] = self.config_path(r.name)
        return out

    def start(self, progress: Callable[[str], None] = lambda s: None) -> None:
        """Start every role and wait until the client serves all workers' models. First
        checks that the ports it will bind are free (LaunchError naming the port and, when
        known, the process holding it), so nothing is started in vain."""
        if self.client_port:
            check_ports_free(self.host_of("client"),
                             {self.client_port: "the client's OpenAI API, --port"})
        deadline = time.monotonic() + self.startup_timeout
        try:
            self._check_interrupted()
            if self.chain_mode == "embedded":
                self._start_chain(deadline, progress)
            for k in range(1, self.n_proxies + 1):
                name = "proxy" if k == 1 else f"proxy-{k}"
                progress(f"starting {name}")
                role = self._spawn(name, "proxy", [
                    "--listen", f"{self.host_of(name)}:0", "--http", f"{self.host_of(name)}:0",
                    *_sets(self.proxy_sets_for(k))])
                if k == 1:
                    self.proxy = role
                else:
                    self.more_proxies.append(role)
                role.wait_until(role.read_ready, "ready", deadline)
                self.proxy_addrs.append(f"{self.host_of(name)}:{role.info['listen_port']}")
                progress(f"{name} listening on {self.proxy_addrs[-1]}")
            proxy = self.proxy
            assert proxy is not None
            self.proxy_addr = self.proxy_addrs[0]
            for role in self.proxies:
                self._pin(role)
                if self.discovers:  # workers and the client find it there
                    role.wait_until(functools.partial(_listed, role),
                                    "listed in the registry", deadline)
            if self.discovers:
                progress(f"{self.n_proxies} proxies listed in the registry "
                         f"{self.deployment.registry if self.deployment else ''}: workers "
                         "and the client find them there")
            dial = ["--proxy", self.dialled_proxies] if self.dialled_proxies else []
            for i in range(self.n_workers):
                args = [*dial, "--http", f"{self.host_of(f'worker-{i + 1}')}:0",
                        "--engine", self.engine, *_sets(self.worker_sets),
                        *_sets(self._worker_chain_sets(f"worker-{i + 1}")),
                        "--set", f"node_id=worker-{i + 1}"]
                if self.upstream:
                    args += ["--upstream", self.upstream]
                self.workers.append(self._spawn(f"worker-{i + 1}", "worker", args))
            for w in self.workers:
                progress(f"{w.name}: loading engine {self.engine}")
                self._wait_worker(w, deadline)
                self._pin(w)
                status, stats = http_json(w.http + "/stats")
                models = ", ".join(stats["engine"]["models"]) if status == 200 else "?"
                progress(f"{w.name}: ready, serving {models}")
            progress("starting client")
            client = self.client = self._spawn("client", "client", [
                *dial, "--http", f"{self.host_of('client')}:{self.client_port}",
                *_sets(self.client_sets)])
            client.wait_until(client.read_ready, "ready", deadline)
            self._pin(client)

            def serving() -> bool:
                status, body = http_json(client.http + "/healthz")
                if status != 200 or not body["models"]:
                    return False
                _, mine = http_json(client.http + "/stats")
                if sum(p["state"] == "connected" for p in mine["proxies"]) < self.n_proxies:
                    return False
                for role in self.proxies:
                    _, stats = http_json(role.http + "/stats")
                    if not stats or len(stats["workers"]) != self.n_workers:
                        return False
                return True

            client.wait_until(serving, "serving models", deadline)
            self.write_network_file()
        except BaseException:
            self.stop()
            raise

    @property
    def network_file(self) -> Path:
        return self.log_dir / "network.json"

    def write_network_file(self) -> None:
        """``network.json`` in the log directory, for scripts and tests: the OpenAI API and
        every role's name, pid, addresses, config file and log (written again when a role
        restarts, so its pid is current)."""
        roles = []
        for r in self.roles():
            entry: dict[str, Any] = {
                "name": r.name, "role": r.name.partition("-")[0],
                "pid": r.proc.pid if r.proc is not None else None, "alive": r.alive(),
                "http": r.info.get("http"), "log": str(r.log_path),
                "restarts": r.restarts}
            if "listen_port" in r.info:
                entry["listen"] = f"{self.host_of(r.name)}:{r.info['listen_port']}"
            if r is self.chain_role:
                entry["url"] = self.chain_url
            else:
                entry["config"] = str(self.config_path(r.name))
            roles.append(entry)
        doc = {"api": self.base_url if self.client is not None and self.client.info else None,
               "data_dir": str(self.data_dir), "supervisor_pid": os.getpid(),
               "written_at": iso_utc(time.time()), "roles": roles}
        _write_json(self.network_file, doc)

    def restart_proxy(self, kill: bool = True, timeout: float | None = None) -> Role:
        """Stop the proxy (SIGKILL when ``kill``, else SIGTERM) and start it again with the
        same settings on the same listen and HTTP ports, so the workers and the client, which
        redial the same address, find it. Returns once it is ready and every worker and the
        client are connected to it again (LaunchError past ``timeout`` seconds)."""
        old = self.proxy
        assert old is not None and old.info, "restart_proxy needs a started network"
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        if old.alive():
            assert old.proc is not None
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    old.proc.kill()
            else:
                old.terminate()
        old.reap(deadline)
        old.respawn()  # from its config: the same ports, ledger and keys
        proxy = old
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
        self.write_network_file()
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

    @property
    def proxies(self) -> list[Role]:
        return [r for r in (self.proxy, *self.more_proxies) if r is not None]

    def roles(self) -> list[Role]:
        return [r for r in (self.chain_role, *self.proxies, *self.workers, self.client)
                if r is not None]

    def dead(self) -> list[Role]:
        return [r for r in self.roles() if not r.alive()]

    def supervise(self, report: Callable[[str], None] = lambda s: None) -> None:
        """One round of supervision: restart each role that has died from its own config
        (the same ports and state), at once the first time, after a growing back-off
        (:data:`RESTART_BACKOFF_S`) while it keeps dying soon after starting; ``report``
        says what happens. The other roles are left alone: they redial the same address.
        The client also restarts when its config names a new channel
        (:meth:`follow_client_channel`)."""
        self.follow_client_channel(report)
        now = time.monotonic()
        for r in self.roles():
            if r.alive():
                if r.awaiting_ready and r.read_ready():
                    r.awaiting_ready = False
                    report(f"{r.name} is back on {_ports(r)}")
                    self.write_network_file()
                continue
            if r.restart_at is None:  # just found dead
                ran = now - r.started_at
                # a first death, or one after a good run, is restarted at once
                r.quick_deaths = (r.quick_deaths + 1 if r.restarts and ran < STABLE_AFTER_S
                                  else 0)
                delay = RESTART_BACKOFF_S[min(r.quick_deaths, len(RESTART_BACKOFF_S) - 1)]
                r.restart_at = now + delay
                report(f"{r.name} died ({r.exit_reason()}) after {ran:.1f} s; restarting it "
                       f"on {_ports(r)}"
                       + (f" in {delay:g} s (it keeps dying; log: {r.log_path})" if delay
                          else ""))
            if now >= r.restart_at:
                r.restart_at = None
                r.restarts += 1
                r.awaiting_ready = True
                r.respawn()

    def stop(self, grace: float = 5.0) -> None:
        """Stop the roles from the edge in: the client, then the workers, then the proxy,
        then the chain service; each stage SIGTERM, then SIGKILL what is left after
        ``grace``. So the proxy, still running, settles the requests the client's going cut
        off, and the chain outlives the proxy's last commit."""
        for stage in ([self.client], self.workers, self.proxies, [self.chain_role]):
            roles = [r for r in stage if r is not None]
            for r in roles:
                r.terminate()
            end = time.monotonic() + grace
            for r in roles:
                r.reap(end)

    def close(self) -> None:
        """Stop every role; delete the data directory if it is a temporary one."""
        self.stop()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _listed(role: Role) -> bool:
    _, stats = http_json(role.http + "/stats")
    return bool(stats) and stats.get("registry_listing", {}).get("state") == "listed"


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _ports(role: Role) -> str:
    """The address(es) a started role serves on, from its ready file."""
    where = [role.info["http"]] if "http" in role.info else []
    if "listen_port" in role.info:
        where.append(f"listen port {role.info['listen_port']}")
    return ", ".join(where) or "its ports"


LOG_GENERATIONS = 3
"""Role logs kept from earlier networks: ``proxy.log.1`` (the last run) .. ``proxy.log.3``."""


def rotate_log(path: Path, keep: int = LOG_GENERATIONS) -> None:
    """Let ``path`` start fresh: ``path`` becomes ``path.1``, ``path.1`` becomes ``path.2``,
    ... and ``path.<keep>`` is dropped."""
    if not path.exists():
        return
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))


def check_ports_free(host: str, ports: dict[int, str]) -> None:
    """LaunchError naming the first of ``ports`` (port -> what it is for; 0 is "any", always
    free) that cannot be bound on ``host``, and the process holding it when it can be seen."""
    for port, what in ports.items():
        if not port:
            continue
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM)[0]
        except OSError as exc:
            raise LaunchError(f"--host {host}: {exc}") from None
        with socket.socket(family, kind, proto) as sock:
            # as the servers bind: a port whose old connections linger (TIME_WAIT) is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                holder = port_holder(port)
                held = f" by {holder}" if holder else ""
                reason = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise LaunchError(f"port {port} on {host} ({what}) is {reason}{held}: stop "
                                  "it, or choose another port") from None


def port_holder(port: int) -> str:
    """Which process holds TCP ``port`` (``"pid 123 (python -m http.server)"``), from
    ``/proc``; "" when it cannot be seen (another user's process, not Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and int(f[1].rpartition(":")[2], 16) == port and f[9] != "0":
                inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return ""
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:  # gone, or another user's
            continue
        if inodes.intersection(_readlink(fd) for fd in fds):
            pid = fd_dir.parent.name
            try:
                argv = (fd_dir.parent / "cmdline").read_bytes().split(b"\0")
                cmd = " ".join(a.decode(errors="replace") for a in argv if a)
            except OSError:
                cmd = ""
            return f"pid {pid}" + (f" ({cmd})" if cmd else "")
    return ""


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile
        return ""


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically: a kill -9 leaves the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=2) + "\n")


def _code_hashes() -> dict[str, str]:
    """The compiled contracts' code hashes, by contract name."""
    out = {}
    for path in sorted((default_contracts_dir() / "build").glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            out[path.stem] = str(json.loads(path.read_text())["codeHashHex"]).lower()
    return out


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/cocoon``, or ``~/.local/share/cocoon``."""
    home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(home) / "cocoon"


# --- cocoon up -------------------------------------------------------------------------

def add_up_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=10000, help="client API port (default 10000)")
    p.add_argument("--host", default="127.0.0.1", help="address every role binds")
    p.add_argument("--workers", type=int, default=1, help="number of workers (default 1)")
    p.add_argument("--proxies", type=int, default=1,
                   help="number of proxies (default 1); with several, each is staked and "
                        "listed in the registry, where the workers and the client find them "
                        "(the client has a payment channel to each)")
    p.add_argument("--engine", choices=["llama-cpp", "openai-http", "fake"],
                   default="llama-cpp", help="worker engine (default llama-cpp + SmolLM2)")
    p.add_argument("--upstream", help="OpenAI-compatible base URL for --engine openai-http")
    p.add_argument("--worker-set", action="append", default=[], metavar="KEY=VALUE",
                   help="worker config override, e.g. engine.fake.delay_ms=20")
    p.add_argument("--client-set", action="append", default=[], metavar="KEY=VALUE",
                   help="client config override, e.g. seal=require")
    p.add_argument("--attestation", choices=ATTESTATION_MODES, default="fake",
                   help="fake (default): simulated TDX quotes over RA-TLS; none: RA-TLS, "
                        "unattested; off: plain TCP")
    p.add_argument("--demo-funds", type=_ton_arg, default=10 * 10**9, metavar="TON",
                   help="the demo client's first deposit in TON, e.g. 2.5 (default 10); 0 "
                        "disables billing. A continued network keeps its balance")
    p.add_argument("--chain", choices=CHAIN_MODES, default="embedded",
                   help="embedded (default): a local TON chain running the network's "
                        "contracts in the TVM emulator (needs Node.js and `npm ci` in "
                        "contracts/, which scripts/setup does); none: ledger balances only")
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="where the network's state lives: keys, ledger, chain state, role "
                        "configs; a later `cocoon up` continues from it (default "
                        "$XDG_DATA_HOME/cocoon, or ~/.local/share/cocoon)")
    p.add_argument("--fresh", action="store_true",
                   help="delete the data directory first and start a new network")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="where role logs go (default DATA_DIR/logs)")
    p.add_argument("--timeout", type=float, default=300.0, help="start-up deadline (s)")


def _ton_arg(text: str) -> int:
    """argparse ``type`` for an amount of TON (zero allowed): nanoTON."""
    try:
        return parse_ton(text, allow_zero=True)
    except CocoonError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def _delete_data_dir(path: Path, progress: Callable[[str], None]) -> None:
    """``--fresh``: delete a data directory, only if it is one (or empty) and not in use."""
    if not path.exists():
        return
    if any(path.iterdir()) and not (path / LocalNetwork.NETWORK_FILE).exists():
        raise LaunchError(f"--fresh: {path} is not a cocoon data directory (no "
                          f"{LocalNetwork.NETWORK_FILE}); not deleting it")
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LaunchError(f"--fresh: another `cocoon up` is using {path}") from None
        progress(f"--fresh: deleting {path} (ledger, keys, chain state, vouchers)")
        shutil.rmtree(path)
    finally:
        os.close(fd)


def run_up(args: argparse.Namespace) -> int:
    """``cocoon up``: start the network, then supervise it until Ctrl-C or SIGTERM."""
    started = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    data_dir = (args.data_dir or default_data_dir()).expanduser()
    try:
        if args.fresh:
            _delete_data_dir(data_dir, progress)
        net = LocalNetwork(workers=args.workers, engine=args.engine, upstream=args.upstream,
                           host=args.host, client_port=args.port, worker_sets=args.worker_set,
                           client_sets=args.client_set,
                           log_dir=args.log_dir or data_dir / "logs",
                           startup_timeout=args.timeout, attestation=args.attestation,
                           billing=args.demo_funds > 0, demo_funds=args.demo_funds,
                           chain=args.chain if args.demo_funds > 0 else "none",
                           commit_interval_s=5.0, data_dir=data_dir, proxies=args.proxies)
    except LaunchError as exc:
        print(f"cocoon up: {exc}", file=sys.stderr)
        return 1
    interrupted = False
    # Ctrl-C / SIGTERM: start-up stops at its next poll (LocalNetwork.interrupt), the
    # supervision loop at its next round. The handler raises nothing: an exception raised
    # at an arbitrary point could orphan a process being started or leave a coroutine
    # never awaited.
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        net.interrupt()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        progress(("continuing the network in " if net.continued else "new network in ")
                 + f"{net.data_dir} (`cocoon up --fresh` starts over)")
        net.start(progress)
        models = net.models()
        progress(f"network up: {args.proxies} prox{'y' if args.proxies == 1 else 'ies'}, "
                 f"{args.workers} worker(s), 1 client; attestation {args.attestation}; logs "
                 f"in {net.log_dir}")
        for role in net.proxies:
            if role.info:
                progress(f"{role.name}: workers and clients dial {net.host_of(role.name)}:"
                         f"{role.info.get('listen_port')}, stats at {role.http}/stats, "
                         f"dashboard at {role.http}/dashboard, metrics at {role.http}/metrics")
        progress(f"roles, pids, ports and configs: {net.network_file}")
        for line in net.attestation_summary():
            progress(line)
        if net.client_account:
            configs = net.write_role_configs()
            c, w = configs["client"], configs["worker-1"]
            funded = ("its balance continues" if net.continued
                      else f"funded with {format_ton(args.demo_funds)}")
            progress(f"billing on: demo client {net.client_account}, {funded}; "
                     f"`cocoon proxy ledger -c {configs['proxy']}` shows the books")
            progress(f"accounts: `cocoon client balance -c {c}`, "
                     f"`cocoon worker earnings -c {w}`")
            if net.deployment is not None:
                progress(f"on chain (amounts in TON): `cocoon client topup 1 -c {c}`; "
                         f"`cocoon client close -c {c}` then, after the close delay, "
                         f"`cocoon client withdraw -c {c}`; a new channel: `cocoon client "
                         f"open 10 -c {c}` (the client switches to it); "
                         f"`cocoon worker withdraw -c {w}`")
                if net.n_proxies > 1:
                    progress("the client and each worker have a channel per proxy: add "
                             "`--set chain.contract=CHANNEL` (from their config) to act on "
                             "one")
        print(_snippets(net.base_url, models[0] if models else "?"), flush=True)
        print("Press Ctrl-C to stop. A role that dies is restarted on the same ports.",
              flush=True)
        while not stopping:
            net.supervise(progress)
            time.sleep(0.2)
        interrupted = True
        return 0
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
