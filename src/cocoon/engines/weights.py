"""The model hash: what a worker certifies about its weights and what registry model
allow-lists name.

A single file (a GGUF) hashes to the SHA-256 of its bytes: the ``llama-cpp`` engine computes
exactly that of the model it loads. A directory (a Hugging Face checkpoint, as vLLM and SGLang
load it) hashes to SHA-256 over ``b"cocoon-model-dir\\x00\\x01"`` followed, for every regular
file under it (symlinks followed, names starting with ``.`` skipped, in order of their
relative POSIX paths), by the path's UTF-8 length (u32, big-endian), the path, the file's
size (u64, big-endian) and the SHA-256 of its bytes. Renaming, adding, removing or changing
any file changes the hash; where the directory sits does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from cocoon.errors import ConfigError

__all__ = ["file_hash", "model_hash", "weight_files"]

_DIR_TAG = b"cocoon-model-dir\x00\x01"
_BLOCK = 1 << 20

Progress = Callable[[Path, int, int], None]  # (file, bytes hashed so far, bytes in all)


def file_hash(path: Path) -> bytes:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.digest()


def weight_files(root: Path) -> list[tuple[str, Path]]:
    """The files a directory's hash covers: (relative POSIX path, path), in hashing order."""
    out: list[tuple[str, Path]] = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append((rel.as_posix(), p))
    out.sort(key=lambda item: item[0].encode())
    return out


def model_hash(path: str | Path, progress: Progress | None = None) -> bytes:
    """The model hash of a weights file or directory (see the module docstring).
    ConfigError when the path does not exist, cannot be read, or holds no file."""
    root = Path(path)
    try:
        if root.is_file():
            digest = file_hash(root)
            if progress is not None:
                size = root.stat().st_size
                progress(root, size, size)
            return digest
        if not root.is_dir():
            raise ConfigError(f"{path}: no such file or directory")
        files = weight_files(root)
        if not files:
            raise ConfigError(f"{path}: the directory holds no file to hash")
        total = sum(p.stat().st_size for _, p in files)
        h = hashlib.sha256(_DIR_TAG)
        done = 0
        for rel, p in files:
            name = rel.encode()
            size = p.stat().st_size
            h.update(len(name).to_bytes(4, "big") + name + size.to_bytes(8, "big")
                     + file_hash(p))
            done += size
            if progress is not None:
                progress(p, done, total)
        return h.digest()
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename or path}: {exc.strerror}") from None
