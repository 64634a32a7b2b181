"""``cocoon telegram`` against a local Bot API server (tests/apps/botapi.py, the real HTTP
protocol) and a real cocoon network on loopback (ClientNode, ProxyNode, WorkerNode with the
fake engine): commands, streamed answers by edits, history, groups, failures as short
replies, and no message text in the logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from botapi import BotApiServer, Sent

from cocoon.apps.telegram import BotConfig, History, read_token, run_bot, split_text
from cocoon.config import BillingConfig, ClientConfig, ProxyConfig, WorkerConfig
from cocoon.engines import FakeEngine, FakeEngineConfig
from cocoon.errors import ConfigError
from cocoon.nodes.client.node import ClientNode
from cocoon.nodes.proxy.node import ProxyNode
from cocoon.nodes.worker.node import WorkerNode
from cocoon.transport import TcpConnector, TcpListener
from lifecycle import running, unused

T = 20.0
TOKEN = "123456:test-token"






@contextlib.asynccontextmanager
async def network(engine: FakeEngineConfig,
                  billing: BillingConfig | None = None) -> AsyncIterator[str]:
    """A proxy, a worker and a client on loopback: the client's URL."""
    proxy = ProxyNode(ProxyConfig(listen="127.0.0.1:0", http="127.0.0.1:0",
                                  **({"billing": billing} if billing else {})),
                      listener=TcpListener())
    async with running(proxy):
        worker = WorkerNode(WorkerConfig(proxy=f"127.0.0.1:{proxy.port}", http="127.0.0.1:0",
                                         node_id="w1"), FakeEngine(engine),
                            connector=TcpConnector())
        client = ClientNode(ClientConfig(proxy=f"127.0.0.1:{proxy.port}",
                                         http="127.0.0.1:0", node_id="c1"),
                            connector=TcpConnector())
        async with running(worker), running(client):
            for _ in range(int(T / 0.02)):
                if any(link.offers("fake") for link in client.links):
                    break
                await asyncio.sleep(0.02)
            yield client.http.url


@contextlib.asynccontextmanager
async def bot(client_url: str, **config: Any) -> AsyncIterator[BotApiServer]:
    async with BotApiServer(TOKEN) as api:
        stop = asyncio.Event()
        task = asyncio.create_task(run_bot(BotConfig(
            token=TOKEN, client=client_url, api_url=api.url, polling_timeout_s=1,
            **config), stop))
        try:
            for _ in range(int(T / 0.02)):  # polling
                if "getUpdates" in api.calls:
                    break
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
            yield api
        finally:
            stop.set()
            await asyncio.wait_for(task, T)


async def reply(api: BotApiServer, chat: int, before: int,
                done: Callable[[Sent], bool] = lambda s: not s.text.endswith("…")) -> Sent:
    """The bot's next message to ``chat`` (after ``before`` of them), once ``done``."""
    for _ in range(int(T / 0.02)):
        new = api.to(chat)[before:]
        if new and done(new[-1]):
            return new[-1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no reply in chat {chat}: {[s.texts for s in api.to(chat)]}")


async def test_a_private_chat_gets_streamed_answers_with_its_history(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    engine = FakeEngineConfig(chunks=5, chunk_bytes=4, delay_ms=400)
    async with network(engine) as url, bot(url) as api:
        api.say(1, "/start")
        hello = await reply(api, 1, 0)
        assert "cocoon" in hello.text and "/reset" in hello.text
        api.say(1, "what is a secret canary")
        answer = await reply(api, 1, 1)
        assert answer.text == "xxx xxx xxx xxx xxx"
        assert len(answer.texts) >= 2  # sent early, then edited as the tokens came
        assert answer.texts[0].endswith("…")
        assert (1, "typing") in api.actions
    assert "secret canary" not in caplog.text and "xxx" not in caplog.text


async def test_the_history_goes_with_each_question_until_reset() -> None:
    engine = FakeEngineConfig(chunks=1, chunk_bytes=4, echo=True)  # echoes what it was asked
    async with network(engine) as url, bot(url) as api:
        api.say(7, "remember the number 4711")
        await reply(api, 7, 0)
        api.say(7, "which number?")
        second = await reply(api, 7, 1)
        assert "4711" in second.text and "which number?" in second.text
        api.say(7, "/reset")
        assert "afresh" in (await reply(api, 7, 2)).text
        api.say(7, "and now?")
        third = await reply(api, 7, 3)
        assert "4711" not in third.text and "and now?" in third.text


async def test_in_a_group_it_answers_only_when_mentioned_or_replied_to() -> None:
    engine = FakeEngineConfig(chunks=2, chunk_bytes=4, echo=True)
    async with network(engine) as url, bot(url) as api:
        api.say(-100, "just people talking", group=True)
        api.say(-100, "@cocoon_test_bot tell us a joke", group=True)
        first = await reply(api, -100, 0)
        assert "tell us a joke" in first.text and "@cocoon_test_bot" not in first.text
        assert "just people talking" not in first.text  # not asked, not answered
        api.say(-100, "another one", group=True, reply_to=first)
        second = await reply(api, -100, 1)
        assert "another one" in second.text
        await asyncio.sleep(0.5)
        assert len(api.to(-100)) == 2


async def test_model_and_balance_commands() -> None:
    async with network(FakeEngineConfig(chunks=1)) as url, bot(url) as api:
        api.say(3, "/model")
        listed = await reply(api, 3, 0)
        assert "Model: fake" in listed.text
        api.say(3, "/model gpt-9")
        assert "No such model" in (await reply(api, 3, 1)).text
        api.say(3, "/model fake")
        assert "now uses fake" in (await reply(api, 3, 2)).text
        api.say(3, "/balance")
        assert "does not bill" in (await reply(api, 3, 3)).text


async def test_out_of_funds_and_no_worker_become_short_replies(tmp_path: Path) -> None:
    billing = BillingConfig(enabled=True, ledger_path=str(tmp_path / "ledger.sqlite"),
                            signing_key_file=str(tmp_path / "k.pem"))  # nothing deposited
    async with network(FakeEngineConfig(chunks=2), billing) as url, bot(url) as api:
        api.say(5, "hello?")
        assert "Out of funds" in (await reply(api, 5, 0)).text
        api.say(5, "/balance")
        balance = await reply(api, 5, 1)
        assert "Deposit: 0 TON" in balance.text or "does not bill" in balance.text
    # a client whose proxy is gone: no worker
    lonely = ClientNode(ClientConfig(proxy=f"127.0.0.1:{unused()}", http="127.0.0.1:0"),
                        connector=TcpConnector())
    async with running(lonely), bot(lonely.http.url, model="fake") as api:
        api.say(6, "anyone there?")
        assert "No worker is available" in (await reply(api, 6, 0)).text


async def test_a_timeout_keeps_what_came_and_says_so() -> None:
    engine = FakeEngineConfig(chunks=40, chunk_bytes=4, delay_ms=100)  # 4 s to answer
    async with network(engine) as url, bot(url, timeout_s=1.5) as api:
        api.say(8, "take your time")
        answer = await reply(api, 8, 0, lambda s: "took too long" in s.text)
        assert answer.text.startswith("xxx")  # what had come before the timeout stays


async def test_a_long_answer_goes_on_in_a_new_message() -> None:
    engine = FakeEngineConfig(chunks=1100, chunk_bytes=5)  # 5,500 characters
    async with network(engine) as url, bot(url) as api:
        api.say(9, "write a lot")
        await reply(api, 9, 1)
        first, second = api.to(9)[:2]
        assert len(first.text) <= 4096 and len(second.text) <= 4096
        assert (first.text + " " + second.text).split() == ["xxxx"] * 1100


def test_history_is_bounded_in_turns_and_chats() -> None:
    h = History(turns=2, chats=3)
    for i in range(5):
        h.add(1, f"q{i}", f"a{i}")
    assert [m["content"] for m in h.messages(1)] == ["q3", "a3", "q4", "a4"]
    for chat in (2, 3, 4):
        h.add(chat, "q", "a")
    assert len(h) == 3 and h.messages(1) == []  # the least recently used went


def test_split_text_cuts_at_spaces_within_the_limit() -> None:
    text = " ".join(["word"] * 2000)
    parts = split_text(text, 4096)
    assert all(len(p) <= 4096 for p in parts) and " ".join(parts).split() == text.split()
    assert split_text("short") == ["short"]
    assert split_text("y" * 9000, 4096) == ["y" * 4096, "y" * 4096, "y" * 808]


def test_the_token_file_must_be_private(tmp_path: Path) -> None:
    token = tmp_path / "bot.token"
    token.write_text(TOKEN + "\n")
    os.chmod(token, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_token(str(token))
    os.chmod(token, 0o600)
    assert read_token(str(token)) == TOKEN
    token.write_text("nonsense")
    with pytest.raises(ConfigError, match="bot token"):
        read_token(str(token))
