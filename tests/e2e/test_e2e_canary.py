"""Issue 14, item 3: proof, not promises. A canary prompt goes through `cocoon up` (its
defaults: fake TDX over RA-TLS, billing, the embedded chain) to a worker whose engine echoes
it; then the proxy's process memory (/proc/PID/mem), every file of the network's data
directory (logs, the proxy's ledger, the chain's state, receipts) are searched for it. With
sealing on (the default) it is in none of them, though the app got it back; with the client's
``seal=off`` the same search finds it in the proxy's memory, so the search can fail."""

from __future__ import annotations

import secrets
from pathlib import Path

import openai
import pytest
from e2e_support import get_stats

from cocoon.chain.embedded import find_toolchain
from cocoon.commands.up import LocalNetwork
from cocoon.errors import ToolchainMissing

pytestmark = pytest.mark.e2e

try:
    find_toolchain()
except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

REQUESTS = 4


def memory_of(pid: int) -> list[bytes]:
    """Every readable mapping of a process (skip the test if this machine forbids it)."""
    regions = []
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", buffering=0)  # noqa: SIM115
    except PermissionError as exc:
        pytest.skip(f"cannot read another process's memory here: {exc}")
    with mem:
        for line in maps:
            fields = line.split()
            span, perms = fields[0], fields[1]
            name = fields[5] if len(fields) > 5 else ""
            if not perms.startswith("r") or name in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                regions.append(mem.read(end - start))
            except (OSError, ValueError, OverflowError):
                continue  # a mapping that went away or cannot be read (device memory)
    assert regions, "no readable memory found"
    return regions


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def run(seal: str) -> tuple[str, bool, list[Path], int]:
    """(the canary, whether the proxy's memory holds it, the files that hold it, the
    completions the app got with the canary in them)."""
    canary = "CANARY" + secrets.token_hex(12).upper()
    with LocalNetwork(engine="fake", billing=True, demo_funds=10**12, chain="embedded",
                      startup_timeout=90.0,
                      worker_sets=["engine.fake.echo=true", "engine.fake.chunks=3"],
                      client_sets=[f"seal={seal}"]) as net:
        net.start()
        assert net.client is not None and net.proxy is not None
        echoed = 0
        with openai.OpenAI(base_url=net.client.http + "/v1", api_key="unused",
                           max_retries=0, timeout=60) as app:
            for i in range(REQUESTS):
                messages: list[dict[str, str]] = [
                    {"role": "user", "content": f"say {canary} back"}]
                if i % 2:
                    r = app.chat.completions.create(model="fake", messages=messages)
                    echoed += canary in (r.choices[0].message.content or "")
                else:
                    text = "".join(c.choices[0].delta.content or "" for c in
                                   app.chat.completions.create(model="fake", messages=messages,
                                                               stream=True) if c.choices)
                    echoed += canary in text
        worker = get_stats(net.workers[0].http)
        assert worker["requests"]["sealed"] == (REQUESTS if seal != "off" else 0)
        needle = canary.encode()
        in_memory = any(needle in region for region in memory_of(net.proxy.pid))
        holding = [p for p, data in files_under(net.data_dir).items() if needle in data]
    return canary, in_memory, holding, echoed


def test_a_sealed_canary_is_nowhere_at_the_proxy_and_in_its_memory_when_not_sealed(
        ) -> None:
    canary, in_memory, holding, echoed = run("on")
    assert echoed == REQUESTS  # it did go to the worker and back to the app
    assert not in_memory, "the proxy's memory holds the sealed canary"
    assert holding == [], f"{canary} found in {holding}"
    # the control: the same search finds it when the client does not seal
    _, in_memory, _, echoed = run("off")
    assert echoed == REQUESTS
    assert in_memory, "the search cannot find a canary even when the proxy saw it"
