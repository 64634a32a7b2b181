"""Pricing (pure): COCOON's token adjustment and the split of a bill, in integer nanoTON.

COCOON computes ``adjust(n, c, m) = floor(n * (c/1000) * (m/10000))`` in doubles.  We compute
the same quantity exactly, ``(n * c * m) // 10_000_000``, so results never depend on rounding
(the two differ only where the double product lands just under an integer, e.g. for huge n).

Counts are :class:`~cocoon.usage.Usage` (OpenAI's semantics and the one rule for bad counts):
``prompt`` includes ``cached`` and ``completion`` includes ``reasoning``; each part is
adjusted with its own multiplier:

    prompt_adj    = adjust(prompt - cached, c, m_prompt)
    cached_adj    = adjust(cached, c, m_cached)
    compl_adj     = adjust(completion - reasoning, c, m_completion)
    reasoning_adj = adjust(reasoning, c, m_reasoning)

The client pays ``total * price_per_token``, the worker earns ``total * worker_fee_per_token``,
the proxy keeps the difference (commission).  Because both are computed from the same adjusted
token count, on-chain vouchers (which carry tokens) and the ledger (which carries nanoTON) agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from cocoon.ledger.errors import PricingError
from cocoon.usage import Usage

__all__ = [
    "COEFFICIENT_ONE",
    "MULTIPLIER_ONE",
    "Bill",
    "Prices",
    "adjust",
    "adjusted_tokens",
    "price_usage",
    "reservation_for",
    "reservation_tokens",
    "training_prices",
]

COEFFICIENT_ONE = 1000
"""Worker coefficient meaning 1.0x."""
MULTIPLIER_ONE = 10000
"""Per-kind multiplier meaning 1.0x."""
_SCALE = COEFFICIENT_ONE * MULTIPLIER_ONE


def _check_uint(name: str, value: int) -> None:
    # bool is an int subclass; a True price is a bug, not 1 nanoTON.
    if not isinstance(value, int) or isinstance(value, bool):
        raise PricingError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise PricingError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class Prices:
    """Network prices (root contract params): nanoTON per adjusted token, and multipliers."""

    price_per_token: int
    worker_fee_per_token: int
    prompt_mult: int = MULTIPLIER_ONE
    cached_mult: int = MULTIPLIER_ONE
    completion_mult: int = MULTIPLIER_ONE
    reasoning_mult: int = MULTIPLIER_ONE

    def __post_init__(self) -> None:
        for name in (
            "price_per_token",
            "worker_fee_per_token",
            "prompt_mult",
            "cached_mult",
            "completion_mult",
            "reasoning_mult",
        ):
            _check_uint(name, getattr(self, name))
        if self.worker_fee_per_token > self.price_per_token:
            raise PricingError(
                f"worker_fee_per_token ({self.worker_fee_per_token}) exceeds "
                f"price_per_token ({self.price_per_token})"
            )


@dataclass(frozen=True, slots=True)
class Bill:
    """What one request costs.  Invariant: ``client_cost == worker_income + commission``,
    and both sides are whole multiples of the adjusted token count."""

    adjusted_tokens: int
    client_cost: int
    worker_income: int
    commission: int
    price_per_token: int
    worker_fee_per_token: int

    def __post_init__(self) -> None:
        for name in (
            "adjusted_tokens",
            "client_cost",
            "worker_income",
            "commission",
            "price_per_token",
            "worker_fee_per_token",
        ):
            _check_uint(name, getattr(self, name))
        if self.worker_fee_per_token > self.price_per_token:
            raise PricingError("bill's worker fee exceeds its price")
        if self.client_cost != self.adjusted_tokens * self.price_per_token:
            raise PricingError("bill's client_cost != adjusted_tokens * price_per_token")
        if self.worker_income != self.adjusted_tokens * self.worker_fee_per_token:
            raise PricingError("bill's worker_income != adjusted_tokens * worker_fee_per_token")
        if self.commission != self.client_cost - self.worker_income:
            raise PricingError("bill's commission != client_cost - worker_income")

    @classmethod
    def for_tokens(cls, adjusted: int, prices: Prices) -> Bill:
        """The bill for ``adjusted`` tokens at ``prices``."""
        _check_uint("adjusted", adjusted)
        client = adjusted * prices.price_per_token
        worker = adjusted * prices.worker_fee_per_token
        return cls(
            adjusted_tokens=adjusted,
            client_cost=client,
            worker_income=worker,
            commission=client - worker,
            price_per_token=prices.price_per_token,
            worker_fee_per_token=prices.worker_fee_per_token,
        )

    def capped(self, budget: int) -> Bill:
        """This bill cut down to at most ``budget`` nanoTON, in whole tokens.

        Used when a worker reports more than the reservation covered: the client is never
        charged above what was reserved, and tokens/nanoTON stay proportional."""
        _check_uint("budget", budget)
        if self.client_cost <= budget:
            return self
        # client_cost > budget >= 0 implies price_per_token > 0.
        tokens = budget // self.price_per_token
        return Bill.for_tokens(tokens, Prices(self.price_per_token, self.worker_fee_per_token))


def training_prices(prices: Prices, training_mult: int) -> Prices:
    """The prices of a fine-tuning job: its usage counts the trained tokens (as prompt
    tokens), each at ``training_mult`` whatever kind it is reported as."""
    m = training_mult
    return Prices(prices.price_per_token, prices.worker_fee_per_token, m, m, m, m)


def adjust(n: int, coefficient: int, mult: int) -> int:
    """``floor(n * coefficient/1000 * mult/10000)`` in exact integer arithmetic."""
    _check_uint("n", n)
    _check_uint("coefficient", coefficient)
    _check_uint("mult", mult)
    return (n * coefficient * mult) // _SCALE


def adjusted_tokens(counts: Usage, coefficient: int, prices: Prices) -> int:
    """The adjusted token total of ``counts`` (what vouchers and the chain count)."""
    return (
        adjust(counts.prompt_tokens - counts.cached_tokens, coefficient, prices.prompt_mult)
        + adjust(counts.cached_tokens, coefficient, prices.cached_mult)
        + adjust(counts.completion_tokens - counts.reasoning_tokens, coefficient,
                 prices.completion_mult)
        + adjust(counts.reasoning_tokens, coefficient, prices.reasoning_mult)
    )


def price_usage(counts: Usage, coefficient: int, prices: Prices) -> Bill:
    """The bill for ``counts`` served by a worker with ``coefficient``."""
    return Bill.for_tokens(adjusted_tokens(counts, coefficient, prices), prices)


def reservation_tokens(
    max_tokens: int, prompt_estimate: int, coefficient: int, prices: Prices
) -> int:
    """Adjusted tokens that bound any usage with ``prompt <= prompt_estimate`` and
    ``completion <= max_tokens`` (completion includes reasoning).

    Proof: the sum of floors is at most the floor of the sum, and each raw count is weighted
    by a multiplier no larger than the largest of its side, so
    ``sum_i floor(n_i c m_i / S) <= floor(c (P max(mp, mc) + M max(mco, mr)) / S)``
    with ``(prompt - cached) + cached = prompt <= P`` and likewise for completion."""
    _check_uint("max_tokens", max_tokens)
    _check_uint("prompt_estimate", prompt_estimate)
    _check_uint("coefficient", coefficient)
    weighted = prompt_estimate * max(prices.prompt_mult, prices.cached_mult) + max_tokens * max(
        prices.completion_mult, prices.reasoning_mult
    )
    return (coefficient * weighted) // _SCALE


def reservation_for(max_tokens: int, prompt_estimate: int, coefficient: int, prices: Prices) -> int:
    """nanoTON to reserve before forwarding: an upper bound of the final ``client_cost`` of
    any usage with ``prompt <= prompt_estimate`` and ``completion <= max_tokens``."""
    return reservation_tokens(max_tokens, prompt_estimate, coefficient, prices) * (
        prices.price_per_token
    )
