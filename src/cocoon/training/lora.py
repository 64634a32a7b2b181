"""LoRA fine-tuning of a GGUF model on the CPU (or a GPU when torch sees one), and the
adapter written in llama.cpp's GGUF LoRA format.

The model is the very GGUF the ``llama-cpp`` engine serves: transformers loads it (and
dequantizes it to fp32), on the GPU when torch sees one (else the CPU); peft adds
rank-``r`` adapters to the seven projections of every layer; the examples are OpenAI chat
lines rendered with the model's own chat template, and only the assistant turns that carry
``weight`` 1 are learned (the rest of each line is context, its labels masked).
:meth:`LoraTrainer.train` yields one :class:`Step` per optimizer step and stops at the step
after ``should_stop()`` turns true.
:meth:`LoraTrainer.export_gguf` writes the adapter as llama.cpp reads it
(``Llama(lora_path=...)``): ``general.type = adapter``, ``adapter.lora.alpha``, and for each
projection ``blk.N.<tensor>.weight.lora_a`` / ``.lora_b``, the q and k ``lora_b`` rows
permuted as llama.cpp's converter permutes q and k weights.

torch, transformers and peft are imported when a trainer loads, not before: the ``train``
extra installs them (``scripts/setup`` does).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cocoon.errors import ConfigError

__all__ = ["LoraTrainer", "Step", "TrainConfig", "gguf_lora_name"]

_TARGETS: Final = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_GGUF_NAMES: Final = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v",
                      "o_proj": "attn_output", "gate_proj": "ffn_gate", "up_proj": "ffn_up",
                      "down_proj": "ffn_down"}
_BASE_LR: Final = 2e-4


@dataclass(frozen=True, slots=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 4
    learning_rate_multiplier: float = 1.0  # OpenAI's: times this trainer's base rate
    rank: int = 8
    alpha: int = 16
    max_length: int = 512  # tokens of one example (longer ones are cut)
    seed: int = 0

    @property
    def learning_rate(self) -> float:
        return _BASE_LR * self.learning_rate_multiplier


@dataclass(frozen=True, slots=True)
class Step:
    step: int  # 1-based
    total: int
    epoch: int  # 1-based
    loss: float
    tokens: int  # tokens trained so far (all tokens of the examples, every epoch)
    elapsed_s: float


def gguf_lora_name(hf_name: str) -> str | None:
    """The GGUF tensor a peft module name adapts (``...layers.3.self_attn.q_proj`` ->
    ``blk.3.attn_q.weight``), or None when it is none of the seven projections."""
    parts = hf_name.split(".")
    if "layers" not in parts or parts.index("layers") + 2 >= len(parts):
        return None
    i = parts.index("layers")
    layer, proj = parts[i + 1], parts[-1]
    if not layer.isdigit() or proj not in _GGUF_NAMES:
        return None
    return f"blk.{layer}.{_GGUF_NAMES[proj]}.weight"


def _permute_rows(w: Any, n_head: int) -> Any:
    """llama.cpp's q/k row order (convert_hf_to_gguf's ``LlamaModel.permute``)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


class LoraTrainer:
    """One fine-tuning run: :meth:`load`, :meth:`train`, :meth:`export_gguf`."""

    def __init__(self, gguf_path: str | Path, config: TrainConfig) -> None:
        self.path = Path(gguf_path)
        self.config = config
        self.model: Any = None
        self.tokenizer: Any = None
        self.device = "cpu"  # "cuda" once loaded on a machine where torch sees a GPU
        self.trained_tokens = 0

    def load(self) -> None:
        """Load the GGUF as a trainable model with its adapters (tens of seconds)."""
        try:
            import torch
            from peft import LoraConfig, get_peft_model
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ConfigError(f"training needs torch, transformers and peft ({exc.name} is "
                              "missing): pip install -e '.[train]' (scripts/setup does)"
                              ) from None
        torch.manual_seed(self.config.seed)
        folder, name = str(self.path.parent), self.path.name
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                    dtype=torch.float32)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = get_peft_model(base, LoraConfig(
            r=self.config.rank, lora_alpha=self.config.alpha, lora_dropout=0.0,
            target_modules=list(_TARGETS), task_type="CAUSAL_LM")).to(self.device)

    def _render(self, messages: list[dict[str, Any]], *, prompt: bool) -> list[int]:
        out = self.tokenizer.apply_chat_template(
            [{"role": m["role"], "content": _text(m)} for m in messages], tokenize=True,
            add_generation_prompt=prompt)
        return list(out["input_ids"] if hasattr(out, "keys") else out)  # a BatchEncoding

    def encode(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
        """One chat example as (input ids, labels): the learned assistant turns labelled
        (their text and end), everything else -100."""
        ids: list[int] = []
        labels: list[int] = []
        for i, m in enumerate(messages):
            full = self._render(messages[:i + 1], prompt=False)
            if full[:len(ids)] != ids:
                raise ConfigError("the model's chat template does not render a chat as a "
                                  "prefix of its continuation: cannot mask its turns")
            new = full[len(ids):]
            if m.get("role") == "assistant" and m.get("weight", 1) == 1:
                head = self._render(messages[:i], prompt=True)  # up to the assistant header
                skip = min(len(new), max(0, len(head) - len(ids)))
                labels += [-100] * skip + new[skip:]
            else:
                labels += [-100] * len(new)
            ids = full
        cut = self.config.max_length
        return ids[:cut], labels[:cut]

    def plan(self, examples: list[list[dict[str, Any]]]) -> tuple[int, int]:
        """One epoch, in one pass over the examples: (the tokens it trains on, every token
        of the examples that have something to learn, as cut to ``max_length``; its
        optimizer steps)."""
        lengths = [len(ids) for ids, labels in map(self.encode, examples)
                   if any(x != -100 for x in labels)]
        return sum(lengths), -(-len(lengths) // self.config.batch_size)

    def evaluate(self, examples: list[list[dict[str, Any]]]) -> float:
        """The mean loss over ``examples`` (their learned turns), without training."""
        import torch

        if self.model is None:
            self.load()
        losses = []
        self.model.eval()
        with torch.no_grad():
            for ids, labels in map(self.encode, examples):
                if any(x != -100 for x in labels):
                    out = self.model(input_ids=torch.tensor([ids], device=self.device),
                                     labels=torch.tensor([labels], device=self.device))
                    losses.append(float(out.loss))
        self.model.train()
        return sum(losses) / len(losses) if losses else math.nan

    def train(self, examples: list[list[dict[str, Any]]],
              should_stop: Callable[[], bool] = lambda: False) -> Iterator[Step]:
        """Train on ``examples`` (each a chat's messages) for the configured epochs, a
        :class:`Step` after each optimizer step; stop early once ``should_stop()``."""
        import torch

        if self.model is None:
            self.load()
        cfg = self.config
        encoded = [self.encode(m) for m in examples]
        encoded = [e for e in encoded if any(x != -100 for x in e[1])]
        if not encoded:
            raise ConfigError("no example has a learned assistant turn left after encoding")
        per_epoch = math.ceil(len(encoded) / cfg.batch_size)
        total = per_epoch * cfg.epochs
        opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                lr=cfg.learning_rate)
        pad = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0
        rng = random.Random(cfg.seed)
        self.model.train()
        start, step = time.monotonic(), 0
        for epoch in range(1, cfg.epochs + 1):
            order = list(range(len(encoded)))
            rng.shuffle(order)
            for b in range(0, len(order), cfg.batch_size):
                if should_stop():
                    return
                batch = [encoded[i] for i in order[b:b + cfg.batch_size]]
                width = max(len(ids) for ids, _ in batch)
                dev = self.device
                input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch],
                                         device=dev)
                label_ids = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch],
                                         device=dev)
                mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids))
                                     for ids, _ in batch], device=dev)
                out = self.model(input_ids=input_ids, attention_mask=mask, labels=label_ids)
                out.loss.backward()
                opt.step()
                opt.zero_grad()
                step += 1
                self.trained_tokens += int(mask.sum())
                yield Step(step, total, epoch, float(out.loss.detach()), self.trained_tokens,
                           time.monotonic() - start)

    def export_gguf(self, path: str | Path, *, f16: bool = True) -> int:
        """Write the adapter in llama.cpp's GGUF LoRA format (f16, half the bytes of f32,
        as llama.cpp's own converter writes it; ``f16=False``: f32); its size in bytes."""
        import gguf
        import numpy as np

        config = self.model.base_model.model.config
        n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(self.config.alpha))
        for name, module in self.model.named_modules():
            target = gguf_lora_name(name)
            if target is None or not hasattr(module, "lora_A"):
                continue
            a = module.lora_A["default"].weight.detach().float().cpu()  # [r, in]
            b = module.lora_B["default"].weight.detach().float().cpu()  # [out, r]
            if target.endswith("attn_q.weight"):
                b = _permute_rows(b, n_head)
            elif target.endswith("attn_k.weight"):
                b = _permute_rows(b, n_kv)
            dtype = np.float16 if f16 else np.float32
            writer.add_tensor(target + ".lora_a", np.ascontiguousarray(a.numpy(), dtype))
            writer.add_tensor(target + ".lora_b", np.ascontiguousarray(b.numpy(), dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return Path(path).stat().st_size


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""
