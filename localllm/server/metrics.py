"""Counters for /metrics, written in Prometheus' text exposition format (a handful of lines: no
client library needed)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Metrics:
    requests: Counter = field(default_factory=Counter)    # (route, status) -> count
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_tokens: int = 0       # prompt tokens run through the model (prefix-cache hits excluded)
    prefill_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    prefix_hits: int = 0          # requests that reused cached K/V of an earlier prompt
    steps: Counter = field(default_factory=Counter)       # forward steps by mode: batch, serial
    step_seconds: Counter = field(default_factory=Counter)

    def render(self, scheduler) -> str:
        """The exposition text; scheduler (None while loading) gives the live gauges."""
        lines = ["# TYPE localllm_requests_total counter"]
        lines += [f'localllm_requests_total{{route="{route}",status="{status}"}} {n}'
                  for (route, status), n in sorted(self.requests.items())]
        lines += ["# TYPE localllm_steps_total counter"]
        lines += [f'localllm_steps_total{{mode="{m}"}} {n}' for m, n in sorted(self.steps.items())]
        lines += ["# TYPE localllm_step_seconds_total counter"]
        lines += [f'localllm_step_seconds_total{{mode="{m}"}} {t:g}' for m, t in sorted(self.step_seconds.items())]
        queue, active, used, capacity = 0, 0, 0, 0
        if scheduler is not None:
            queue, active = scheduler.queue_depth, scheduler.active
            used, capacity = scheduler.kv_used()
        for name, kind, value, about in [
            ("prompt_tokens_total", "counter", self.prompt_tokens, "prompt tokens received"),
            ("completion_tokens_total", "counter", self.completion_tokens, "tokens generated"),
            ("prefill_tokens_total", "counter", self.prefill_tokens, "prompt tokens evaluated"),
            ("prefix_cache_hits_total", "counter", self.prefix_hits, "requests that reused cached K/V"),
            ("prefill_tokens_per_second", "gauge", _rate(self.prefill_tokens, self.prefill_seconds),
             "prompt tokens per second of prefill"),
            ("decode_tokens_per_second", "gauge", _rate(self.decode_tokens, self.decode_seconds),
             "generated tokens per second of decode steps"),
            ("queue_depth", "gauge", queue, "requests waiting for a slot"),
            ("active_slots", "gauge", active, "slots running a request"),
            ("kv_cache_tokens", "gauge", used, "KV cache positions held by active slots"),
            ("kv_cache_capacity_tokens", "gauge", capacity, "KV cache positions of all slots"),
        ]:
            lines += [f"# HELP localllm_{name} {about}", f"# TYPE localllm_{name} {kind}", f"localllm_{name} {value:g}"]
        return "\n".join(lines) + "\n"


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0
