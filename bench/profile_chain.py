#!/usr/bin/env python3
"""Profile the chain's processes under the bench's load with py-spy.

    .venv/bin/pip install py-spy==0.4.3
    python bench/profile_chain.py --mode saturation --duration 10 --out /tmp/prof
    python bench/profile_chain.py --mode paced --attestation off --out /tmp/prof-plain
    python bench/profile_chain.py --stack --mode saturation --out /tmp/prof-up

``--stack`` profiles what users run instead (as ``cocoon bench --mode up``): ``cocoon up``
with its defaults (RA-TLS fake, billing, the embedded chain: its service is profiled too) on
the ``openai-http`` engine, in front of the fake engine served over OpenAI HTTP by its own
process.

Starts a LocalNetwork on the fake engine (the bench's config for ``--mode``), runs the bench's
load generator against the client, and records the client, proxy and worker with
``py-spy record --nonblocking --format raw``. It prints, for each role, its busy share (the
samples where it was not idle) and the hottest functions by self time and by inclusive time.
The collapsed stacks (``ROLE.txt``) are kept in ``--out``, for flame graphs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from cocoon.benchmark.loadgen import LoadGenerator
from cocoon.benchmark.procs import DirectProcess
from cocoon.benchmark.runner import MODES, expected_events, request_body
from cocoon.commands.up import LocalNetwork


def summarize(path: Path, rate: int, seconds: float, top: int) -> str:
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.strip() for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and
                  not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return f"{path.stem}: no samples"
    out = [f"== {path.stem}: {total} busy samples = {total / (rate * seconds):.0%} of one core "
           f"over {seconds:g} s =="]
    out.append("  self time:")
    out += [f"    {n / total:6.1%}  {f}" for f, n in self_t.most_common(top)]
    out.append("  inclusive time:")
    out += [f"    {n / total:6.1%}  {f}" for f, n in incl.most_common(top * 2)]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=sorted(MODES), default="saturation")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--streams", type=int)
    p.add_argument("--chunks", type=int, help="chunks per response (1: what a request costs)")
    p.add_argument("--attestation", choices=["fake", "none", "off"], default="fake",
                   help="the chain's attestation (default fake, as cocoon up)")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--gil", action="store_true",
                   help="sample only the thread holding the GIL (CPU in Python; leaves out "
                        "a thread waiting in fsync or a socket)")
    p.add_argument("--out", default="/tmp/cocoon-profile")
    p.add_argument("--stack", action="store_true",
                   help="cocoon up defaults on openai-http in front of a separate upstream")
    p.add_argument("--client-set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --stack: a client config override, as cocoon up's (e.g. "
                        "seal=off, to profile the clear side of --mode seal)")
    args = p.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy not found: pip install py-spy==0.4.3", file=sys.stderr)
        return 2
    spec = MODES[args.mode]
    if args.streams:
        spec = replace(spec, streams=args.streams)
    if args.chunks:
        spec = replace(spec, chunks=args.chunks)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = [f"engine.fake.chunks={spec.chunks}", f"engine.fake.chunk_bytes={spec.chunk_bytes}",
            f"engine.fake.delay_ms={spec.delay_ms!r}", "max_concurrent=1000"]
    upstream = None
    if args.stack:
        upstream = DirectProcess(["--chunks", str(spec.chunks), "--chunk-bytes",
                                  str(spec.chunk_bytes), "--delay-ms", repr(spec.delay_ms),
                                  "--model", "fake", "--port", "0"])
        upstream.start()
        net = LocalNetwork(engine="openai-http", upstream=upstream.http, attestation="fake",
                           billing=True, chain="embedded", startup_timeout=180.0,
                           client_sets=args.client_set)
    else:
        net = LocalNetwork(engine="fake", worker_sets=sets, attestation=args.attestation)
    with net:
        net.start()
        roles = {r.name: r for r in net.roles()}
        url = net.base_url + "/chat/completions"

        def spawn_spies() -> list[subprocess.Popen[bytes]]:
            return [subprocess.Popen(
                [pyspy, "record", "--pid", str(r.proc.pid), "--duration",
                 str(int(args.duration)), "--rate", str(args.rate), "--nonblocking",
                 *(["--gil"] if args.gil else []), "--format", "raw",
                 "-o", str(out / f"{name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for name, r in roles.items() if r.proc is not None]

        async def load(seconds: float) -> None:
            async with LoadGenerator(url, request_body(), spec.streams,
                                     expected_events(spec)) as lg:
                await lg.warm_up()
                spies = spawn_spies()
                res = await lg.run(seconds, stagger=spec.chunks * spec.delay_ms / 1000.0)
                for s in spies:
                    await asyncio.to_thread(s.wait)
                print(f"load: {res.stream_rate:.1f} req/s, {res.stream_chunk_rate:.0f} chunks/s, "
                      f"{res.error_count} errors", flush=True)

        asyncio.run(load(args.duration + 1.0))
    if upstream is not None:
        upstream.close()
    for name in roles:
        path = out / f"{name}.txt"
        if path.exists():
            print(summarize(path, args.rate, int(args.duration), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
