"""Continuous batching: one worker thread owns the model (model calls are not thread-safe) and
runs every active slot's next rows in one forward: a decoding slot contributes its last token, a
prefilling slot a chunk of its prompt, so a new prompt never stalls the running streams. Requests
reach the worker through a bounded queue and get their tokens back as events on their own
asyncio loop."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numba
import numpy as np

from ..errors import LocalLLMError
from ..generator import PREFILL_CHUNK, Sequence, StopStringFilter
from ..kv_cache import CacheBatch, KVCache
from ..sampler import Sampler, SamplingParams
from ..tokenizer import StreamDecoder

log = logging.getLogger(__name__)

STEP_PREFILL = 64   # prompt tokens a prefilling slot adds to a step that also decodes other slots


class QueueFullError(LocalLLMError):
    """Every slot is busy and the waiting queue is full."""


@dataclass
class Piece:
    text: str
    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None    # (token, logprob), best first


@dataclass
class Done:
    finish_reason: str            # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass
class Failed:
    message: str


@dataclass
class Job:
    """One request: a completion (ids, sampling) or, with embed, a pooled embedding."""
    ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = -1                 # < 0: until end of generation or of the context
    stops: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None          # None: off; n: the chosen token's and the n best
    ignore_eos: bool = False             # llama.cpp's extension: never sample an end-of-generation token
    embed: bool = False

    def __post_init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.cached_tokens = 0

    def cancel(self) -> None:
        """The client is gone: the worker frees the job's slot at its next step."""
        self.cancelled = True

    def emit(self, event) -> None:
        """From the worker thread: hand an event to the request's loop."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:     # the loop is closed: nobody listens any more
            self.cancel()

    async def events(self):
        """Pieces until a Done or Failed (or an embedding: a numpy vector); cancels on exit."""
        try:
            while True:
                ev = await self.queue.get()
                yield ev
                if not isinstance(ev, Piece):
                    return
        finally:
            self.cancel()


class Slot:
    """A sequence the scheduler can run: its own KV cache, and the job it serves."""

    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        self.job: Job | None = None

    def start(self, job: Job, tokenizer) -> int:
        """Take the job; reuse what this slot (or the shared prefix cache) holds. Returns the
        number of prompt tokens whose K/V were reused."""
        self.job, self.sampler = job, Sampler(job.params)
        keep = min(self.seq._reuse(job.ids), len(job.ids) - 1)
        self.seq.cache.trim(keep)
        self.pending = list(job.ids[keep:])        # prompt tokens still to evaluate
        self.history = list(job.ids)
        self.generated: list[int] = []
        self.decoder, self.stopper = StreamDecoder(tokenizer), StopStringFilter(job.stops)
        return keep

    @property
    def cache(self) -> KVCache:
        return self.seq.cache


class Scheduler:
    """Runs jobs on `parallel` slots; `submit` from any thread, events come back per job."""

    def __init__(self, llm, parallel: int = 4, queue_size: int = 64, metrics=None) -> None:
        if parallel < 1:
            raise LocalLLMError(f"parallel must be at least 1, not {parallel}")
        self.llm, self.model, self.metrics = llm, llm.model, metrics
        c = self.model.cfg
        shape = (c.n_layers, llm.n_ctx, c.n_kv_heads, c.head_dim_k, c.head_dim_v)
        kv = {"kv_type": llm.kv_type} if llm.kv_type != "f16" else {}    # as LLM._sequence makes its cache
        caches = [llm.backend.new_kv_cache(*shape, **kv) for _ in range(parallel)]
        self.slots = [Slot(Sequence(self.model, cache, llm.prefix_cache if hasattr(cache, "snapshot") else None))
                      for cache in caches]
        self.batched = all(isinstance(cache, KVCache) for cache in caches)  # CacheBatch needs host caches
        self.chooser = ModeChooser()
        self.queue: deque[Job] = deque()
        self.queue_size = queue_size
        self._cv = threading.Condition()
        self._stopping = False
        self._threads = numba.get_num_threads()     # numba's thread count is per thread: the worker takes ours
        self._thread = threading.Thread(target=self._run, name="localllm-scheduler", daemon=True)
        self._thread.start()

    # --- from request handlers ------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            free = sum(s.job is None for s in self.slots)
            if len(self.queue) >= self.queue_size + free:
                raise QueueFullError(f"all {len(self.slots)} slots are busy and {self.queue_size} requests wait")
            self.queue.append(job)
            self._cv.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    @property
    def active(self) -> int:
        return sum(s.job is not None for s in self.slots)

    def kv_used(self) -> tuple[int, int]:
        """(tokens held by active slots, tokens all slots can hold)."""
        return (sum(s.cache.offset for s in self.slots if s.job is not None),
                sum(s.cache.n_ctx for s in self.slots))

    def stop(self) -> None:
        """End the worker: running and waiting jobs get a Failed event."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # --- the worker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        numba.set_num_threads(self._threads)
        try:
            while self._wait_for_work():
                with self.llm._lock:       # the app may use the same LLM in-process between steps
                    self._admit()
                    if any(s.job is not None for s in self.slots):
                        self._step()
        except Exception as e:          # a bug must not leave clients hanging
            log.exception("scheduler failed")
            self._fail_all(f"internal error: {e}")
            return
        self._fail_all("the server is shutting down")

    def _wait_for_work(self) -> bool:
        with self._cv:
            while not self._stopping and not self.queue and all(s.job is None for s in self.slots):
                self._cv.wait()
            return not self._stopping

    def _fail_all(self, message: str) -> None:
        with self._cv:
            jobs = [s.job for s in self.slots if s.job is not None] + list(self.queue)
            self.queue.clear()
            self._stopping = True
        for s in self.slots:
            s.job = None
        for job in jobs:
            job.emit(Failed(message))

    def _admit(self) -> None:
        """Move waiting jobs onto free slots (the one holding the longest common prefix)."""
        while True:
            free = [s for s in self.slots if s.job is None]
            with self._cv:
                if not free or not self.queue:
                    return
                job = self.queue.popleft()
            if job.cancelled:
                job.emit(Failed("cancelled"))
                continue
            if job.embed:
                job.emit(self._embed(job.ids) if self.batched else
                         Failed(f"embeddings need a host-memory backend (cpu or numpy), not {self.llm.backend.name}"))
                continue
            slot = max(free, key=lambda s: s.cache.common_prefix(job.ids))
            cached = slot.start(job, self.llm.tokenizer)
            job.cached_tokens = cached
            if self.metrics is not None:
                self.metrics.prompt_tokens += len(job.ids)
                self.metrics.prefix_hits += cached > 0

    def _step(self) -> None:
        """One forward over every active slot's next rows, then sample where a row ends a prompt
        or is a decode."""
        for s in self.slots:
            if s.job is not None and s.job.cancelled:
                s.job.emit(Failed("cancelled"))      # ends a handler still waiting on the job
                s.job = None                         # a disconnected client frees its slot here
        active = [s for s in self.slots if s.job is not None]
        if not active:
            return
        decodes = [not s.pending for s in active]
        rows = []
        for s, decode in zip(active, decodes):
            if decode:
                rows.append([s.generated[-1]])
            else:
                n = STEP_PREFILL if len(active) > 1 else PREFILL_CHUNK
                rows.append(s.pending[:n])
                del s.pending[:n]
        t0 = time.perf_counter()
        logits = self._forward(active, rows)
        self._account(rows, decodes, time.perf_counter() - t0)
        for s, fed, row in zip(active, rows, logits):
            s.cache.tokens.extend(fed)
            if not s.pending:
                self._sample(s, row)

    def _forward(self, active: list[Slot], rows: list[list[int]]) -> list[np.ndarray]:
        """The last row's logits of each slot's rows: one batched forward, or one per slot where
        that measured cheaper (a backend's compiled single-sequence forward can beat its op-by-op
        batched one, e.g. on a CPU that other processes keep busy)."""
        decode_only = all(len(r) == 1 for r in rows)
        mode = self.chooser.pick(len(active), decode_only) if len(active) > 1 and self.batched else "serial"
        t0 = time.perf_counter()
        if mode == "serial":
            out = [self.model.forward(np.asarray(r, dtype=np.int64), s.cache)[-1] for s, r in zip(active, rows)]
        else:
            batch = CacheBatch([s.cache for s in active], [len(r) for r in rows])
            out = list(self.model.forward(np.asarray(sum(rows, []), dtype=np.int64), batch))
        seconds = time.perf_counter() - t0
        if len(active) > 1 and decode_only:
            self.chooser.record(mode, len(active), seconds / len(rows))
        if self.metrics is not None:
            self.metrics.steps[mode] += 1
            self.metrics.step_seconds[mode] += seconds
        return out

    def _account(self, rows: list[list[int]], decodes: list[bool], seconds: float) -> None:
        """Split a step's time between prefill and decode by their share of its rows."""
        if self.metrics is None:
            return
        n_decode = sum(decodes)
        n_prefill = sum(len(r) for r, d in zip(rows, decodes) if not d)
        total = n_prefill + n_decode
        self.metrics.prefill_tokens += n_prefill
        self.metrics.prefill_seconds += seconds * n_prefill / total
        self.metrics.decode_tokens += n_decode
        self.metrics.decode_seconds += seconds * n_decode / total

    def _sample(self, s: Slot, logits: np.ndarray) -> None:
        job = s.job
        logits = self._penalised(logits, s)
        token = s.sampler(logits, s.history)
        if token in self.llm.tokenizer.eog_ids:
            return self._finish(s, "stop")
        s.generated.append(token)
        s.history.append(token)
        if self.metrics is not None:
            self.metrics.completion_tokens += 1
        text = s.stopper.push(s.decoder.feed(token))
        piece = Piece(text, token)
        if job.logprobs is not None:
            piece.logprob, piece.top = _logprobs(logits, token, job.logprobs)
        job.emit(piece)
        if s.stopper.stopped:
            return self._finish(s, "stop", flush=False)
        if len(s.generated) == job.max_tokens or s.cache.offset >= s.cache.n_ctx:
            return self._finish(s, "length")

    def _penalised(self, logits: np.ndarray, s: Slot) -> np.ndarray:
        """OpenAI's presence and frequency penalties over the tokens generated so far; with
        ignore_eos, end-of-generation tokens out of reach."""
        job = s.job
        if job.ignore_eos:
            logits = logits.copy()
            logits[list(self.llm.tokenizer.eog_ids)] = -np.inf
        if not s.generated or (job.presence_penalty == 0 and job.frequency_penalty == 0):
            return logits
        ids, counts = np.unique(np.asarray(s.generated), return_counts=True)
        out = logits.copy()
        out[ids] -= job.presence_penalty + job.frequency_penalty * counts
        return out

    def _finish(self, s: Slot, reason: str, flush: bool = True) -> None:
        job = s.job
        if flush and not s.stopper.stopped:
            tail = s.stopper.push(s.decoder.flush())
            tail += "" if s.stopper.stopped else s.stopper.flush()
            if tail:
                job.emit(Piece(tail, -1))
        if s.stopper.stopped:
            reason = "stop"
        s.job = None
        job.emit(Done(reason, len(job.ids), len(s.generated), job.cached_tokens))

    def _embed(self, ids: list[int]) -> np.ndarray:
        """Mean-pooled, L2-normalised final hidden states (llama.cpp's --pooling mean)."""
        c = self.model.cfg
        cache = KVCache(c.n_layers, len(ids), c.n_kv_heads, c.head_dim_k, c.head_dim_v)
        total = np.zeros(c.dim, dtype=np.float64)
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[start:start + PREFILL_CHUNK]
            hidden = self.model.forward(np.asarray(chunk, dtype=np.int64), CacheBatch([cache], [len(chunk)], hidden=True),
                                        all_logits=True)                                   # [T, dim]
            cache.tokens.extend(chunk)
            total += hidden.sum(axis=0)
        mean = total / len(ids)
        return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)


class ModeChooser:
    """Picks "batch" or "serial" for a decode step over n slots: the lower measured time per row
    (a moving average per mode and n), trying the other mode now and then as conditions change,
    less often the worse it measured (so tries cost about 1/EXPLORE of the time). Steps with
    prompt rows run serially and are not measured: their cost depends on the prompts' lengths."""

    EXPLORE = 32

    def __init__(self) -> None:
        self.cost: dict[tuple[str, int], float] = {}
        self.since: dict[int, int] = {}      # n -> steps since the other mode was last tried
        self.seen: set[str] = set()

    def pick(self, n: int, decode_only: bool) -> str:
        if not decode_only:
            return "serial"
        batch, serial = self.cost.get(("batch", n)), self.cost.get(("serial", n))
        if serial is None:
            return "serial"
        if batch is None:       # a first try at this n, unless batching measured far worse at others
            return "batch" if self._promising() else "serial"
        best, other = ("batch", "serial") if batch <= serial else ("serial", "batch")
        self.since[n] = self.since.get(n, 0) + 1
        if self.since[n] >= self.EXPLORE * self.cost[(other, n)] / self.cost[(best, n)]:
            self.since[n] = 0
            return other
        return best

    def _promising(self) -> bool:
        ratios = [c / self.cost[("serial", n)] for (mode, n), c in self.cost.items()
                  if mode == "batch" and ("serial", n) in self.cost]
        return not ratios or min(ratios) < 2

    def record(self, mode: str, n: int, seconds_per_row: float) -> None:
        if mode not in self.seen:      # a first use may include compiling (or loading) kernels
            self.seen.add(mode)
            return
        old = self.cost.get((mode, n))
        self.cost[(mode, n)] = seconds_per_row if old is None else 0.8 * old + 0.2 * seconds_per_row


def _logprobs(logits: np.ndarray, token: int, n: int) -> tuple[float, list[tuple[int, float]]]:
    x = logits.astype(np.float64)
    logp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
    top = np.argsort(-logp)[:n] if n > 0 else np.array([], dtype=np.int64)
    return float(logp[token]), [(int(t), float(logp[t])) for t in top]
