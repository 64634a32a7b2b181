"""TON contracts (contracts/): recompile + hash check and the @ton/sandbox emulator suite.

The contracts are Tolk, compiled with the pinned @ton/tolk-js; the emulator tests are
JavaScript (node --test). These wrappers run them from pytest and skip, with the reason,
when Node.js/npm are not installed. CI runs contracts/check.sh directly as well.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="Node.js/npm not installed: the TON contract toolchain (@ton/tolk-js, @ton/sandbox) "
    "needs node >= 20",
)


def _run(*cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=CONTRACTS, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """Install the pinned toolchain from package-lock.json once, if not installed yet."""
    nm = CONTRACTS / "node_modules"
    if not (nm / "@ton" / "sandbox").is_dir() or not (nm / "@ton" / "tolk-js").is_dir():
        res = _run("npm", "ci", "--no-audit", "--no-fund")
        assert res.returncode == 0, f"npm ci failed:\n{res.stdout}\n{res.stderr}"
    return nm


def test_compiled_code_matches_committed_hashes(node_modules: Path) -> None:
    res = _run("node", "scripts/compile.js", "--check")
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    for name in ("client_channel", "worker_channel", "root_registry", "proxy_stake"):
        assert re.search(rf"^ok\s+{name} [0-9a-f]{{64}}$", res.stdout, re.M), res.stdout


def test_emulator_suite_passes(node_modules: Path) -> None:
    res = _run("npm", "test")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-8000:]
    passed = re.search(r"^# pass (\d+)$", out, re.M)
    failed = re.search(r"^# fail (\d+)$", out, re.M)
    assert passed and failed, out[-4000:]
    assert int(failed.group(1)) == 0
    assert int(passed.group(1)) >= 30, out[-4000:]
