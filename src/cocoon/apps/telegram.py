"""``cocoon telegram``: a Telegram bot (aiogram 3) that answers through a cocoon client node,
the network's first customer app.

It answers private messages, and group messages that mention it or reply to it, by asking
the client node's OpenAI endpoint (``--client``, default ``http://127.0.0.1:10000``) with
the chat's recent history, and streams the answer into Telegram by editing its message as
the tokens come (at most once per :data:`EDIT_INTERVAL_S` in a private chat and
:data:`GROUP_EDIT_INTERVAL_S` in a group, within Telegram's limits; a ``retry_after`` is
waited out; an answer past 4,096 characters goes on in a new message). Commands: ``/start``,
``/reset`` (forget the chat's history), ``/model`` (list, or ``/model NAME`` to pick one for
the chat), ``/balance`` (the client's channel: deposit, spent, available). Out of funds
(402), no worker (503), busy (429) and timeouts become a short reply. The bot never logs
message text; the token comes from a 0600 file. ``--api-url`` points it at another Bot API
server (Telegram's own ``telegram-bot-api`` speaks the same protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import stat
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ChatAction, ChatType
from aiogram.exceptions import TelegramBadRequest, TelegramRetryAfter
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import Message

from cocoon.errors import ConfigError
from cocoon.money import format_ton
from cocoon.openai.sse import SseDecoder

__all__ = ["EDIT_INTERVAL_S", "GROUP_EDIT_INTERVAL_S", "BotConfig", "ChatBot", "History",
           "read_token", "run_bot", "split_text"]

log = logging.getLogger(__name__)

EDIT_INTERVAL_S: Final = 1.0  # Telegram allows about one message a second in a chat
GROUP_EDIT_INTERVAL_S: Final = 3.0  # and about 20 a minute in a group
MAX_TEXT: Final = 4096  # Telegram's limit on one message's text
_ROOM: Final = MAX_TEXT - 2  # what a message under way holds besides " …"
_MAX_CHATS: Final = 10_000  # chats whose history is kept (least recently used go first)
_PLACEHOLDER: Final = "…"


@dataclass(frozen=True, slots=True)
class BotConfig:
    token: str
    client: str = "http://127.0.0.1:10000"  # the client node (its OpenAI API under /v1)
    api_url: str = ""  # another Bot API server; "": Telegram's
    model: str = ""  # "": the first the client offers
    history: int = 10  # turns (a question and its answer) kept per chat
    system: str = "You are a helpful assistant in a Telegram chat. Answer briefly."
    timeout_s: float = 120.0
    polling_timeout_s: int = 30


def read_token(path: str) -> str:
    """The bot token in ``path``, which only its owner may read (0600)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        token = p.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"--token-file {path} has mode {stat.S_IMODE(mode):04o}: a bot "
                          f"token is a secret, chmod 600 {path}")
    if ":" not in token:
        raise ConfigError(f"--token-file {path} does not hold a bot token (ID:SECRET)")
    return token


class History:
    """The recent turns of each chat, bounded in turns and in chats."""

    def __init__(self, turns: int, chats: int = _MAX_CHATS) -> None:
        self._turns, self._chats = turns, chats
        self._by_chat: OrderedDict[int, deque[dict[str, str]]] = OrderedDict()

    def messages(self, chat: int) -> list[dict[str, str]]:
        return list(self._by_chat.get(chat, ()))

    def add(self, chat: int, question: str, answer: str) -> None:
        kept = self._by_chat.get(chat)
        if kept is None:
            kept = self._by_chat[chat] = deque(maxlen=2 * self._turns)
            while len(self._by_chat) > self._chats:
                self._by_chat.popitem(last=False)
        else:
            self._by_chat.move_to_end(chat)
        kept += ({"role": "user", "content": question},
                 {"role": "assistant", "content": answer})

    def reset(self, chat: int) -> None:
        self._by_chat.pop(chat, None)

    def __len__(self) -> int:
        return len(self._by_chat)


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at a line or word end where
    one is near."""
    out = []
    while len(text) > limit:
        cut = max(text.rfind("\n", limit // 2, limit), text.rfind(" ", limit // 2, limit))
        cut = cut if cut > 0 else limit
        out.append(text[:cut])
        text = text[cut:].lstrip("\n ")
    return [*out, text] if text or not out else out


class AskFailed(Exception):
    """The client node could not answer: ``reply`` is what the chat is told."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


_REPLIES: Final = {
    402: "Out of funds: the network's client has no balance left. Top up its channel "
         "(cocoon client topup) and ask again.",
    429: "The network is busy right now; ask again in a moment.",
    503: "No worker is available right now; ask again shortly.",
    504: "That took too long; ask again, or ask for something shorter.",
}


def _failure(status: int, body: bytes) -> AskFailed:
    code = ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        code = json.loads(body)["error"]["code"] or ""
    if status in _REPLIES:
        return AskFailed(_REPLIES[status])
    if code == "timeout":
        return AskFailed(_REPLIES[504])
    if code == "model_not_found":
        return AskFailed("That model is not served any more; pick another with /model.")
    return AskFailed(f"Something went wrong on the network ({code or f'HTTP {status}'}); "
                     "ask again.")


@dataclass
class ChatBot:
    """The bot's behaviour, apart from Telegram: what to ask the client node, and when."""

    config: BotConfig
    history: History = field(init=False)
    models: dict[int, str] = field(default_factory=dict)  # chat -> the model it picked
    _http: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        self.history = History(self.config.history)

    async def __aenter__(self) -> ChatBot:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=self.config.timeout_s, sock_connect=10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "use ChatBot in async with"
        return self._http

    async def available_models(self) -> list[str]:
        try:
            async with self.http.get(self.config.client + "/v1/models") as r:
                if r.status != 200:
                    raise _failure(r.status, await r.read())
                return [m["id"] for m in (await r.json())["data"]]
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
            raise AskFailed(_REPLIES[503]) from None

    async def model_for(self, chat: int) -> str:
        chosen = self.models.get(chat) or self.config.model
        if chosen:
            return chosen
        models = await self.available_models()
        if not models:
            raise AskFailed(_REPLIES[503])
        return models[0]

    async def ask(self, chat: int, question: str) -> AsyncIterator[str]:
        """The answer to ``question`` in this chat, as it streams (text deltas)."""
        model = await self.model_for(chat)
        body = {"model": model, "stream": True, "messages": [
            {"role": "system", "content": self.config.system},
            *self.history.messages(chat), {"role": "user", "content": question}]}
        try:
            async with self.http.post(self.config.client + "/v1/chat/completions",
                                      json=body) as r:
                if r.status != 200:
                    raise _failure(r.status, await r.read())
                decoder = SseDecoder()
                async for piece in r.content.iter_any():
                    for data in decoder.feed(piece):
                        if data == b"[DONE]":
                            return
                        event = json.loads(data)
                        if "error" in event:  # the stream broke after it began
                            raise _failure(502, data)
                        for choice in event.get("choices") or ():
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                yield text
        except TimeoutError:
            raise AskFailed(_REPLIES[504]) from None
        except (aiohttp.ClientError, ValueError):
            raise AskFailed(_REPLIES[503]) from None

    async def balance(self) -> str:
        try:
            async with self.http.get(self.config.client + "/stats") as r:
                stats = await r.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise AskFailed(_REPLIES[503]) from None
        billing = stats.get("billing") or {}
        if billing.get("deposited") is None:
            return "This network does not bill (or no statement has come yet)."
        deposited, charged = int(billing["deposited"]), int(billing.get("charged", 0))
        reserved = int(billing.get("reserved", 0))
        lines = [f"Channel {billing.get('channel') or '(off chain)'}",
                 f"Deposit: {format_ton(deposited)} TON",
                 f"Spent: {format_ton(charged)} TON",
                 f"Available: {format_ton(deposited - charged - reserved)} TON"]
        tokens = stats.get("tokens") or {}
        if tokens:
            lines.append(f"Tokens: {tokens.get('prompt', 0)} in, "
                         f"{tokens.get('completion', 0)} out")
        return "\n".join(lines)


def _addressed(message: Message, me_id: int, me_name: str) -> str | None:
    """The question in ``message`` if the bot should answer it (any private message; in a
    group, one that mentions it or replies to it), the mention taken out; else None."""
    text = message.text or ""
    if not text or text.startswith("/"):
        return None
    if message.chat.type == ChatType.PRIVATE:
        return text
    mention = f"@{me_name}"
    if me_name and mention.lower() in text.lower():
        start = text.lower().index(mention.lower())
        return (text[:start] + text[start + len(mention):]).strip() or None
    reply = message.reply_to_message
    if reply is not None and reply.from_user is not None and reply.from_user.id == me_id:
        return text
    return None


async def _edit(message: Message, text: str) -> None:
    """Edit ``message`` to ``text``, waiting out Telegram's rate limit when it says so."""
    for _ in range(3):
        try:
            await message.edit_text(text)
            return
        except TelegramRetryAfter as exc:
            await asyncio.sleep(exc.retry_after)
        except TelegramBadRequest as exc:
            if "not modified" in str(exc):
                return
            raise


async def _send(message: Message, text: str) -> Message:
    for _ in range(3):
        try:
            return await message.answer(text)
        except TelegramRetryAfter as exc:
            await asyncio.sleep(exc.retry_after)
    return await message.answer(text)


def build_router(bot: ChatBot, me_id: int, me_name: str) -> Router:
    router = Router()

    @router.message(CommandStart())
    async def start(message: Message) -> None:
        await message.answer(
            "Hi! I answer through cocoon, a confidential compute network: your question is "
            "sealed to an attested worker that nobody else can read. Ask me anything. "
            "/reset forgets our chat, /model picks a model, /balance shows what is left.")

    @router.message(Command("reset"))
    async def reset(message: Message) -> None:
        bot.history.reset(message.chat.id)
        await message.answer("Forgotten: we start afresh.")

    @router.message(Command("model"))
    async def model(message: Message, command: CommandObject) -> None:
        try:
            models = await bot.available_models()
            if command.args:
                wanted = command.args.strip()
                if wanted not in models:
                    await message.answer(f"No such model here. Served: {', '.join(models)}")
                    return
                bot.models[message.chat.id] = wanted
                await message.answer(f"This chat now uses {wanted}.")
                return
            current = await bot.model_for(message.chat.id)
            await message.answer(f"Model: {current}\nServed: {', '.join(models)}\n"
                                 "Pick one with /model NAME.")
        except AskFailed as exc:
            await message.answer(exc.reply)

    @router.message(Command("balance"))
    async def balance(message: Message) -> None:
        try:
            await message.answer(await bot.balance())
        except AskFailed as exc:
            await message.answer(exc.reply)

    @router.message(F.text)
    async def question(message: Message) -> None:
        text = _addressed(message, me_id, me_name)
        if text is None:
            return
        await answer(bot, message, text)

    return router


async def answer(bot: ChatBot, message: Message, question: str) -> None:
    """Stream the answer to ``question`` into the chat: a placeholder, edited as the
    tokens come, at most once per interval; the chat's history then holds the turn."""
    chat = message.chat.id
    interval = (EDIT_INTERVAL_S if message.chat.type == ChatType.PRIVATE
                else GROUP_EDIT_INTERVAL_S)
    with contextlib.suppress(TelegramBadRequest, TelegramRetryAfter):
        await message.bot.send_chat_action(chat, ChatAction.TYPING)  # type: ignore[union-attr]
    started = time.monotonic()
    reply: Message | None = None
    done = ""  # the text of the messages already finished (past 4096 characters)
    text, last = "", 0.0
    try:
        async for delta in bot.ask(chat, question):
            text += delta
            if len(text) - len(done) > _ROOM:  # this message is full: start another
                first, *_ = split_text(text[len(done):], _ROOM)
                if reply is None:
                    reply = await _send(message, first)
                else:
                    await _edit(reply, first)
                done += text[len(done):len(done) + len(first)]
                reply = None
            now = time.monotonic()
            current = text[len(done):].strip()
            if current and now - last >= interval:
                if reply is None:
                    reply = await _send(message, current + " " + _PLACEHOLDER)
                else:
                    await _edit(reply, current + " " + _PLACEHOLDER)
                last = now
    except AskFailed as exc:
        final = text[len(done):].strip()
        note = (final + "\n\n" if final else "") + exc.reply
        if reply is None:
            await _send(message, note)
        else:
            await _edit(reply, note)
        log.info("chat answer failed after %.1f s", time.monotonic() - started)
        return
    final = text[len(done):].strip() or "(the model answered nothing)"
    if reply is None:
        await _send(message, final)
    else:
        await _edit(reply, final)
    bot.history.add(chat, question, text)
    log.info("chat answered: %d characters in %.1f s", len(text),
             time.monotonic() - started)


async def run_bot(config: BotConfig, stop: asyncio.Event | None = None) -> None:
    """Poll the Bot API and answer until ``stop`` is set (or forever)."""
    session = (AiohttpSession(api=TelegramAPIServer.from_base(config.api_url.rstrip("/")))
               if config.api_url else AiohttpSession())
    tg = Bot(config.token, session=session)
    async with ChatBot(config) as bot:
        me = await tg.get_me()
        dp = Dispatcher()
        dp.include_router(build_router(bot, me.id, me.username or ""))
        log.info("telegram bot @%s answering through %s", me.username, config.client)
        polling = asyncio.create_task(dp.start_polling(
            tg, polling_timeout=config.polling_timeout_s, handle_signals=False,
            allowed_updates=["message"]))
        waiter = asyncio.create_task((stop or asyncio.Event()).wait())
        try:
            await asyncio.wait({polling, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not polling.done():
                with contextlib.suppress(RuntimeError):
                    await dp.stop_polling()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(polling, 10)
            waiter.cancel()
            await tg.session.close()
        if polling.done() and not polling.cancelled() and polling.exception():
            raise polling.exception()  # type: ignore[misc]
