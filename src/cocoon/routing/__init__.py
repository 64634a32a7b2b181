"""Routing decisions (pure)."""

from cocoon.routing.queue import FairQueue
from cocoon.routing.select import (
    Candidate,
    Measured,
    ModelIndex,
    WorkerView,
    choose_worker,
    pick,
    price_cap_error,
    score,
    unserved_error,
)

__all__ = ["Candidate", "FairQueue", "Measured", "ModelIndex", "WorkerView", "choose_worker",
           "pick", "price_cap_error", "score", "unserved_error"]
