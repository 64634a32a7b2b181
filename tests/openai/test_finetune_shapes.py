"""cocoon.openai.finetune: training files and hyperparameters as OpenAI shapes them."""

from __future__ import annotations

import json

import pytest

from cocoon.errors import BadRequest
from cocoon.openai.finetune import Hyperparameters, check_training_file, parse_hyperparameters


def test_a_tool_turn_and_weights_count_as_openai_counts_them() -> None:
    rows = [
        {"messages": [
            {"role": "developer", "content": "be terse"},
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
            {"role": "assistant", "content": "Sunny.", "weight": 0},
        ]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    ]
    stats = check_training_file("\n".join(json.dumps(r) for r in rows).encode())
    assert stats.examples == 2 and stats.assistant_turns == 2  # the weight-0 turn is not
    with pytest.raises(BadRequest, match="line 1, message 1: weight is 0 or 1"):
        check_training_file(json.dumps({"messages": [
            {"role": "user", "content": "q"},
            {"role": "user", "content": "q", "weight": 1}]}).encode())
    with pytest.raises(BadRequest, match="needs content or tool_calls"):
        check_training_file(json.dumps({"messages": [
            {"role": "user", "content": "q"}, {"role": "assistant"}]}).encode())


def test_hyperparameters_from_either_place_auto_or_in_range() -> None:
    assert parse_hyperparameters({}) == Hyperparameters()
    assert parse_hyperparameters({}).to_openai() == {
        "n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    got = parse_hyperparameters({"method": {"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": 0.5}}}})
    assert got == Hyperparameters(2, None, 0.5)
    for bad, param in (({"hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs"),
                       ({"hyperparameters": {"batch_size": 1.5}}, "hyperparameters.batch_size"),
                       ({"hyperparameters": {"epochs": 3}}, "hyperparameters"),
                       ({"method": {"type": "dpo"}}, "method.type")):
        with pytest.raises(BadRequest) as caught:
            parse_hyperparameters(bad)
        assert caught.value.param == param
