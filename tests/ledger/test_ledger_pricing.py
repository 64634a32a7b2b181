"""Pricing: COCOON's worked example, exact integer adjustment, bill split, reservation bound."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cocoon.ledger import (
    Bill,
    Prices,
    PricingError,
    adjust,
    adjusted_tokens,
    price_usage,
    reservation_for,
    reservation_tokens,
)
from cocoon.usage import Usage

uints = st.integers(min_value=0, max_value=10**7)
coefficients = st.integers(min_value=0, max_value=10**6)
mults = st.integers(min_value=0, max_value=40_000)


@st.composite
def prices(draw: st.DrawFn) -> Prices:
    price = draw(st.integers(min_value=0, max_value=10**6))
    fee = draw(st.integers(min_value=0, max_value=price))
    return Prices(price, fee, draw(mults), draw(mults), draw(mults), draw(mults))


@st.composite
def counts(draw: st.DrawFn, max_prompt: int = 10**6, max_completion: int = 10**6) -> Usage:
    prompt = draw(st.integers(min_value=0, max_value=max_prompt))
    completion = draw(st.integers(min_value=0, max_value=max_completion))
    return Usage(
        prompt_tokens=prompt,
        cached_tokens=draw(st.integers(min_value=0, max_value=prompt)),
        completion_tokens=completion,
        reasoning_tokens=draw(st.integers(min_value=0, max_value=completion)),
    )


def test_cocoon_worked_example() -> None:
    # design doc sec. 2: fake backend, 34 prompt / 11 cached / 100 completion / 10 reasoning.
    usage = Usage(prompt_tokens=34, cached_tokens=11, completion_tokens=100, reasoning_tokens=10)
    p = Prices(price_per_token=2, worker_fee_per_token=1)
    assert adjust(34 - 11, 1000, 10000) == 23
    assert adjust(100 - 10, 1000, 10000) == 90
    assert adjusted_tokens(usage, 1000, p) == 23 + 11 + 90 + 10 == 134
    bill = price_usage(usage, 1000, p)
    assert bill == Bill(134, 268, 134, 134, 2, 1)


def test_coefficient_and_multipliers() -> None:
    usage = Usage(prompt_tokens=34, cached_tokens=11, completion_tokens=100, reasoning_tokens=10)
    p = Prices(10, 7, prompt_mult=5000, cached_mult=2500, completion_mult=20000)
    # c=1.5: prompt 23*1.5*0.5=17.25 -> 17, cached 11*1.5*0.25=4.125 -> 4,
    # completion 90*1.5*2=270, reasoning 10*1.5=15
    assert adjusted_tokens(usage, 1500, p) == 17 + 4 + 270 + 15
    bill = price_usage(usage, 1500, p)
    assert (bill.client_cost, bill.worker_income, bill.commission) == (3060, 2142, 918)
    assert adjusted_tokens(usage, 0, p) == 0  # coefficient 0: free worker


def test_adjust_is_exact_where_doubles_are_not() -> None:
    # 3 * 0.1 * 1.0 in doubles is 0.30000000000000004; a case where floor of the double product
    # is one below the exact result: n=10**17+1 at c=1000 loses the +1 in a double.
    n = 10**17 + 1
    assert adjust(n, 1000, 10000) == n
    assert int(n * (1000 / 1000) * (10000 / 10000)) != n


@given(uints, coefficients, mults)
def test_adjust_matches_rational_floor(n: int, c: int, m: int) -> None:
    exact = Fraction(n) * Fraction(c, 1000) * Fraction(m, 10000)
    assert adjust(n, c, m) == exact.numerator // exact.denominator


@pytest.mark.parametrize(
    "kwargs",
    [
        {"price_per_token": 1, "worker_fee_per_token": 2},
        {"price_per_token": -1, "worker_fee_per_token": 0},
        {"price_per_token": 1, "worker_fee_per_token": 0, "cached_mult": -1},
        {"price_per_token": 1.5, "worker_fee_per_token": 0},
        {"price_per_token": True, "worker_fee_per_token": 0},
    ],
)
def test_prices_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(PricingError):
        Prices(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("args", [(1, 2, 0, 0), (0, 0, 1, 2), (-1, 0, 0, 0), (0, 0, -1, 0)])
def test_token_counts_validated(args: tuple[int, int, int, int]) -> None:
    prompt, cached, completion, reasoning = args
    with pytest.raises(PricingError):
        Usage(prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion,
              reasoning_tokens=reasoning)


def test_bill_rejects_inconsistent_fields() -> None:
    with pytest.raises(PricingError):
        Bill(10, 20, 10, 9, 2, 1)
    with pytest.raises(PricingError):
        Bill(10, 21, 10, 11, 2, 1)


@given(counts(), coefficients, prices())
def test_bill_split_conserves_value(usage: Usage, c: int, p: Prices) -> None:
    bill = price_usage(usage, c, p)
    assert bill.client_cost == bill.worker_income + bill.commission
    assert bill.commission >= 0
    assert bill.client_cost == bill.adjusted_tokens * p.price_per_token
    assert bill.worker_income == bill.adjusted_tokens * p.worker_fee_per_token
    assert all(isinstance(x, int) for x in (bill.client_cost, bill.worker_income))


@given(
    st.data(),
    st.integers(min_value=0, max_value=10**5),
    st.integers(min_value=0, max_value=10**5),
    coefficients,
    prices(),
)
def test_reservation_bounds_any_usage_within_limits(
    data: st.DataObject, max_tokens: int, estimate: int, c: int, p: Prices
) -> None:
    usage = data.draw(counts(max_prompt=estimate, max_completion=max_tokens))
    reserved = reservation_for(max_tokens, estimate, c, p)
    bill = price_usage(usage, c, p)
    assert bill.client_cost <= reserved
    assert bill.adjusted_tokens <= reservation_tokens(max_tokens, estimate, c, p)
    # the bound is tight when multipliers are equal and usage is maximal without cached/reasoning
    if len({p.prompt_mult, p.cached_mult}) == 1 and len({p.completion_mult, p.reasoning_mult}) == 1:
        worst = price_usage(Usage(prompt_tokens=estimate, completion_tokens=max_tokens), c, p)
        assert reserved - worst.client_cost <= p.price_per_token


@given(counts(), coefficients, prices(), st.integers(min_value=0, max_value=10**12))
def test_capped_bill_fits_budget(usage: Usage, c: int, p: Prices, budget: int) -> None:
    bill = price_usage(usage, c, p)
    capped = bill.capped(budget)
    assert capped.client_cost <= max(budget, 0) or capped == bill
    assert capped.client_cost <= bill.client_cost
    assert capped.client_cost == capped.worker_income + capped.commission
    if bill.client_cost <= budget:
        assert capped == bill
    else:
        assert budget - capped.client_cost < p.price_per_token
