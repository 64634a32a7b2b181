"""``cocoon model-hash PATH``: the model hash of a weights file or directory (see
:mod:`cocoon.engines.weights`), to declare on an ``openai-http`` worker
(``engine.openai-http.model_hash``) and to put on a registry's model allow-list."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from cocoon.engines.weights import model_hash
from cocoon.money import iso_utc

__all__ = ["add_model_hash_arguments", "run_model_hash"]

_GIB = 1 << 30


def add_model_hash_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "model-hash", help="print the model hash of a weights file or directory",
        description="Print the model hash of a weights file (a GGUF: the SHA-256 of its "
                    "bytes, what a llama-cpp worker certifies) or directory (a Hugging Face "
                    "checkpoint as vLLM/SGLang load it: every file's path, size and SHA-256, "
                    "hidden files left out). Declare it on an openai-http worker with "
                    "--set engine.openai-http.model_hash=HASH, and add it to a registry's "
                    "model allow-list.")
    p.add_argument("path", metavar="PATH", help="a weights file, or a checkpoint directory")
    p.add_argument("--json", action="store_true",
                   help="print {path, model_hash, files, bytes, at} as JSON")


def run_model_hash(args: argparse.Namespace) -> int:
    seen: list[tuple[Path, int, int]] = []

    def progress(path: Path, done: int, total: int) -> None:
        seen.append((path, done, total))
        if total >= _GIB:  # long work says how far it got
            print(f"hashed {path.name}: {done / _GIB:.1f} of {total / _GIB:.1f} GiB",
                  file=sys.stderr, flush=True)

    digest = model_hash(args.path, progress).hex()
    if args.json:
        total = seen[-1][2] if seen else 0
        print(json.dumps({"path": str(Path(args.path).resolve()), "model_hash": digest,
                          "files": len(seen), "bytes": total, "at": iso_utc(time.time())}))
    else:
        print(digest)
    return 0
