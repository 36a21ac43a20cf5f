"""The HTTP API (FastAPI): OpenAI's /v1/completions and /v1/models, gptlab's /v1/next_token and
/v1/attention, and the playground page at /.

Every refused request is a 4xx in OpenAI's error shape, {"error": {"message", "type", "param",
"code"}}, whose message names the field; the official `openai` client raises it as BadRequestError.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from gptlab.decoding import Decoding
from gptlab.serving.engine import Engine, Event, Job
from gptlab.serving.schemas import (
    ApiError,
    CompletionRequest,
    Limits,
    TextRequest,
    check_completion,
    strategy_of,
)

STATIC = Path(__file__).resolve().parent / "static"


def create_app(engine: Engine, model_id: str, limits: Limits | None = None) -> FastAPI:
    """The app serving `engine`'s model as `model_id`; it starts and stops the engine with itself."""
    limits = limits or Limits()
    if limits.max_n > engine.max_batch:
        raise ValueError(f"limits.max_n={limits.max_n} > max_batch={engine.max_batch}: a request's choices are "
                         f"decoded together, so max_n must fit in the batch")
    if not engine.model.config.causal:
        raise ValueError("serve.py decodes causal models only (model.causal=false reads every position both ways)")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        await asyncio.to_thread(engine.stop)  # after uvicorn's drain: finishes what is still queued

    app = FastAPI(title="gptlab", lifespan=lifespan)
    api = Api(engine, model_id, limits)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.post("/v1/completions")(api.completions)
    app.get("/v1/models")(api.models)
    app.post("/v1/next_token")(api.next_token)
    app.post("/v1/attention")(api.attention)
    app.get("/", include_in_schema=False)(lambda: FileResponse(STATIC / "index.html"))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def error_body(message: str, param: str | None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.param), status_code=exc.status)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 list → one 400 naming the first offending field and the value it got."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return JSONResponse(error_body(f"the request body is not valid JSON: {err.get('msg')}", None), 400)
    param = loc[0] if loc else "body"  # the field itself; deeper parts name union members, list items
    got = repr(err.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    message = f"{param}: {err.get('msg')}" + ("" if err.get("type") == "missing" else f" (got {got})")
    return JSONResponse(error_body(message, param), 400)


class Api:
    """The endpoint handlers over one engine."""

    def __init__(self, engine: Engine, model_id: str, limits: Limits):
        self.engine, self.model_id, self.limits = engine, model_id, limits
        self.tok, self.config = engine.tok, engine.model.config
        self.created = int(time.time())

    async def models(self) -> dict[str, Any]:
        c = self.config
        info = {"block_size": c.block_size, "vocab_size": c.vocab_size, "n_layer": c.n_layer,
                "n_head": c.n_head, "n_embd": c.n_embd, "limits": vars(self.limits)}
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": self.created,
                                            "owned_by": "gptlab", "gptlab": info}]}

    # ---- completions --------------------------------------------------------------------------------
    async def completions(self, req: CompletionRequest, request: Request):
        self._check_model(req.model)
        check_completion(req, self.limits)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        encoded = [self._encode(p, "prompt") for p in prompts]
        for ids in encoded:
            if len(ids) + req.max_tokens > self.config.block_size:
                raise ApiError(400, "max_tokens", f"max_tokens={req.max_tokens}: the prompt has {len(ids)} "
                                                  f"tokens and the model's context is {self.config.block_size}; "
                                                  f"use max_tokens <= {self.config.block_size - len(ids)}")
        queue: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        emit = lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev)  # noqa: E731 (worker thread → loop)
        decoding = self._decoding(req)
        jobs = [Job(ids, decoding, emit, n=req.n, first_index=i * req.n, logprobs=req.logprobs or 0)
                for i, ids in enumerate(encoded)]
        try:
            for job in jobs:
                self.engine.submit(job)
        except RuntimeError as e:  # the engine is stopping
            for job in jobs:
                job.cancelled.set()
            raise ApiError(503, None, str(e)) from None
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_id}
        events = _events(queue, len(prompts) * req.n, jobs, request)
        if req.stream:
            return StreamingResponse(_sse(head, events, req.logprobs is not None), media_type="text/event-stream")
        return await _collect(head, events, req.logprobs is not None, sum(map(len, encoded)))

    def _decoding(self, req: CompletionRequest) -> Decoding:
        try:
            return Decoding(strategy=strategy_of(req), max_new_tokens=req.max_tokens, temperature=req.temperature,
                            top_k=req.top_k, top_p=req.top_p, num_beams=req.num_beams,
                            length_penalty=req.length_penalty, eos_token_id=self.tok.eot_token_id,
                            stop=req.stop or (), seed=req.seed)
        except ValueError as e:  # Decoding's messages start with the field's name
            raise ApiError(400, str(e).split()[0], str(e)) from None

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_id:
            raise ApiError(404, "model", f"model {model!r} is not served here; this server serves "
                                         f"{self.model_id!r} (GET /v1/models)")

    def _encode(self, text: str, field: str) -> list[int]:
        if len(text) > self.limits.max_prompt_chars:
            raise ApiError(400, field, f"{field}: {len(text)} characters, above the limit of "
                                       f"{self.limits.max_prompt_chars}")
        try:
            ids = self.tok.encode(text)
        except ValueError as e:
            raise ApiError(400, field, f"{field}: {e}") from None
        if not ids:
            if self.tok.eot_token_id is None:
                raise ApiError(400, field, f"{field} is empty and this tokenizer has no end-of-text token to "
                                           f"start from; give at least one character")
            ids = [self.tok.eot_token_id]
        cap = self.limits.max_prompt_tokens or self.config.block_size - 1
        if len(ids) > cap:
            raise ApiError(400, field, f"{field} has {len(ids)} tokens, above the limit of {cap}")
        return ids

    # ---- looking inside -----------------------------------------------------------------------------
    def _ids(self, req: TextRequest, cap: int) -> list[int]:
        self._check_model(req.model)
        if (req.prompt is None) == (req.ids is None):
            raise ApiError(400, "prompt", "give exactly one of prompt (a text) and ids (its token ids)")
        if req.prompt is not None:
            ids = self._encode(req.prompt, "prompt")
        else:
            ids = req.ids
            bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
            if not ids or bad:
                raise ApiError(400, "ids", f"ids: give 1..{cap} token ids in 0..{self.config.vocab_size - 1}"
                                           + (f"; got {bad[:5]}" if bad else ""))
        if len(ids) > cap:
            field = "prompt" if req.prompt is not None else "ids"
            raise ApiError(400, field, f"{field} has {len(ids)} tokens, above this endpoint's limit of {cap}")
        return ids

    async def next_token(self, req: TextRequest) -> dict[str, Any]:
        """The model's distribution for the token after the text: its top_n tokens with probabilities."""
        if req.top_n > self.limits.max_top_n:
            raise ApiError(400, "top_n", f"top_n={req.top_n} is above this server's limit of "
                                         f"{self.limits.max_top_n}")
        ids = self._ids(req, self.config.block_size)
        top = await asyncio.wrap_future(self.engine.next_token(ids, req.top_n))
        return {"model": self.model_id, "ids": ids, "tokens": self._pieces(ids), "top": top}

    async def attention(self, req: TextRequest) -> dict[str, Any]:
        """Every layer's and head's attention weights over the text: attention[layer][head][query][key]."""
        ids = self._ids(req, min(self.limits.max_attention_tokens, self.config.block_size))
        maps = await asyncio.wrap_future(self.engine.attention(ids))
        return {"model": self.model_id, "ids": ids, "tokens": self._pieces(ids), "n_layer": len(maps),
                "n_head": len(maps[0]), "attention": maps}

    def _pieces(self, ids: list[int]) -> list[str]:
        return [self.tok.decode([i]) for i in ids]


async def _events(queue: asyncio.Queue, choices: int, jobs: list[Job], request: Request) -> AsyncIterator[Event]:
    """The engine's events until every choice finished. A client that goes away cancels its jobs, which
    frees their batch rows at the engine's next step."""
    finished = 0
    try:
        while finished < choices:
            try:
                ev = await asyncio.wait_for(queue.get(), timeout=1.0)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            if ev["type"] == "error":
                raise RuntimeError(ev["message"])
            finished += ev["type"] == "finish"
            yield ev
    finally:
        for job in jobs:
            job.cancelled.set()


def _logprobs(ev: Event, offset: int) -> dict[str, Any]:
    """OpenAI's logprobs lists for one token; gptlab_top adds the alternatives' token ids."""
    return {"tokens": [ev["token"]], "token_logprobs": [ev["logprob"]],
            "top_logprobs": [{t: lp for _, t, lp in ev["top"]}], "text_offset": [offset],
            "token_ids": [ev["id"]],
            "gptlab_top": [[{"id": i, "token": t, "logprob": lp} for i, t, lp in ev["top"]]]}


async def _sse(head: dict[str, Any], events: AsyncIterator[Event], logprobs: bool) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: one chunk per token, a chunk with finish_reason per
    choice, then `data: [DONE]`."""
    offsets: dict[int, int] = {}
    try:
        async for ev in events:
            i = ev["index"]
            if ev["type"] == "finish":
                choice = {"text": "", "index": i, "logprobs": None, "finish_reason": ev["reason"]}
            else:
                lp = _logprobs(ev, offsets.get(i, 0)) if logprobs else None
                offsets[i] = offsets.get(i, 0) + len(ev["text"])
                choice = {"text": ev["text"], "index": i, "logprobs": lp, "finish_reason": None}
            yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
    except RuntimeError as e:
        yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
    yield "data: [DONE]\n\n"


async def _collect(head: dict[str, Any], events: AsyncIterator[Event], logprobs: bool,
                   prompt_tokens: int) -> JSONResponse:
    """The whole completion as one JSON response."""
    texts: dict[int, str] = {}
    lps: dict[int, dict[str, list]] = {}
    reasons: dict[int, str] = {}
    made = 0
    try:
        async for ev in events:
            i = ev["index"]
            if ev["type"] == "finish":
                reasons[i] = ev["reason"]
                continue
            made += 1
            piece = _logprobs(ev, len(texts.get(i, "")))
            for key, value in piece.items():
                lps.setdefault(i, {}).setdefault(key, []).extend(value)
            texts[i] = texts.get(i, "") + ev["text"]
    except RuntimeError as e:
        return JSONResponse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}}, 500)
    choices = [{"text": texts.get(i, ""), "index": i, "logprobs": lps.get(i) if logprobs else None,
                "finish_reason": reasons.get(i, "stop")} for i in sorted(reasons)]
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": made, "total_tokens": prompt_tokens + made}
    return JSONResponse({**head, "choices": choices, "usage": usage})
