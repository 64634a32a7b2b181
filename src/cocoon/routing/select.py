"""Worker selection, a pure function of (model, worker views)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cocoon.errors import ModelNotFound, NoWorkerAvailable

__all__ = ["WorkerView", "choose_worker"]


@dataclass(frozen=True, slots=True)
class WorkerView:
    worker_id: str
    models: tuple[str, ...]
    active: int
    capacity: int
    order: int  # connection order: older first on ties


def choose_worker(model: str, workers: Iterable[WorkerView],
                  known_models: Iterable[str] = ()) -> WorkerView:
    """The least-loaded worker (by active/capacity, then active, then age) serving ``model``.

    Raises ModelNotFound if no worker serves it and it is not in ``known_models`` (models
    served recently), NoWorkerAvailable if it is known but no worker has a free slot.
    """
    serving = [w for w in workers if model in w.models]
    if not serving:
        if model in set(known_models):
            raise NoWorkerAvailable(f"no worker is currently connected for model '{model}'")
        raise ModelNotFound(f"The model '{model}' does not exist or no worker serves it.",
                            param="model")
    free = [w for w in serving if w.active < w.capacity]
    if not free:
        raise NoWorkerAvailable(
            f"all {len(serving)} worker(s) serving '{model}' are busy; retry shortly"
        )
    return min(free, key=lambda w: (w.active / w.capacity, w.active, w.order))
