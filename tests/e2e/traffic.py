"""Identifiable traffic for the e2e fault tests (imported by name): request ``k`` carries a
unique prompt of ``k * stride`` tokens (fake engine: a quarter of the prompt's bytes) and at
most ``CHUNKS < stride`` completion tokens, so each settled reservation's token count names
the request it charged and how much of it was generated (``settled_tokens``).

A request whose worker was lost mid-stream is charged by the proxy's estimate, a quarter of
the whole request body's bytes for the prompt (about 30 tokens more than the content): a
test where that happens uses ``Traffic(stride=WIDE_STRIDE)`` so estimates still name their
request."""

from __future__ import annotations

import collections
import random
import sqlite3
import threading
from dataclasses import dataclass, field

import openai
from openai.types.chat import ChatCompletionMessageParam

CHUNKS = 8  # completion tokens of every request (fake engine: one token per chunk)
STRIDE = CHUNKS + 1  # request k has k * STRIDE prompt tokens (the default stride)
WIDE_STRIDE = 64  # room for an estimate's JSON overhead (~30 tokens) plus CHUNKS


@dataclass
class Traffic:
    """What the app saw, per request (keyed by its unique prompt token count ``k``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    next_k: int = 1
    in_flight: set[int] = field(default_factory=set)
    completed: dict[int, int] = field(default_factory=dict)  # k -> prompt + completion
    failed: dict[int, str] = field(default_factory=dict)  # k -> error
    received: dict[int, int] = field(default_factory=dict)  # failed k -> content chunks seen
    truncated: set[int] = field(default_factory=set)  # stream ended, no error, no usage
    wrong_usage: dict[int, tuple[int, int]] = field(default_factory=dict)
    stride: int = STRIDE

    def start(self) -> int:
        with self.lock:
            k = self.next_k
            self.next_k += 1
            self.in_flight.add(k)
            return k

    def done(self, k: int, usage: tuple[int, int] | None, error: str | None,
             received: int = 0) -> None:
        with self.lock:
            self.in_flight.discard(k)
            if error is not None:
                self.failed[k] = error
                self.received[k] = received
            elif usage is None:
                self.truncated.add(k)
            else:
                if usage != (k * self.stride, CHUNKS):
                    self.wrong_usage[k] = usage
                self.completed[k] = sum(usage)


def one_request(client: openai.OpenAI, traffic: Traffic, stream: bool) -> bool:
    """Send one request; True if it failed (the caller backs off a little)."""
    k = traffic.start()
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "x" * (4 * k * traffic.stride)}]
    usage: tuple[int, int] | None = None
    received = 0
    try:
        if stream:
            for chunk in client.chat.completions.create(
                    model="fake", messages=messages, max_tokens=CHUNKS, stream=True,
                    stream_options={"include_usage": True}):
                if chunk.choices and chunk.choices[0].delta.content:
                    received += 1
                if chunk.usage is not None:
                    usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        else:
            r = client.chat.completions.create(model="fake", messages=messages,
                                               max_tokens=CHUNKS)
            assert r.usage is not None
            usage = (r.usage.prompt_tokens, r.usage.completion_tokens)
    except Exception as exc:  # any failure while the proxy dies is allowed
        traffic.done(k, None, f"{type(exc).__name__}: {exc}"[:200], received)
        return True
    traffic.done(k, usage, None)
    return False


def drive(base_url: str, traffic: Traffic, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=10.0)
    try:
        while not stop.is_set():
            if one_request(client, traffic, stream=rng.random() < 0.7):
                stop.wait(0.05)  # the proxy is down: don't spin
    finally:
        client.close()


def settled_tokens(ledger_path: object) -> tuple[list[int], collections.Counter[str]]:
    conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        tokens = [row[0] for row in conn.execute(
            "SELECT adjusted_tokens FROM reservations WHERE state = 'settled'")]
        states = collections.Counter(row[0] for row in conn.execute(
            "SELECT state FROM reservations"))
    finally:
        conn.close()
    return tokens, states
