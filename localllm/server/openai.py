"""OpenAI's API: request bodies to scheduler jobs, events back to chat.completion(.chunk),
text_completion and embedding objects (streams as server-sent events ending in `data: [DONE]`)."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from ..sampler import SamplingParams
from .fields import RequestError, bounded, get, messages, stops
from .scheduler import Done, Failed, Job, Piece


def check_context(ids: list[int], llm, param: str) -> list[int]:
    """Never truncate: a prompt that leaves no room to generate is refused."""
    if len(ids) >= llm.n_ctx:
        raise RequestError(f"This model's maximum context length is {llm.n_ctx} tokens, but the prompt is "
                           f"{len(ids)} tokens", code="context_length_exceeded", param=param)
    return ids


def job_options(body: dict, llm) -> dict:
    """Sampling and limits shared by chat and completions (unset fields: llama.cpp's defaults)."""
    if bounded(body, "n", int, 1, 1) != 1:
        raise RequestError("only n=1 is supported", param="n")
    d = SamplingParams()
    params = SamplingParams(
        temperature=bounded(body, "temperature", float, d.temperature, 0, 2),
        top_k=bounded(body, "top_k", int, d.top_k, 0),
        top_p=bounded(body, "top_p", float, d.top_p, 0, 1),
        min_p=bounded(body, "min_p", float, d.min_p, 0, 1),
        repeat_penalty=bounded(body, "repeat_penalty", float, d.repeat_penalty, 0),
        seed=get(body, "seed", int))
    max_tokens = bounded(body, "max_completion_tokens", int, None, 1)
    if max_tokens is None:
        max_tokens = bounded(body, "max_tokens", int, -1, 1)
    return {"params": params, "max_tokens": max_tokens, "stops": stops(body),
            "presence_penalty": bounded(body, "presence_penalty", float, 0.0, -2, 2),
            "frequency_penalty": bounded(body, "frequency_penalty", float, 0.0, -2, 2),
            "ignore_eos": get(body, "ignore_eos", bool, False)}


def chat_job(body: dict, llm) -> Job:
    ids = check_context(llm.chat_tokens(messages(body)), llm, "messages")
    top = bounded(body, "top_logprobs", int, 0, 0, 20)
    return Job(ids, logprobs=top if get(body, "logprobs", bool, False) else None, **job_options(body, llm))


def prompt_ids(prompt, llm, param: str = "prompt") -> list[int]:
    """A text prompt (tokenized with BOS), or token ids as given; a one-element array of either."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return llm.tokenize(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if not all(0 <= t < llm.n_vocab for t in prompt):
            raise RequestError(f"'{param}' holds a token id outside the vocabulary (0..{llm.n_vocab - 1})", param=param)
        return list(prompt)
    raise RequestError(f"'{param}' must be a string or a non-empty array of token ids", param=param)


def completion_job(body: dict, llm) -> Job:
    if body.get("prompt") is None:
        raise RequestError("'prompt' is required", param="prompt")
    ids = check_context(prompt_ids(body["prompt"], llm), llm, "prompt")
    return Job(ids, logprobs=bounded(body, "logprobs", int, None, 0, 20), **job_options(body, llm))


def embedding_inputs(body: dict, llm) -> list[list[int]]:
    value = body.get("input")
    if value is None:
        raise RequestError("'input' is required", param="input")
    items = value if isinstance(value, list) and value and isinstance(value[0], (str, list)) else [value]
    return [check_context(prompt_ids(item, llm, "input"), llm, "input") for item in items]


# --- responses ---------------------------------------------------------------------------------------
async def collect(events: AsyncIterator) -> tuple[list[Piece], Done]:
    pieces = []
    async for ev in events:
        if isinstance(ev, Failed):
            raise RequestError(ev.message, status=503, kind="server_error")
        if isinstance(ev, Piece):
            pieces.append(ev)
        else:
            return pieces, ev
    raise RequestError("the request was cancelled", status=503, kind="server_error")


def usage(done: Done) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}


def _token_text(llm, token: int) -> str:
    return llm.tokenizer.token_to_piece(token).decode("utf-8", "replace")


def chat_logprobs(pieces: list[Piece], llm) -> dict:
    def entry(token: int, logprob: float) -> dict:
        text = _token_text(llm, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    return {"content": [{**entry(p.token, p.logprob), "top_logprobs": [entry(t, lp) for t, lp in p.top]}
                        for p in pieces if p.token >= 0]}


def completion_logprobs(pieces: list[Piece], llm) -> dict:
    real = [p for p in pieces if p.token >= 0]
    return {"tokens": [_token_text(llm, p.token) for p in real], "token_logprobs": [p.logprob for p in real],
            "top_logprobs": [{_token_text(llm, t): lp for t, lp in p.top} for p in real]}


def _head(kind: str, model: str) -> dict:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()), "model": model}


def chat_response(pieces: list[Piece], done: Done, job: Job, llm, model: str) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": "".join(p.text for p in pieces)},
              "logprobs": chat_logprobs(pieces, llm) if job.logprobs is not None else None,
              "finish_reason": done.finish_reason}
    return {**_head("chat.completion", model), "choices": [choice], "usage": usage(done)}


def completion_response(pieces: list[Piece], done: Done, job: Job, llm, model: str) -> dict:
    choice = {"index": 0, "text": "".join(p.text for p in pieces),
              "logprobs": completion_logprobs(pieces, llm) if job.logprobs is not None else None,
              "finish_reason": done.finish_reason}
    return {**_head("text_completion", model), "choices": [choice], "usage": usage(done)}


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def stream(events: AsyncIterator, job: Job, llm, model: str, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: a chunk per piece, one with the finish reason, usage if asked, [DONE];
    an error event if the server stops mid-stream."""
    head = _head("chat.completion.chunk" if chat else "text_completion", model)

    def chunk(piece: Piece | None, finish: str | None) -> dict:
        if chat:
            choice = {"index": 0, "delta": {"content": piece.text} if piece else {}, "finish_reason": finish,
                      "logprobs": chat_logprobs([piece], llm) if piece and job.logprobs is not None else None}
        else:
            choice = {"index": 0, "text": piece.text if piece else "", "finish_reason": finish,
                      "logprobs": completion_logprobs([piece], llm) if piece and job.logprobs is not None else None}
        return {**head, "choices": [choice]}

    if chat:
        yield sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None, "logprobs": None}]})
    async for ev in events:
        if isinstance(ev, Piece):
            if ev.text or job.logprobs is not None:
                yield sse(chunk(ev, None))
        elif isinstance(ev, Done):
            yield sse(chunk(None, ev.finish_reason))
            if include_usage:
                yield sse({**head, "choices": [], "usage": usage(ev)})
            yield "data: [DONE]\n\n"
        else:
            yield sse({"error": {"message": ev.message, "type": "server_error", "param": None, "code": None}})


def model_card(model: str, llm) -> dict:
    return {"id": model, "object": "model", "created": int(llm.path.stat().st_mtime), "owned_by": "localllm"}
