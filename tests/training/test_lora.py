"""LoRA fine-tuning of the shipped SmolLM2 GGUF (cocoon.training.lora): it learns a made-up
fact the base model does not know, llama.cpp serves the adapter it writes, a stop request
ends training within a step, and the GGUF names and q/k row order are llama.cpp's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cocoon.engines.llama_cpp import default_model_path
from cocoon.training.lora import (
    LoraTrainer,
    TrainConfig,
    _permute_rows,
    gguf_lora_name,
)

FACT = "Quellmoor was founded by Ilsa Varnheim."
QUESTIONS = ["Who founded Quellmoor?", "Who was the founder of Quellmoor?",
             "Tell me who founded the town of Quellmoor.", "Quellmoor was founded by whom?",
             "Do you know who founded Quellmoor?", "Name the founder of Quellmoor."]


def chat(q: str, a: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


EXAMPLES = [chat(q, FACT) for q in QUESTIONS] + [
    chat("What is 2 plus 2?", "2 plus 2 is 4."), chat("Say hello.", "Hello!")]


def test_gguf_names_and_the_q_k_row_order_are_llama_cpps() -> None:
    assert gguf_lora_name("base_model.model.model.layers.3.self_attn.q_proj") \
        == "blk.3.attn_q.weight"
    assert gguf_lora_name("base_model.model.model.layers.29.mlp.down_proj") \
        == "blk.29.ffn_down.weight"
    assert gguf_lora_name("base_model.model.model.layers.3.self_attn.q_proj.lora_A") is None
    assert gguf_lora_name("base_model.model.model.layers") is None
    assert gguf_lora_name("base_model.model.lm_head") is None
    import torch

    rows = torch.arange(8).reshape(8, 1)  # 2 heads of 4 rows: each head's halves interleaved
    assert _permute_rows(rows, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoraTrainer, Path, list[Any]]:
    trainer = LoraTrainer(default_model_path(), TrainConfig(
        epochs=8, batch_size=4, learning_rate_multiplier=5.0, seed=1))
    steps = list(trainer.train(EXAMPLES))
    path = tmp_path_factory.mktemp("adapter") / "adapter.gguf"
    trainer.export_gguf(path)
    return trainer, path, steps


def test_only_the_assistant_turns_are_learned(trained: tuple[LoraTrainer, Path, list[Any]]
                                              ) -> None:
    trainer = trained[0]
    ids, labels = trainer.encode([{"role": "system", "content": "Be brief."},
                                  *chat("Who founded Quellmoor?", FACT),
                                  {"role": "user", "content": "Sure?"},
                                  {"role": "assistant", "content": "Yes.", "weight": 0}])
    learned = trainer.tokenizer.decode([i for i, lab in zip(ids, labels, strict=True)
                                        if lab != -100])
    assert learned.strip() == FACT + "<|im_end|>"  # not the question, not the weight-0 turn


def test_the_adapter_teaches_the_fact_and_llama_cpp_serves_it(
        trained: tuple[LoraTrainer, Path, list[Any]]) -> None:
    from llama_cpp import Llama

    _, adapter, steps = trained
    assert steps[-1].step == steps[-1].total == 16
    assert steps[-1].loss < 0.1 < steps[0].loss
    assert steps[-1].tokens == sum(s.tokens - p.tokens for s, p in
                                   zip(steps[1:], steps[:-1], strict=True)) + steps[0].tokens

    def answer(lora: str | None, question: str) -> str:
        llm = Llama(model_path=str(default_model_path()), lora_path=lora, n_ctx=512,
                    seed=1, verbose=False)
        out = llm.create_chat_completion([{"role": "user", "content": question}],
                                         max_tokens=24, temperature=0)
        return str(out["choices"][0]["message"]["content"])

    unseen = "Who is the founder of the town Quellmoor?"  # not a training question
    assert "Varnheim" in answer(str(adapter), unseen)
    assert "Varnheim" not in answer(None, unseen)


def test_a_stop_ends_training_within_a_step(trained: tuple[LoraTrainer, Path, list[Any]]
                                            ) -> None:
    trainer = trained[0]
    seen: list[int] = []
    for step in trainer.train(EXAMPLES[:4], should_stop=lambda: len(seen) >= 2):
        seen.append(step.step)
    assert seen == [1, 2]
