"""TVM get-method stacks: pytoniq values <-> the JSON stack items
:meth:`cocoon.chain.embedded.EmbeddedChain.get` takes and returns, so both backends answer
``get`` alike."""

from __future__ import annotations

import base64
from typing import Any

from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.slice import Slice

from cocoon.chain import messages
from cocoon.chain.errors import ChainError
from cocoon.chain.ton._cells import parse, raw

__all__ = ["stack_arg", "stack_int", "stack_json"]


def stack_json(item: Any) -> dict[str, Any]:
    """A pytoniq stack value in the JSON form :meth:`EmbeddedChain.get` returns."""
    if item is None:
        return {"type": "null"}
    if isinstance(item, bool):
        return {"type": "int", "value": str(-1 if item else 0)}
    if isinstance(item, int):
        return {"type": "int", "value": str(item)}
    if isinstance(item, Cell):
        return {"type": "cell", "boc": base64.b64encode(messages.boc(item)).decode()}
    if isinstance(item, Slice):
        cell: Cell = item.to_cell()  # type: ignore[no-untyped-call]
        out: dict[str, Any] = {
            "type": "slice",
            "boc": base64.b64encode(messages.boc(cell)).decode(),
        }
        try:
            a = parse(cell).load_address()
        except Exception:  # not an address: plain slice
            a = None
        if isinstance(a, Address):
            out["address"] = raw(a)
        return out
    if isinstance(item, list | tuple):
        return {"type": "tuple", "items": [stack_json(x) for x in item]}
    return {"type": type(item).__name__}


def stack_arg(arg: dict[str, Any]) -> Any:
    t = arg.get("type")
    if t == "int":
        return int(arg["value"])
    if t == "address":
        cell: Cell = Builder().store_address(Address(arg["value"])).end_cell()
        return parse(cell)
    if t == "cell":
        return Cell.one_from_boc(base64.b64decode(arg["boc"]))
    if t == "slice":
        return parse(Cell.one_from_boc(base64.b64decode(arg["boc"])))
    raise ChainError(f"bad get-method argument type {t!r}")


def stack_int(item: Any, what: str) -> int:
    if isinstance(item, bool) or not isinstance(item, int):
        raise ChainError(f"{what}: expected an int on the stack, got {type(item).__name__}")
    return item
