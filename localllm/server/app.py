"""The routes: OpenAI's /v1/*, ollama's /api/*, /health, /metrics and the chat page at /. Every
route goes through `endpoint`, which checks the key, maps errors to each API's JSON shape and
writes the access log."""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from contextlib import aclosing
from pathlib import Path

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..errors import LocalLLMError
from . import ollama, openai
from .fields import RequestError, get
from .metrics import Metrics
from .scheduler import Failed, Job, QueueFullError, Scheduler

log = logging.getLogger(__name__)
access_log = logging.getLogger("localllm.server.access")
PAGE = Path(__file__).parent / "static" / "chat.html"


class ServerState:
    """What the routes share: the model (None while loading), its scheduler and the counters."""

    def __init__(self, api_key: str | None = None, parallel: int = 4, queue_size: int = 64) -> None:
        self.api_key, self.parallel, self.queue_size = api_key, parallel, queue_size
        self.llm, self.scheduler, self.model = None, None, ""
        self.metrics = Metrics()

    def attach(self, llm, name: str | None = None) -> None:
        """Start serving llm (the server answers 503 until then)."""
        self.model = name or llm.path.stem
        self.scheduler = Scheduler(llm, self.parallel, self.queue_size, self.metrics)
        self.llm = llm

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise RequestError("invalid or missing API key (send 'Authorization: Bearer KEY')", status=401,
                               code="invalid_api_key", kind="authentication_error")

    def loaded(self):
        if self.llm is None:
            raise RequestError("the model is still loading", status=503, kind="server_error",
                               headers={"Retry-After": "5"})
        return self.llm

    def check_model(self, body: dict) -> None:
        name = body.get("model")
        if name is not None and name not in (self.model, f"{self.model}:latest"):
            raise RequestError(f"model {name!r} not found (this server runs {self.model!r})", status=404,
                               code="model_not_found", param="model")

    def submit(self, job: Job) -> None:
        try:
            self.scheduler.submit(job)
        except QueueFullError as e:
            raise RequestError(str(e), status=503, kind="server_error", headers={"Retry-After": "1"}) from None


async def json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"malformed JSON body: {e}") from None
    if not isinstance(body, dict):
        raise RequestError("the JSON body must be an object")
    return body


async def watched(job: Job, request: Request):
    """job.events(), cancelling the job if the client goes away while we wait (a non-streamed
    reply; a stream's response cancels it instead). Use under aclosing, which stops the watcher."""
    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.2)
        job.cancel()
    watcher = asyncio.create_task(watch())
    try:
        async for ev in job.events():
            yield ev
    finally:
        watcher.cancel()


def streaming(chunks, job: Job, media_type: str) -> StreamingResponse:
    """A streamed reply; the background task cancels the job however the response ends (a client
    gone before the first chunk never starts the generator, so its own cleanup would not run)."""
    return StreamingResponse(chunks, media_type=media_type, headers={"Cache-Control": "no-cache"},
                             background=BackgroundTask(job.cancel))


def error_response(e: RequestError, api: str) -> Response:
    if api == "ollama":
        return JSONResponse({"error": str(e)}, status_code=e.status, headers=e.headers)
    return JSONResponse({"error": {"message": str(e), "type": e.kind, "param": e.param, "code": e.code}},
                        status_code=e.status, headers=e.headers)


def endpoint(state: ServerState, path: str, fn, api: str, auth: bool = True):
    async def handle(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            if auth:
                state.check_key(request)
            response = await fn(request)
        except RequestError as e:
            response = error_response(e, api)
        except LocalLLMError as e:       # e.g. a chat template that rejects the messages
            response = error_response(RequestError(str(e)), api)
        except Exception as e:
            log.exception("%s %s failed", request.method, request.url.path)
            response = error_response(RequestError(f"internal error: {e}", status=500, kind="server_error"), api)
        state.metrics.requests[(path, response.status_code)] += 1
        access_log.info("%s %s %s %d %.1fms", request.client.host if request.client else "-", request.method,
                        request.url.path, response.status_code, (time.perf_counter() - t0) * 1e3)
        return response
    return handle


def create_app(state: ServerState, cors_origin: str | None = None) -> Starlette:
    async def chat_completions(request: Request) -> Response:
        return await _openai(request, chat=True)

    async def completions(request: Request) -> Response:
        return await _openai(request, chat=False)

    async def _openai(request: Request, chat: bool) -> Response:
        body = await json_body(request)
        llm = state.loaded()
        state.check_model(body)
        job = (openai.chat_job if chat else openai.completion_job)(body, llm)
        streamed = get(body, "stream", bool, False)
        include = get(get(body, "stream_options", dict, {}), "include_usage", bool, False)
        state.submit(job)
        if streamed:
            return streaming(openai.stream(job.events(), job, llm, state.model, chat, include), job,
                             "text/event-stream")
        async with aclosing(watched(job, request)) as events:
            pieces, done = await openai.collect(events)
        make = openai.chat_response if chat else openai.completion_response
        return JSONResponse(make(pieces, done, job, llm, state.model))

    async def embeddings(request: Request) -> Response:
        body = await json_body(request)
        llm = state.loaded()
        state.check_model(body)
        fmt = get(body, "encoding_format", str, "float")
        if fmt not in ("float", "base64"):
            raise RequestError("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
        inputs = openai.embedding_inputs(body, llm)
        data = []
        for i, ids in enumerate(inputs):
            job = Job(ids, embed=True)
            state.submit(job)
            async with aclosing(watched(job, request)) as events:
                vec = await anext(events)
            if isinstance(vec, Failed):
                raise RequestError(vec.message, status=503, kind="server_error")
            value = base64.b64encode(vec.astype("<f4").tobytes()).decode() if fmt == "base64" else vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        n = sum(len(ids) for ids in inputs)
        return JSONResponse({"object": "list", "data": data, "model": state.model,
                             "usage": {"prompt_tokens": n, "total_tokens": n}})

    async def models(request: Request) -> Response:
        llm = state.loaded()
        return JSONResponse({"object": "list", "data": [openai.model_card(state.model, llm)]})

    async def ollama_chat(request: Request) -> Response:
        return await _ollama(request, chat=True)

    async def ollama_generate(request: Request) -> Response:
        return await _ollama(request, chat=False)

    async def _ollama(request: Request, chat: bool) -> Response:
        body = await json_body(request)
        llm = state.loaded()
        state.check_model(body)
        if not chat and not get(body, "prompt", str, ""):     # ollama clients preload a model this way
            return JSONResponse({"model": state.model, "created_at": ollama.now(), "response": "", "done": True,
                                 "done_reason": "load"})
        job = (ollama.chat_job if chat else ollama.generate_job)(body, llm)
        streamed = get(body, "stream", bool, True)
        state.submit(job)
        if streamed:
            return streaming(ollama.stream(job.events(), state.model, chat), job, "application/x-ndjson")
        async with aclosing(watched(job, request)) as events:
            return JSONResponse(await ollama.respond(events, state.model, chat))

    async def tags(request: Request) -> Response:
        return JSONResponse(ollama.tags(state.model, state.loaded()))

    async def show(request: Request) -> Response:
        body = await json_body(request)
        llm = state.loaded()
        state.check_model({"model": body.get("model", body.get("name"))})
        return JSONResponse(ollama.show(llm))

    async def version(request: Request) -> Response:
        return JSONResponse({"version": __version__})

    async def health(request: Request) -> Response:
        if state.llm is None:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
        if not state.scheduler.alive:
            return JSONResponse({"status": "stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(state.metrics.render(state.scheduler), media_type="text/plain; version=0.0.4")

    async def page(request: Request) -> Response:
        return FileResponse(PAGE, media_type="text/html")

    routes = [
        ("/", page, "GET", "page", False), ("/health", health, "GET", "openai", False),
        ("/metrics", metrics, "GET", "openai", False),
        ("/v1/models", models, "GET", "openai", True),
        ("/v1/chat/completions", chat_completions, "POST", "openai", True),
        ("/v1/completions", completions, "POST", "openai", True),
        ("/v1/embeddings", embeddings, "POST", "openai", True),
        ("/api/chat", ollama_chat, "POST", "ollama", True), ("/api/generate", ollama_generate, "POST", "ollama", True),
        ("/api/tags", tags, "GET", "ollama", True), ("/api/show", show, "POST", "ollama", True),
        ("/api/version", version, "GET", "ollama", False),
    ]
    middleware = [Middleware(CORSMiddleware, allow_origins=[cors_origin], allow_methods=["*"],
                             allow_headers=["*"])] if cors_origin else []
    return Starlette(routes=[Route(path, endpoint(state, path, fn, api, auth), methods=[method])
                             for path, fn, method, api, auth in routes], middleware=middleware)
