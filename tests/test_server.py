"""`localllm serve` on a tiny random-weight model (numpy backend): the real `openai` client for the
OpenAI routes, httpx for ollama's, metrics, health and malformed requests; batched forwards equal
separate ones; a bounded load test with clients that disconnect mid-stream."""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need the test extra (httpx)")
openai = pytest.importorskip("openai", reason="the server tests need the test extra (openai)")
pytest.importorskip("starlette", reason="the server tests need the server extra")

import localllm  # noqa: E402
from localllm.kv_cache import CacheBatch, KVCache  # noqa: E402
from localllm.synthetic import make_random_gguf  # noqa: E402

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_random_gguf(tmp_path_factory.mktemp("serve") / "tiny.gguf", dim=64, n_layers=2, n_heads=4,
                            n_kv_heads=2, ffn=128, tensor_type="Q8_0", n_ctx=256)


@pytest.fixture(scope="module")
def ref(model_path):
    """A second copy of the model for reference results (the served one belongs to its worker)."""
    return localllm.load(model_path, backend="numpy")


@pytest.fixture(scope="module")
def server(model_path):
    # a small prefix cache, so that the load test sees it full (it keeps earlier prompts' K/V up to its bound)
    llm = localllm.load(model_path, backend="numpy", prefix_cache_bytes=1 << 20)
    handle = localllm.serve(llm, port=0, parallel=4, queue_size=64)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def active_slots(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("localllm_active_slots ")))


def rss_bytes() -> int:
    """This process's resident memory (the server runs in it); Linux only, else 0."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:
        return 0


def wait_idle(url: str) -> float:
    for _ in range(100):
        n = active_slots(url)
        if n == 0:
            return n
        time.sleep(0.05)
    return n


# --- the batched forward ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_batched_forward_equals_separate(model_path, backend):
    """Rows of three sequences in one forward (a prefill chunk, two decodes at other positions)
    give each sequence the logits it gets alone."""
    llm = localllm.load(model_path, backend=backend)
    c = llm.model.cfg
    prompts = [[5, 17, 99, 3, 250], [7, 8, 9, 10, 11, 12, 13], [42, 43]]
    new = [[60, 61, 62, 63], [70], [80]]

    def cache_after(ids):
        cache = KVCache(c.n_layers, 64, c.n_kv_heads, c.head_dim_k, c.head_dim_v)
        llm.model.forward(np.asarray(ids), cache)
        cache.tokens.extend(ids)
        return cache

    alone = [llm.model.forward(np.asarray(n), cache_after(p))[-1] for p, n in zip(prompts, new)]
    caches = [cache_after(p) for p in prompts]
    batched = llm.model.forward(np.asarray(sum(new, [])), CacheBatch(caches, [len(n) for n in new]))
    np.testing.assert_allclose(batched, np.stack(alone), rtol=0, atol=1e-3)


# --- OpenAI API through the openai client ------------------------------------------------------------
def test_chat_greedy_equals_llm_chat(client, ref):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=12, temperature=0)
    expected = "".join(ref.chat(MSGS, max_tokens=12, temperature=0))
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens == len(ref.chat_tokens(MSGS))


def test_stream_concatenates_to_non_streamed(client):
    kw = dict(model="tiny", messages=MSGS, max_tokens=16, temperature=0.9, seed=7, presence_penalty=0.5,
              frequency_penalty=0.3, top_p=0.9, extra_body={"min_p": 0.01, "top_k": 20})
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["length"]


def test_stop_string_and_logprobs(client):
    base = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=10, temperature=0,
                                          logprobs=True, top_logprobs=3)
    text = base.choices[0].message.content
    entries = base.choices[0].logprobs.content
    assert len(entries) == 10 and all(len(e.top_logprobs) == 3 for e in entries)
    assert all(e.logprob == pytest.approx(e.top_logprobs[0].logprob) for e in entries)   # greedy: the best
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=10, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_completions_text_and_ids_equal_generate(client, ref):
    ids = ref.tokenize("The capital of France is")
    expected = "".join(ref.generate(ids, max_tokens=8, temperature=0))
    by_text = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=8, temperature=0)
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0, logprobs=2)
    assert by_text.choices[0].text == by_ids.choices[0].text == expected
    assert len(by_ids.choices[0].logprobs.token_logprobs) == 8


def test_models_and_embeddings(client, ref):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    out = client.embeddings.create(model="tiny", input=["hello world", "something else"])
    vecs = np.array([d.embedding for d in out.data])
    assert vecs.shape == (2, ref.model.cfg.dim)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # the pooled states are the model's final normalised hidden states: through the head they
    # give its logits
    ids = ref.tokenize("hello world")
    c = ref.model.cfg
    cache = KVCache(c.n_layers, len(ids), c.n_kv_heads, c.head_dim_k, c.head_dim_v)
    hidden = ref.model.forward(np.asarray(ids), CacheBatch([cache], [len(ids)], hidden=True), all_logits=True)
    np.testing.assert_allclose(hidden @ ref.model.output_weight().f32.T, ref.logits(ids), atol=1e-3)
    mean = hidden.mean(axis=0)
    np.testing.assert_allclose(vecs[0], mean / np.linalg.norm(mean), atol=1e-5)


def test_openai_errors(client, ref):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MSGS)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="word " * 400, max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MSGS, extra_body={"temperature": "hot"})
    assert e.value.param == "temperature"


def test_malformed_requests(server):
    for body in (b"{not json", b"[1, 2]"):
        r = httpx.post(server.url + "/v1/chat/completions", content=body)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(server.url + "/api/chat", json={"messages": [{"content": "no role"}]})
    assert r.status_code == 400 and "role" in r.json()["error"]


def test_api_key_full_queue_and_disconnect(model_path):
    """One slot, no queue: a second request while a stream runs gets 503 + Retry-After; closing
    the stream, or giving up on a non-streamed reply, frees the slot; requests need the key."""
    llm = localllm.load(model_path, backend="numpy", n_ctx=8192)      # room for a stream that outlasts the test
    handle = localllm.serve(llm, port=0, parallel=1, queue_size=0, api_key="sekret")
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=handle.url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert httpx.get(handle.url + "/v1/models").status_code == 401
        good = openai.OpenAI(base_url=handle.url + "/v1", api_key="sekret", max_retries=0)
        stream = good.completions.create(model="tiny", prompt="a", max_tokens=8000, stream=True,
                                         extra_body={"ignore_eos": True})
        next(iter(stream))
        r = httpx.post(handle.url + "/v1/completions", json={"prompt": "b", "max_tokens": 2},
                       headers={"Authorization": "Bearer sekret"})
        assert r.status_code == 503 and "Retry-After" in r.headers
        stream.close()
        assert wait_idle(handle.url) == 0
        with pytest.raises(httpx.ReadTimeout):         # a non-streamed request's client gives up
            httpx.post(handle.url + "/v1/completions", json={"prompt": "c", "max_tokens": 8000, "ignore_eos": True},
                       headers={"Authorization": "Bearer sekret"}, timeout=0.5)
        assert wait_idle(handle.url) == 0
        assert good.completions.create(model="tiny", prompt="b", max_tokens=2).choices[0].text is not None
    finally:
        handle.stop()


def test_stop_ends_running_streams(model_path):
    handle = localllm.serve(localllm.load(model_path, backend="numpy", n_ctx=8192), port=0, parallel=1)
    body = {"prompt": "a", "max_tokens": 8000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", handle.url + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        next(lines)
        stopper = threading.Thread(target=handle.stop)
        stopper.start()
        rest = [line for line in lines if line.startswith("data: ")]
    stopper.join(timeout=30)
    assert not stopper.is_alive()
    assert "error" in json.loads(rest[-1][6:]) and "shutting down" in rest[-1]


def test_cli_serve_prints_url_and_stops_on_sigterm(model_path):
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "localllm.cli", "serve", str(model_path), "--port", "0",
                             "--backend", "numpy"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line[line.index("http://"):].split()[0]
        assert httpx.get(url + "/health").json()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


# --- ollama API, health, metrics ---------------------------------------------------------------------
def test_ollama_chat_and_generate(server, ref):
    expected = "".join(ref.chat(MSGS, max_tokens=10, temperature=0))
    body = {"model": "tiny", "messages": MSGS, "stream": False, "options": {"temperature": 0, "num_predict": 10}}
    r = httpx.post(server.url + "/api/chat", json=body).json()
    assert r["message"]["content"] == expected and r["done"] and r["eval_count"] == 10
    lines = [json.loads(x) for x in httpx.post(server.url + "/api/chat", json={**body, "stream": True}).text.splitlines()]
    assert "".join(x["message"]["content"] for x in lines) == expected and lines[-1]["done"]
    preload = httpx.post(server.url + "/api/generate", json={"model": "tiny"}).json()
    assert preload["done"] and preload["response"] == ""
    raw = {"model": "tiny:latest", "prompt": "Once upon", "raw": True, "options": {"temperature": 0, "num_predict": 6}}
    streamed = [json.loads(x) for x in httpx.post(server.url + "/api/generate", json=raw).text.splitlines()]
    whole = httpx.post(server.url + "/api/generate", json={**raw, "stream": False}).json()
    assert "".join(x["response"] for x in streamed) == whole["response"] == \
        "".join(ref.generate("Once upon", max_tokens=6, temperature=0))


def test_ollama_metadata_routes(server):
    tags = httpx.get(server.url + "/api/tags").json()
    assert tags["models"][0]["name"] == "tiny" and tags["models"][0]["details"]["format"] == "gguf"
    show = httpx.post(server.url + "/api/show", json={"model": "tiny"}).json()
    assert show["details"]["family"] == "llama" and "{%" in show["template"]
    assert httpx.post(server.url + "/api/show", json={"model": "other"}).status_code == 404
    assert httpx.get(server.url + "/api/version").json()["version"] == localllm.__version__


def test_health_while_loading_metrics_and_access_log(model_path, server, caplog):
    handle = localllm.serve(None, port=0)
    try:
        r = httpx.get(handle.url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert httpx.get(handle.url + "/v1/models").status_code == 503
        handle.attach(localllm.load(model_path, backend="numpy"))
        assert httpx.get(handle.url + "/health").json()["status"] == "ok"
    finally:
        handle.stop()
    with caplog.at_level(logging.INFO, logger="localllm.server.access"):
        httpx.post(server.url + "/v1/chat/completions", json={"messages": MSGS, "max_tokens": 4})
    assert any("POST /v1/chat/completions 200" in r.getMessage() for r in caplog.records)
    text = httpx.get(server.url + "/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values["localllm_completion_tokens_total"] > 0 and values["localllm_decode_tokens_per_second"] > 0
    assert values['localllm_requests_total{route="/v1/chat/completions",status="200"}'] > 0
    assert "localllm_kv_cache_capacity_tokens" in values and "localllm_queue_depth" in values


def test_chat_page(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and "v1/chat/completions" in r.text and "<script" in r.text


# --- load -------------------------------------------------------------------------------------------
# longer runs: LOCALLLM_LOAD_CLIENTS=32 LOCALLLM_LOAD_SECONDS=60 pytest tests/test_server.py -k load
LOAD_CLIENTS = int(os.environ.get("LOCALLLM_LOAD_CLIENTS", 16))
LOAD_SECONDS = float(os.environ.get("LOCALLLM_LOAD_SECONDS", 8))


def load_round(url: str, seconds: float, seed: int) -> tuple[list, list, list]:
    """LOAD_CLIENTS clients for `seconds`: half the requests streamed, half of those dropped after
    a few events. Returns the statuses of (well-formed replies, failures, dropped streams)."""
    deadline = time.monotonic() + seconds
    done, failures, dropped = [], [], []

    def client_loop(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < deadline:
                body = {"model": "tiny", "messages": [{"role": "user", "content": f"request {rng.random()}"}],
                        "max_tokens": rng.randint(4, 40), "temperature": 0.7}
                if rng.random() < 0.5:
                    r = http.post("/v1/chat/completions", json=body)
                    ok = r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
                    (done if ok else failures).append(r.status_code)
                    continue
                drop = rng.random() < 0.5
                with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                    lines = []
                    for line in r.iter_lines():
                        lines.append(line)
                        if drop and len(lines) > 4:
                            dropped.append(r.status_code)
                            break                      # disconnect mid-stream
                    else:
                        ok = r.status_code == 200 and "data: [DONE]" in lines
                        (done if ok else failures).append(r.status_code)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(LOAD_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done, failures, dropped


def test_load_with_disconnects(server):
    """Concurrent clients, half streaming, a quarter of all requests dropped mid-stream: no 5xx,
    every finished reply well-formed, no slot left busy, memory after the last round within 10%
    of after the one before (the first rounds also warm up the allocator, threads and caches)."""
    rss = []
    for seed in (1, 2, 3):
        done, failures, dropped = load_round(server.url, LOAD_SECONDS / 3, seed)
        assert not failures and len(done) > LOAD_CLIENTS and dropped and set(dropped) == {200}
        assert wait_idle(server.url) == 0
        rss.append(rss_bytes())
    assert rss[2] < 1.1 * rss[1], rss


# --- a real model ------------------------------------------------------------------------------------
def test_smollm2_greedy_through_server_equals_chat(smollm2_path):
    """SmolLM2 on the CPU backend: replies through the server (alone, and two at once, which runs
    them batched or interleaved) equal LLM.chat's."""
    ref = localllm.load(smollm2_path, n_ctx=512)
    asks = [[{"role": "user", "content": "What is the capital of France?"}],
            [{"role": "user", "content": "Write a haiku about rain."}]]
    expected = ["".join(ref.chat(m, max_tokens=16, temperature=0)) for m in asks]
    ref.close()
    handle = localllm.serve(localllm.load(smollm2_path, n_ctx=512), port=0, parallel=2)
    try:
        client = openai.OpenAI(base_url=handle.url + "/v1", api_key="unused", max_retries=0)

        def ask(m):
            return client.chat.completions.create(model="smollm2-135m", messages=m, max_tokens=16,
                                                  temperature=0).choices[0].message.content
        assert ask(asks[0]) == expected[0]
        results = [None, None]
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, ask(asks[i]))) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == expected
        assert ("batch", 2) in handle.state.scheduler.chooser.cost   # a step ran both in one forward
    finally:
        handle.stop()


# --- the chat page in a real browser -----------------------------------------------------------------
def chromium_path() -> str | None:
    import shutil
    return os.environ.get("LOCALLLM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def test_chat_page_in_headless_chromium(server, ref):
    """Type a message, see the streamed greedy answer and the tok/s readout; the screenshot is kept in
    $LOCALLLM_TEST_ARTIFACTS (default .test-artifacts/)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium executable (apt-get install chromium, or set LOCALLLM_CHROMIUM)")
    from pathlib import Path
    artifacts = Path(os.environ.get("LOCALLLM_TEST_ARTIFACTS", Path(__file__).parent.parent / ".test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    ask = [{"role": "user", "content": "Hello there"}]
    expected = "".join(ref.chat(ask, max_tokens=12, temperature=0))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
            page.fill("#temperature", "0")
            page.fill("#max_tokens", "12")
            page.fill("#input", "Hello there")
            page.press("#input", "Enter")
            page.wait_for_function("document.querySelector('.assistant') && !document.getElementById('send').disabled")
            assert page.eval_on_selector(".assistant", "e => e.textContent") == expected
            assert "tokens" in page.inner_text("#status")
            page.screenshot(path=str(artifacts / "chat_page.png"))
        finally:
            browser.close()
    assert wait_idle(server.url) == 0
