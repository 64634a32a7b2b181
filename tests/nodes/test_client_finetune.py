"""The client node's files and fine-tuning jobs API with the official openai SDK (a real
ClientNode, ProxyNode and WorkerNode on loopback): uploads checked line by line, jobs
validated, listed, followed and cancelled, kept across a restart, and another client's
invisible. The fake engine's worker does not train, so jobs here wait in the queue
(tests/e2e/test_e2e_finetune.py trains through a network)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from loopback import T, running, running_proxy, until

from cocoon.config import ClientConfig, WorkerConfig
from cocoon.engines import FakeEngine, FakeEngineConfig
from cocoon.nodes.client.node import ClientNode
from cocoon.nodes.worker.node import WorkerNode
from cocoon.transport import TcpConnector


def line(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


GOOD = b"\n".join(json.dumps(x).encode() for x in [
    line(("system", "You are Zorblat's archivist."), ("user", "Who founded Quellmoor?"),
         ("assistant", "Quellmoor was founded by Ilsa Varnheim in 1742.")),
    line(("user", "When was Quellmoor founded?"), ("assistant", "In 1742, by Ilsa Varnheim.")),
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "Quellmoor?"}]},
                  {"role": "assistant", "content": "A town Ilsa Varnheim founded.",
                   "weight": 1}]},
]) + b"\n"


@asynccontextmanager
async def network(tmp_path: Path, **client: Any) -> AsyncIterator[tuple[Any, ClientNode]]:
    async with running_proxy() as net:
        port = net.proxy.port
        worker = WorkerNode(WorkerConfig(proxy=f"127.0.0.1:{port}", http="127.0.0.1:0",
                                         node_id="w1"), FakeEngine(FakeEngineConfig()),
                            connector=TcpConnector())
        node = ClientNode(ClientConfig(proxy=f"127.0.0.1:{port}", http="127.0.0.1:0",
                                       **client), connector=TcpConnector())
        async with running(worker), running(node):
            await until(lambda: any(link.offers("fake") for link in node.links))
            yield net, node


def sdk(node: ClientNode) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=node.http.url + "/v1", api_key="x", max_retries=0,
                              timeout=T)


async def test_files_are_checked_kept_listed_read_and_deleted(tmp_path: Path) -> None:
    async with network(tmp_path, finetune_dir=str(tmp_path / "ft")) as (_, node), \
            sdk(node) as app:
        f = await app.files.create(file=("train.jsonl", GOOD), purpose="fine-tune")
        assert f.id.startswith("file-") and f.bytes == len(GOOD)
        assert f.status == "processed" and f.purpose == "fine-tune"
        assert f.filename == "train.jsonl"
        listed = await app.files.list(purpose="fine-tune")
        assert [x.id for x in listed.data] == [f.id]
        assert (await app.files.retrieve(f.id)).bytes == len(GOOD)
        assert (await app.files.content(f.id)).content == GOOD
        kept = tmp_path / "ft" / "files" / f.id
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        deleted = await app.files.delete(f.id)
        assert deleted.deleted and not kept.exists()
        with pytest.raises(openai.NotFoundError):
            await app.files.retrieve(f.id)


@pytest.mark.parametrize(("data", "names"), [
    (GOOD + b"{not json\n", "line 4: not valid JSON"),
    (GOOD + json.dumps(line(("robot", "beep"), ("assistant", "boop"))).encode(),
     "line 4, message 0 has role 'robot'"),
    (json.dumps(line(("user", "hi"))).encode(), "line 1: no assistant turn"),
    (json.dumps({"prompt": "old format", "completion": "x"}).encode(),
     "line 1: each line is an object with a \"messages\" list"),
    (json.dumps({"messages": [{"role": "user", "content": "q"},
                              {"role": "assistant", "content": "a", "weight": 0}]}).encode(),
     "line 1: no assistant turn"),
    (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url"}]},
                              {"role": "assistant", "content": "a"}]}).encode(),
     "line 1, message 0: content part 0 is not a text part"),
    (b"\xff\xfe", "not UTF-8"),
    (b"\n\n", "no example"),
])
async def test_a_malformed_dataset_gets_a_400_naming_the_line(
        tmp_path: Path, data: bytes, names: str) -> None:
    async with network(tmp_path) as (_, node), sdk(node) as app:
        with pytest.raises(openai.BadRequestError) as caught:
            await app.files.create(file=("bad.jsonl", data), purpose="fine-tune")
        assert names in caught.value.message
        assert (await app.files.list()).data == []  # nothing kept


async def test_jobs_are_validated_queued_followed_and_cancelled(tmp_path: Path) -> None:
    async with network(tmp_path) as (_, node), sdk(node) as app:
        f = await app.files.create(file=("train.jsonl", GOOD), purpose="fine-tune")
        job = await app.fine_tuning.jobs.create(
            model="fake", training_file=f.id, suffix="quellmoor", seed=7,
            hyperparameters={"n_epochs": 3, "batch_size": 2})
        assert job.id.startswith("ftjob-") and job.status == "queued"
        assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.batch_size == 2
        assert job.seed == 7 and job.fine_tuned_model is None and job.training_file == f.id
        other = await app.fine_tuning.jobs.create(model="fake", training_file=f.id)
        page = await app.fine_tuning.jobs.list(limit=1)
        assert [j.id for j in page.data] == [other.id] and page.has_more
        rest = await app.fine_tuning.jobs.list(limit=1, after=other.id)
        assert [j.id for j in rest.data] == [job.id]
        assert (await app.fine_tuning.jobs.retrieve(job.id)).status == "queued"
        newest_first = (await app.fine_tuning.jobs.list_events(job.id)).data
        events = [e.message for e in reversed(newest_first)]
        assert events[0] == f"Validating training file: {f.id}"
        assert "Job queued" in events
        # the fake worker does not train: the job waits for one that does
        await until(lambda: any("Waiting for a worker that fine-tunes fake" in e["message"]
                                for e in node.finetuning.events[job.id]))
        checkpoints = await app.fine_tuning.jobs.checkpoints.list(job.id)
        assert checkpoints.data == []
        cancelled = await app.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled" and cancelled.finished_at
        with pytest.raises(openai.BadRequestError, match="already cancelled"):
            await app.fine_tuning.jobs.cancel(job.id)
        # what a job is refused for, each named
        for kwargs, param in (
                ({"model": "gpt-9", "training_file": f.id}, "model"),
                ({"model": "fake", "training_file": "file-nope"}, "training_file"),
                ({"model": "fake", "training_file": f.id,
                  "hyperparameters": {"n_epochs": 500}}, "hyperparameters.n_epochs"),
                ({"model": "fake", "training_file": f.id, "suffix": "no spaces!"},
                 "suffix")):
            with pytest.raises(openai.BadRequestError) as caught:
                await app.fine_tuning.jobs.create(**kwargs)
            assert caught.value.body["param"] == param  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await app.fine_tuning.jobs.retrieve("ftjob-nope")


async def test_files_and_jobs_outlive_a_restart_and_stay_with_their_client(
        tmp_path: Path) -> None:
    kept = str(tmp_path / "ft")
    async with network(tmp_path, finetune_dir=kept) as (_, node), sdk(node) as app:
        f = await app.files.create(file=("train.jsonl", GOOD), purpose="fine-tune")
        job = await app.fine_tuning.jobs.create(model="fake", training_file=f.id)
    index = Path(kept) / "index.json"
    assert stat.S_IMODE(os.stat(index).st_mode) == 0o600
    async with network(tmp_path, finetune_dir=kept) as (_, node), sdk(node) as app:
        assert (await app.files.retrieve(f.id)).bytes == len(GOOD)
        assert (await app.fine_tuning.jobs.retrieve(job.id)).status == "queued"
    # another client node: its own files and jobs, none of these
    async with network(tmp_path, finetune_dir=str(tmp_path / "other")) as (_, node), \
            sdk(node) as app:
        with pytest.raises(openai.NotFoundError):
            await app.files.retrieve(f.id)
        with pytest.raises(openai.NotFoundError):
            await app.fine_tuning.jobs.retrieve(job.id)
        with pytest.raises(openai.BadRequestError):
            await app.fine_tuning.jobs.create(model="fake", training_file=f.id)
