"""Routing decisions (pure)."""

from cocoon.routing.queue import FairQueue
from cocoon.routing.select import WorkerView, choose_worker

__all__ = ["FairQueue", "WorkerView", "choose_worker"]
