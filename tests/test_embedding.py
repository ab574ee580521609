"""The embedding contract for apps and servers: streams advanced from any thread, interleaved
streams that do not corrupt each other, templates, session files, arguments and environment that
come from outside, and model output that cannot drive the terminal. Tiny numpy-backend models."""
from __future__ import annotations

import gc
import io
import itertools
import json
import os
import queue
import resource
import threading
import time
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import localllm
import localllm.cli
import localllm.synthetic as synthetic
from localllm.chat_template import ChatTemplateError, RenderLimits, render_chat_template
from localllm.errors import MAX_MESSAGE, GGUFError, LocalLLMError, quoted
from localllm.synthetic import make_random_gguf

SHAPE = dict(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn=128, tensor_type="Q8_0", n_ctx=256)
GREEDY = dict(max_tokens=8, temperature=0)


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return make_random_gguf(tmp_path_factory.mktemp("embed") / "tiny.gguf", **SHAPE)


@pytest.fixture(scope="module")
def llm(path):
    # no prefix cache: a stream's prompt is then evaluated from its first token whatever the cache
    # held before, so the outputs compared below do not depend on the order work ran in
    return localllm.load(path, backend="numpy", n_ctx=128, prefix_cache_bytes=0)


def prompt(i: int) -> list[int]:
    """Distinct first tokens: no two prompts share a cached prefix."""
    return [10 + i, 40 + 3 * i, 200, 7 + i]


def text(llm, i: int, **kw) -> str:
    return "".join(llm.generate(prompt(i), **{**GREEDY, **kw}))


def in_thread(fn):
    box = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "deadlock"
    return box[0]


# --- streams and threads --------------------------------------------------------------------------

def test_stream_moved_between_threads(llm):
    alone = text(llm, 0)
    g = llm.generate(prompt(0), **GREEDY)
    first = in_thread(lambda: next(g))
    assert first + in_thread(lambda: "".join(g)) == alone
    assert in_thread(lambda: text(llm, 1)) == text(llm, 1)        # the object stays usable


def test_interleaved_streams_equal_serial_runs(llm):
    serial = [text(llm, i, max_tokens=10) for i in range(3)]
    gens = [llm.generate(prompt(i), max_tokens=10, temperature=0) for i in range(3)]
    outs = ["", "", ""]
    for pieces in itertools.zip_longest(*gens, fillvalue=""):
        outs = [o + p for o, p in zip(outs, pieces)]
    assert outs == serial


def test_abandoned_stream_blocks_nobody(llm):
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    cold = llm.logits(ids)
    g = llm.generate(prompt(4), **GREEDY)
    first = in_thread(lambda: next(g))                     # then left unfinished on that thread
    assert np.array_equal(in_thread(lambda: llm.logits(ids)), cold)
    assert in_thread(lambda: llm.tokenize("hello")) == llm.tokenize("hello")
    assert first + "".join(g) == text(llm, 4)              # parked, then resumed intact
    g = llm.generate(prompt(5), **GREEDY)
    next(g)
    del g
    gc.collect()                                           # an abandoned stream lets go when collected
    assert in_thread(lambda: text(llm, 5)) == text(llm, 5)


def test_closed_model_refuses_a_stream(path):
    own = localllm.load(path, backend="numpy", n_ctx=64)
    g = own.generate(prompt(0), **GREEDY)
    next(g)
    own.close()
    with pytest.raises(LocalLLMError, match="no weights"):
        next(g)


def test_stress_threads_streams_logits_sessions(llm, tmp_path):
    """8 threads share one LLM: streams stepped by whichever worker is free, logits, tokenize,
    save_state/load_state. Everything must finish (watchdog) and equal the serial results."""
    streams = [(i, dict(max_tokens=12, temperature=0 if i % 2 else 0.7, seed=i)) for i in range(32)]
    logit_ids = [[50 + i, 2, 3, 4 + i] for i in range(16)]
    words = [f"thread number {i} says hello" for i in range(16)]
    expected = {("gen", i): text(llm, i, **kw) for i, kw in streams}
    expected.update({("logits", i): llm.logits(ids) for i, ids in enumerate(logit_ids)})
    expected.update({("tok", i): llm.tokenize(w) for i, w in enumerate(words)})
    expected.update({("session", i): {"n": i} for i in range(16)})

    def session(i):
        llm.save_state(tmp_path / f"s{i}.session", extra={"n": i})
        return llm.load_state(tmp_path / f"s{i}.session")

    work: queue.Queue = queue.Queue()
    for i, kw in streams:
        work.put((("gen", i), llm.generate(prompt(i), **kw), ""))
    for i, ids in enumerate(logit_ids):
        work.put((("logits", i), lambda ids=ids: llm.logits(ids), None))
    for i, w in enumerate(words):
        work.put((("tok", i), lambda w=w: llm.tokenize(w), None))
    for i in range(16):
        work.put((("session", i), lambda i=i: session(i), None))
    results, errors, left = {}, [], [len(expected)]
    stepped_by: dict = {}                          # stream -> the threads that advanced it
    done, count_lock = threading.Event(), threading.Lock()

    def worker():
        while not done.is_set():
            try:
                key, job, acc = work.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                if acc is None:
                    results[key] = job()
                else:                               # one step of a stream, then back in the queue
                    stepped_by.setdefault(key, set()).add(threading.get_ident())
                    piece = next(job, None)
                    if piece is not None:
                        work.put((key, job, acc + piece))
                        continue
                    results[key] = acc
            except Exception as e:  # noqa: BLE001: reported below
                errors.append(f"{key}: {type(e).__name__}: {e}")
            with count_lock:
                left[0] -= 1
                if left[0] == 0 or errors:
                    done.set()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    assert done.wait(60), f"deadlock or stall: {left[0]} tasks unfinished"
    assert not errors, errors
    assert max(map(len, stepped_by.values())) > 1
    for key, want in expected.items():
        got = results[key]
        assert np.array_equal(got, want) if key[0] == "logits" else got == want, key


# --- chat templates -------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("payload", [
    "{{ '{:{}}'.format('a', '999999999') }}",
    "{{ '{:>{w}}'.format('a', w='1999999999') }}",
    "{{ '{:.{p}f}'.format(1.5, p=3999999) }}",
    "{{ ('%3999999s' * 100) % ((1,) * 100) }}",
    "{{ '%*s' % (3999999, 'a') }}",
    "{{ '%.999999999999f' % 1.5 }}",
])
def test_format_widths_are_measured_first(payload):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError, match="too large|would exceed"):
        render_chat_template(payload, MESSAGES)
    assert time.monotonic() - t0 < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 64 << 10   # KiB: nothing big allocated


def test_everyday_formatting_still_works():
    out = render_chat_template("{{ '{:>4}|{:.2f}|{}'.format(7, 3.14159, messages[0].role) }}{{ '%03d' % 5 }}",
                               MESSAGES)
    assert out == "   7|3.14|user005"


@pytest.mark.parametrize("payload", [
    "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "{% if 1 %}" * 3000 + "x" + "{% endif %}" * 3000,
])
def test_deep_nesting_is_a_template_error(payload):
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError, match="nests too deeply"):
        render_chat_template(payload, MESSAGES)
    assert time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("payload", ["{{ raise_exception }}", "{{ [strftime_now] }}", "{{ 'a'.upper }}",
                                     "{{ namespace ~ '' }}", "{{ '{}'.format(raise_exception) }}"])
def test_function_reprs_are_not_rendered(payload):
    with pytest.raises(ChatTemplateError, match="prints a function"):
        render_chat_template(payload, MESSAGES)


def test_one_time_budget_for_probing_and_rendering():
    """The capability probe renders a template up to four times before the real render: all of
    it must fit one budget, not one budget each."""
    slow = "{% for i in range(N) %}{% for j in range(300) %}{% endfor %}{% endfor %}ok"
    calibrate = slow.replace("N", "100")
    t0 = time.monotonic()
    render_chat_template(calibrate, MESSAGES, limits=RenderLimits(timeout_s=60))      # 5 renders
    per_render = (time.monotonic() - t0) / 5 / 100                                     # seconds per outer step
    budget = 1.0
    n = max(1, int(0.45 * budget / per_render))                                         # ~0.45 s per render
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError, match="took longer"):
        render_chat_template(slow.replace("N", str(n)), MESSAGES, limits=RenderLimits(timeout_s=budget))
    assert time.monotonic() - t0 < 1.8 * budget


# --- sessions -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(llm, tmp_path_factory):
    list(llm.generate(prompt(7), **GREEDY))
    p = tmp_path_factory.mktemp("sessions") / "good.session"
    llm.save_state(p, extra={"messages": []})
    with np.load(p) as z:
        return p, {name[:-4] if name.endswith(".npy") else name: z[name] for name in z.files}


def _npy(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def _crafted(saved, tmp_path, **members) -> str:
    """The good session with some members replaced (bytes: a raw .npy; str: a JSON header)."""
    out = tmp_path / "crafted.session"
    parts = {**saved[1], **members}
    with zipfile.ZipFile(out, "w") as z:
        for name, value in parts.items():
            if isinstance(value, str):
                value = np.frombuffer(value.encode(), dtype=np.uint8)
            z.writestr(f"{name}.npy", value if isinstance(value, bytes) else _npy(value))
    return out


def _huge_npy() -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": "<i4", "fortran_order": False, "shape": (10**12,)})
    return b.getvalue() + bytes(64)


def _header(saved, **change) -> str:
    h = json.loads(bytes(saved[1]["header"]).decode())
    return json.dumps({k: v for k, v in {**h, **change}.items() if v is not None})


@pytest.mark.parametrize("case", ["header a list", "missing n_tokens", "deep JSON", "huge npy shape",
                                  "more tokens than the context", "token out of range", "NaN K/V",
                                  "K/V of another shape", "extra array"])
def test_crafted_sessions_are_refused(llm, saved, tmp_path, case):
    tokens, k = saved[1]["tokens"], saved[1]["kv_k"]
    nan_k = k.copy()
    nan_k[0, -1, 0, 0] = np.nan
    members = {
        "header a list": lambda: {"header": "[1, 2]"},
        "missing n_tokens": lambda: {"header": _header(saved, n_tokens=None)},
        "deep JSON": lambda: {"header": "[" * 100_000 + "]" * 100_000},
        "huge npy shape": lambda: {"tokens": _huge_npy()},
        "more tokens than the context": lambda: {"header": _header(saved, n_tokens=10**12), "tokens": _huge_npy()},
        "token out of range": lambda: {"tokens": np.where(np.arange(len(tokens)) == 1, 10**6, tokens)
                                       .astype(np.int32)},
        "NaN K/V": lambda: {"kv_k": nan_k},
        "K/V of another shape": lambda: {"kv_k": k[:, :, :1]},
        "extra array": lambda: {"kv_zz": k},
    }[case]()
    before = list(llm._sequence().cache.tokens)
    with pytest.raises(LocalLLMError) as e:
        llm.load_state(_crafted(saved, tmp_path, **members))
    assert "\n" not in str(e.value) and len(str(e.value)) < 300
    assert llm._sequence().cache.tokens == before              # nothing half-restored


@pytest.mark.parametrize("case", ["parent is a file", "read-only folder", "name too long", "extra not JSON",
                                  "extra not a dict"])
def test_save_state_errors_leave_nothing(llm, tmp_path, case):
    if case == "read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    (tmp_path / "file").write_text("")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    target, extra = {
        "parent is a file": (tmp_path / "file" / "s.session", None),
        "read-only folder": (ro / "s.session", None),
        "name too long": (tmp_path / ("x" * 300), None),
        "extra not JSON": (tmp_path / "s.session", {"x": object()}),
        "extra not a dict": (tmp_path / "s.session", [1]),
    }[case]
    with pytest.raises(LocalLLMError):
        llm.save_state(target, extra=extra)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"] and not list(ro.iterdir())


# --- arguments and environment --------------------------------------------------------------------

@pytest.mark.parametrize("n_ctx, message", [("64", "n_ctx must be an integer"), (2.5, "n_ctx must be an integer"),
                                            (10**12, "n_ctx=1,000,000,000,000 needs"), (0, "n_ctx must be at least 1")])
def test_bad_n_ctx(path, n_ctx, message):
    with pytest.raises(LocalLLMError, match=message):
        localllm.load(path, backend="numpy", n_ctx=n_ctx)


@pytest.mark.parametrize("kwargs, name", [
    (dict(temperature="abc"), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(min_p=1.5), "min_p"), (dict(top_p=-0.1), "top_p"), (dict(seed=-2), "seed"), (dict(seed="1"), "seed"),
    (dict(temperature=1e-300), "temperature"), (dict(repeat_penalty=0), "repeat_penalty"),
    (dict(stop=5), "stop"), (dict(max_tokens="5"), "max_tokens"), (dict(top_k=2.5), "top_k"),
])
def test_bad_generation_arguments(llm, kwargs, name):
    with pytest.raises(LocalLLMError, match=f"^{name} must") as e:
        list(llm.generate(prompt(0), **{**GREEDY, **kwargs}))
    assert len(str(e.value)) < 100
    with pytest.raises(LocalLLMError, match=f"^{name} must"):
        list(llm.chat(MESSAGES, **{**GREEDY, **kwargs}))


def test_seed_minus_one_means_random(llm):
    """As llama.cpp's LLAMA_DEFAULT_SEED: -1 asks for a fresh random seed, like None."""
    assert len(list(llm.generate(prompt(0), max_tokens=2, seed=-1))) >= 1


def test_bad_token_and_chat_arguments(llm):
    with pytest.raises(LocalLLMError, match="ids element must be an integer"):
        llm.detokenize(["a"])
    with pytest.raises(LocalLLMError, match="messages must be a list of dicts"):
        list(llm.chat("hello"))
    with pytest.raises(LocalLLMError, match="unknown argument 'temprature'"):
        list(llm.chat(MESSAGES, temprature=0))


@pytest.mark.parametrize("var, value, name, message", [
    ("LOCALLLM_KV_BUDGET", "abc", None, r"\$LOCALLLM_KV_BUDGET must be an integer"),
    ("LOCALLLM_PYPI_URL", "notaurl", "smollm2-135m", r"\$LOCALLLM_PYPI_URL must be an http"),
    ("LOCALLLM_HOME", "/dev/null/x", "smollm2-135m", "cannot create the model cache"),
])
def test_bad_environment(path, tmp_path, monkeypatch, var, value, name, message):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))     # never the user's cache
    monkeypatch.setenv(var, value)
    with pytest.raises(LocalLLMError, match=message):
        localllm.load(name or path, backend="numpy")


def test_long_names_and_messages_are_cut(path, tmp_path):
    with pytest.raises(LocalLLMError, match="no such file or catalog model") as e:
        localllm.load("x" * 300)
    assert len(str(e.value)) <= MAX_MESSAGE + 40
    data = path.read_bytes()
    at = data.index(b"token_embd.weight") - 8              # the name's u64 length: a runaway name
    (tmp_path / "long.gguf").write_bytes(data[:at] + (50_000).to_bytes(8, "little") + data[at + 8:])
    with pytest.raises(GGUFError, match="tensor 'token_embd.weight") as e:
        localllm.load(tmp_path / "long.gguf", backend="numpy")
    assert len(str(e.value)) < 300 and " chars)" in str(e.value)
    assert "7,000,000 chars" in quoted("n" * 7_000_000) and len(quoted("n" * 7_000_000)) < 120
    assert len(str(LocalLLMError("x" * 7_000_000 + "\nsecond line"))) <= MAX_MESSAGE + 40


# --- terminal output ------------------------------------------------------------------------------

def test_escape_sequences_in_tokens_are_escaped_by_the_cli(tmp_path, monkeypatch):
    """Most of this vocabulary's tokens carry ANSI and OSC sequences; `localllm run` must print
    them escaped, while the API hands the text back unchanged."""
    built = synthetic._tokenizer_kv

    def hostile(tokenizer_from, vocab):
        kv = built(tokenizer_from, vocab)
        tokens, arr, s = kv["tokenizer.ggml.tokens"]
        types, arr2, i32 = kv["tokenizer.ggml.token_type"]
        for i, tok in enumerate(tokens):
            if tok.startswith("<|reserved_"):
                raw = f"\x1b[3{i % 8}m\x1b]0;t{i}\x07\x9b{i}".encode()
                tokens[i], types[i] = "".join(synthetic.BYTE_TO_CHAR[b] for b in raw), 1   # NORMAL
        return kv

    monkeypatch.setattr(synthetic, "_tokenizer_kv", hostile)
    model = make_random_gguf(tmp_path / "ansi.gguf", **{**SHAPE, "vocab": 3000})
    api = "".join(localllm.load(model, backend="numpy").generate("hello", max_tokens=12, temperature=0))
    assert "\x1b" in api
    r = CliRunner().invoke(localllm.cli.main, ["run", str(model), "--backend", "numpy", "-p", "hello",
                                               "-n", "12", "--temp", "0"])
    assert r.exit_code == 0, r.output
    assert "\\x1b" in r.stdout and "\x1b" not in r.stdout and "\x07" not in r.stdout and "\x9b" not in r.stdout
