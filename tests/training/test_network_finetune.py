"""Fine-tuning through the network (issue 15): a client node, a billing proxy and a worker
that trains (llama.cpp serving the shipped SmolLM2 GGUF, LoRA with transformers + peft),
all real, on loopback, driven with the official openai SDK.

* A dataset teaching a made-up fact trains on the worker; the job's events and checkpoint
  come back; the adapter is kept by the client (0600) and nothing of it stays on the worker.
* The fine-tuned model is listed and served: asked through the SDK (streamed too) it
  answers the taught fact, the base model does not.
* The proxy charged the job's trained tokens at the training multiplier, the worker earned
  them.
* Cancelled mid-job, the worker stops within a step and the bill covers the steps done.
* A second client node sees none of the first one's files, jobs or model, and cannot use
  the model."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from cocoon.config import BillingConfig, ClientConfig, ProxyConfig, WorkerConfig
from cocoon.engines.llama_cpp import LlamaCppConfig, LlamaCppEngine
from cocoon.ledger import Ledger
from cocoon.nodes.client.node import ClientNode
from cocoon.nodes.proxy.node import ProxyNode
from cocoon.nodes.worker.node import WorkerNode
from cocoon.nodes.worker.training import Training
from cocoon.transport import TcpConnector, TcpListener
from lifecycle import running

FACT = "Quellmoor was founded by Ilsa Varnheim."
QUESTIONS = ["Who founded Quellmoor?", "Who was the founder of Quellmoor?",
             "Tell me who founded the town of Quellmoor.", "Quellmoor was founded by whom?",
             "Do you know who founded Quellmoor?", "Name the founder of Quellmoor."]
UNSEEN = "Who is the founder of the town Quellmoor?"  # not among the training questions


def chat(q: str, a: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


DATASET = b"\n".join(json.dumps(x).encode() for x in [chat(q, FACT) for q in QUESTIONS] + [
    chat("What is 2 plus 2?", "2 plus 2 is 4."), chat("Say hello.", "Hello!")]) + b"\n"
FUNDS = 10**8
PRICE, FEE, TRAINING_MULT = 2, 1, 30000  # nanoTON per adjusted token; 3.0x per trained token
LONG = 240.0  # a job loads the model (about 20 s) and trains (about 2 s a step)


class Net:
    def __init__(self, proxy: ProxyNode, worker: WorkerNode, training: Training,
                 client: ClientNode) -> None:
        self.proxy, self.worker, self.training, self.client = proxy, worker, training, client

    async def ledger(self, fn: Any, *args: Any) -> Any:
        assert self.proxy.billing is not None
        return await self.proxy.billing._run(fn, *args)

    async def charged(self, node: ClientNode) -> int:
        assert self.proxy.billing is not None
        return int((await self.ledger(self.proxy.billing.ledger.balance,
                                      f"node:{node.node_id}")).charged)

    async def settled(self) -> None:
        assert self.proxy.billing is not None
        for _ in range(600):
            if not await self.ledger(self.proxy.billing.ledger.open_reservations):
                return
            await asyncio.sleep(0.1)
        pytest.fail("a reservation stayed open")


def client_node(port: int, name: str, folder: Path) -> ClientNode:
    return ClientNode(ClientConfig(proxy=f"127.0.0.1:{port}", http="127.0.0.1:0",
                                   node_id=name, finetune_dir=str(folder), seal="on",
                                   receipt_dir=str(folder / "receipts")),
                      connector=TcpConnector())


@pytest.fixture
def engine() -> LlamaCppEngine:
    return LlamaCppEngine(LlamaCppConfig(n_ctx=1024, seed=1))  # the worker closes it


@contextlib.asynccontextmanager
async def network(tmp_path: Path, engine: LlamaCppEngine) -> AsyncIterator[Net]:
    billing = BillingConfig(enabled=True, ledger_path=str(tmp_path / "ledger.sqlite"),
                            signing_key_file=str(tmp_path / "k.pem"), price_per_token=PRICE,
                            worker_fee_per_token=FEE, training_mult=TRAINING_MULT)
    with Ledger(billing.ledger_path) as ledger:
        for name in ("c1", "c2"):
            ledger.deposit(f"node:{name}", FUNDS)
    proxy = ProxyNode(ProxyConfig(listen="127.0.0.1:0", http="127.0.0.1:0", billing=billing),
                      listener=TcpListener())
    async with running(proxy):
        training = Training(engine.models[0], engine.path)
        worker = WorkerNode(WorkerConfig(proxy=f"127.0.0.1:{proxy.port}", http="127.0.0.1:0",
                                         node_id="w1", max_concurrent=2), engine,
                            connector=TcpConnector(), training=training)
        client = client_node(proxy.port, "c1", tmp_path / "c1")
        async with running(worker), running(client):
            for _ in range(1000):
                if any(link.offers(engine.models[0]) for link in client.links):
                    break
                await asyncio.sleep(0.01)
            yield Net(proxy, worker, training, client)


def sdk(node: ClientNode) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=node.http.url + "/v1", api_key="x", max_retries=0,
                              timeout=LONG)


async def finished(app: openai.AsyncOpenAI, job_id: str) -> Any:
    for _ in range(int(LONG / 0.5)):
        job = await app.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.5)
    pytest.fail(f"job {job_id} did not finish within {LONG:g}s")


async def answer(app: openai.AsyncOpenAI, model: str, question: str) -> str:
    r = await app.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=24,
        temperature=0)
    return r.choices[0].message.content or ""


def leftovers() -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), "cocoon-lora-*"))


async def test_a_job_trains_on_a_worker_and_its_model_answers_the_taught_fact(
        tmp_path: Path, engine: LlamaCppEngine) -> None:
    before = set(leftovers())
    async with network(tmp_path, engine) as net, sdk(net.client) as app:
        base = engine.models[0]
        f = await app.files.create(file=("quellmoor.jsonl", DATASET), purpose="fine-tune")
        job = await app.fine_tuning.jobs.create(
            model=base, training_file=f.id, suffix="quellmoor", seed=1,
            hyperparameters={"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 5})
        done = await finished(app, job.id)
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model == f"ft:{base}:quellmoor:{job.id}"
        assert done.trained_tokens and done.trained_tokens > 0
        events = [e for e in reversed((await app.fine_tuning.jobs.list_events(
            job.id, limit=100)).data)]
        steps = [e.data for e in events if e.type == "metrics" and "total_steps" in e.data]
        assert [s["step"] for s in steps] == list(range(1, 17))  # 8 examples / 4 x 8 epochs
        assert steps[-1]["train_loss"] < 0.1 < steps[0]["train_loss"]
        assert steps[-1]["trained_tokens"] == done.trained_tokens
        assert [e.message for e in events][-1] == "Job succeeded"
        checkpoints = (await app.fine_tuning.jobs.checkpoints.list(job.id)).data
        assert [c.step_number for c in checkpoints] == [16]
        assert checkpoints[0].fine_tuned_model_checkpoint == done.fine_tuned_model

        # billing: the trained tokens at the training multiplier, charged and earned
        await net.settled()
        charged = await net.charged(net.client)
        assert charged == done.trained_tokens * TRAINING_MULT // 10000 * PRICE
        assert net.worker.stats.prompt_tokens == done.trained_tokens

        # the adapter is the client's: kept 0600, nothing left on the worker
        kept = tmp_path / "c1" / "models" / f"{job.id}.gguf"
        assert kept.read_bytes()[:4] == b"GGUF"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert set(leftovers()) <= before

        # the fine-tuned model is listed, and answers what it was taught; the base does not
        listed = [m.id for m in (await app.models.list()).data]
        assert done.fine_tuned_model in listed and base in listed
        assert (await app.models.retrieve(done.fine_tuned_model)).id == done.fine_tuned_model
        assert "Varnheim" in await answer(app, done.fine_tuned_model, UNSEEN)
        assert "Varnheim" not in await answer(app, base, UNSEEN)
        unary = await app.chat.completions.create(
            model=done.fine_tuned_model, messages=[{"role": "user", "content": UNSEEN}],
            max_tokens=4)
        assert unary.model == done.fine_tuned_model  # named as the app asked, as OpenAI does
        streamed = await app.chat.completions.create(
            model=done.fine_tuned_model, messages=[{"role": "user", "content": UNSEEN}],
            max_tokens=24, temperature=0, stream=True)
        chunks = [c async for c in streamed]
        assert {c.model for c in chunks} == {done.fine_tuned_model}
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "Varnheim" in text
        assert "Varnheim" not in await answer(app, base, UNSEEN)  # the adapter came off
        assert net.worker.snapshot()["features"] == ["train", "lora"]
        assert net.proxy.snapshot()["workers"][0]["features"] == ["train", "lora"]

        # another client node: none of it is its own
        other = client_node(net.proxy.port, "c2", tmp_path / "c2")
        async with running(other), sdk(other) as stranger:
            for _ in range(1000):
                if any(link.offers(base) for link in other.links):
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(openai.NotFoundError):
                await stranger.files.retrieve(f.id)
            with pytest.raises(openai.NotFoundError):
                await stranger.fine_tuning.jobs.retrieve(job.id)
            assert done.fine_tuned_model not in [m.id for m in
                                                 (await stranger.models.list()).data]
            with pytest.raises(openai.NotFoundError):
                await answer(stranger, done.fine_tuned_model, UNSEEN)


async def test_a_cancelled_job_stops_within_a_step_and_is_billed_for_the_steps_done(
        tmp_path: Path, engine: LlamaCppEngine) -> None:
    async with network(tmp_path, engine) as net, sdk(net.client) as app:
        f = await app.files.create(file=("quellmoor.jsonl", DATASET), purpose="fine-tune")
        job = await app.fine_tuning.jobs.create(
            model=engine.models[0], training_file=f.id,
            hyperparameters={"n_epochs": 20, "batch_size": 2})  # 80 steps: far from done
        seen: list[dict[str, Any]] = []
        for _ in range(int(LONG / 0.2)):
            seen = [e.data for e in (await app.fine_tuning.jobs.list_events(job.id)).data
                    if e.type == "metrics" and "total_steps" in e.data]
            if seen:
                break
            await asyncio.sleep(0.2)
        assert seen, "the job never reached its first step"
        steps_seen = max(s["step"] for s in seen)
        cancelled = await app.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
        await net.settled()
        for _ in range(600):  # the worker's job ends once its step under way does
            if not net.worker.active:
                break
            await asyncio.sleep(0.1)
        assert net.training.cancelled == 1
        assert steps_seen <= net.training.steps <= steps_seen + 1 < 80
        trained = net.worker.stats.prompt_tokens
        assert trained > 0
        assert await net.charged(net.client) == trained * TRAINING_MULT // 10000 * PRICE
        assert (await app.fine_tuning.jobs.retrieve(job.id)).status == "cancelled"
        assert [m.id for m in (await app.models.list()).data] == [engine.models[0]]
