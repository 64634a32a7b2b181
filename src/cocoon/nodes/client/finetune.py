"""The client node's OpenAI files and fine-tuning jobs API (``/v1/files``,
``/v1/fine_tuning/jobs``), used unchanged by the official SDK.

Files (purpose ``fine-tune``) are checked line by line at upload
(:func:`cocoon.openai.finetune.check_training_file`: a 400 names the line and the problem)
and kept by this client node only: under ``client.finetune_dir`` (each file 0600, an index
beside them), or in memory when it is empty. Another client node has its own, so nobody else
sees or uses them. A job is validated (its model served by the network, its files present
and fit for training, its hyperparameters in range), then queued for a worker that announces
training; its events say where it stands. Training on the workers is not built yet (issue
15, item 2): a queued job waits, and can be listed, read, followed and cancelled.
"""

from __future__ import annotations

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

from cocoon.errors import BadRequest, RequestError
from cocoon.openai.finetune import check_training_file, parse_hyperparameters

__all__ = ["FineTuning"]

log = logging.getLogger(__name__)

_PURPOSES: Final = frozenset({"fine-tune"})
_INDEX: Final = "index.json"
_MAX_LIST: Final = 100
_FINISHED: Final = frozenset({"succeeded", "failed", "cancelled"})


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


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


class FineTuning:
    """Files and jobs, and the routes that serve them. ``models()`` names the models the
    network serves now; ``answer(request, err)`` turns an error into the node's response."""

    def __init__(self, directory: str, models: Callable[[], list[str]],
                 answer: Callable[[web.Request, RequestError], web.Response]) -> None:
        self._dir = Path(directory) if directory else None
        self._models = models
        self._answer = answer
        self.files: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._content: dict[str, bytes] = {}  # in memory, without a directory
        self.jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.events: dict[str, list[dict[str, Any]]] = {}
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

    def _save(self) -> None:
        if self._dir is None:
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = self._dir / (_INDEX + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"files": list(self.files.values()), "jobs": list(self.jobs.values()),
                       "events": self.events}, f)
        os.replace(tmp, self._dir / _INDEX)

    def _write_content(self, file_id: str, data: bytes) -> None:
        if self._dir is None:
            self._content[file_id] = data
            return
        folder = self._dir / "files"
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / file_id, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

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
            self._event(job, f"Waiting for a worker that trains {model}: none of the "
                        "network's workers offers training yet", level="warn")
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
        self._save()
        return web.json_response(job)

    async def _job_events(self, request: web.Request) -> web.Response:
        job = self._found(self.jobs, request, "fine-tuning job")
        return self._page(request, list(self.events.get(job["id"], [])))

    async def _job_checkpoints(self, request: web.Request) -> web.Response:
        self._found(self.jobs, request, "fine-tuning job")
        return self._page(request, [])  # none until a worker trains
