"""The embedded chain service's RPC token: a random secret in a 0600 file.

``cocoon chain run`` creates it (or reads it again after a restart, so the roles' configs stay
valid) and refuses every ``/rpc`` call that does not carry it as ``Authorization: Bearer``;
each role names the file in ``chain.token_file``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cocoon.errors import ConfigError

__all__ = ["default_token_file", "load_or_create_token", "read_token"]


def default_token_file(state: str | os.PathLike[str]) -> Path:
    """Where ``cocoon chain run --state STATE`` keeps its token by default: next to STATE."""
    p = Path(state)
    return p.with_name(p.stem + ".token")


def read_token(path: str | os.PathLike[str], key: str = "chain.token_file") -> str:
    """The token in ``path``; ConfigError naming ``key`` when it is missing, empty or readable
    by others."""
    p = Path(path)
    try:
        mode = p.stat().st_mode & 0o777
        text = p.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read the chain token {p}: "
                          f"{exc.strerror or exc}") from None
    if mode & 0o077:
        raise ConfigError(f"{key}: chain token {p} is readable by others (mode {mode:o}); "
                          f"chmod 600 {p}")
    if not text:
        raise ConfigError(f"{key}: chain token {p} is empty")
    return text


def load_or_create_token(path: str | os.PathLike[str]) -> str:
    """Read the token in ``path``, or create it (32 random bytes, mode 0600, atomically)."""
    p = Path(path)
    if p.exists():
        return read_token(p, "--token-file")
    p.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, p)
    return token
