"""A deterministic engine for tests and benchmarks (COCOON's bench shape: 50 chunks x 128 B).

Each chunk is one token; ``max_tokens`` caps the chunk count like a real engine would. The
prompt token count is a fixed function of the request text (1 token per 4 bytes of message
content, at least 1), so billing tests can predict it. The job's meter counts the prompt at
the start and each token as it is generated (every ``delay_ms``, streamed or not), so an
early end reports exactly the tokens produced; ``fail_after`` makes the engine fail after
that many tokens, for fault and billing tests; ``ttft_ms`` holds everything back that long
first, as a server evaluating a long prompt does; ``echo`` makes each chunk's text the
prompt's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from cocoon.engines.base import EngineOutput, InferenceJob, require
from cocoon.engines.config import FakeEngineConfig
from cocoon.errors import EngineError
from cocoon.openai import protocol as oa
from cocoon.usage import Usage

__all__ = ["FakeEngine", "FakeEngineConfig"]


def prompt_text(job: InferenceJob) -> str:
    """The prompt's text: the messages' contents joined (a content-part list as its JSON),
    or the completion prompt."""
    body = job.body
    if job.endpoint == "chat":
        return "".join(
            m["content"] if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
            for m in body["messages"]
        )
    p = body["prompt"]
    return p if isinstance(p, str) else json.dumps(p)


def prompt_tokens_of(job: InferenceJob) -> int:
    """Deterministic prompt size: a quarter of the UTF-8 bytes of the prompt text, >= 1."""
    return max(1, len(prompt_text(job).encode()) // 4)


class FakeEngine:
    name = "fake"
    adapters = False  # LoRA adapters: llama-cpp applies them

    def __init__(self, config: FakeEngineConfig | None = None) -> None:
        self.config = config or FakeEngineConfig()
        self.models: tuple[str, ...] = (self.config.model,)
        self.model_hash = b""  # no weights file
        self.cancelled = 0  # generations stopped early, for tests
        self.usage_estimated = 0  # its counts are always exact

    async def close(self) -> None:
        """Nothing to release."""

    async def generate(self, job: InferenceJob) -> AsyncIterator[EngineOutput]:
        cfg = self.config
        require(job.body.get("n", 1) == 1, "the fake engine generates one choice (n=1)", "n")
        cap = job.max_tokens
        count = min(cfg.chunks, cap) if cap else cfg.chunks
        finish = "length" if cap and cap < cfg.chunks else "stop"
        usage = Usage(prompt_tokens=prompt_tokens_of(job), completion_tokens=count)
        rid = oa.new_id(job.endpoint, job.request_id)
        created = oa.now()
        piece = (prompt_text(job) if cfg.echo else "x" * (cfg.chunk_bytes - 1)) + " "
        delay = cfg.delay_ms / 1000.0
        fail_after = cfg.fail_after
        meter = job.meter
        meter.prompt_tokens = usage.prompt_tokens  # the prompt is "evaluated" at once
        finished = False
        try:
            if cfg.ttft_ms:
                await asyncio.sleep(cfg.ttft_ms / 1000.0)
            if not job.stream:
                # Tokens are generated one by one here too, so a cancel mid-way is metered.
                for _ in range(count if delay or fail_after else 0):
                    if fail_after and meter.completion_tokens >= fail_after:
                        raise EngineError(f"fake engine failed after {fail_after} tokens")
                    if delay:
                        await asyncio.sleep(delay)
                    meter.completion_tokens += 1
                meter.set(usage)
                make = oa.chat_completion if job.endpoint == "chat" else oa.completion
                yield oa.dumps(make(rid, created, job.model, piece * count, finish, usage))
                finished = True
                yield usage
                return
            # Pre-render the chunk once: the bench measures the network, not json.dumps.
            if job.endpoint == "chat":
                first = oa.chat_chunk(rid, created, job.model, {"role": "assistant",
                                                                "content": ""}, None)
                body: dict[str, Any] = oa.chat_chunk(rid, created, job.model,
                                                     {"content": piece}, None)
                last = oa.chat_chunk(rid, created, job.model, {}, finish)
                yield oa.dumps(first)
            else:
                body = oa.completion_chunk(rid, created, job.model, piece, None)
                last = oa.completion_chunk(rid, created, job.model, "", finish)
            rendered = oa.dumps(body)
            for _ in range(count):
                if fail_after and meter.completion_tokens >= fail_after:
                    raise EngineError(f"fake engine failed after {fail_after} tokens")
                if delay:
                    await asyncio.sleep(delay)
                meter.completion_tokens += 1
                yield rendered
            yield oa.dumps(last)
            if oa.wants_usage(job.body):
                yield oa.dumps(oa.usage_chunk(job.endpoint, rid, created, job.model, usage))
            finished = True
            yield usage
        finally:
            if not finished:
                self.cancelled += 1
