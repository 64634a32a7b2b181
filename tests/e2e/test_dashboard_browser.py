"""The live dashboard in a real browser: Playwright for Python driving Debian's chromium
against a real proxy, worker and client on loopback. The proxy's page shows the connected
worker, and a request made while the page is open appears in its recent requests (and in
the client's page); the page fits a phone's width. Screenshots are saved (in
``$COCOON_SCREENSHOTS`` when set, else the test's temporary directory)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cocoon.config import BillingConfig, ClientConfig, ProxyConfig, WorkerConfig
from cocoon.engines import FakeEngine, FakeEngineConfig
from cocoon.ledger import Ledger
from cocoon.nodes.client.node import ClientNode
from cocoon.nodes.proxy.node import ProxyNode
from cocoon.nodes.worker.node import WorkerNode
from cocoon.transport import TcpConnector, TcpListener
from lifecycle import running

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed (scripts/setup installs it)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed: scripts/setup installs it "
                             "where apt-get is available (apt-get install chromium)")
T = 30.0




@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: $COCOON_SCREENSHOTS, else the test's temporary directory."""
    where = Path(os.environ.get("COCOON_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


async def test_the_dashboard_shows_the_live_network_and_a_new_request(
        tmp_path: Path, shots: Path) -> None:
    billing = BillingConfig(enabled=True, ledger_path=str(tmp_path / "ledger.sqlite"),
                            signing_key_file=str(tmp_path / "k.pem"))
    with Ledger(billing.ledger_path) as ledger:
        ledger.deposit("node:c1", 10**12)
    proxy = ProxyNode(ProxyConfig(listen="127.0.0.1:0", http="127.0.0.1:0", node_id="proxy",
                                  billing=billing), listener=TcpListener())
    async with running(proxy):
        worker = WorkerNode(WorkerConfig(proxy=f"127.0.0.1:{proxy.port}", http="127.0.0.1:0",
                                         node_id="w1", max_concurrent=4),
                            FakeEngine(FakeEngineConfig(chunks=8, chunk_bytes=6,
                                                        delay_ms=20)),
                            connector=TcpConnector())
        client = ClientNode(ClientConfig(proxy=f"127.0.0.1:{proxy.port}", http="127.0.0.1:0",
                                         node_id="c1"), connector=TcpConnector())
        async with running(worker), running(client), \
                playwright_api.async_playwright() as pw:
            for _ in range(int(T / 0.02)):
                if any(link.offers("fake") for link in client.links):
                    break
                await asyncio.sleep(0.02)
            browser = await pw.chromium.launch(executable_path=CHROMIUM,
                                               args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(proxy.http.url + "/dashboard")
                # the live worker, in the picture and in the table
                await page.wait_for_selector('#network g.worker[data-worker="w1"]',
                                             timeout=T * 1000)
                row = page.locator('#workers tr[data-worker="w1"]')
                await row.wait_for(timeout=T * 1000)
                assert "fake" in await row.inner_text()
                assert await page.locator("#status").inner_text() == "live"
                assert await page.locator("#recent tr.request").count() == 0
                # a request made now appears, with its worker, status and cost
                async with _sdk(client) as app:
                    await app.chat.completions.create(
                        model="fake", messages=[{"role": "user", "content": "a canary"}])
                request = page.locator("#recent tr.request").first
                await request.wait_for(timeout=T * 1000)
                text = await request.inner_text()
                assert "fake" in text and "w1" in text and "ok" in text and "TON" in text
                assert "canary" not in await page.content()
                money = await page.locator("#money").inner_text()  # the ledger's balances
                assert "client node:c1" in money and "w1 earned" in money
                await page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
                # a phone: nothing wider than the screen
                phone = await browser.new_page(viewport={"width": 390, "height": 844})
                await phone.goto(proxy.http.url + "/dashboard")
                await phone.locator("#recent tr.request").first.wait_for(timeout=T * 1000)
                width = await phone.evaluate("document.documentElement.scrollWidth")
                assert width <= 390
                await phone.screenshot(path=str(shots / "dashboard-phone.png"),
                                       full_page=True)
                # the client's own view
                mine = await browser.new_page()
                await mine.goto(client.http.url + "/dashboard")
                await mine.locator('#workers tr[data-worker="w1"]').wait_for(timeout=T * 1000)
                await mine.locator("#recent tr.request").first.wait_for(timeout=T * 1000)
                assert "client" in await mine.locator("#role").inner_text()
            finally:
                await browser.close()
    assert (shots / "dashboard.png").stat().st_size > 10_000


@contextlib.asynccontextmanager
async def _sdk(client: ClientNode) -> AsyncIterator[Any]:
    import openai

    async with openai.AsyncOpenAI(base_url=client.http.url + "/v1", api_key="unused",
                                  max_retries=0, timeout=T) as app:
        yield app
