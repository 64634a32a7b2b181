"""Worker selection, a pure function of (request, worker views).

**Who may serve.** A worker serving the model, with a free slot (``active < capacity``),
whose price coefficient is within the request's cap (``max_coefficient``; 0: no cap) and
that is not excluded (it refused or failed this request already).

**Who does.** The one with the lowest *score*, the request's expected time on the worker
weighted by its price and its recent failures::

    expected_s = (ttft_s + max_tokens / tokens_per_s) * (1 + active / capacity)
    score      = expected_s * coefficient / 1000 * (1 + 4 * error_rate)

The load weighs on the whole time, decoding included: the requests a worker runs share its
compute. (Weighing only the time to first token let a worker measured a hair faster take
every request until its slots were full while a twin sat idle, its figures never updated.)

``ttft_s`` (time to first token), ``tokens_per_s`` (decode speed after it) and
``error_rate`` (the share of recent requests the worker failed) are the proxy's
exponentially weighted measurements of the worker (:class:`Measured`); a worker not
measured yet counts as the model's typical worker (the measurements of all its workers,
weighted the same way), so it gets its first requests and its own figures. So: among
equals the least loaded wins (today's rule); a worker twice the price must be twice as fast
to tie; one failing half its requests needs to be three times as fast. Ties go to the
worker with fewer requests running, then to the longest connected.

**Large fleets.** Up to ``EXACT`` eligible workers are all scored; beyond that the best of
``SAMPLE`` drawn at random from those within the cap (the power of d choices), so a pick
stays O(``SAMPLE``) for 10,000 workers. The callers keep the candidates of each model sorted
by coefficient (:class:`ModelIndex`), so the price cap is a bisection, not a scan.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cocoon.errors import ModelNotFound, NoWorkerAvailable

__all__ = ["EXACT", "SAMPLE", "Candidate", "Measured", "ModelIndex", "WorkerView",
           "choose_worker", "pick", "price_cap_error", "score", "unserved_error"]

EXACT = 64  # eligible workers scored one by one; more: the best of SAMPLE random ones
SAMPLE = 16
ALPHA = 0.2  # weight of a new measurement in the moving averages
DEFAULT_TTFT_S = 0.5  # a model nobody has measured yet
DEFAULT_TOKENS_PER_S = 50.0
_ERROR_WEIGHT = 4.0
_UNIT = 1000  # coefficient of 1.0x


@dataclass(slots=True)
class Measured:
    """Exponentially weighted measurements of a worker (or of a model's workers together):
    None until the first one."""

    ttft_s: float | None = None
    tokens_per_s: float | None = None
    error_rate: float = 0.0

    def served(self, ttft_s: float, tokens: int, decode_s: float) -> None:
        """A request it answered: first token after ``ttft_s``, then ``tokens`` more in
        ``decode_s`` seconds."""
        self.ttft_s = _ewma(self.ttft_s, ttft_s)
        if tokens > 1 and decode_s > 0:
            self.tokens_per_s = _ewma(self.tokens_per_s, tokens / decode_s)
        self.error_rate = (1 - ALPHA) * self.error_rate

    def failed(self) -> None:
        """A request it failed (died, errored server-side, went silent)."""
        self.error_rate = (1 - ALPHA) * self.error_rate + ALPHA


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - ALPHA) * old + ALPHA * new


class Candidate(Protocol):
    """What routing reads of a worker (the proxy's worker records, or a WorkerView)."""

    @property
    def worker_id(self) -> str: ...
    @property
    def models(self) -> tuple[str, ...]: ...
    @property
    def active(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def order(self) -> int: ...
    @property
    def coefficient(self) -> int: ...
    @property
    def measured(self) -> Measured: ...


@dataclass(frozen=True, slots=True)
class WorkerView:
    worker_id: str
    models: tuple[str, ...]
    active: int
    capacity: int
    order: int  # connection order: older first on ties
    coefficient: int = _UNIT  # price coefficient, 1000 = 1.0x
    measured: Measured = field(default_factory=Measured)


def score(w: Candidate, typical: Measured, max_tokens: int) -> float:
    """The module docstring's score of ``w`` for a request of ``max_tokens``; unmeasured
    figures are the model's ``typical`` ones."""
    m = w.measured
    ttft = m.ttft_s if m.ttft_s is not None else (
        typical.ttft_s if typical.ttft_s is not None else DEFAULT_TTFT_S)
    tps = m.tokens_per_s if m.tokens_per_s is not None else (
        typical.tokens_per_s if typical.tokens_per_s is not None else DEFAULT_TOKENS_PER_S)
    expected = (ttft + max_tokens / tps) * (1 + w.active / w.capacity)
    return expected * w.coefficient / _UNIT * (1 + _ERROR_WEIGHT * m.error_rate)


def _key(w: Candidate, typical: Measured, max_tokens: int) -> tuple[float, int, int]:
    return (score(w, typical, max_tokens), w.active, w.order)


def pick(candidates: Sequence[Candidate], *, max_tokens: int = 0,
         typical: Measured | None = None, exclude: frozenset[str] = frozenset(),
         rng: random.Random | None = None) -> Candidate | None:
    """The best eligible worker of ``candidates`` (all serving the model and within the
    price cap), or None when none has a free slot. Above ``EXACT`` candidates, the best of
    ``SAMPLE`` random draws (``rng``), falling back to all when the draws find none free."""
    typical = typical if typical is not None else Measured()
    if len(candidates) > EXACT:
        draw = rng if rng is not None else random
        best: Candidate | None = None
        best_key: tuple[float, int, int] | None = None
        for _ in range(SAMPLE):
            w = candidates[draw.randrange(len(candidates))]
            if w.active >= w.capacity or w.worker_id in exclude:
                continue
            k = _key(w, typical, max_tokens)
            if best_key is None or k < best_key:
                best, best_key = w, k
        if best is not None:
            return best
    free = [w for w in candidates if w.active < w.capacity and w.worker_id not in exclude]
    if not free:
        return None
    return min(free, key=lambda w: _key(w, typical, max_tokens))


class ModelIndex:
    """One model's workers, sorted by price coefficient (then connection order), so the
    workers within a price cap are a prefix found by bisection."""

    __slots__ = ("_coefficients", "_workers", "typical")

    def __init__(self) -> None:
        self._workers: list[Candidate] = []
        self._coefficients: list[int] = []
        self.typical = Measured()  # the model's workers, measured together

    def __len__(self) -> int:
        return len(self._workers)

    def add(self, w: Candidate) -> None:
        i = bisect.bisect_right(self._coefficients, w.coefficient)
        self._workers.insert(i, w)
        self._coefficients.insert(i, w.coefficient)

    def remove(self, w: Candidate) -> None:
        for i, x in enumerate(self._workers):
            if x is w:
                del self._workers[i]
                del self._coefficients[i]
                return

    def within(self, max_coefficient: int = 0) -> Sequence[Candidate]:
        """The workers whose coefficient is at most ``max_coefficient`` (0: all)."""
        if not max_coefficient:
            return self._workers
        return self._workers[:bisect.bisect_right(self._coefficients, max_coefficient)]

    def cheapest(self) -> int | None:
        return self._coefficients[0] if self._coefficients else None

    def dearest(self) -> int | None:
        return self._coefficients[-1] if self._coefficients else None


def choose_worker(model: str, workers: Iterable[Candidate],
                  known_models: Iterable[str] = (), *, max_tokens: int = 0,
                  max_coefficient: int = 0, exclude: frozenset[str] = frozenset(),
                  rng: random.Random | None = None) -> Candidate:
    """The worker to serve a request for ``model`` (see the module docstring).

    Raises ModelNotFound if no worker serves it and it is not in ``known_models`` (models
    served recently), NoWorkerAvailable if it is known but no worker has a free slot, or
    none within ``max_coefficient``."""
    serving = [w for w in workers if model in w.models]
    if not serving:
        raise unserved_error(model, known_models)
    index = ModelIndex()
    for w in serving:
        index.add(w)
    within = index.within(max_coefficient)
    if not within:
        raise price_cap_error(model, max_coefficient, index.cheapest())
    chosen = pick(within, max_tokens=max_tokens, exclude=exclude, rng=rng)
    if chosen is None:
        raise NoWorkerAvailable(
            f"all {len(serving)} worker(s) serving '{model}' are busy; retry shortly")
    return chosen


def unserved_error(model: str, known_models: Iterable[str]) -> NoWorkerAvailable | ModelNotFound:
    """No worker takes requests for ``model``: a 503 if it was served lately (one may come
    back), else OpenAI's 404."""
    if model in set(known_models):
        return NoWorkerAvailable(f"no worker is currently connected for model '{model}'")
    return ModelNotFound(f"The model '{model}' does not exist or no worker serves it.",
                         param="model")


def price_cap_error(model: str, max_coefficient: int, cheapest: int | None
                    ) -> NoWorkerAvailable:
    """No worker for ``model`` within the price cap: a 503 that says what the cap would
    have to be."""
    return NoWorkerAvailable(
        f"no worker serves '{model}' at a price coefficient of at most {max_coefficient} "
        f"(the cheapest asks {cheapest}); raise max_coefficient or retry later",
        param="max_coefficient")
