"""Small pytoniq-core helpers the ``ton`` backend's modules share: parse a cell, the empty
cell, the canonical raw form of an address."""

from __future__ import annotations

from pytoniq_core.boc.address import Address
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.slice import Slice

__all__ = ["empty_cell", "parse", "raw"]


def parse(cell: Cell) -> Slice:
    s: Slice = cell.begin_parse()  # type: ignore[no-untyped-call]
    return s


def empty_cell() -> Cell:
    c: Cell = Cell.empty()  # type: ignore[no-untyped-call]
    return c


def raw(address: Address | str) -> str:
    """Canonical raw form ``"<wc>:<hex>"`` of any address form."""
    a = address if isinstance(address, Address) else Address(address)
    return f"{a.wc}:{a.hash_part.hex()}"
