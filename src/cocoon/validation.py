"""Checks shared by the typed config tables (each domain's and the roles'): each raises
:class:`~cocoon.errors.ConfigError` naming the key, so a bad value is reported the same way
wherever its table lives."""

from __future__ import annotations

import math

from cocoon.errors import ConfigError

__all__ = ["parse_hostport", "require_positive"]


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); raises ConfigError naming ``what``."""
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if (not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host
            or (":" in host and not bracketed)):
        raise ConfigError(f"{what}: expected HOST:PORT (IPv6 as [ADDR]:PORT), got {value!r}")
    return host, int(port)


def require_positive(value: float, key: str) -> None:
    """ConfigError unless ``value`` is a finite number greater than 0."""
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key} must be greater than 0, got {value}")
