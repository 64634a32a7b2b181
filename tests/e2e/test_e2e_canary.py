"""Issue 14, item 3: proof, not promises. A canary prompt goes through `cocoon up` (its
defaults: fake TDX over RA-TLS, billing, the embedded chain) to a worker whose engine echoes
it; then the proxy's process memory (/proc/PID/mem), every file of the network's data
directory (logs, the proxy's ledger, the chain's state, receipts) are searched for it. With
sealing on (the default) it is in none of them, though the app got it back; with the client's
``seal=off`` the same search finds it in the proxy's memory, so the search can fail."""

from __future__ import annotations

import itertools
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from e2e_support import get_stats, until

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


def verified_receipts(data_dir: Path) -> list[dict[str, Any]]:
    """``cocoon receipt verify --json`` on the client's receipts of the day, checked against
    the network's fake TDX authority."""
    [kept] = list((data_dir / "receipts").glob("receipts-*.jsonl"))
    out = subprocess.run([sys.executable, "-m", "cocoon", "receipt", "verify", str(kept),
                          "--json", "--fake-dir", str(data_dir / "fake-tdx")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def run(seal: str) -> tuple[str, bool, list[Path], int, list[dict[str, Any]]]:
    """(the canary, whether the proxy's memory holds it, the files that hold it, the
    completions the app got with the canary in them, the receipts as verified)."""
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
        receipts = verified_receipts(net.data_dir)
        last = receipts[-1]["proxy"]
        # the client's copy of its account catches up with the last statement
        assert until(lambda: (get_stats(net.client.http)["billing"].get("voucher") or {}
                              ).get("seqno") == last["voucher_seqno"]), (
            [r["proxy"]["voucher_seqno"] for r in receipts])
        billing = get_stats(net.client.http)["billing"]
    # one receipt per answer, sealed ones by a fake-TDX worker; the costs they name add
    # up, request by request, to what the client was charged
    assert len(receipts) == REQUESTS and all(r["valid"] for r in receipts)
    assert {r["worker"]["tier"] for r in receipts} == {"fake-tdx"}
    assert {r["worker"]["sealed"] for r in receipts} == {seal != "off"}
    totals = [r["proxy"]["charged_total_nanoton"] for r in receipts]
    costs = [r["proxy"]["cost_nanoton"] for r in receipts]
    assert all(c > 0 for c in costs)
    assert [b - a for a, b in itertools.pairwise(totals)] == costs[1:]
    assert totals[-1] == billing["charged"] == billing["voucher"]["cumulative_nanoton"]
    seqnos = [r["proxy"]["voucher_seqno"] for r in receipts]
    assert seqnos == sorted(seqnos) and seqnos[0] >= 1
    return canary, in_memory, holding, echoed, receipts


def test_a_sealed_canary_is_nowhere_at_the_proxy_and_in_its_memory_when_not_sealed(
        ) -> None:
    canary, in_memory, holding, echoed, _ = run("on")
    assert echoed == REQUESTS  # it did go to the worker and back to the app
    assert not in_memory, "the proxy's memory holds the sealed canary"
    assert holding == [], f"{canary} found in {holding}"
    # the control: the same search finds it when the client does not seal
    _, in_memory, _, echoed, _ = run("off")
    assert echoed == REQUESTS
    assert in_memory, "the search cannot find a canary even when the proxy saw it"
