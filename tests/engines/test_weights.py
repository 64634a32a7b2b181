"""The model hash of a weights file or directory (issue 13, item 5): what an openai-http
worker declares and registry model allow-lists name, and `cocoon model-hash` prints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cocoon.cli import main
from cocoon.engines.config import OpenAIHttpConfig
from cocoon.engines.openai_http import OpenAIHttpEngine
from cocoon.engines.weights import model_hash
from cocoon.errors import ConfigError


def checkpoint(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "model-00001.safetensors").write_bytes(b"\x01" * 5000)
    (root / "sub" / "tokenizer.json").write_text("{}")
    (root / ".cache").mkdir()
    (root / ".cache" / "lock").write_text("x")  # hidden: not part of the model
    return root


def spec(root: Path) -> bytes:
    """The documented formula, written out independently."""
    h = hashlib.sha256(b"cocoon-model-dir\x00\x01")
    for rel in sorted(["config.json", "model-00001.safetensors", "sub/tokenizer.json"]):
        data = (root / rel).read_bytes()
        name = rel.encode()
        h.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big")
                 + hashlib.sha256(data).digest())
    return h.digest()


def test_a_file_hashes_to_its_sha256(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    assert model_hash(f) == hashlib.sha256(f.read_bytes()).digest()


def test_a_directory_hash_follows_the_spec_and_not_its_location(tmp_path: Path) -> None:
    a = checkpoint(tmp_path / "a")
    b = checkpoint(tmp_path / "elsewhere" / "b")
    assert model_hash(a) == spec(a) == model_hash(b)
    (a / ".cache" / "lock").write_text("changed")  # hidden files do not count
    assert model_hash(a) == spec(a)


@pytest.mark.parametrize("change", ["content", "rename", "add", "remove"])
def test_any_change_to_the_weights_changes_the_hash(tmp_path: Path, change: str) -> None:
    root = checkpoint(tmp_path / "m")
    before = model_hash(root)
    if change == "content":
        (root / "model-00001.safetensors").write_bytes(b"\x01" * 4999 + b"\x02")
    elif change == "rename":
        (root / "config.json").rename(root / "config2.json")
    elif change == "add":
        (root / "extra.bin").write_bytes(b"")
    else:
        (root / "sub" / "tokenizer.json").unlink()
    assert model_hash(root) != before


def test_nothing_to_hash_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        model_hash(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no file"):
        model_hash(tmp_path / "empty")


def test_the_command_prints_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = checkpoint(tmp_path / "m")
    assert main(["model-hash", str(root)]) == 0
    assert capsys.readouterr().out.strip() == spec(root).hex()
    assert main(["model-hash", "--json", str(root)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model_hash"] == spec(root).hex() and doc["files"] == 3
    assert doc["bytes"] == 5000 + len('{"a": 1}') + 2
    assert main(["model-hash", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_an_openai_http_worker_certifies_the_declared_hash() -> None:
    digest = hashlib.sha256(b"weights").hexdigest()
    config = OpenAIHttpConfig(model="m", model_hash=digest.upper())
    assert OpenAIHttpEngine(config, ("m",)).model_hash == bytes.fromhex(digest)
    assert OpenAIHttpEngine(OpenAIHttpConfig(model="m"), ("m",)).model_hash == b""
    for bad in ("abc", "z" * 64, digest + "00"):
        with pytest.raises(ConfigError, match="model_hash must be 64 hex digits"):
            OpenAIHttpConfig(model="m", model_hash=bad)
