"""The `localllm` command as users run it: subprocesses through the real entry point, click's runner
in process for the quick checks, pexpect for the terminal chat."""
from __future__ import annotations

import json
import re
import time
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from localllm.synthetic import make_random_gguf

CLI = [sys.executable, "-m", "localllm.cli"]


def run(*args: str, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout)


def test_raw_completion_paris(smollm2_path):
    r = run("run", str(smollm2_path), "-p", "The capital of France is", "-n", "8", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(" Paris."), r.stdout
    assert "tok/s" in r.stderr  # timings go to stderr, only the completion to stdout


def test_default_model_knows_the_capital_of_france(qwen25_coder_path):
    """The README's default chat model answers the first question a new user asks (greedy)."""
    r = run("run", str(qwen25_coder_path), "What is the capital of France?", "--temp", "0", "-n", "16", "-c", "512")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout, r.stdout


def test_chat_with_piped_stdin(smollm2_path):
    r = run("run", str(smollm2_path), "-n", "16", "--temp", "0", stdin="What is 2+2?\n/set temp 0\nAnd 3+3?\n")
    assert r.returncode == 0, r.stderr
    replies = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(replies) >= 2
    assert "tok/s" in r.stderr and "temperature = 0.0" in r.stderr


def test_info_json(smollm2_path):
    r = run("info", str(smollm2_path), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["architecture"] == "llama" and d["n_vocab"] == 49152
    assert d["n_ctx"] == 8192 and d["kv_budget_bytes"] > 0


def test_tokenize_ids(smollm2_path):
    r = run("tokenize", str(smollm2_path), "The capital of France is", "--ids")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["504", "3575", "282", "4649", "314"]


def test_list_shows_catalog():
    r = run("list")
    assert r.returncode == 0, r.stderr
    assert "smollm2-135m" in r.stdout and "gemma3-270m" in r.stdout


def test_loading_does_not_copy_weights(smollm2_path):
    """Weights stay in the memory map: loading a 94 MiB file grows RSS far less than its size.
    (The reference backend; the SIMD backend repacks Q4/Q5/Q8 weights, which copies them.)"""
    code = (
        "import resource, localllm, sys\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()\n"
        "import localllm.api\n"
        "before = rss(); llm = localllm.load(sys.argv[1], backend='numpy'); after = rss()\n"
        "print(after - before)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(smollm2_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    grown = int(r.stdout)
    assert grown < 0.4 * smollm2_path.stat().st_size, grown


# --- habits, errors and figures of the first ten minutes (tiny synthetic models, numpy backend) ---
FAST = ("--backend", "numpy", "--temp", "0")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    """A chat model (ChatML template) and a base model (no template), 256 tokens of context."""
    d = tmp_path_factory.mktemp("cli")
    return {"chat": str(make_random_gguf(d / "chat.gguf", n_ctx=256)),
            "base": str(make_random_gguf(d / "base.gguf", n_ctx=256, chat_template=False))}


def cli(*args: str, stdin: str | None = None):
    from localllm.cli import main
    return CliRunner().invoke(main, list(args), input=stdin)


def test_positional_prompt_is_answered_once_through_the_chat_template(tiny):
    chat = cli("run", tiny["chat"], "hello", "-n", "4", *FAST)
    raw = cli("run", tiny["chat"], "-p", "hello", "-n", "4", *FAST)
    assert chat.exit_code == 0 and raw.exit_code == 0, chat.stderr + raw.stderr
    assert "[4 tokens" in chat.stderr and chat.stdout.strip()
    # the template wraps the message, so the chat prompt is longer than the raw one
    chat_prompt = int(re.search(r"prompt (\d+) new", chat.stderr)[1])
    raw_prompt = int(re.search(r"prompt: (\d+) tokens", raw.stderr)[1])
    assert chat_prompt > raw_prompt + 4


def test_base_model_completes_text_with_a_note(tiny):
    r = cli("run", tiny["base"], "hello", "-n", "4", *FAST)
    assert r.exit_code == 0, r.stderr
    assert "no chat template" in r.stderr and "prompt: " in r.stderr  # the raw completion's stats line


def test_replies_are_capped_by_default(tiny):
    from localllm.cli_common import default_reply_cap
    r = cli("run", tiny["chat"], "hello", *FAST)
    assert r.exit_code == 0, r.stderr
    assert int(re.search(r"\[(\d+) tokens", r.stderr)[1]) <= default_reply_cap(256) == 128


def test_short_s_is_the_seed_and_a_system_prompt_there_is_refused(tiny):
    a = cli("run", tiny["chat"], "hi", "-n", "6", "--backend", "numpy", "-s", "42")
    b = cli("run", tiny["chat"], "hi", "-n", "6", "--backend", "numpy", "--seed", "42")
    assert a.exit_code == 0 and a.stdout == b.stdout
    r = cli("run", tiny["chat"], "-s", "Answer briefly.", "--backend", "numpy")
    assert r.exit_code == 2 and "-sys/--system" in r.stderr


@pytest.mark.parametrize("args, message", [
    (("run", "M", "-n", "-5"), "-1 (until done)"),
    (("run", "M", "--threads", "0"), "x>=1"),
    (("run", "M", "--backend", "numba"), "'numba' is not one of"),
    (("bench", "M", "-t", "0"), "integers >= 1"),
    (("bench", "M", "-r", "0"), "x>=1"),
    (("run", "M", "--temp", "nan"), "temperature must be"),
    (("run", "M", "--top-p", "2"), "top_p must be"),
])
def test_invalid_values_are_refused_before_loading(tiny, args, message):
    r = cli(*[tiny["chat"] if a == "M" else a for a in args])
    assert r.exit_code in (1, 2) and message in r.stderr, r.stderr
    assert "internal error" not in r.stderr


def test_every_option_has_help():
    from localllm.cli import main
    for name, cmd in main.commands.items():
        for p in cmd.params:
            if isinstance(p, click.Option) and p.name != "help":
                assert p.help, f"{name} {p.opts} has no help text"


def test_verbose_after_the_command(tiny):
    r = run("info", tiny["chat"], "--backend", "numpy", "-v")
    assert r.returncode == 0 and "INFO localllm" in r.stderr, r.stderr


def test_backend_auto_says_its_choice_and_info_names_backends_as_the_flag(tiny, monkeypatch):
    import localllm
    from localllm.backend import BACKENDS, NumpyBackend
    monkeypatch.setitem(BACKENDS, "auto", lambda: NumpyBackend)
    r = cli("info", tiny["chat"], "--backend", "auto")
    assert r.exit_code == 0 and "--backend auto chose numpy" in r.stderr and "backend: numpy" in r.stdout
    assert localllm.load(tiny["chat"], backend="cpu", n_ctx=16).info()["backend"] == "cpu"


def test_list_says_chat_or_base():
    r = cli("list")
    lines = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()}
    assert lines["smollm2-135m"] == "chat" and lines["gemma3-270m"] == "base"


def test_bench_plot_checks_matplotlib_before_measuring(tiny, monkeypatch):
    import localllm.bench as bench
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # as if not installed
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("measured before checking --plot"))
    r = cli("bench", tiny["chat"], "--plot", "x.png")
    assert r.exit_code == 1 and "needs matplotlib" in r.stderr


def test_bench_prints_its_table_when_the_plot_fails(tiny, monkeypatch):
    import localllm.bench as bench
    from localllm.errors import LocalLLMError

    def broken_plot(*args):
        raise LocalLLMError("cannot write x.png")
    monkeypatch.setattr(bench, "require_matplotlib", lambda: None)
    monkeypatch.setattr(bench, "dram_read_gbps", lambda threads: 10.0)
    monkeypatch.setattr(bench, "depth_sweep", lambda llm, depths: [])
    monkeypatch.setattr(bench, "plot", broken_plot)
    r = cli("bench", tiny["chat"], "--backend", "numpy", "-p", "8", "-n", "2", "-t", "1", "-r", "1", "--plot", "x.png")
    assert r.exit_code == 1 and "cannot write x.png" in r.stderr
    assert "| pp8 | 1 |" in r.stdout and "| tg2 | 1 |" in r.stdout


def test_bench_verdict_flags_a_busy_or_unsteady_machine():
    from localllm.bench import verdicts
    row = {"test": "tg8", "threads": 2, "tps": 10.0, "tps_sd": 0.1}
    base = {"gen_tps": 10.0, "gen_roofline_fraction": 0.2, "results": [row]}
    assert "machine" not in verdicts({**base, "machine": {"load_avg_before": 0.2, "cores": 2}})
    busy = verdicts({**base, "machine": {"load_avg_before": 3.5, "cores": 2}})
    assert "load average 3.5 on 2 cores" in busy["machine"] and "other processes" in busy["decode"]
    noisy = verdicts({**base, "results": [{**row, "tps_sd": 3.0}]})
    assert "spread up to 30%" in noisy["machine"]


def test_chat_errors_keep_the_conversation(tiny, tmp_path):
    lines = ["hi", "word " * 300, f"/save {tmp_path}/no/such/dir/s.session", "/set seed many", "/set temp nan",
             "/set min_p 2", "/frobnicate", "/save", "again"]
    r = cli("run", tiny["chat"], "-n", "4", *FAST, stdin="\n".join(lines) + "\n")
    assert r.exit_code == 0, r.stderr
    for expected in ("message too long", "cannot write session", "seed needs a", "temperature must be",
                     "min_p must be", "unknown command /frobnicate", "/save needs an argument"):
        assert expected in r.stderr, expected
    stats = re.findall(r"\[(\d+) tokens, .*prompt (\d+) new \+ (\d+) cached\]", r.stderr)
    assert len(stats) == 2 and int(stats[1][2]) > 0  # the second reply reused the first turn: history intact


def test_first_run_notice_once_per_cold_cache(tmp_path, monkeypatch):
    import localllm.cli_common as common
    marker = tmp_path / "cache" / "marker"
    monkeypatch.setattr(common, "_kernel_cache_marker", lambda models: (marker, "avx2"))
    monkeypatch.setattr(common, "NOTICE_AFTER_S", 0.05)
    runner = CliRunner()

    @click.command()
    @click.option("--fail", is_flag=True)
    def cmd(fail):
        with common.first_run_notice("cpu", ["m"]):
            if fail:   # a file refused at once: its error alone, no notice, the cache still cold
                raise click.ClickException("bad file")
            time.sleep(0.5)   # compiling
    failed = runner.invoke(cmd, ["--fail"])
    assert "compiling" not in failed.stderr and not marker.exists()
    first, second = runner.invoke(cmd), runner.invoke(cmd)
    assert "compiling kernels for avx2, first run only" in first.stderr and " done in " in first.stderr
    assert marker.exists() and "compiling" not in second.stderr


def test_warm_up_leaves_no_trace(tiny):
    """The warm-up before timed work (compiling kernels) changes neither the answer nor what is cached."""
    import localllm
    from localllm.cli_common import warm_up
    llm = localllm.load(tiny["chat"], backend="cpu", n_ctx=64, prefix_cache_bytes=0)
    first = "".join(llm.generate("hello", max_tokens=6, temperature=0))
    stats = dict(llm.last_stats)
    llm.reset()
    warm_up(llm)
    assert llm.last_stats == {}
    again = "".join(llm.generate("hello", max_tokens=6, temperature=0))
    assert again == first
    assert llm.last_stats["evaluated_tokens"] == stats["evaluated_tokens"] and llm.last_stats["cached_tokens"] == 0


def test_interactive_chat_survives_an_overlong_message_and_a_failed_save(tiny, tmp_path):
    """In a terminal (pexpect): errors print, the prompt comes back, the next message is answered."""
    pexpect = pytest.importorskip("pexpect", reason="pexpect (the test extra) drives the terminal")
    child = pexpect.spawn(sys.executable, [*CLI[1:], "run", tiny["chat"], "-n", "4", *FAST],
                          encoding="utf-8", timeout=60, dimensions=(24, 200))
    try:
        child.expect("> ")
        child.sendline("hello")
        child.expect(r"\[4 tokens.*\]")
        child.expect("> ")
        child.sendline("word " * 300)
        child.expect("message too long")
        child.expect("> ")
        child.sendline(f"/save {tmp_path}/no/such/dir/s.session")
        child.expect("cannot write session")
        child.expect("> ")
        child.sendline("and now?")
        child.expect(r"prompt \d+ new \+ [1-9]\d* cached\]")   # answered, on top of the first turn
        child.expect("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_info_without_model_lists_supported_architectures():
    r = run("info", "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["supported_architectures"]) >= {"llama", "qwen2", "qwen3", "phi3", "gemma2",
                                                                   "gemma3"}
