"""ollama's API: /api/chat and /api/generate (NDJSON streams, one JSON object a line), /api/tags,
/api/show, /api/version, so that apps written for ollama work unchanged."""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone

from ..sampler import SamplingParams
from .fields import RequestError, bounded, get, messages, stops
from .openai import check_context
from .scheduler import Done, Failed, Job, Piece


def _options(body: dict) -> dict:
    opts = get(body, "options", dict, {})
    d = SamplingParams()
    params = SamplingParams(
        temperature=bounded(opts, "temperature", float, d.temperature, 0),
        top_k=bounded(opts, "top_k", int, d.top_k), top_p=bounded(opts, "top_p", float, d.top_p, 0, 1),
        min_p=bounded(opts, "min_p", float, d.min_p, 0, 1),
        repeat_penalty=bounded(opts, "repeat_penalty", float, d.repeat_penalty, 0),
        repeat_last_n=get(opts, "repeat_last_n", int, d.repeat_last_n), seed=get(opts, "seed", int))
    n = get(opts, "num_predict", int, -1)
    return {"params": params, "max_tokens": -1 if n < 0 else n, "stops": stops(opts),
            "presence_penalty": get(opts, "presence_penalty", float, 0.0),
            "frequency_penalty": get(opts, "frequency_penalty", float, 0.0)}


def chat_job(body: dict, llm) -> Job:
    return Job(check_context(llm.chat_tokens(messages(body)), llm, "messages"), **_options(body))


def generate_job(body: dict, llm) -> Job:
    prompt = get(body, "prompt", str, "")
    if get(body, "raw", bool, False):
        ids = llm.tokenize(prompt)
    else:
        system = get(body, "system", str)
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = llm.chat_tokens(msgs)
    return Job(check_context(ids, llm, "prompt"), **_options(body))


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class Timer:
    """ollama's durations (nanoseconds): until the first token is prompt evaluation."""

    def __init__(self) -> None:
        self.t0 = self.first = time.perf_counter_ns()
        self.seen = False

    def piece(self) -> None:
        if not self.seen:
            self.first, self.seen = time.perf_counter_ns(), True

    def final(self, done: Done) -> dict:
        end = time.perf_counter_ns()
        return {"done": True, "done_reason": done.finish_reason, "total_duration": end - self.t0,
                "load_duration": 0, "prompt_eval_count": done.prompt_tokens,
                "prompt_eval_duration": self.first - self.t0, "eval_count": done.completion_tokens,
                "eval_duration": end - self.first}


def _body(chat: bool, model: str, text: str) -> dict:
    out = {"model": model, "created_at": now()}
    if chat:
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["response"] = text
    return out


async def respond(events: AsyncIterator, model: str, chat: bool) -> dict:
    """The whole reply as one object (stream: false)."""
    timer, parts = Timer(), []
    async for ev in events:
        if isinstance(ev, Piece):
            timer.piece()
            parts.append(ev.text)
        elif isinstance(ev, Failed):
            raise RequestError(ev.message, status=503)
        else:
            return {**_body(chat, model, "".join(parts)), **timer.final(ev)}
    raise RequestError("the request was cancelled", status=503)


async def stream(events: AsyncIterator, model: str, chat: bool) -> AsyncIterator[str]:
    """NDJSON: an object per piece, then the final one with done true and the counts."""
    timer = Timer()
    async for ev in events:
        if isinstance(ev, Piece):
            timer.piece()
            if ev.text:
                yield json.dumps({**_body(chat, model, ev.text), "done": False}) + "\n"
        elif isinstance(ev, Done):
            yield json.dumps({**_body(chat, model, ""), **timer.final(ev)}) + "\n"
        else:
            yield json.dumps({"error": ev.message}) + "\n"


def details(llm) -> dict:
    info = llm.gguf.metadata
    arch = llm.gguf.architecture
    types = {t.type.name for t in llm.gguf.tensors.values() if t.name.startswith("blk.")}
    n_params = sum(t.n_elements for t in llm.gguf.tensors.values())
    return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
            "parameter_size": f"{n_params / 1e6:.0f}M" if n_params < 1e9 else f"{n_params / 1e9:.1f}B",
            "quantization_level": "/".join(sorted(types)) or info.get("general.file_type", "")}


def tags(model: str, llm) -> dict:
    mtime = datetime.fromtimestamp(llm.path.stat().st_mtime, timezone.utc).isoformat()
    return {"models": [{"name": model, "model": model, "modified_at": mtime, "size": llm.gguf.file_size,
                        "digest": "", "details": details(llm)}]}


def show(llm) -> dict:
    meta = {k: v for k, v in llm.gguf.metadata.items()
            if not k.startswith("tokenizer.ggml.") and isinstance(v, (str, int, float, bool))}
    return {"modelfile": "", "parameters": "", "template": llm.chat_template, "details": details(llm),
            "model_info": meta, "capabilities": ["completion", "embedding"]}
