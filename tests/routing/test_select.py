"""choose_worker: least loaded by ratio, tie-breaks, full workers, unknown models."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.errors import ModelNotFound, NoWorkerAvailable
from cocoon.routing.select import WorkerView, choose_worker


def w(worker_id: str, active: int, capacity: int, order: int,
      models: tuple[str, ...] = ("m",)) -> WorkerView:
    return WorkerView(worker_id=worker_id, models=models, active=active, capacity=capacity,
                      order=order)


def test_single_worker() -> None:
    assert choose_worker("m", [w("a", 0, 1, 0)]).worker_id == "a"


def test_least_loaded_by_ratio_not_by_count() -> None:
    # b runs more requests but is relatively less loaded.
    workers = [w("a", 2, 4, 0), w("b", 3, 8, 1)]
    assert choose_worker("m", workers).worker_id == "b"
    workers = [w("a", 1, 4, 0), w("b", 3, 8, 1)]
    assert choose_worker("m", workers).worker_id == "a"


def test_tie_on_ratio_breaks_on_active() -> None:
    workers = [w("big", 2, 8, 0), w("small", 1, 4, 1)]
    assert choose_worker("m", workers).worker_id == "small"


def test_tie_on_ratio_and_active_breaks_on_order() -> None:
    workers = [w("young", 1, 4, 5), w("old", 1, 4, 2), w("mid", 1, 4, 3)]
    assert choose_worker("m", workers).worker_id == "old"
    assert choose_worker("m", list(reversed(workers))).worker_id == "old"


def test_idle_workers_tie_break_on_order() -> None:
    workers = [w("x", 0, 16, 9), w("y", 0, 1, 4)]
    assert choose_worker("m", workers).worker_id == "y"


def test_only_workers_serving_the_model_are_considered() -> None:
    workers = [w("other", 0, 8, 0, models=("n",)), w("busy", 3, 4, 1, models=("m", "n"))]
    assert choose_worker("m", workers).worker_id == "busy"
    assert choose_worker("n", workers).worker_id == "other"


def test_full_workers_are_skipped() -> None:
    workers = [w("full", 4, 4, 0), w("nearly", 7, 8, 1)]
    assert choose_worker("m", workers).worker_id == "nearly"


def test_overfull_worker_is_skipped() -> None:
    workers = [w("over", 5, 4, 0), w("ok", 3, 4, 1)]
    assert choose_worker("m", workers).worker_id == "ok"


def test_all_full_is_no_worker_available() -> None:
    workers = [w("a", 4, 4, 0), w("b", 1, 1, 1), w("c", 0, 0, 2)]
    with pytest.raises(NoWorkerAvailable) as ei:
        choose_worker("m", workers)
    assert ei.value.status == 503
    assert "busy" in ei.value.message


def test_none_serving_but_known_is_no_worker_available() -> None:
    with pytest.raises(NoWorkerAvailable) as ei:
        choose_worker("m", [w("a", 0, 4, 0, models=("n",))], known_models=["x", "m"])
    assert "'m'" in ei.value.message
    with pytest.raises(NoWorkerAvailable):
        choose_worker("m", [], known_models=iter(["m"]))


@pytest.mark.parametrize("workers", [[], [w("a", 0, 4, 0, models=("n",))]])
def test_unknown_model_is_model_not_found(workers: list[WorkerView]) -> None:
    with pytest.raises(ModelNotFound) as ei:
        choose_worker("ghost", workers, known_models=["m", "n"])
    assert ei.value.param == "model"
    assert ei.value.status == 404
    assert "ghost" in ei.value.message


def test_accepts_any_iterable_once() -> None:
    gen = (x for x in [w("a", 1, 2, 0), w("b", 0, 2, 1)])
    assert choose_worker("m", gen).worker_id == "b"


# --- property ----------------------------------------------------------------------------

MODELS = ("m1", "m2", "m3")


@st.composite
def worker_lists(draw: st.DrawFn) -> list[WorkerView]:
    n = draw(st.integers(min_value=0, max_value=8))
    orders = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n, unique=True))
    out = []
    for i in range(n):
        capacity = draw(st.integers(min_value=1, max_value=16))
        active = draw(st.integers(min_value=0, max_value=capacity + 1))
        models = tuple(draw(st.sets(st.sampled_from(MODELS), max_size=3)))
        out.append(w(f"w{i}", active, capacity, orders[i], models))
    return out


def _key(v: WorkerView) -> tuple[float, int, int]:
    return (v.active / v.capacity, v.active, v.order)


@settings(deadline=None)
@given(
    workers=worker_lists(),
    model=st.sampled_from((*MODELS, "m4")),
    known=st.sets(st.sampled_from((*MODELS, "m4"))),
)
def test_choice_property(workers: list[WorkerView], model: str, known: set[str]) -> None:
    serving = [v for v in workers if model in v.models]
    eligible = [v for v in serving if v.active < v.capacity]
    try:
        chosen = choose_worker(model, workers, known)
    except ModelNotFound as exc:
        assert not serving and model not in known
        assert exc.param == "model"
        return
    except NoWorkerAvailable:
        assert not eligible
        assert serving or model in known
        return
    assert chosen in workers
    assert model in chosen.models
    assert chosen.active < chosen.capacity
    for other in eligible:
        assert not _key(other) < _key(chosen)


# --- simulation --------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_simulation_spreads_load_within_capacity(seed: int) -> None:
    rng = random.Random(seed)
    capacities = [1, 2, 3, 4, 8, 16]
    total = sum(capacities)
    active = [0] * len(capacities)

    def views() -> list[WorkerView]:
        return [w(f"w{i}", a, c, i) for i, (a, c) in enumerate(zip(active, capacities,
                                                                       strict=True))]

    def ratios() -> list[float]:
        return [a / c for a, c in zip(active, capacities, strict=True)]

    # Arrivals only, from idle: worker i was last picked when its ratio was the smallest,
    # so it leads any worker j that still has room by at most one of its own steps.
    def assert_balanced() -> None:
        r = ratios()
        for i, c in enumerate(capacities):
            for j in range(len(capacities)):
                if active[j] < capacities[j]:
                    assert r[i] - r[j] <= 1 / c + 1e-9, (active, i, j)

    step = max(1 / c for c in capacities)
    for _ in range(total):
        chosen = choose_worker("m", views())
        i = int(chosen.worker_id[1:])
        active[i] += 1
        assert active[i] <= capacities[i]
        assert max(ratios()) - min(ratios()) <= step + 1e-9
        assert_balanced()
    assert active == capacities
    with pytest.raises(NoWorkerAvailable):
        choose_worker("m", views())

    # Mixed arrivals and departures: never over capacity; refused exactly when full.
    for _ in range(2000):
        if rng.random() < 0.55:
            try:
                chosen = choose_worker("m", views())
            except NoWorkerAvailable:
                assert sum(active) == total
                continue
            i = int(chosen.worker_id[1:])
            assert active[i] < capacities[i]
            active[i] += 1
        else:
            busy = [i for i, a in enumerate(active) if a]
            if busy:
                active[rng.choice(busy)] -= 1
        assert all(a <= c for a, c in zip(active, capacities, strict=True))

    # Draining to idle and refilling half the capacity keeps ratios tight again.
    active = [0] * len(capacities)
    for _ in range(total // 2):
        i = int(choose_worker("m", views()).worker_id[1:])
        active[i] += 1
    assert_balanced()
    assert active[-1] >= 6  # the 16-slot worker took its share of the 17 requests


def test_simulation_equal_capacities_round_robin() -> None:
    capacities = [4, 4, 4]
    active = [0, 0, 0]
    picks = []
    for _ in range(9):
        views = [w(f"w{i}", a, c, i) for i, (a, c) in enumerate(zip(active, capacities,
                                                                     strict=True))]
        i = int(choose_worker("m", views).worker_id[1:])
        picks.append(i)
        active[i] += 1
    assert picks == [0, 1, 2] * 3
