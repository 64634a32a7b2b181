"""Small helpers shared by the e2e fault tests (imported by name, like tests/tls/tls_support)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any


def get_stats(url: str) -> dict[str, Any]:
    """A role's ``/stats`` at its HTTP base ``url``."""
    with urllib.request.urlopen(url + "/stats", timeout=5) as resp:
        return json.load(resp)  # type: ignore[no-any-return]


def until(check: Callable[[], bool], seconds: float = 15.0) -> bool:
    """Poll ``check`` every 0.1 s; whether it held within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
