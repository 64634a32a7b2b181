"""A local Telegram Bot API server for the bot's tests, speaking the real HTTP protocol
(``POST /bot<token>/<method>`` with form or JSON parameters, ``{"ok": ..., "result": ...}``
answers, ``getUpdates`` long polling with offsets), keeping what the bot sent, and answering
429 with ``retry_after`` to a message edited again within half a second."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT = {"id": 999, "is_bot": True, "first_name": "Cocoon", "username": "cocoon_test_bot"}
USER = {"id": 42, "is_bot": False, "first_name": "Ada"}


@dataclass
class Sent:
    chat: int
    message_id: int
    texts: list[str] = field(default_factory=list)  # as sent, then each edit

    @property
    def text(self) -> str:
        return self.texts[-1]


class BotApiServer:
    def __init__(self, token: str) -> None:
        self.token = token
        self.updates: list[dict[str, Any]] = []
        self.sent: list[Sent] = []
        self.actions: list[tuple[int, str]] = []
        self.too_fast = 0  # edits refused with 429
        self.calls: list[str] = []
        self._ids = itertools.count(1)
        self._update_ids = itertools.count(1)
        self._new = asyncio.Event()
        self._edited_at: dict[int, float] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> BotApiServer:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._call)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    # --- what a test does ----------------------------------------------------------------

    def say(self, chat: int, text: str, *, group: bool = False,
            reply_to: Sent | None = None) -> int:
        """A user's message in ``chat`` (a group's chat ids are negative, as Telegram's)."""
        message_id = next(self._ids)
        message: dict[str, Any] = {
            "message_id": message_id, "date": int(time.time()), "from": USER, "text": text,
            "chat": {"id": chat, "type": "group", "title": "Friends"} if group
            else {"id": chat, "type": "private", "first_name": "Ada"}}
        if text.startswith("/"):
            message["entities"] = [{"type": "bot_command", "offset": 0,
                                    "length": len(text.split()[0])}]
        if reply_to is not None:
            message["reply_to_message"] = self._message(reply_to.chat, reply_to.message_id,
                                                        reply_to.text, group=group)
        self.updates.append({"update_id": next(self._update_ids), "message": message})
        self._new.set()
        return message_id

    def to(self, chat: int) -> list[Sent]:
        return [s for s in self.sent if s.chat == chat]

    # --- the Bot API ------------------------------------------------------------------------

    def _message(self, chat: int, message_id: int, text: str, *, group: bool) -> dict[str, Any]:
        return {"message_id": message_id, "date": int(time.time()), "from": BOT, "text": text,
                "chat": {"id": chat, "type": "group" if group or chat < 0 else "private"}}

    async def _call(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401,
                                      "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        self.calls.append(method)
        if request.content_type == "application/json":
            params: dict[str, Any] = await request.json()
        else:
            params = dict(await request.post())
        handler = getattr(self, f"_{method}", None)
        if handler is None:
            return web.json_response({"ok": True, "result": True})
        return await handler(params)  # type: ignore[no-any-return]

    @staticmethod
    def _ok(result: Any) -> web.Response:
        return web.json_response({"ok": True, "result": result})

    async def _getMe(self, _: dict[str, Any]) -> web.Response:
        return self._ok(BOT)

    async def _getUpdates(self, params: dict[str, Any]) -> web.Response:
        offset = int(params.get("offset") or 0)
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        while True:
            fresh = [u for u in self.updates if u["update_id"] >= offset]
            left = deadline - time.monotonic()
            if fresh or left <= 0:
                return self._ok(fresh)
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)

    async def _sendMessage(self, params: dict[str, Any]) -> web.Response:
        chat, text = int(params["chat_id"]), str(params["text"])
        sent = Sent(chat, next(self._ids), [text])
        self.sent.append(sent)
        return self._ok(self._message(chat, sent.message_id, text, group=chat < 0))

    async def _editMessageText(self, params: dict[str, Any]) -> web.Response:
        chat, message_id = int(params["chat_id"]), int(params["message_id"])
        [sent] = [s for s in self.sent if s.chat == chat and s.message_id == message_id]
        now = time.monotonic()
        if now - self._edited_at.get(message_id, 0.0) < 0.5:
            self.too_fast += 1
            return web.json_response({"ok": False, "error_code": 429,
                                      "description": "Too Many Requests: retry after 1",
                                      "parameters": {"retry_after": 1}}, status=429)
        self._edited_at[message_id] = now
        text = str(params["text"])
        if text == sent.text:
            return web.json_response({"ok": False, "error_code": 400, "description":
                                      "Bad Request: message is not modified"}, status=400)
        sent.texts.append(text)
        return self._ok(self._message(chat, message_id, text, group=chat < 0))

    async def _sendChatAction(self, params: dict[str, Any]) -> web.Response:
        self.actions.append((int(params["chat_id"]), str(params["action"])))
        return self._ok(True)
