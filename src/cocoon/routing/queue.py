"""The proxy's wait queue for requests that find every worker slot busy (pure).

One queue per model. Inside it each client has its own FIFO, and clients take turns
(round-robin), so one client's burst cannot starve another's single request. The queue is
bounded per model: a request that would exceed ``limit`` is refused (the caller answers 429
with Retry-After); what waits is taken by :meth:`FairQueue.pop` when a slot frees, or
removed by :meth:`FairQueue.remove` (its deadline passed, or its requester went away).

Items are opaque to the queue (the proxy stores a future per waiting request); the only
requirement is that each is hashable and queued at most once.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cocoon.errors import QueueFull

__all__ = ["FairQueue"]

T = TypeVar("T", bound=Hashable)


@dataclass(slots=True)
class _ModelQueue(Generic[T]):
    # client key -> its FIFO; the OrderedDict's order is the round-robin turn order
    clients: OrderedDict[Hashable, deque[T]] = field(default_factory=OrderedDict)
    size: int = 0


class FairQueue(Generic[T]):
    """Bounded per-model queues, FIFO per client, round-robin across clients."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("queue limit must be >= 0")
        self.limit = limit
        self._models: dict[str, _ModelQueue[T]] = {}
        self._where: dict[T, tuple[str, Hashable]] = {}

    def push(self, model: str, client: Hashable, item: T) -> None:
        """Queue ``item`` for ``model`` behind ``client``'s earlier ones; QueueFull when the
        model's queue already holds ``limit`` requests."""
        if item in self._where:
            raise ValueError("item is queued already")
        q = self._models.get(model)
        if q is None:
            q = self._models[model] = _ModelQueue()
        if q.size >= self.limit:
            raise QueueFull(
                f"{q.size} requests for model '{model}' are already waiting for a free "
                "worker; retry shortly")
        fifo = q.clients.get(client)
        if fifo is None:
            fifo = q.clients[client] = deque()
        fifo.append(item)
        q.size += 1
        self._where[item] = (model, client)

    def peek(self, model: str) -> T | None:
        """What :meth:`pop` would take next for ``model``, left in place."""
        q = self._models.get(model)
        if q is None or not q.size:
            return None
        return next(iter(q.clients.values()))[0]

    def pop(self, model: str) -> T | None:
        """The next request for ``model``: the oldest of the client whose turn it is (that
        client then goes to the back of the turn order). None when none waits."""
        q = self._models.get(model)
        if q is None or not q.size:
            return None
        client, fifo = next(iter(q.clients.items()))
        item = fifo.popleft()
        if fifo:
            q.clients.move_to_end(client)
        else:
            del q.clients[client]
        q.size -= 1
        if not q.size:
            del self._models[model]
        del self._where[item]
        return item

    def remove(self, item: T) -> bool:
        """Take ``item`` out wherever it waits (False if it is not queued)."""
        where = self._where.pop(item, None)
        if where is None:
            return False
        model, client = where
        q = self._models[model]
        fifo = q.clients[client]
        fifo.remove(item)
        if not fifo:
            del q.clients[client]
        q.size -= 1
        if not q.size:
            del self._models[model]
        return True

    def depth(self, model: str | None = None) -> int:
        """How many requests wait (for ``model``, or in all)."""
        if model is not None:
            q = self._models.get(model)
            return q.size if q is not None else 0
        return len(self._where)

    def models(self) -> list[str]:
        """The models with requests waiting."""
        return list(self._models)

    def __contains__(self, item: object) -> bool:
        return item in self._where
