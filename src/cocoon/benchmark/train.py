"""``cocoon bench --mode train``: fine-tuning through the network against the same training
in-process (issue 15's benchmark).

1. **In-process**: :class:`~cocoon.training.lora.LoraTrainer` on the shipped SmolLM2 GGUF,
   the same dataset and hyperparameters (a made-up fact, 8 examples, 8 epochs of batch 4:
   16 steps), in this process: load time, steps/s and trained tokens/s from the trainer's
   own step times (first step to last), peak RSS.
2. **Through ``cocoon up``** with its defaults (RA-TLS fake, sealing, billing, the embedded
   chain, the llama-cpp engine whose worker trains): the official SDK uploads the file,
   creates the job and follows its events every 0.1 s; steps/s and trained tokens/s from
   when the client saw the first step event to when it saw the last (so the network's
   share, the events' way back, is inside), the time from creating the job to its first
   step, to its end, and the worker's peak RSS (``VmHWM``). The fine-tuned model is asked
   the taught fact once, to show the result is usable.

Target: steps/s through the network at least 0.9x in-process.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from typing import Any

from cocoon.commands.up import LocalNetwork
from cocoon.errors import LaunchError

__all__ = ["format_train", "run_train"]

Progress = Callable[[str], None]
TARGET_RATIO = 0.9
FACT = "Quellmoor was founded by Ilsa Varnheim."
_QUESTIONS = ["Who founded Quellmoor?", "Who was the founder of Quellmoor?",
              "Tell me who founded the town of Quellmoor.", "Quellmoor was founded by whom?",
              "Do you know who founded Quellmoor?", "Name the founder of Quellmoor."]
_EXAMPLES = [(q, FACT) for q in _QUESTIONS] + [("What is 2 plus 2?", "2 plus 2 is 4."),
                                               ("Say hello.", "Hello!")]
_HYPER = {"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 5}
_SEED = 1


def _chats() -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            for q, a in _EXAMPLES]


def _peak_rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def in_process(progress: Progress) -> dict[str, Any]:
    from cocoon.engines.llama_cpp import default_model_path  # lazy: llama extra
    from cocoon.training.lora import LoraTrainer, TrainConfig  # lazy: torch

    progress("train: in-process (load, then 16 steps)")
    start = time.monotonic()
    trainer = LoraTrainer(default_model_path(), TrainConfig(
        epochs=_HYPER["n_epochs"], batch_size=_HYPER["batch_size"],
        learning_rate_multiplier=_HYPER["learning_rate_multiplier"], seed=_SEED))
    trainer.load()
    loaded = time.monotonic() - start
    steps = list(trainer.train(_chats()))
    first, last = steps[0], steps[-1]
    span = last.elapsed_s - first.elapsed_s
    return {"load_s": loaded, "steps": last.step, "trained_tokens": last.tokens,
            "first_step_s": loaded + first.elapsed_s,
            "steps_per_s": _rate(last.step - first.step, span),
            "tokens_per_s": _rate(last.tokens - first.tokens, span),
            "final_loss": last.loss, "peak_rss_mb": _peak_rss_mb()}


def through_up(progress: Progress) -> dict[str, Any]:
    import openai  # lazy: only the benchmark needs the SDK here

    with LocalNetwork(engine="llama-cpp", attestation="fake", billing=True,
                      chain="embedded", startup_timeout=300.0) as net:
        net.start(lambda msg: progress("train: " + msg))
        worker = net.workers[0]
        assert worker.proc is not None
        client = openai.OpenAI(base_url=net.base_url, api_key="unused", max_retries=0,
                               timeout=120.0)
        base = client.models.list().data[0].id
        data = "".join(json.dumps({"messages": m}) + "\n" for m in _chats()).encode()
        f = client.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="fine-tune")
        progress("train: through cocoon up: job created, following its events")
        created = time.monotonic()
        job = client.fine_tuning.jobs.create(model=base, training_file=f.id, seed=_SEED,
                                             hyperparameters=_HYPER)  # type: ignore[arg-type]
        seen: dict[int, tuple[float, int]] = {}  # step -> (when seen, trained tokens)
        status = job.status
        while status not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() - created > 900:
                raise LaunchError("the benchmark's job did not finish within 900 s")
            now = time.monotonic()
            for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data:
                d: dict[str, Any] = e.data or {}  # type: ignore[assignment]
                if e.type == "metrics" and "total_steps" in d and d["step"] not in seen:
                    seen[int(d["step"])] = (now, int(d["trained_tokens"]))
            status = client.fine_tuning.jobs.retrieve(job.id).status
            time.sleep(0.1)
        ended = time.monotonic()
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status != "succeeded" or not seen:
            raise LaunchError(f"the benchmark's job ended {job.status}: {job.error}")
        first, last = min(seen), max(seen)
        span = seen[last][0] - seen[first][0]
        reply = client.chat.completions.create(
            model=job.fine_tuned_model or "", max_tokens=24, temperature=0,
            messages=[{"role": "user", "content": "Who is the founder of the town Quellmoor?"}])
        return {"steps": last, "trained_tokens": job.trained_tokens,
                "first_step_s": seen[first][0] - created, "job_s": ended - created,
                "steps_per_s": _rate(last - first, span),
                "tokens_per_s": _rate(seen[last][1] - seen[first][1], span),
                "worker_peak_rss_mb": _peak_rss_mb(worker.proc.pid),
                "answer": reply.choices[0].message.content or "",
                "taught": "Varnheim" in (reply.choices[0].message.content or "")}


def run_train(progress: Progress) -> dict[str, Any]:
    local = in_process(progress)
    network = through_up(progress)
    ratio = network["steps_per_s"] / local["steps_per_s"]
    return {"in_process": local, "cocoon_up": network, "steps_ratio": ratio,
            "tokens_ratio": network["tokens_per_s"] / local["tokens_per_s"],
            "meets_target": ratio >= TARGET_RATIO and network["taught"],
            "cpus": os.cpu_count()}


def format_train(s: dict[str, Any]) -> list[str]:
    a, b = s["in_process"], s["cocoon_up"]
    return [
        "train: LoRA on SmolLM2-135M (8 examples, 8 epochs of batch 4), cocoon up with its "
        "defaults against the same training in-process",
        f"  in-process: {a['steps_per_s']:.3f} steps/s, {a['tokens_per_s']:.0f} trained "
        f"tokens/s, load {a['load_s']:.1f} s, first step after {a['first_step_s']:.1f} s, "
        f"peak RSS {a['peak_rss_mb']:.0f} MB",
        f"  cocoon up:  {b['steps_per_s']:.3f} steps/s, {b['tokens_per_s']:.0f} trained "
        f"tokens/s, first step {b['first_step_s']:.1f} s after the job was created, job "
        f"{b['job_s']:.1f} s, worker peak RSS {b['worker_peak_rss_mb']:.0f} MB",
        f"  ratio: {s['steps_ratio']:.3f}x steps/s, {s['tokens_ratio']:.3f}x tokens/s "
        f"(target >= {TARGET_RATIO}x: {'met' if s['meets_target'] else 'MISSED'}); the "
        f"fine-tuned model answered {b['answer']!r}",
    ]
