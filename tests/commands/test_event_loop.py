"""The roles' event loop (cocoon.commands.serve.loop_factory): uvloop unless
COCOON_EVENT_LOOP says asyncio; anything else is a clear error."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from cocoon.commands.serve import EVENT_LOOP_ENV, loop_factory
from cocoon.errors import ConfigError


def test_roles_run_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    factory = loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_asyncio_can_be_asked_for_and_nonsense_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert loop_factory() is None  # asyncio.Runner's default: the standard library's loop
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        assert not isinstance(runner.get_loop(), uvloop.Loop)
    monkeypatch.setenv(EVENT_LOOP_ENV, "trio")
    with pytest.raises(ConfigError, match="uvloop or asyncio"):
        loop_factory()
