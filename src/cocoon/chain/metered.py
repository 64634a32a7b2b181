"""Chain calls counted and timed: every backend :func:`cocoon.chain.connect.open_chain`
returns is wrapped, and what this process asked of the chain (by call: how many, how many
failed, the seconds they took) is in :data:`CALLS`, which the nodes' ``/metrics`` show. The
long poll ``wait_for_change`` is counted but not timed (its waiting is its purpose)."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["CALLS", "CallStats", "MeteredChain"]

_UNTIMED: Final = frozenset({"wait_for_change"})
_UNCOUNTED: Final = frozenset({"aclose"})


@dataclass(slots=True)
class CallStats:
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0


CALLS: Final[dict[str, CallStats]] = {}
"""This process's chain calls, by name."""


class MeteredChain:
    """A chain backend whose coroutine methods are counted and timed into :data:`CALLS`;
    everything else is the backend's own (``inner``)."""

    def __init__(self, inner: Any, clock: Callable[[], float] = time.perf_counter) -> None:
        self.inner = inner
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name.startswith("_") or name in _UNCOUNTED or not inspect.iscoroutinefunction(attr):
            return attr
        clock = self._clock

        async def call(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            failed = True
            try:
                out = await attr(*args, **kwargs)
                failed = False
                return out
            finally:
                stats = CALLS.get(name)
                if stats is None:
                    stats = CALLS[name] = CallStats()
                stats.calls += 1
                stats.errors += failed
                if name not in _UNTIMED:
                    stats.seconds += clock() - start

        return call
