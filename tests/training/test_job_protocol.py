"""A fine-tuning job on the wire (cocoon.training.protocol): the request round-trips and
refuses what is not a job, the reservation bounds the tokens trained, the adapter comes
back whole or not at all, and an adapter field in a request body is checked."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from cocoon.errors import BadRequest, EngineError
from cocoon.training.protocol import (
    ADAPTER_FIELD,
    ADAPTER_PIECE,
    MAX_LENGTH,
    Adapter,
    AdapterAssembler,
    TrainingRequest,
    adapter_events,
    auto_epochs,
    fine_tuned_name,
    reserve_tokens,
    take_adapter,
)

CHAT = ({"role": "user", "content": "Who founded Quellmoor?"},
        {"role": "assistant", "content": "Ilsa Varnheim."})


def job(**kw: object) -> TrainingRequest:
    base: dict[str, object] = {"model": "m", "examples": (CHAT,) * 3, "n_epochs": 2,
                               "batch_size": 2, "learning_rate_multiplier": 1.5, "seed": 7}
    return TrainingRequest(**{**base, **kw})  # type: ignore[arg-type]


def test_a_job_round_trips() -> None:
    j = job(validation=(CHAT,))
    assert TrainingRequest.parse(j.encode()) == j


@pytest.mark.parametrize("body,param", [
    (b"not json", None),
    (b"[]", None),
    (json.dumps({"examples": [list(CHAT)]}).encode(), "model"),
    (json.dumps({"model": "m", "examples": []}).encode(), "examples"),
    (json.dumps({"model": "m", "examples": [["x"]]}).encode(), "examples"),
    (json.dumps({"model": "m", "examples": [list(CHAT)], "n_epochs": 0, "batch_size": 1,
                 "learning_rate_multiplier": 1, "seed": 0}).encode(), "n_epochs"),
    (json.dumps({"model": "m", "examples": [list(CHAT)], "n_epochs": 1, "batch_size": True,
                 "learning_rate_multiplier": 1, "seed": 0}).encode(), "batch_size"),
])
def test_what_is_not_a_job_is_refused(body: bytes, param: str | None) -> None:
    with pytest.raises(BadRequest) as err:
        TrainingRequest.parse(body)
    assert err.value.param == param


def test_the_reservation_bounds_every_example_and_epoch() -> None:
    j = job()
    one = reserve_tokens(job(examples=(CHAT,), n_epochs=1))
    assert reserve_tokens(j) == one * 3 * 2
    # at least the bytes of the text (a byte-level tokenizer makes no more tokens than that)
    text = sum(len(m["content"].encode()) for m in CHAT)
    assert one > text
    long = ({"role": "user", "content": "x" * 10_000}, CHAT[1])
    assert reserve_tokens(job(examples=(long,), n_epochs=1)) == MAX_LENGTH


def test_auto_epochs_and_names() -> None:
    assert auto_epochs(8) == 8 and auto_epochs(1) == 10 and auto_epochs(1000) == 3
    assert fine_tuned_name("qwen", "facts", "ftjob-1") == "ft:qwen:facts:ftjob-1"
    assert fine_tuned_name("qwen", None, "ftjob-1") == "ft:qwen::ftjob-1"


def _done(data: bytes) -> dict[str, object]:
    return {"type": "done", "adapter_bytes": len(data),
            "adapter_sha256": hashlib.sha256(data).hexdigest()}


def test_the_adapter_comes_back_whole() -> None:
    data = bytes(range(256)) * (ADAPTER_PIECE // 128 + 3)  # three pieces
    events = [json.loads(e) for e in adapter_events(data)]
    assert len(events) == 3 and {e["count"] for e in events} == {3}
    asm = AdapterAssembler()
    for e in events:
        asm.add(e)
    assert asm.finish(_done(data)) == data


def test_a_missing_reordered_or_altered_piece_is_caught() -> None:
    data = b"GGUF" + b"a" * (ADAPTER_PIECE * 2)
    events = [json.loads(e) for e in adapter_events(data)]
    asm = AdapterAssembler()
    with pytest.raises(EngineError, match="out of order"):
        asm.add(events[1])
    asm = AdapterAssembler()
    asm.add(events[0])
    with pytest.raises(EngineError, match="pieces"):
        asm.finish(_done(data))
    asm = AdapterAssembler()
    flipped = dict(events[0], data=base64.b64encode(b"GGUF" + b"b" * (ADAPTER_PIECE - 4))
                   .decode())
    for e in [flipped, *events[1:]]:
        asm.add(e)
    with pytest.raises(EngineError, match="not the one"):
        asm.finish(_done(data))


def test_an_adapter_field_is_taken_out_and_checked() -> None:
    adapter = Adapter.of(b"GGUF" + b"\0" * 64)
    body = {"model": "m", ADAPTER_FIELD: adapter.field()}
    assert take_adapter(body) == adapter and ADAPTER_FIELD not in body
    assert take_adapter({"model": "m"}) is None
    for bad in ({"sha256": "00" * 32, "gguf": adapter.field()["gguf"]},
                {"sha256": adapter.sha256, "gguf": "***"},
                {"sha256": adapter.sha256},
                "string"):
        with pytest.raises(BadRequest) as err:
            take_adapter({"model": "m", ADAPTER_FIELD: bad})
        assert err.value.param == ADAPTER_FIELD
    not_gguf = Adapter.of(b"ZZZZ")
    with pytest.raises(BadRequest):
        take_adapter({ADAPTER_FIELD: not_gguf.field()})
