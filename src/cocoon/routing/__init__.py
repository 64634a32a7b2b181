"""Routing decisions (pure)."""

from cocoon.routing.select import WorkerView, choose_worker

__all__ = ["WorkerView", "choose_worker"]
