"""Any :class:`~cocoon.engines.Engine` served directly over OpenAI HTTP: the bench's baseline.

Same aiohttp server settings and SSE framing as the client node: one ``data: <json>\\n\\n``
event written per engine output (as OpenAI servers such as vLLM do), then
``data: [DONE]\\n\\n``. The client node differs in one way that is part of what the bench
measures: chunks that reach it together (one network read) leave in one write.

Run as its own process so its CPU time can be accounted separately::

    python -m cocoon.benchmark.direct --chunks 50 --chunk-bytes 128 --delay-ms 0 \\
        --port 0 --ready-file /tmp/direct.ready
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from cocoon.engines import Engine, FakeEngine, FakeEngineConfig, InferenceJob
from cocoon.engines.llama_cpp import LlamaCppConfig, LlamaCppEngine
from cocoon.errors import CocoonError, EngineError, RequestError
from cocoon.nodes.common import (
    HttpServer,
    end_sse,
    error_response,
    json_response,
    open_sse,
    run_until_signal,
    write_ready_file,
)
from cocoon.openai import ENDPOINTS, Usage, encode_event, encode_events, parse_request

__all__ = ["DirectServer", "main", "make_app"]

log = logging.getLogger(__name__)

_MAX_BODY = 16 * 1024 * 1024



def make_app(engine: Engine) -> web.Application:
    """An aiohttp app serving ``engine`` on /v1/chat/completions and /v1/completions."""
    seq = itertools.count(1)
    pid = os.getpid()

    async def completions(request: web.Request) -> web.StreamResponse:
        endpoint = ENDPOINTS[request.path]
        try:
            body = parse_request(endpoint, await request.read())
            if body["model"] not in engine.models:
                raise RequestError(f"this server does not serve model {body['model']!r}")
        except RequestError as exc:
            return error_response(exc)
        job = InferenceJob(endpoint, body, (pid << 32) | next(seq))
        outputs = engine.generate(job)
        response: web.StreamResponse | None = None
        try:
            if not job.stream:
                payload = b""
                async for out in outputs:
                    if type(out) is bytes:
                        payload += out
                return web.Response(body=payload, content_type="application/json")
            async for out in outputs:
                if isinstance(out, Usage):
                    continue
                if response is None:
                    response = await open_sse(request)
                await response.write(encode_event(out) if type(out) is bytes
                                     else encode_events(out))  # type: ignore[arg-type]
            return await end_sse(response if response is not None else await open_sse(request))
        except RequestError as exc:
            if response is None:
                return error_response(exc)
            return await end_sse(response, exc)
        except (CocoonError, ValueError) as exc:
            err = EngineError(f"engine error: {type(exc).__name__}: {exc}")
            if response is None:
                return error_response(err)
            return await end_sse(response, err)
        finally:
            await outputs.aclose()  # type: ignore[attr-defined]

    async def models(_: web.Request) -> web.Response:
        return json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "cocoon-direct"}
            for m in engine.models]})

    async def health(_: web.Request) -> web.Response:
        return json_response({"status": "ok", "models": list(engine.models)})

    app = web.Application(client_max_size=_MAX_BODY)
    for path in ENDPOINTS:
        app.router.add_post(path, completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", health)
    return app


class DirectServer:
    """``make_app(engine)`` on ``host:port`` with the same server settings as the nodes."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 0) -> None:
        self.engine = engine
        self.http = HttpServer(make_app(engine), f"{host}:{port}", "direct.http")

    async def run(self, stop: asyncio.Event, ready_file: str | None = None) -> None:
        await self.http.start()
        write_ready_file(ready_file, {"role": "direct", "http": self.http.url,
                                      "pid": os.getpid()})
        try:
            await stop.wait()
        finally:
            await self.http.stop()


def _build_engine(args: argparse.Namespace) -> Engine:
    if args.engine == "fake":
        return FakeEngine(FakeEngineConfig(model=args.model, chunks=args.chunks,
                                           chunk_bytes=args.chunk_bytes,
                                           delay_ms=args.delay_ms, ttft_ms=args.ttft_ms))
    return LlamaCppEngine(LlamaCppConfig(model_path=args.model_path))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cocoon.benchmark.direct",
                                description="Serve one engine directly over OpenAI HTTP.")
    p.add_argument("--engine", choices=["fake", "llama-cpp"], default="fake")
    p.add_argument("--model", default="fake", help="fake engine: model name")
    p.add_argument("--chunks", type=int, default=50, help="fake engine: chunks per response")
    p.add_argument("--chunk-bytes", type=int, default=128, help="fake engine: bytes per chunk")
    p.add_argument("--delay-ms", type=float, default=0.0,
                   help="fake engine: delay before each chunk")
    p.add_argument("--ttft-ms", type=float, default=0.0,
                   help="fake engine: delay before anything is sent (prompt processing)")
    p.add_argument("--model-path", default="", help="llama-cpp: GGUF path (default SmolLM2)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port")
    p.add_argument("--ready-file", help="write {http, pid} here as JSON when listening")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = DirectServer(_build_engine(args), args.host, args.port)
        asyncio.run(run_until_signal(lambda stop: server.run(stop, args.ready_file)))
    except CocoonError as exc:
        print(f"cocoon direct server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
