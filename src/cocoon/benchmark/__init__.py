"""``cocoon bench``: the chain (client -> proxy -> worker) against the engine served directly.

Modes (``--mode``):

* ``saturation``: fake engine, no delay, 30 concurrent streams, 50 chunks x 128 B;
* ``paced``: fake engine, 30 chunks/s per stream (delay 33.3 ms), 200 concurrent streams;
* ``llama``: SmolLM2 tokens/s through the chain vs llama-cpp-python in-process (skipped,
  saying why, when llama-cpp-python or the model is missing);
* ``handshake``: RA-TLS handshake times in-process on loopback (fake-tdx, none, plain TCP),
  one fake quote verification and one identity creation;
* ``routing``: how long the proxy's pick of a worker takes over 10,000 workers
  (:mod:`cocoon.benchmark.routing`; ``--workers N``);
* ``all`` (default): all of these, with ``--tls-compare``;
* ``up``: what users run: ``cocoon up`` with its defaults (RA-TLS fake, billing, embedded
  chain; ``openai-http`` engine) in front of an OpenAI-compatible fake upstream in its own
  process, against that bare upstream, paced and saturation (:mod:`cocoon.benchmark.stack`);
  also RSS and file descriptors per process (``--streams 1000`` for the 1,000-stream run);
* ``proxies``: ``cocoon up --proxies 2 --workers 3`` against ``--proxies 1 --workers 3``
  (paced), the extra TTFT of a request whose worker is killed before its first token, and
  how a proxy killed under load is left behind (:mod:`cocoon.benchmark.proxies`);
* ``seal``: ``cocoon up`` with its defaults (every request sealed to its worker) against the
  same with ``--client-set seal=off``, paced and saturation, and the cost of one seal and one
  open (:mod:`cocoon.benchmark.seal`);
* ``train``: a LoRA fine-tuning job through ``cocoon up`` with its defaults against the same
  training in-process: steps/s, trained tokens/s, time to the first step, the worker's peak
  RSS (:mod:`cocoon.benchmark.train`).

``--attestation fake|none|off`` (default fake, as ``cocoon up``) sets the chain's
attestation. ``--tls-compare`` (on in ``all``) adds a second chain on plain TCP
(``chain_plain``) to the fake modes and reports RA-TLS / plain.

For each fake mode the same closed-loop load runs against a direct OpenAI server wrapping the
fake engine (:mod:`cocoon.benchmark.direct`, its own process) and against a local network on
the same engine config. Reported: requests/s, chunks/s, TTFT and latency p50/p99, CPU seconds
per 1,000 chunks for every process (servers and the load generator), and chain/direct ratios.

:func:`add_bench_arguments` (here: cheap, for ``cocoon --help``) declares the flags;
:func:`cocoon.benchmark.suite.run_bench` runs what they ask for.
"""

from __future__ import annotations

import argparse

__all__ = ["DEFAULT_DURATION", "QUICK_DURATION", "add_bench_arguments"]

QUICK_DURATION = 2.0
DEFAULT_DURATION = 10.0


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["saturation", "paced", "llama", "handshake", "ledger",
                                      "routing", "up", "proxies", "seal", "train", "all"],
                   default="all",
                   help="what to measure (default all: saturation and paced with "
                        "--tls-compare, llama, handshake; up: cocoon up with its defaults "
                        "in front of a separate OpenAI-compatible upstream, against the "
                        "bare upstream)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="--mode routing: the fleet a pick chooses from (default 10000)")
    p.add_argument("--billing", action="store_true",
                   help="bill every chain request into the proxy's SQLite ledger (reserve + "
                        "settle, fsync each), to measure what billing costs")
    p.add_argument("--payments-chain", choices=["none", "embedded"], default="none",
                   help="with --billing: put the accounts on the embedded chain (client-signed "
                        "vouchers, redemption and commits on chain), as cocoon up does")
    p.add_argument("--attestation", choices=["fake", "none", "off"], default="fake",
                   help="the chain's attestation, as cocoon up (default fake: RA-TLS with "
                        "simulated TDX quotes; none: RA-TLS without evidence; off: plain TCP)")
    p.add_argument("--tls-compare", action="store_true",
                   help="also run each fake mode through a plain-TCP chain (attestation off) "
                        "and report RA-TLS/plain (on in --mode all)")
    p.add_argument("--no-tls-compare", action="store_true",
                   help="leave the plain-TCP chain out of --mode all")
    p.add_argument("--handshakes", type=int, metavar="N",
                   help="sequential connections per kind in --mode handshake "
                        "(default 200; 30 with --quick)")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help=f"load phase length per measurement (default {DEFAULT_DURATION:g}; "
                        f"{QUICK_DURATION:g} with --quick); in-flight requests are drained")
    p.add_argument("--streams", type=int, metavar="N",
                   help="concurrent streams (default: 30 saturation, 200 paced)")
    p.add_argument("--chunks", type=int, metavar="N", help="chunks per response (default 50)")
    p.add_argument("--chunk-bytes", type=int, metavar="B", help="bytes per chunk (default 128)")
    p.add_argument("--delay-ms", type=float, metavar="MS",
                   help="override the per-chunk delay of the selected modes")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="measure each side K times, alternating order; report the median")
    p.add_argument("--quick", action="store_true",
                   help="short phases and few llama runs (CI smoke test)")
    p.add_argument("--llama", action="store_true",
                   help="add the llama comparison to --mode saturation/paced")
    p.add_argument("--no-llama", action="store_true", help="leave the llama comparison out")
    p.add_argument("--llama-runs", type=int, metavar="N",
                   help="sequential requests per side (default 5; 2 with --quick)")
    p.add_argument("--llama-max-tokens", type=int, metavar="N",
                   help="max_tokens of the llama request (default 128; 32 with --quick)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="also write the results as JSON to PATH (to stdout when no PATH, "
                        "the table then goes to stderr)")
