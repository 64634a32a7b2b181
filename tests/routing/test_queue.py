"""The proxy's fair wait queue (pure): FIFO per client, round-robin across clients, bounded
per model."""

from __future__ import annotations

import pytest

from cocoon.errors import QueueFull
from cocoon.routing import FairQueue


def drain(q: FairQueue[str], model: str) -> list[str]:
    out = []
    while (item := q.pop(model)) is not None:
        out.append(item)
    return out


def test_fifo_per_client_and_round_robin_across_clients() -> None:
    q: FairQueue[str] = FairQueue(limit=100)
    for i in range(4):
        q.push("m", "a", f"a{i}")  # a burst from one client ...
    q.push("m", "b", "b0")  # ... does not starve another's single request
    q.push("m", "c", "c0")
    q.push("m", "b", "b1")
    assert q.depth("m") == 7 and q.depth() == 7
    assert drain(q, "m") == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    assert q.depth() == 0 and q.models() == []


def test_models_queue_apart_and_the_limit_is_per_model() -> None:
    q: FairQueue[str] = FairQueue(limit=2)
    q.push("m1", "a", "x1")
    q.push("m1", "b", "x2")
    with pytest.raises(QueueFull) as info:
        q.push("m1", "c", "x3")
    assert info.value.status == 429 and info.value.code == "rate_limit_exceeded"
    assert "m1" in info.value.message
    q.push("m2", "a", "y1")  # another model's queue has room
    assert sorted(q.models()) == ["m1", "m2"]
    assert q.pop("m2") == "y1" and q.pop("m2") is None
    assert q.pop("nothing") is None


def test_remove_takes_an_item_out_wherever_it_waits() -> None:
    q: FairQueue[str] = FairQueue(limit=10)
    for item, client in (("a0", "a"), ("b0", "b"), ("a1", "a")):
        q.push("m", client, item)
    assert "b0" in q
    assert q.remove("b0") and not q.remove("b0") and "b0" not in q
    assert q.remove("a0")
    assert drain(q, "m") == ["a1"]
    with pytest.raises(ValueError):
        q.push("m", "a", "z")
        q.push("m", "b", "z")  # the same item twice


def test_a_zero_limit_never_queues() -> None:
    q: FairQueue[str] = FairQueue(limit=0)
    with pytest.raises(QueueFull):
        q.push("m", "a", "x")
    with pytest.raises(ValueError):
        FairQueue(limit=-1)


def test_peek_shows_what_pop_takes_without_taking_it() -> None:
    q: FairQueue[str] = FairQueue(limit=10)
    assert q.peek("m") is None
    q.push("m", "a", "a0")
    q.push("m", "b", "b0")
    assert q.peek("m") == "a0" and q.depth("m") == 2
    assert q.pop("m") == "a0" and q.peek("m") == "b0"
