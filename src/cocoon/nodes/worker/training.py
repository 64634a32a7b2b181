"""The worker's fine-tuning jobs: a :class:`~cocoon.training.protocol.TrainingRequest`
trained with :class:`~cocoon.training.lora.LoraTrainer` on the GGUF the worker's llama-cpp
engine serves, in a thread of its own, one job at a time.

:meth:`Training.run` yields the job's events (JSON bytes: see
:mod:`cocoon.training.protocol`) and, last, the job's :class:`~cocoon.usage.Usage` (the
trained tokens as prompt tokens). It keeps the job's meter at the tokens trained so far, so
a job cancelled or failed is billed for the steps done. Closing the iterator (the request
cancelled, the worker draining) stops training at the next step. The dataset lives in
memory only, and the adapter is written to a private temporary directory, read back and
deleted before it is sent: nothing of a job stays on the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cocoon.config import WorkerConfig
from cocoon.engines.base import Engine, EngineOutput, UsageMeter
from cocoon.engines.llama_cpp import LlamaCppEngine
from cocoon.errors import BadRequest, ConfigError, EngineError
from cocoon.training.protocol import TrainingRequest, adapter_events
from cocoon.usage import Usage

__all__ = ["Training", "training_available", "worker_training"]

log = logging.getLogger(__name__)

_END = object()


def training_available() -> str:
    """Empty when torch, transformers and peft can be imported here; else what is
    missing."""
    missing = [m for m in ("torch", "transformers", "peft", "gguf")
               if importlib.util.find_spec(m) is None]
    return ", ".join(missing)


def worker_training(config: WorkerConfig, engine: Engine) -> Training | None:
    """The worker's fine-tuning as ``worker.train`` says: None when it does not train
    (``off``; ``auto`` without the llama-cpp engine or the ``train`` extra), ConfigError
    when ``on`` cannot be honoured."""
    if config.train == "off":
        return None
    if not isinstance(engine, LlamaCppEngine):
        if config.train == "on":
            raise ConfigError("worker.train = on needs engine llama-cpp: training starts "
                              "from the GGUF it serves")
        return None
    missing = training_available()
    if missing:
        if config.train == "on":
            raise ConfigError(f"worker.train = on: training needs {missing}: pip install -e "
                              "'.[train]' (scripts/setup does)")
        log.info("fine-tuning not offered: %s not installed (the train extra)", missing)
        return None
    return Training(engine.models[0], engine.path)


class Training:
    """Fine-tuning ``model`` (the name the worker serves it by) from the GGUF at ``path``."""

    def __init__(self, model: str, path: Path) -> None:
        missing = training_available()
        if missing:
            raise ConfigError(f"worker.train: training needs {missing}: pip install -e "
                              "'.[train]' (scripts/setup does)")
        self.model = model
        self.path = path
        self._lock = asyncio.Lock()  # one job at a time: it takes every core
        self.jobs = 0
        self.cancelled = 0
        self.steps = 0  # optimizer steps run, all jobs

    async def run(self, job: TrainingRequest, cap: int,
                  meter: UsageMeter) -> AsyncIterator[EngineOutput]:
        """Train ``job``; at most ``cap`` trained tokens (what the proxy reserved funds
        for; 0: no cap)."""
        if job.model != self.model:
            raise BadRequest(f"this worker trains {self.model!r}, not {job.model!r}",
                             param="model")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        failure: list[BaseException] = []

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self._train(job, cap, stop, put)
            except BaseException as exc:  # reported to the job, never a crashed worker
                failure.append(exc)
            finally:
                put(_END)

        finished = False
        async with self._lock:
            self.jobs += 1
            thread = threading.Thread(target=work, name="lora-train", daemon=True)
            thread.start()
            try:
                while (item := await queue.get()) is not _END:
                    if isinstance(item, int):  # tokens trained so far
                        meter.prompt_tokens = item
                        continue
                    yield item
                if failure:
                    exc = failure[0]
                    if isinstance(exc, (BadRequest, EngineError)):
                        raise exc
                    raise EngineError(f"training failed: {type(exc).__name__}: "
                                      f"{str(exc)[:300]}") from None
                usage = Usage(prompt_tokens=meter.prompt_tokens)
                meter.set(usage)
                finished = True
                yield usage
            finally:
                if not finished:
                    self.cancelled += 1
                stop.set()
                # Wait for the thread: the next job never shares the cores (or the memory)
                # with this one, and the meter is final when the stream ends.
                await asyncio.to_thread(thread.join)
                while not queue.empty():
                    item = queue.get_nowait()
                    if isinstance(item, int):
                        meter.prompt_tokens = item

    def _train(self, job: TrainingRequest, cap: int, stop: threading.Event,
               put: Any) -> None:
        from cocoon.training.lora import LoraTrainer, TrainConfig  # lazy: torch

        started = time.monotonic()
        trainer = LoraTrainer(self.path, TrainConfig(
            epochs=job.n_epochs, batch_size=job.batch_size,
            learning_rate_multiplier=job.learning_rate_multiplier, seed=job.seed))
        trainer.load()
        examples = [list(e) for e in job.examples]
        try:
            per_epoch, batches = trainer.plan(examples)
        except ConfigError as exc:
            raise BadRequest(str(exc), param="training_file") from None
        if cap and per_epoch * job.n_epochs > cap:
            raise BadRequest(f"the job trains {per_epoch * job.n_epochs} tokens, more than "
                             f"the {cap} reserved for it", param="max_tokens")
        put(_event("started", examples=len(examples), total_steps=batches * job.n_epochs,
                   tokens_per_epoch=per_epoch, load_s=round(time.monotonic() - started, 2)))
        if stop.is_set():
            return
        losses: list[float] = []
        last = None
        for step in trainer.train(examples, should_stop=stop.is_set):
            last = step
            self.steps += 1
            losses.append(step.loss)
            put(step.tokens)
            put(_event("step", step=step.step, total_steps=step.total, epoch=step.epoch,
                       loss=round(step.loss, 6), trained_tokens=step.tokens,
                       elapsed_s=round(step.elapsed_s, 3)))
            if step.step % batches == 0:  # an epoch ends
                valid = (trainer.evaluate([list(e) for e in job.validation])
                         if job.validation else None)
                put(_event("epoch", epoch=step.epoch, step=step.step,
                           train_loss=round(sum(losses) / len(losses), 6),
                           valid_loss=None if valid is None else round(valid, 6)))
                losses = []
        if stop.is_set() or last is None:
            return
        with tempfile.TemporaryDirectory(prefix="cocoon-lora-") as folder:
            path = Path(folder) / "adapter.gguf"
            trainer.export_gguf(path)
            data = path.read_bytes()
            with contextlib.suppress(OSError):
                path.unlink()
        for event in adapter_events(data):
            put(event)
        put(_event("done", trained_tokens=last.tokens, steps=last.step,
                   adapter_bytes=len(data), adapter_sha256=hashlib.sha256(data).hexdigest()))
        log.info("fine-tuning job done: %d steps, %d trained tokens, %.1f s", last.step,
                 last.tokens, time.monotonic() - started)


def _event(kind: str, **fields: Any) -> bytes:
    return json.dumps({"type": kind, **fields}).encode()
