#!/usr/bin/env python3
"""Run the COCOON benchmark: ``python bench/run.py [options]`` (same as ``cocoon bench``).

Results are written only where ``--json PATH`` says, e.g.
``python bench/run.py --mode all --json bench/results/latest.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import sys

from cocoon.benchmark import add_bench_arguments
from cocoon.benchmark.suite import run_bench
from cocoon.errors import CocoonError


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="The chain (client -> proxy -> worker) against the engine served directly.")
    add_bench_arguments(parser)
    args = parser.parse_args()
    try:
        return run_bench(args)
    except CocoonError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
