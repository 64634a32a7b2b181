"""The client node's OpenAI files and fine-tuning jobs API (``/v1/files``,
``/v1/fine_tuning/jobs``), used unchanged by the official SDK.

Files (purpose ``fine-tune``) are checked line by line at upload
(:func:`cocoon.openai.finetune.check_training_file`: a 400 names the line and the problem)
and kept by this client node only: under ``client.finetune_dir`` (each file 0600, an index
beside them), or in memory when it is empty. Another client node has its own, so nobody else
sees or uses them. A job is validated (its model served by the network, its files present
and fit for training, its hyperparameters in range), then sent through a proxy to a worker
that announces training (``cocoon.training.protocol``: the examples travel sealed to that
worker, like any request, and its reservation covers every token the job can train). The
worker's events become the job's: its status, a ``metrics`` event per step (loss, trained
tokens) and per epoch, and at the end the adapter, which comes back sealed to this client
only. It is kept here (``models/<job id>.gguf``, 0600) and the job's ``fine_tuned_model``
(``ft:<base>:<suffix>:<job id>``) is then listed at ``/v1/models`` of this client alone and
served through the network: each request for it carries the adapter to a worker of the base
model that applies it (``lora``). Cancelling a job stops its worker within a step; it is
billed for the steps done. A job that was running when this node stopped is failed at the
next start (its worker stopped with the stream); a queued one is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from cocoon.errors import BadRequest, EngineError, NoWorkerAvailable, RequestError, WorkerLost
from cocoon.openai.finetune import check_training_file, parse_hyperparameters
from cocoon.training.protocol import (
    DEFAULT_BATCH,
    Adapter,
    AdapterAssembler,
    TrainingRequest,
    auto_epochs,
    fine_tuned_name,
    reserve_tokens,
)
from cocoon.wire import MAX_REQUEST_BODY

__all__ = ["FineTuning"]

log = logging.getLogger(__name__)

_PURPOSES: Final = frozenset({"fine-tune"})
_INDEX: Final = "index.json"
_MAX_LIST: Final = 100
_FINISHED: Final = frozenset({"succeeded", "failed", "cancelled"})
_JOB_TIMEOUT_S: Final = 21600.0  # the longest a job may run (the proxy's own limit binds too)
_ADAPTERS_CACHED: Final = 8
_RETRY_S: Final = 5.0  # a queued job with no worker to train it asks again this often

JobRunner = Callable[[str, bytes, int, float, Callable[[dict[str, Any]], None], str],
                     Awaitable[Any]]
"""How a job reaches a worker: ``(model, body, max_tokens, timeout_s, on_event, job_id)``
sends it through a proxy to a worker that trains, hands each event of the answer to
``on_event`` and returns when it ends; raises the RequestError that ended it."""


class NotFound(RequestError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body's fields: name -> (file name, bytes). BadRequest if it is
    not one."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest("upload the file as multipart/form-data (fields file and purpose)")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise BadRequest("the multipart body does not parse")
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            out[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return out


def _write_private(path: Path, data: bytes) -> None:
    """``data`` as the file ``path`` (0600; its folder made if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


class FineTuning:
    """Files and jobs, and the routes that serve them. ``models()`` names the models the
    network serves now; ``answer(request, err)`` turns an error into the node's response."""

    def __init__(self, directory: str, models: Callable[[], list[str]],
                 answer: Callable[[web.Request, RequestError], web.Response],
                 runner: JobRunner | None = None) -> None:
        self._dir = Path(directory) if directory else None
        self._models = models
        self._answer = answer
        self._runner = runner
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._adapters: OrderedDict[str, Adapter] = OrderedDict()  # by job id, in memory
        self.files: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._content: dict[str, bytes] = {}  # in memory, without a directory
        self.jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.checkpoints: dict[str, list[dict[str, Any]]] = {}
        if self._dir is not None:
            self._load()

    # --- storage ------------------------------------------------------------------------

    def _load(self) -> None:
        assert self._dir is not None
        index = self._dir / _INDEX
        if not index.exists():
            return
        data = json.loads(index.read_text())
        self.files = OrderedDict((f["id"], f) for f in data.get("files", []))
        self.jobs = OrderedDict((j["id"], j) for j in data.get("jobs", []))
        self.events = data.get("events", {})
        self.checkpoints = data.get("checkpoints", {})
        for job in self.jobs.values():
            if job["status"] in ("running", "validating_files"):
                job["error"] = {"code": "interrupted", "param": None, "message":
                                "the client node stopped while the job ran"}
                self._status(job, "failed")

    def _save(self) -> None:
        if self._dir is None:
            return
        tmp = self._dir / (_INDEX + ".tmp")
        _write_private(tmp, json.dumps(
            {"files": list(self.files.values()), "jobs": list(self.jobs.values()),
             "events": self.events, "checkpoints": self.checkpoints}).encode())
        os.replace(tmp, self._dir / _INDEX)

    def _write_content(self, file_id: str, data: bytes) -> None:
        if self._dir is None:
            self._content[file_id] = data
            return
        _write_private(self._dir / "files" / file_id, data)

    def content(self, file_id: str) -> bytes:
        if self._dir is None:
            return self._content[file_id]
        return (self._dir / "files" / file_id).read_bytes()

    # --- routes -------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        for method, path, handler in (
                ("POST", "/v1/files", self._upload),
                ("GET", "/v1/files", self._list_files),
                ("GET", "/v1/files/{id}", self._file),
                ("GET", "/v1/files/{id}/content", self._file_content),
                ("DELETE", "/v1/files/{id}", self._delete_file),
                ("POST", "/v1/fine_tuning/jobs", self._create_job),
                ("GET", "/v1/fine_tuning/jobs", self._list_jobs),
                ("GET", "/v1/fine_tuning/jobs/{id}", self._job),
                ("POST", "/v1/fine_tuning/jobs/{id}/cancel", self._cancel_job),
                ("GET", "/v1/fine_tuning/jobs/{id}/events", self._job_events),
                ("GET", "/v1/fine_tuning/jobs/{id}/checkpoints", self._job_checkpoints)):
            app.router.add_route(method, path, self._answering(handler))

    def _answering(self, handler: Callable[[web.Request], Awaitable[web.Response]]
                   ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """``handler`` with its RequestErrors answered in OpenAI's shape."""
        async def route(request: web.Request) -> web.Response:
            try:
                return await handler(request)
            except RequestError as exc:
                return self._answer(request, exc)
        return route

    def _found(self, table: dict[str, dict[str, Any]], request: web.Request,
               what: str) -> dict[str, Any]:
        found = table.get(request.match_info["id"])
        if found is None:
            raise NotFound(f"No such {what}: {request.match_info['id'][:64]}", param="id")
        return found

    async def _upload(self, request: web.Request) -> web.Response:
        # the body is already read (the node's body deadline): parsed from its bytes
        form = _multipart(request.headers.get("Content-Type", ""), await request.read())
        purpose = form.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        if purpose not in _PURPOSES:
            raise BadRequest("purpose must be \"fine-tune\" (the only files kept here)",
                             param="purpose")
        if "file" not in form:
            raise BadRequest("a multipart field \"file\" with the file is required",
                             param="file")
        filename, data = form["file"]
        stats = check_training_file(data)
        file_id = _new_id("file-")
        self._write_content(file_id, data)
        obj = {"id": file_id, "object": "file", "bytes": len(data),
               "created_at": int(time.time()), "filename": filename or "upload.jsonl",
               "purpose": purpose, "status": "processed", "status_details": None,
               "expires_at": None, "examples": stats.examples}
        self.files[file_id] = obj
        self._save()
        log.info("file %s kept: %d bytes, %d examples", file_id, len(data), stats.examples)
        return web.json_response(obj)

    async def _list_files(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        rows = [f for f in self.files.values() if purpose is None or f["purpose"] == purpose]
        return self._page(request, rows)

    async def _file(self, request: web.Request) -> web.Response:
        return web.json_response(self._found(self.files, request, "file"))

    async def _file_content(self, request: web.Request) -> web.Response:
        f = self._found(self.files, request, "file")
        return web.Response(body=self.content(f["id"]), content_type="application/jsonl")

    async def _delete_file(self, request: web.Request) -> web.Response:
        f = self._found(self.files, request, "file")
        del self.files[f["id"]]
        self._content.pop(f["id"], None)
        if self._dir is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._dir / "files" / f["id"]).unlink()
        self._save()
        return web.json_response({"id": f["id"], "object": "file", "deleted": True})

    def _page(self, request: web.Request, rows: list[dict[str, Any]]) -> web.Response:
        """OpenAI's cursor pages: newest first (``order=asc`` the other way), ``after`` an
        id, ``limit`` at most 100."""
        try:
            limit = min(_MAX_LIST, max(1, int(request.query.get("limit", "20"))))
        except ValueError:
            raise BadRequest("limit must be a number", param="limit") from None
        rows = rows if request.query.get("order") == "asc" else rows[::-1]
        after = request.query.get("after")
        if after:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        page = rows[:limit]
        return web.json_response({
            "object": "list", "data": page, "has_more": len(rows) > limit,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None})

    # --- jobs ---------------------------------------------------------------------------

    def _event(self, job: dict[str, Any], message: str, *, level: str = "info",
               data: dict[str, Any] | None = None, kind: str = "message") -> None:
        self.events.setdefault(job["id"], []).append({
            "object": "fine_tuning.job.event", "id": _new_id("ftevent-"),
            "created_at": int(time.time()), "level": level, "message": message,
            "data": data or {}, "type": kind})

    def _status(self, job: dict[str, Any], status: str) -> None:
        job["status"] = status
        if status in _FINISHED:
            job["finished_at"] = int(time.time())
        self._event(job, f"Job {status.replace('_', ' ')}", kind="message",
                    data={"status": status})

    def _training_file(self, file_id: Any, param: str) -> dict[str, Any]:
        if not isinstance(file_id, str) or file_id not in self.files:
            raise BadRequest(f"no file {str(file_id)[:64]!r} here (upload it with purpose "
                             "fine-tune first)", param=param)
        f = self.files[file_id]
        if f["purpose"] != "fine-tune":
            raise BadRequest(f"file {file_id} has purpose {f['purpose']}, not fine-tune",
                             param=param)
        return f

    async def _create_job(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        model = body.get("model")
        served = self._models()
        if not isinstance(model, str) or model not in served:
            raise BadRequest(f"model {str(model)[:64]!r} is not served by the network "
                             f"(served: {', '.join(served) or 'none yet'})", param="model")
        training = self._training_file(body.get("training_file"), "training_file")
        validation = body.get("validation_file")
        if validation is not None:
            self._training_file(validation, "validation_file")
        hyper = parse_hyperparameters(body)
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or not 0 < len(suffix) <= 64
                                   or not suffix.replace("-", "").replace("_", "")
                                   .isalnum()):
            raise BadRequest("suffix: up to 64 letters, digits, - and _", param="suffix")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not 0 <= seed <= 2**31 - 1):
            raise BadRequest("seed must be an integer from 0 to 2147483647",
                             param="seed")
        job_id = _new_id("ftjob-")
        job: dict[str, Any] = {
            "id": job_id, "object": "fine_tuning.job", "model": model,
            "created_at": int(time.time()), "finished_at": None, "fine_tuned_model": None,
            "organization_id": "cocoon", "result_files": [], "status": "validating_files",
            "validation_file": validation, "training_file": training["id"],
            "hyperparameters": hyper.to_openai(), "trained_tokens": None, "error": None,
            "seed": seed if seed is not None else int.from_bytes(os.urandom(4), "big") >> 1,
            "suffix": suffix, "estimated_finish": None, "integrations": [], "metadata": None,
            "method": {"type": "supervised",
                       "supervised": {"hyperparameters": hyper.to_openai()}}}
        self.jobs[job_id] = job
        self._event(job, f"Validating training file: {training['id']}")
        try:
            for f in filter(None, (training["id"], validation)):
                check_training_file(self.content(f))
        except (RequestError, OSError) as exc:
            job["error"] = {"code": "invalid_training_file", "param": "training_file",
                            "message": str(exc)}
            self._status(job, "failed")
        else:
            self._status(job, "queued")
            self._start(job)
        self._save()
        return web.json_response(job)

    async def _list_jobs(self, request: web.Request) -> web.Response:
        return self._page(request, list(self.jobs.values()))

    async def _job(self, request: web.Request) -> web.Response:
        return web.json_response(self._found(self.jobs, request, "fine-tuning job"))

    async def _cancel_job(self, request: web.Request) -> web.Response:
        job = self._found(self.jobs, request, "fine-tuning job")
        if job["status"] in _FINISHED:
            raise BadRequest(f"the job is already {job['status']}", param="id")
        self._status(job, "cancelled")
        task = self._tasks.pop(job["id"], None)
        if task is not None:
            task.cancel()  # its worker stops within a step; the steps done are billed
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._save()
        return web.json_response(job)

    async def _job_events(self, request: web.Request) -> web.Response:
        job = self._found(self.jobs, request, "fine-tuning job")
        return self._page(request, list(self.events.get(job["id"], [])))

    async def _job_checkpoints(self, request: web.Request) -> web.Response:
        job = self._found(self.jobs, request, "fine-tuning job")
        return self._page(request, list(self.checkpoints.get(job["id"], [])))

    # --- running jobs -------------------------------------------------------------------

    def resume(self) -> None:
        """Send the queued jobs (at start, once the node's loop runs)."""
        for job in self.jobs.values():
            if job["status"] == "queued":
                self._start(job)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _start(self, job: dict[str, Any]) -> None:
        if self._runner is None or job["id"] in self._tasks:
            return
        self._tasks[job["id"]] = asyncio.get_running_loop().create_task(
            self._run(job), name=f"finetune-{job['id']}")

    def _examples(self, file_id: str | None) -> tuple[tuple[dict[str, Any], ...], ...]:
        if not file_id:
            return ()
        lines = self.content(file_id).decode("utf-8").splitlines()
        return tuple(tuple(json.loads(line)["messages"]) for line in lines if line.strip())

    def _training_request(self, job: dict[str, Any]) -> TrainingRequest:
        hyper = job["hyperparameters"]
        examples = self._examples(job["training_file"])

        def given(name: str, auto: Any) -> Any:
            value = hyper.get(name, "auto")
            return auto if value == "auto" else value

        return TrainingRequest(
            job["model"], examples, self._examples(job.get("validation_file")),
            int(given("n_epochs", auto_epochs(len(examples)))),
            int(given("batch_size", min(DEFAULT_BATCH, len(examples)))),
            float(given("learning_rate_multiplier", 1.0)), int(job["seed"]))

    async def _run(self, job: dict[str, Any]) -> None:
        """Send the job to a worker and follow it to its end."""
        assert self._runner is not None
        try:
            request = self._training_request(job)
            body = request.encode()
            if len(body) > MAX_REQUEST_BODY:
                raise BadRequest(f"the job's examples take {len(body)} bytes; at most "
                                 f"{MAX_REQUEST_BODY} travel in one request",
                                 param="training_file")
            cap = reserve_tokens(request)
            self._event(job, f"Sending the job to a worker that fine-tunes {job['model']} "
                        f"(reserving for at most {cap} trained tokens)")
            self._save()
            waiting = False
            while True:
                run = _Run(self, job)
                try:
                    await self._runner(job["model"], body, cap, _JOB_TIMEOUT_S,
                                       run.on_event, job["id"])
                    break
                except (NoWorkerAvailable, WorkerLost):
                    if run.started:
                        raise
                    # nobody trains it now, every trainer is busy, or the proxy went away
                    # before a worker started it (nothing was trained): the job waits queued
                    if not waiting:
                        self._event(job, f"Waiting for a worker that fine-tunes "
                                    f"{job['model']}: none is free now", level="warn")
                        self._save()
                        waiting = True
                    await asyncio.sleep(_RETRY_S)
            run.finish()
        except asyncio.CancelledError:
            raise
        except (RequestError, OSError, ValueError) as exc:
            if job["status"] in _FINISHED:
                return
            code = exc.code if isinstance(exc, RequestError) else "internal_error"
            job["error"] = {"code": code, "message": str(exc)[:500],
                            "param": getattr(exc, "param", None)}
            self._event(job, f"Job failed: {str(exc)[:300]}", level="error")
            self._status(job, "failed")
            log.info("fine-tuning job %s failed: %s", job["id"], code)
        finally:
            self._tasks.pop(job["id"], None)
            self._save()

    def keep_adapter(self, job: dict[str, Any], data: bytes) -> None:
        adapter = Adapter.of(data)
        if self._dir is not None:
            _write_private(self._dir / "models" / f"{job['id']}.gguf", data)
        self._cache(job["id"], adapter)
        job["fine_tuned_model"] = fine_tuned_name(job["model"], job.get("suffix"), job["id"])
        job["adapter_sha256"] = adapter.sha256

    def _cache(self, job_id: str, adapter: Adapter) -> None:
        self._adapters[job_id] = adapter
        self._adapters.move_to_end(job_id)
        while len(self._adapters) > _ADAPTERS_CACHED and self._dir is not None:
            self._adapters.popitem(last=False)  # on disk: read again when asked

    def fine_tuned(self) -> list[dict[str, Any]]:
        """This client's fine-tuned models, as OpenAI model objects."""
        return [{"id": j["fine_tuned_model"], "object": "model",
                 "created": j.get("finished_at") or j["created_at"], "owned_by": "user",
                 "parent": j["model"]}
                for j in self.jobs.values()
                if j["status"] == "succeeded" and j.get("fine_tuned_model")]

    def adapter(self, model: str) -> tuple[str, Adapter] | None:
        """(the base model, the adapter) of one of this client's fine-tuned models; None
        when ``model`` is none of them."""
        if not model.startswith("ft:"):
            return None
        job = self.jobs.get(model.rsplit(":", 1)[-1])
        if job is None or job["status"] != "succeeded" or job.get("fine_tuned_model") != model:
            return None
        adapter = self._adapters.get(job["id"])
        if adapter is None:
            if self._dir is None:
                return None
            data = (self._dir / "models" / f"{job['id']}.gguf").read_bytes()
            adapter = Adapter.of(data)
            if adapter.sha256 != job.get("adapter_sha256"):
                raise EngineError(f"the stored adapter of {model} is damaged (its SHA-256 "
                                  "differs from the one received)")
            self._cache(job["id"], adapter)
        return job["model"], adapter


class _Run:
    """One job's events as they come from its worker."""

    def __init__(self, owner: FineTuning, job: dict[str, Any]) -> None:
        self.owner, self.job = owner, job
        self.adapter = AdapterAssembler()
        self.done: dict[str, Any] | None = None
        self.last_step: dict[str, Any] = {}
        self.started = False
        self._saved = time.monotonic()

    def on_event(self, ev: dict[str, Any]) -> None:
        owner, job, kind = self.owner, self.job, ev.get("type")
        if kind == "adapter":
            self.adapter.add(ev)
            return
        if kind == "started":
            self.started = True
            owner._status(job, "running")
            owner._event(job, f"Fine-tuning started: {ev.get('examples')} examples, "
                         f"{ev.get('total_steps')} steps, {ev.get('tokens_per_epoch')} tokens "
                         f"per epoch (model loaded in {ev.get('load_s')} s)", data=ev)
        elif kind == "step":
            self.last_step = ev
            job["trained_tokens"] = ev.get("trained_tokens")
            step, total = ev.get("step") or 0, ev.get("total_steps") or 0
            elapsed = ev.get("elapsed_s") or 0.0
            if step and total:
                job["estimated_finish"] = int(time.time() + elapsed / step * (total - step))
            owner._event(job, f"Step {step}/{total}: training loss={ev.get('loss'):.4f}",
                         data={"step": step, "total_steps": total,
                               "train_loss": ev.get("loss"),
                               "trained_tokens": ev.get("trained_tokens"),
                               "epoch": ev.get("epoch")}, kind="metrics")
        elif kind == "epoch":
            valid = ev.get("valid_loss")
            owner._event(job, f"Epoch {ev.get('epoch')} done: training loss="
                           f"{ev.get('train_loss'):.4f}" + (
                               f", validation loss={valid:.4f}" if valid is not None else ""),
                         data={"step": ev.get("step"), "epoch": ev.get("epoch"),
                               "train_loss": ev.get("train_loss"), "valid_loss": valid},
                         kind="metrics")
        elif kind == "done":
            self.done = ev
        if time.monotonic() - self._saved > 2.0:
            owner._save()
            self._saved = time.monotonic()

    def finish(self) -> None:
        """The job's stream ended well: keep the adapter, name the model."""
        owner, job = self.owner, self.job
        if self.done is None:
            raise EngineError("the worker ended the job without its adapter")
        data = self.adapter.finish(self.done)
        owner.keep_adapter(job, data)
        job["trained_tokens"] = self.done.get("trained_tokens")
        job["estimated_finish"] = None
        owner.checkpoints[job["id"]] = [{
            "object": "fine_tuning.job.checkpoint", "id": _new_id("ftckpt-"),
            "created_at": int(time.time()), "fine_tuning_job_id": job["id"],
            "fine_tuned_model_checkpoint": job["fine_tuned_model"],
            "step_number": self.done.get("steps"),
            "metrics": {"step": self.done.get("steps"),
                        "train_loss": self.last_step.get("loss")}}]
        owner._event(job, f"New fine-tuned model created: {job['fine_tuned_model']} "
                     f"({len(data)} bytes of adapter)")
        owner._status(job, "succeeded")
        log.info("fine-tuning job %s succeeded: %s trained tokens", job["id"],
                 job["trained_tokens"])
