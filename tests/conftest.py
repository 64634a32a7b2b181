"""Shared fixtures: local networks on free ports, a real llama_cpp.server, HTTP and polling.

Everything talks to 127.0.0.1 only. Readiness is polled with a deadline, never slept for.
Tests marked ``llama`` are skipped when llama-cpp-python or the SmolLM2 model is missing.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cocoon.commands.up import LocalNetwork

LLAMA_MODEL = "SmolLM2-135M-Instruct"


@functools.cache
def llama_missing() -> str:
    """Why the llama tests cannot run here ('' when they can)."""
    try:
        import llama_cpp  # noqa: F401

        from cocoon.engines.llama_cpp import default_model_path

        default_model_path()
    except Exception as exc:
        return f"llama-cpp-python or SmolLM2 unavailable: {exc}"
    return ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("llama") and llama_missing():
            item.add_marker(pytest.mark.skip(reason=llama_missing()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(method: str, url: str, body: bytes | dict[str, Any] | None = None,
            timeout: float = 30.0) -> tuple[int, Any]:
    """One HTTP request; (status, parsed JSON body or the raw text). Status 0: no answer."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError:
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def stats(role_http: str) -> dict[str, Any]:
    status, body = request("GET", role_http + "/stats", timeout=5)
    assert status == 200, f"GET {role_http}/stats answered {status}"
    return body  # type: ignore[no-any-return]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.02)
    pytest.fail(f"not {what} within {timeout:g}s (last: {last!r})")


@pytest.fixture(scope="module")
def start_network() -> Iterator[Callable[..., LocalNetwork]]:
    """Factory: ``start_network(engine="fake", worker_sets=[...], ...)`` -> a started
    LocalNetwork on free ports, stopped when the module is done."""
    nets: list[LocalNetwork] = []

    def start(**kwargs: Any) -> LocalNetwork:
        kwargs.setdefault("engine", "fake")
        kwargs.setdefault("startup_timeout", 90.0)
        net = LocalNetwork(**kwargs)
        nets.append(net)
        net.start()
        return net

    yield start
    for net in nets:
        net.close()


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """A real ``llama_cpp.server`` serving SmolLM2 on a free port; yields its base URL."""
    from cocoon.engines.llama_cpp import default_model_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
             "--host", "127.0.0.1", "--port", str(port), "--model_alias", LLAMA_MODEL,
             "--n_ctx", "2048"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            deadline = time.monotonic() + 60
            while request("GET", url + "/v1/models", timeout=2)[0] != 200:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail("llama_cpp.server did not start:\n"
                                + log.read()[-3000:].decode(errors="replace"))
                time.sleep(0.1)
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# The helpers as fixtures, so test modules need no imports from this file.

@pytest.fixture(scope="session")
def http() -> Callable[..., tuple[int, Any]]:
    return request


@pytest.fixture(scope="session", name="stats")
def stats_fixture() -> Callable[[str], dict[str, Any]]:
    return stats


@pytest.fixture(scope="session", name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    return wait_for
