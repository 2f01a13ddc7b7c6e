"""The HTTP face of `finetune serve`: OpenAI's chat API, the preference log, held-out contexts, and the web page.

Routes: `GET /v1/models`, `POST /v1/chat/completions` (`stream` as server-sent events in OpenAI's chunk format,
ending `data: [DONE]`), `POST /v1/preferences` (a blind pick -> a DPO pair row), `GET /v1/heldout` (contexts
for the blind test), and the page at `/`. Errors use OpenAI's JSON shape `{"error": {"message", "type",
"param", "code"}}`: 401 without the key (when one is set), 404 unknown model, 400 malformed body or a prompt
longer than the run's `sequence_len`, 503 while the models load.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from finetune.errors import MissingDependencyError

try:  # this module is the FastAPI app: imported only by `finetune serve`
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException
except ImportError as exc:
    raise MissingDependencyError(f"finetune serve needs FastAPI and uvicorn ({exc.name} is missing): "
                                 "pip install 'finetune[serve]'") from None

from finetune.serve.engine import Engine, Job, Sampling
from finetune.serve.models import ModelPool
from finetune.serve.preferences import PreferenceLog

logger = logging.getLogger(__name__)

STATIC = "static"


@dataclass(frozen=True)
class ServeOptions:
    """What the app needs beyond the models: the key, where picks go, where blind-test contexts come from."""

    api_key: str | None
    preferences: Path
    heldout: list[dict[str, Any]]


class Message(BaseModel):
    """One chat message of a request."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]]

    @property
    def text(self) -> str:
        """The content as text (a list of parts, as some clients send it, is joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The body of POST /v1/chat/completions (OpenAI's names; unknown fields are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")  # OpenAI clients send more (n=1, logprobs=false, ...)
    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class Preference(BaseModel):
    """The body of POST /v1/preferences: a blind pick."""

    messages: list[Message] = Field(min_length=1)
    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)
    models: dict[str, str] = Field(default_factory=dict)


class ApiError(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def create_app(pool: ModelPool, engine: Engine, options: ServeOptions) -> FastAPI:
    """The FastAPI app serving `pool` through `engine`."""
    app = FastAPI(title="finetune serve", docs_url=None, redoc_url=None)
    log = PreferenceLog(options.preferences)
    page = resources.files("finetune.serve") / STATIC

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg", "malformed request body"))
        return JSONResponse(ApiError(400, message, param=where).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.middleware("http")
    async def gate(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/v1/"):
            if options.api_key is not None and request.headers.get("authorization") != f"Bearer {options.api_key}":
                error = ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")
                return JSONResponse(error.body(), status_code=401)
            if not pool.ready:
                message = f"the models failed to load: {pool.error}" if pool.error else "the models are still loading"
                return JSONResponse(ApiError(503, message, kind="server_error").body(), status_code=503)
        return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": served.created,
                                            "owned_by": "finetune"} for name, served in pool.served.items()]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        if body.model not in pool.served:
            raise ApiError(404, f"model {body.model!r} does not exist; GET /v1/models lists "
                                f"{', '.join(pool.served)}", param="model", code="model_not_found")
        served = pool.served[body.model]
        messages = [{"role": m.role, "content": m.text} for m in body.messages]
        prompt = served.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = served.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(prompt_ids) >= served.sequence_len:
            raise ApiError(400, f"the prompt is {len(prompt_ids)} tokens; {body.model} takes at most "
                                f"{served.sequence_len} (sequence_len)", param="messages",
                           code="context_length_exceeded")
        room = served.sequence_len - len(prompt_ids)  # a longer answer than the model was trained on is cut
        limit = min(body.max_completion_tokens or body.max_tokens or room, room)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        sampling = Sampling(temperature=body.temperature, top_p=body.top_p, max_tokens=limit, seed=body.seed)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        job = Job(model=body.model, prompt_ids=prompt_ids, sampling=sampling, stop=stop,
                  on_delta=lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text),
                  on_done=lambda job: loop.call_soon_threadsafe(pieces.put_nowait, None))
        engine.submit(job)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = lambda: {"prompt_tokens": len(prompt_ids), "completion_tokens": job.completion_tokens,  # noqa: E731
                         "total_tokens": len(prompt_ids) + job.completion_tokens}

        def finished() -> None:
            seconds = max(time.monotonic() - job.started, 1e-9)
            logger.info("%s: %d prompt + %d new tokens, %.1f tok/s%s", body.model, len(prompt_ids),
                        job.completion_tokens, job.completion_tokens / seconds,
                        "" if job.finish_reason != "cancelled" else " (client went away)")

        if not body.stream:
            try:
                while await pieces.get() is not None:
                    pass
            except asyncio.CancelledError:
                job.cancelled.set()
                raise
            finished()
            if job.error:
                raise ApiError(500, f"generation failed: {job.error}", kind="server_error")
            return {"id": ident, "object": "chat.completion", "created": created, "model": body.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": job.text},
                                 "finish_reason": _finish(job), "logprobs": None}],
                    "usage": usage()}

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            data = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def events() -> Any:
            try:
                yield chunk({"role": "assistant", "content": ""})
                while (piece := await pieces.get()) is not None:
                    yield chunk({"content": piece})
                if job.error:
                    error = ApiError(500, f"generation failed: {job.error}", kind="server_error")
                    yield f"data: {json.dumps(error.body())}\n\n"
                    return
                yield chunk({}, _finish(job))
                if body.stream_options is not None and body.stream_options.include_usage:
                    data = {"id": ident, "object": "chat.completion.chunk", "created": created,
                            "model": body.model, "choices": [], "usage": usage()}
                    yield f"data: {json.dumps(data)}\n\n"
                yield "data: [DONE]\n\n"
                finished()
            finally:
                if job.finish_reason is None:  # the client went away mid-stream: free its row
                    job.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/preferences")
    async def preferences(body: Preference) -> dict[str, Any]:
        context = [{"role": m.role, "content": m.text} for m in body.messages]
        if context[-1]["role"] == "assistant":
            raise ApiError(400, "the context's last message is the assistant's; a pair needs a prompt to answer",
                           param="messages")
        if body.chosen.strip() == body.rejected.strip():
            raise ApiError(400, "chosen and rejected are the same reply; nothing to learn from", param="chosen")
        count = log.append(context, body.chosen, body.rejected, body.models)
        return {"object": "preference", "path": str(options.preferences), "count": count}

    @app.get("/v1/heldout")
    async def heldout() -> dict[str, Any]:
        return {"object": "list", "data": options.heldout}

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(str(page / "index.html"), media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str) -> FileResponse:
        files = {entry.name: entry for entry in page.iterdir()}
        if name not in files or name == "index.html":
            raise ApiError(404, f"no such file: {name}")
        kinds = {".js": "text/javascript", ".css": "text/css"}
        return FileResponse(str(files[name]), media_type=kinds.get(Path(name).suffix, "application/octet-stream"))

    return app


def _finish(job: Job) -> str:
    """OpenAI's finish_reason: `stop` (end of turn or a stop string) or `length` (max_tokens)."""
    return "length" if job.finish_reason == "length" else "stop"
