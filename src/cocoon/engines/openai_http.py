"""Any OpenAI-compatible HTTP server as the engine: vLLM, SGLang, llama-server, llama_cpp.server.

Requests go upstream as the app sent them (every field passes through; the upstream decides
what it honours), with two changes: ``model`` becomes the upstream's model name when it
differs, and streams always ask for ``stream_options.include_usage`` so the upstream's own
token counts arrive in a final usage chunk. That chunk is forwarded only if the app asked
for it. Upstreams that ignore ``include_usage`` (llama_cpp.server does) get their usage
*estimated* and counted in ``usage_estimated``: one completion token per content-bearing
chunk, and the prompt counted by the upstream's own tokenizer where it has one (vLLM's and
SGLang's ``/tokenize``, which apply the chat template too; llama_cpp.server's
``/extras/tokenize/count`` for a completions prompt), else one prompt token per 4 prompt
bytes. The usage chunk the app then sees says ``"estimated": true``. ``usage_fallback =
"error"`` refuses such upstreams instead.

``n`` passes through. An upstream that answers fewer choices than asked (llama_cpp.server
ignores ``n``) is a 400 naming ``n``, never a silent single choice: a stream with ``n > 1`` is
held back until every choice has started (vLLM starts them together), and refused if the
upstream ends, or sends ``_N_PROBE`` content chunks, first. An upstream's refusal of a prompt
too long for its context is ``context_length_exceeded``.

An upstream reports usage only at the end, so a generation that ends early (cancelled,
failed, timed out) is metered with that same estimate, marked ``estimated`` in the job's
meter: once the upstream accepts the request, one prompt token per 4 prompt bytes; then one
completion token per content-bearing chunk received. A non-streamed request cut short
counts no completion tokens: the upstream's partial work cannot be seen from here.

A stream's events are passed on as they arrive: the events of one read from the upstream
together, as one list, so the worker sends a burst in one message.

Closing the iterator closes the upstream HTTP response, which vLLM/SGLang treat as abort.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from cocoon.engines.base import EngineOutput, InferenceJob
from cocoon.engines.config import OpenAIHttpConfig
from cocoon.engines.fake import prompt_tokens_of
from cocoon.errors import (
    BadRequest,
    ConfigError,
    ContextLengthExceeded,
    EngineError,
    EngineUnsupported,
    ModelNotFound,
    RequestError,
    RequestTimeout,
    UpstreamError,
)
from cocoon.openai import protocol as oa
from cocoon.openai.sse import DONE, SseDecoder

__all__ = ["OpenAIHttpConfig", "OpenAIHttpEngine"]

log = logging.getLogger(__name__)

_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_N_PROBE = 64  # content chunks of a stream with n > 1 held back waiting for every choice
_TOKENIZE_TIMEOUT_S = 5.0
_JSON_HEADERS = {"Content-Type": "application/json"}


class OpenAIHttpEngine:
    name = "openai-http"
    adapters = False  # LoRA adapters: llama-cpp applies them

    def __init__(self, config: OpenAIHttpConfig, models: tuple[str, ...]) -> None:
        self.config = config
        self.models = models
        self._session: aiohttp.ClientSession | None = None
        # The upstream's weights are not ours to read: the operator declares their hash.
        self.model_hash = bytes.fromhex(config.model_hash)
        self.usage_estimated = 0
        self.cancelled = 0
        # The upstream's tokenizer: None not asked yet, "tokenize" (vLLM, SGLang),
        # "extras" (llama_cpp.server), "" none.
        self._tokenizer: str | None = None

    @classmethod
    async def connect(cls, config: OpenAIHttpConfig) -> OpenAIHttpEngine:
        """Check the upstream answers and learn its model name if none is configured."""
        engine = cls(config, (config.model,) if config.model else ())
        if not config.model:
            data = await engine._get_json("/v1/models")
            ids = [m["id"] for m in data.get("data", [])
                   if isinstance(m, dict) and isinstance(m.get("id"), str)]
            if not ids:
                raise UpstreamError(f"upstream {config.base_url} serves no models")
            engine.models = (ids[0],)
        return engine

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            key = read_secret(self.config.api_key_file) if self.config.api_key_file else ""
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._session = aiohttp.ClientSession(
                base_url=self.config.base_url.rstrip("/") + "/",
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s,
                                              sock_connect=self.config.connect_timeout_s),
                connector=aiohttp.TCPConnector(limit=0),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get_json(self, path: str) -> dict[str, Any]:
        try:
            async with self._client().get(path.lstrip("/")) as resp:
                if resp.status != 200:
                    raise UpstreamError(f"upstream {path} answered HTTP {resp.status}")
                data = await resp.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {self.config.base_url} unreachable: {exc}") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"upstream {path} did not answer a JSON object")
        return data

    async def generate(self, job: InferenceJob) -> AsyncIterator[EngineOutput]:
        body = dict(job.body)
        if job.max_tokens and oa.max_tokens_of(body) != job.max_tokens:
            # Never generate past what the proxy reserved funds for.
            body["max_tokens"] = job.max_tokens
            if "max_completion_tokens" in body:
                body["max_completion_tokens"] = job.max_tokens
        if self.config.upstream_model:
            body["model"] = self.config.upstream_model
        app_wants_usage = oa.wants_usage(job.body)
        if job.stream:
            body["stream_options"] = {**(body.get("stream_options") or {}),
                                      "include_usage": True}
        path = _PATHS[job.endpoint].lstrip("/")
        meter = job.meter
        n = job.body.get("n") or 1
        finished = False
        try:
            async with self._client().post(path, data=oa.dumps(body),
                                           headers=_JSON_HEADERS) as resp:
                if resp.status != 200:
                    raise await _upstream_error(resp)
                # Accepted: the upstream evaluates the prompt. Estimated until it reports.
                meter.prompt_tokens, meter.estimated = prompt_tokens_of(job), True
                if not job.stream:
                    raw = await resp.read()
                    try:
                        obj = json.loads(raw)
                        usage = oa.Usage.from_openai(obj.get("usage"))
                    except (ValueError, AttributeError):
                        raise UpstreamError("upstream response has no valid usage") from None
                    meter.set(usage)
                    choices = obj.get("choices")
                    if n > 1 and (not isinstance(choices, list) or len(choices) < n):
                        raise _n_ignored(n)
                    yield raw
                    finished = True
                    yield usage
                    return
                usage_seen: oa.Usage | None = None
                content_chunks = 0
                decoder = SseDecoder()
                done = False
                # n > 1: events held back until every choice has started (None: not held).
                held: list[bytes] | None = [] if n > 1 else None
                started: set[Any] = set()
                async for piece in resp.content.iter_any():
                    batch: list[bytes] = []  # what this read brought: passed on together
                    for data in decoder.feed(piece):
                        if data == DONE:
                            done = True
                            break
                        obj = _event_object(data)
                        if not isinstance(obj, dict):
                            raise UpstreamError("upstream sent a non-object event")
                        if "error" in obj and "choices" not in obj:
                            raise UpstreamError(f"upstream error: {_message_of(obj)}")
                        u = obj.get("usage")
                        if u is not None:
                            try:
                                usage_seen = oa.Usage.from_openai(u)
                            except ValueError:
                                raise UpstreamError("upstream sent invalid usage") from None
                            meter.set(usage_seen)
                        choices = obj.get("choices")
                        if not choices:
                            if u is not None and app_wants_usage:
                                (batch if held is None else held).append(data)
                            continue
                        if _has_content(choices):
                            content_chunks += 1
                            if usage_seen is None:
                                meter.completion_tokens = content_chunks
                        if u is not None and not app_wants_usage:
                            obj["usage"] = None
                            data = oa.dumps(obj)
                        if held is None:
                            batch.append(data)
                            continue
                        held.append(data)
                        started.update(c.get("index") for c in choices if isinstance(c, dict))
                        if len(started) >= n:
                            batch, held = held, None
                        elif content_chunks >= _N_PROBE:
                            raise _n_ignored(n)
                    if batch:
                        yield batch
                    if done:
                        break
                if not done:
                    raise UpstreamError("upstream stream ended without [DONE]")
                if held is not None:
                    raise _n_ignored(n)
                if usage_seen is None:
                    usage_seen = await self._estimate(job, content_chunks)
                    meter.set(usage_seen)
                    meter.estimated = True
                    if app_wants_usage:
                        chunk = oa.usage_chunk(job.endpoint, "", oa.now(), job.model,
                                               usage_seen)
                        chunk["usage"]["estimated"] = True
                        yield oa.dumps(chunk)
                finished = True
                yield usage_seen
        except TimeoutError:
            raise RequestTimeout(f"upstream did not answer within {self.config.timeout_s:g}s") \
                from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {self.config.base_url} failed: {exc}") from None
        finally:
            if not finished:
                self.cancelled += 1

    async def _estimate(self, job: InferenceJob, content_chunks: int) -> oa.Usage:
        if self.config.usage_fallback == "error":
            raise UpstreamError("upstream did not report token usage for a stream")
        self.usage_estimated += 1
        log.warning("upstream did not report usage for a stream; estimating it")
        prompt = await self._count_prompt(job)
        return oa.Usage(prompt_tokens=prompt or prompt_tokens_of(job),
                        completion_tokens=content_chunks)

    async def _count_prompt(self, job: InferenceJob) -> int | None:
        """The request's prompt tokens as the upstream's tokenizer counts them (None: it
        has none we know, or it cannot count this prompt)."""
        body = job.body
        prompt = body.get("prompt")
        if job.endpoint == "completions" and isinstance(prompt, list) and prompt and all(
                type(t) is int for t in prompt):
            return len(prompt)
        model = self.config.upstream_model or job.model
        if self._tokenizer is None:  # learnt once, at the first stream that needs it
            if await self._post_count("tokenize", {"model": model, "prompt": "a"}):
                self._tokenizer = "tokenize"
            elif await self._post_count("extras/tokenize/count", {"model": model,
                                                                  "input": "a"}):
                self._tokenizer = "extras"
            else:
                self._tokenizer = ""
        if self._tokenizer == "tokenize":
            return await self._post_count("tokenize", {
                "model": model, "messages": body["messages"], "add_generation_prompt": True}
                if job.endpoint == "chat" else {"model": model, "prompt": prompt})
        if self._tokenizer == "extras" and isinstance(prompt, str):
            # llama_cpp.server counts text only: exact for a completions prompt (BOS
            # included, as its completions add it), not for chat (no template applied).
            return await self._post_count("extras/tokenize/count",
                                          {"model": model, "input": prompt})
        return None

    async def _post_count(self, path: str, body: dict[str, Any]) -> int | None:
        """POST ``body`` to a tokenizer endpoint: its ``count`` (or the length of its
        ``tokens``), or None when it is missing, refuses or answers something else."""
        try:
            async with self._client().post(
                    path, json=body,
                    timeout=aiohttp.ClientTimeout(total=_TOKENIZE_TIMEOUT_S)) as resp:
                if resp.status != 200:
                    return None
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        count = data.get("count")
        if type(count) is int and count > 0:
            return count
        tokens = data.get("tokens")
        return len(tokens) if isinstance(tokens, list) and tokens else None


def _event_object(data: bytes) -> Any:
    """A stream event's JSON: orjson's, every event of every stream goes through here; the
    standard library's where orjson refuses what Python's JSON allows (NaN, Infinity, a
    64-bit-overflowing integer); UpstreamError for what neither reads."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)
    except ValueError:
        raise UpstreamError("upstream sent a non-JSON event") from None


def _n_ignored(n: int) -> EngineUnsupported:
    return EngineUnsupported(f"the upstream model server ignored n={n} (it answered fewer "
                             f"choices); send n=1", param="n")


def read_secret(path: str) -> str:
    """Read a secret from a file that only its owner can read (mode 0600 or stricter)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        if mode & 0o077:
            raise ConfigError(f"{path} holds a secret but is readable by others "
                              f"(mode {mode & 0o777:o}); chmod 600 {path}")
        return p.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None


def _has_content(choices: Any) -> bool:
    for c in choices if isinstance(choices, list) else ():
        if not isinstance(c, dict):
            continue
        delta = c.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")
                                        or delta.get("reasoning_content")):
            return True
        if c.get("text"):
            return True
    return False


def _message_of(obj: Any) -> str:
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", err))[:500]
    if isinstance(err, str):
        return err[:500]
    if isinstance(obj, dict) and isinstance(obj.get("detail"), str | list):
        return str(obj["detail"])[:500]
    return "unknown error"


_CONTEXT_WORDS = ("context length", "context window", "maximum context")


async def _upstream_error(resp: aiohttp.ClientResponse) -> RequestError:
    try:
        obj = json.loads(await resp.read())
    except ValueError:
        obj = None
    msg = _message_of(obj)
    err = obj.get("error") if isinstance(obj, dict) else None
    param = err.get("param") if isinstance(err, dict) else None
    param = param if isinstance(param, str) and param else None
    if resp.status in (400, 413, 422):
        code = err.get("code") if isinstance(err, dict) else None
        if code == "context_length_exceeded" or any(w in msg.lower() for w in _CONTEXT_WORDS):
            return ContextLengthExceeded(f"upstream: {msg}", param=param or "messages")
        return BadRequest(f"upstream rejected the request: {msg}", param=param)
    if resp.status == 404:
        return ModelNotFound(f"upstream: {msg}")
    if resp.status == 504 or resp.status == 408:
        return RequestTimeout(f"upstream timed out: {msg}")
    if resp.status >= 500:
        return UpstreamError(f"upstream failed with HTTP {resp.status}: {msg}")
    return EngineError(f"upstream answered HTTP {resp.status}: {msg}")
