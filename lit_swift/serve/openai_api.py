"""The OpenAI-compatible routes of `lit-swift deploy`: chat and text completions (plain or streamed
as server-sent events), models, health. Requests are validated by pydantic; generation goes through
the `Batcher`, so concurrent requests share batches."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lit_swift.rollout.engine import SamplingParams, completion_seed
from lit_swift.serve.batcher import Batcher, Job, TextState
from lit_swift.serve.http import APIError, build_app


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


class Sampled(BaseModel):
    """Fields shared by chat and text completion requests (unknown fields are ignored, as OpenAI's)."""

    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=64)
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class ChatRequest(Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(Sampled):
    prompt: str | list[int] = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=1)


@dataclass
class Backend:
    """What the routes need from a loaded model: its name, prompt encoding, decoding and the batcher."""

    name: str
    generator: Any  # lit_swift.export.infer.Generator: model, tokenizer, encoder, stop ids/strings
    batcher: Batcher
    context_length: int
    created: int = 0

    def decode(self, ids: list[int]) -> str:
        return self.generator.tokenizer.decode(ids, skip_special_tokens=True)


def _content(message: ChatMessage) -> str:
    if isinstance(message.content, list):
        return "".join(part.text for part in message.content)
    return message.content or ""


def chat_prompt(backend: Backend, request: ChatRequest) -> list[int]:
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": _content(m)}
        for m in request.messages
    ]
    try:
        return backend.generator.encoder.prompt_ids(messages)
    except ValueError as err:  # the template rejects the conversation (e.g. roles out of order)
        raise APIError(400, f"messages: {err}", "messages") from err


def plan(backend: Backend, request: Sampled, prompt_ids: list[int], limit: int | None) -> list[Job]:
    """Check the request against the model and make its `n` jobs (not yet submitted)."""
    if request.model != backend.name:
        raise APIError(
            404,
            f"model {request.model!r} does not exist; this server serves {backend.name!r}",
            "model",
            "model_not_found",
        )
    room = backend.context_length - len(prompt_ids)
    if room < 1 or (limit is not None and limit > room):
        raise APIError(
            400,
            f"this model's context is {backend.context_length} tokens; the prompt has {len(prompt_ids)} "
            f"and max_tokens asks for {limit or 1} more",
            "messages" if isinstance(request, ChatRequest) else "prompt",
            "context_length_exceeded",
        )
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    gen = backend.generator
    sampling = SamplingParams(
        max_new_tokens=limit or room,
        temperature=request.temperature,
        top_p=request.top_p,
        stop_token_ids=tuple(gen.stop_ids),
    )
    base = request.seed if request.seed is not None else secrets.randbits(62)
    return [
        Job(
            prompt_ids,
            completion_seed(base, 0, 0, i),
            sampling,
            TextState(backend.decode, tuple(stops + gen.stop_strings)),
            emit=None,
        )
        for i in range(request.n)
    ]


async def run_jobs(backend: Backend, jobs: list[Job]):
    """Submit `jobs` and yield (choice index, kind, value) events; a cancelled caller cancels them all."""
    loop = asyncio.get_running_loop()
    merged: asyncio.Queue = asyncio.Queue()
    for i, job in enumerate(jobs):
        job.emit = lambda event, i=i: loop.call_soon_threadsafe(merged.put_nowait, (i, *event))
        backend.batcher.submit(job)
    remaining = len(jobs)
    try:
        while remaining:
            index, kind, value = await merged.get()
            if kind == "error":
                raise APIError(500, value, code="generation_failed")
            remaining -= kind == "done"
            yield index, kind, value
    finally:
        for job in jobs:
            job.cancelled.set()


def usage(prompt_ids: list[int], jobs: list[Job]) -> dict:
    completion = sum(len(j.text.token_ids) for j in jobs)
    return {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": completion,
        "total_tokens": len(prompt_ids) + completion,
    }


async def complete(backend: Backend, jobs: list[Job], prompt_ids: list[int], chat: bool) -> dict:
    texts = [""] * len(jobs)
    reasons = [""] * len(jobs)
    async for index, kind, value in run_jobs(backend, jobs):
        if kind == "token":
            texts[index] += value
        else:
            reasons[index] = value
    if chat:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r, "logprobs": None}
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ]
    else:
        choices = [
            {"index": i, "text": t, "finish_reason": r, "logprobs": None}
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ]
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": backend.name,
        "choices": choices,
        "usage": usage(prompt_ids, jobs),
    }


async def stream(backend: Backend, jobs: list[Job], prompt_ids: list[int], chat: bool, with_usage: bool):
    """Server-sent events: one chunk per text delta and per finished choice, then `[DONE]`."""
    head = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": backend.name,
    }

    def event(choices: list[dict], **extra) -> str:
        return f"data: {json.dumps({**head, 'choices': choices, **extra})}\n\n"

    if chat:
        yield event(
            [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                for i in range(len(jobs))
            ]
        )
    try:
        async for index, kind, value in run_jobs(backend, jobs):
            token, reason = (value, None) if kind == "token" else ("", value)
            if chat:
                yield event(
                    [{"index": index, "delta": {"content": token} if token else {}, "finish_reason": reason}]
                )
            else:
                yield event([{"index": index, "text": token, "finish_reason": reason, "logprobs": None}])
    except APIError as err:
        yield f"data: {json.dumps({'error': {'message': err.message, 'type': 'server_error', 'code': err.code}})}\n\n"
        return
    if with_usage:
        yield event([], usage=usage(prompt_ids, jobs))
    yield "data: [DONE]\n\n"


def make_app(backend: Backend, api_key: str | None = None, lifespan=None):
    from fastapi.responses import StreamingResponse

    app = build_app("lit-swift deploy", api_key, lifespan, backend.batcher.stats)
    backend.created = int(time.time())

    async def answer(request: Sampled, prompt_ids: list[int], limit: int | None, chat: bool):
        jobs = plan(backend, request, prompt_ids, limit)
        if request.stream:
            with_usage = bool((request.stream_options or {}).get("include_usage"))
            body = stream(backend, jobs, prompt_ids, chat, with_usage)
            return StreamingResponse(body, media_type="text/event-stream")
        return await complete(backend, jobs, prompt_ids, chat)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatRequest):
        limit = request.max_completion_tokens or request.max_tokens
        return await answer(request, chat_prompt(backend, request), limit, chat=True)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        prompt = request.prompt
        ids = (
            prompt
            if isinstance(prompt, list)
            else backend.generator.tokenizer(prompt, add_special_tokens=False).input_ids
        )
        return await answer(request, ids, request.max_tokens, chat=False)

    @app.get("/v1/models")
    async def list_models() -> dict:
        card = {"id": backend.name, "object": "model", "created": backend.created, "owned_by": "lit-swift"}
        return {"object": "list", "data": [card]}

    return app
