"""Issue 12, item 4, bounded: many concurrent paced streams through the default stack
(`cocoon up` defaults: RA-TLS fake, billing, the embedded chain; the openai-http engine in
front of a separate OpenAI-compatible upstream). Every stream completes with all its events
(the worker's default capacity takes them, the proxy queues what it cannot), and afterwards
each role's open file descriptors are back to where they were and its memory within 10 %.
The 1,000-stream run is `cocoon bench --mode up --streams 1000` (see the README).
"""

from __future__ import annotations

import asyncio
import time

import psutil
import pytest

from cocoon.benchmark.loadgen import LoadGenerator
from cocoon.benchmark.procs import DirectProcess
from cocoon.benchmark.runner import request_body
from cocoon.chain.embedded import find_toolchain
from cocoon.commands.up import LocalNetwork
from cocoon.errors import ToolchainMissing

try:
    find_toolchain()
except ToolchainMissing as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = pytest.mark.e2e

STREAMS = 300
CHUNKS = 20
DELAY_MS = 1000.0 / 30.0  # 30 chunks/s per stream, as the bench's paced mode


def _usage(pids: dict[str, int], upstream_port: int) -> dict[str, tuple[int, int]]:
    """RSS and open fds of each process; the worker's keep-alive connections to the
    upstream (aiohttp's pool: as many as the busiest moment needed) are not counted."""
    out = {}
    for name, pid in pids.items():
        p = psutil.Process(pid)
        pooled = sum(1 for c in p.net_connections(kind="tcp")
                     if c.raddr and c.raddr.port == upstream_port)
        out[name] = (int(p.memory_info().rss), int(p.num_fds()) - pooled)
    return out


async def _round(url: str) -> dict[str, int]:
    async with LoadGenerator(url, request_body(), STREAMS, CHUNKS + 2) as lg:
        return (await lg.warm_up()).errors  # one request per stream, all at once


def test_many_paced_streams_through_the_default_stack_complete_without_leaks() -> None:
    with DirectProcess(["--chunks", str(CHUNKS), "--chunk-bytes", "128", "--delay-ms",
                        repr(DELAY_MS), "--model", "fake", "--port", "0"]) as upstream, \
            LocalNetwork(engine="openai-http", upstream=upstream.http, attestation="fake",
                         billing=True, chain="embedded", startup_timeout=180.0) as net:
        net.start()
        url = net.base_url + "/chat/completions"
        roles = {r.name: r.proc.pid for r in net.roles() if r.proc is not None}
        assert asyncio.run(_round(url)) == {}  # warm: connections, caches, the queue's paths
        time.sleep(2.0)
        port = int(upstream.http.rsplit(":", 1)[1])
        before = _usage(roles, port)
        started = time.monotonic()
        errors = asyncio.run(_round(url))
        took = time.monotonic() - started
        assert errors == {}, errors
        # 300 streams of 20 chunks at 30/s: about 0.7 s each if none waits; the worker takes
        # all 300 at once (openai-http default capacity 256, the rest queue briefly)
        assert took < 30.0, took
        time.sleep(2.0)  # in-flight cleanup: statements, settlements, closed connections
        after = _usage(roles, port)
        assert not net.dead()
    for name, (rss0, fds0) in before.items():
        rss1, fds1 = after[name]
        assert fds1 <= fds0 + 2, f"{name}: {fds0} -> {fds1} open file descriptors"
        assert rss1 <= rss0 * 1.10, f"{name}: RSS {rss0 >> 20} -> {rss1 >> 20} MB"
