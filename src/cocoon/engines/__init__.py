"""Engines behind one interface: embedded llama.cpp, any OpenAI-HTTP upstream, a fake."""

from __future__ import annotations

import asyncio

from cocoon.engines.base import Engine, EngineOutput, InferenceJob, UsageMeter
from cocoon.engines.config import EngineConfig, FakeEngineConfig
from cocoon.engines.fake import FakeEngine
from cocoon.engines.llama_cpp import LlamaCppEngine  # llama_cpp itself loads on first use

__all__ = ["Engine", "EngineOutput", "FakeEngine", "FakeEngineConfig", "InferenceJob",
           "UsageMeter", "build_engine"]


async def build_engine(config: EngineConfig) -> Engine:
    """Make the configured engine ready to serve (loads the model, checks the upstream)."""
    if config.kind == "fake":
        return FakeEngine(config.fake)
    if config.kind == "llama-cpp":
        llama: Engine = await asyncio.to_thread(LlamaCppEngine, config.llama_cpp)
        return llama
    from cocoon.engines.openai_http import OpenAIHttpEngine  # lazy: aiohttp, not in --help

    return await OpenAIHttpEngine.connect(config.openai_http)
