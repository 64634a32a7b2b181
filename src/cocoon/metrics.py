"""Prometheus metrics of a node (prometheus-client), served at ``/metrics`` by every role.

Each node keeps its own registry (several nodes may share a process, as in the tests):

* what is observed as each request ends (:meth:`NodeMetrics.request`): requests by endpoint,
  model and outcome, time to first token and duration histograms, tokens in and out;
* what the node already keeps, read from its snapshot (its ``/stats``) at scrape time by a
  role's *families* function, so the hot path pays nothing for it: in-flight requests,
  queue depth, slots, per-worker EWMA figures, ledger totals, channel balances, chain calls,
  attestation refusals;
* the process itself (CPU seconds, resident memory, open file descriptors), from
  prometheus-client's own ``ProcessCollector``.

Names follow Prometheus' conventions: the ``cocoon_`` prefix, base units in the name
(seconds, bytes, and ``nanoton``, the TON's base unit), ``_total`` on counters. Every label
is bounded and none carries request content: ``endpoint`` is one of the API's few, ``model``
a model the node serves (at most :data:`MAX_MODELS`; any other name is ``other``),
``outcome`` ``ok`` or a wire error code (a fixed set), ``worker`` a connected worker's id,
``rule`` an attestation rule.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "MAX_MODELS",
    "Families",
    "Metric",
    "NodeMetrics",
    "counter",
    "gauge",
]

MAX_MODELS: Final = 64
_OTHER: Final = "other"
_TTFT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DURATION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                            300.0, 600.0)

_M = TypeVar("_M", GaugeMetricFamily, CounterMetricFamily)

Families = Callable[[], Awaitable[Iterable[Metric]]]
"""A role's metrics read at scrape time (from its snapshot; the ledger's come from its
thread, hence a coroutine)."""


def gauge(name: str, doc: str, value: float | None = None, *,
          labels: Mapping[str, Mapping[Any, float]] | None = None
          ) -> GaugeMetricFamily:
    """A gauge family: one value, or ``labels`` = {label names joined by ",": {values:
    value}} (one set of label names per family)."""
    return _family(GaugeMetricFamily, name, doc, value, labels)


def counter(name: str, doc: str, value: float | None = None, *,
            labels: Mapping[str, Mapping[Any, float]] | None = None
            ) -> CounterMetricFamily:
    """A counter family (``name`` without ``_total``: the exposition adds it)."""
    return _family(CounterMetricFamily, name, doc, value, labels)


def _family(kind: Callable[..., _M], name: str, doc: str, value: float | None,
            labels: Mapping[str, Mapping[Any, float]] | None) -> _M:
    if labels is None:
        return kind(name, doc, value=float(value or 0))
    [(names, samples)] = labels.items()
    family = kind(name, doc, labels=names.split(","))
    for values, v in samples.items():
        family.add_metric(list(values), float(v))
    return family


class _Snapshot(Collector):
    """What the role read for the scrape under way (set just before it is encoded)."""

    def __init__(self) -> None:
        self.current: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return self.current


class NodeMetrics:
    """One node's registry: its request metrics, its snapshot's families, its process."""

    def __init__(self, families: Families | None = None, *,
                 known: Callable[[str], bool] = lambda _: True) -> None:
        self.registry = CollectorRegistry()
        self._known = known  # the models the node serves: only those become labels
        self._families = families
        self._snapshot = _Snapshot()
        self._models: set[str] = set()
        self._requests = Counter(
            "cocoon_requests", "Requests that ended, by endpoint, model and outcome (ok or "
            "the error code)", ["endpoint", "model", "outcome"], registry=self.registry)
        self._ttft = Histogram(
            "cocoon_time_to_first_token_seconds", "From a request's arrival to its first "
            "chunk of answer", ["model"], buckets=_TTFT_BUCKETS, registry=self.registry)
        self._duration = Histogram(
            "cocoon_request_duration_seconds", "From a request's arrival to its end",
            ["endpoint", "model"], buckets=_DURATION_BUCKETS, registry=self.registry)
        self._tokens = Counter(
            "cocoon_tokens", "Tokens of ended requests: prompt (in) and completion (out)",
            ["model", "kind"], registry=self.registry)
        self.registry.register(self._snapshot)
        ProcessCollector(registry=self.registry)

    def model(self, name: str) -> str:
        """``name`` as a label value: a model the node knows (one of the first
        :data:`MAX_MODELS` seen), or ``other`` (so names a requester makes up cannot grow
        the series)."""
        if name in self._models:
            return name
        if (len(self._models) >= MAX_MODELS or not name or len(name) > 256
                or not self._known(name)):
            return _OTHER
        self._models.add(name)
        return name

    def request(self, endpoint: str, model: str, outcome: str, duration_s: float, *,
                ttft_s: float | None = None, prompt_tokens: int = 0,
                completion_tokens: int = 0) -> None:
        """A request ended: ``outcome`` is ``ok`` or its error code."""
        label = self.model(model)
        self._requests.labels(endpoint, label, outcome).inc()
        self._duration.labels(endpoint, label).observe(duration_s)
        if ttft_s is not None:
            self._ttft.labels(label).observe(ttft_s)
        if prompt_tokens:
            self._tokens.labels(label, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self._tokens.labels(label, "completion").inc(completion_tokens)

    async def expose(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header (Prometheus text, or OpenMetrics when
        asked): (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        self._snapshot.current = list(await self._families()) if self._families else []
        try:
            return encoder(self.registry), content_type
        finally:
            self._snapshot.current = []
