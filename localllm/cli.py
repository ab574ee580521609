"""`localllm` command line: run (chat or raw completion), info, bench, pull, list, tokenize
(quantize and perplexity are in cli_tools).

Every foreseen failure prints one line on stderr and exits non-zero; -v shows library logs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .cli_common import (_guard, backend_option, check_max_tokens, check_sampling, default_reply_cap,
                         first_run_notice, resolve_backend, terminal_safe, set_verbosity, threads_option, verbose_option, warm_up)
from .errors import LocalLLMError
from .speculative import DRAFT_K, DRAFT_P_MIN


@click.group()
@click.option("-v", "--verbose", count=True, help="Log to stderr (-vv for debug); also accepted after the command.")
@click.version_option(package_name="localllm")
def main(verbose: int) -> None:
    """Run GGUF language models locally."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    set_verbosity(verbose)


def _seed_type(ctx, param, value: str | None) -> int | None:
    """-s is the seed, as in llama.cpp; a system prompt given to -s (this tool's old habit) is
    refused with the right flag named instead of being read as something else."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an integer seed (-s is the seed, as in llama.cpp; "
                                 "a system prompt goes to -sys/--system)") from None


SAMPLING = [
    click.option("--temp", "temperature", type=float, default=0.8, show_default=True,
                 help="Sampling temperature; 0 = greedy (always the most likely token)."),
    click.option("--top-k", type=int, default=40, show_default=True, help="Sample among the K likeliest tokens (0: all)."),
    click.option("--top-p", type=float, default=0.95, show_default=True,
                 help="Nucleus sampling: the likeliest tokens that make up this probability (1: off)."),
    click.option("--min-p", type=float, default=0.05, show_default=True,
                 help="Drop tokens less likely than this fraction of the top token (0: off)."),
    click.option("--repeat-penalty", type=float, default=1.0, show_default=True,
                 help="Divide the logits of recently seen tokens by this (1: off)."),
    click.option("-s", "--seed", callback=_seed_type, default=None, metavar="INTEGER",
                 help="Seed for reproducible sampling (default: random)."),
]


def sampling_options(fn):
    for opt in reversed(SAMPLING):
        fn = opt(fn)
    return fn


def _n_predict(ctx, param, value: int | None) -> int | None:
    try:
        return check_max_tokens(value)
    except LocalLLMError as e:
        raise click.BadParameter(str(e)) from None


@main.command()
@click.argument("model")
@click.argument("prompt_arg", metavar="[PROMPT]", required=False)
@click.option("-p", "--prompt", default=None, help="Raw completion of TEXT (no chat template), printed to stdout.")
@click.option("-n", "--n-predict", "max_tokens", type=int, default=None, callback=_n_predict,
              help="Most tokens per reply (-1: until done; default: min(2048, half the context)).")
@click.option("-sys", "--system", default=None, help="System prompt for the chat.")
@click.option("-c", "--ctx-size", "n_ctx", type=click.IntRange(min=1), default=None,
              help="Context length (default: trained, capped by memory).")
@threads_option
@backend_option
@click.option("--device", default=None, help="OpenCL device: index or name substring (see info --devices).")
@click.option("--kv-type", type=click.Choice(["f16", "f32", "q8_0"]), default="f16", show_default=True,
              help="KV cache type (the cpu backend: f16 only; opencl: f16, q8_0).")
@click.option("--chat-template", "chat_template_file", type=click.Path(dir_okay=False), default=None,
              help="Jinja file replacing the model's chat template.")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--draft", default=None, help="Draft model (same vocabulary) for speculative decoding.")
@click.option("--lookup/--no-lookup", default=None,
              help="Drafts from n-grams of the context (alone, or with --draft where the context repeats; "
                   "default: on with --draft).")
@click.option("--draft-k", type=click.IntRange(min=1), default=DRAFT_K, show_default=True,
              help="Most tokens a draft model proposes per round (lookup: to start with; adapts).")
@click.option("--draft-p-min", type=click.FloatRange(0, 1), default=DRAFT_P_MIN, show_default=True,
              help="The draft stops once its probability of its whole draft is below this.")
@click.option("--draft-vocab", type=click.IntRange(min=0), default=None,
              help="The draft scores the first N token ids only (0: all; default 16384 for BPE vocabularies, else all).")
@click.option("--spec-auto", is_flag=True, help="Turn speculation off when its acceptance rate is too low.")
@sampling_options
@verbose_option
@_guard
def run(model, prompt_arg, prompt, max_tokens, system, n_ctx, threads, backend, device, kv_type, chat_template_file,
        stop, draft, lookup, draft_k, draft_p_min, draft_vocab, spec_auto, **sampling):
    """Chat with MODEL (a .gguf path or a catalog name); with PROMPT, answer it once and exit;
    with -p TEXT, complete TEXT raw. A base model (no chat template) completes text instead of chatting."""
    from . import load
    if prompt_arg is not None and prompt is not None:
        raise LocalLLMError("give the prompt once: as PROMPT (answered through the chat template) or -p TEXT (raw)")
    check_sampling(sampling)
    try:
        template = Path(chat_template_file).read_text() if chat_template_file else None
    except OSError as e:
        raise LocalLLMError(f"cannot read chat template {chat_template_file}: {e.strerror}") from None
    backend = resolve_backend(backend)
    with first_run_notice(backend, [model] + ([draft] if draft else [])):
        llm = load(model, backend=backend, n_ctx=n_ctx, threads=threads, chat_template=template, draft=draft,
                   lookup=lookup, draft_k=draft_k, draft_p_min=draft_p_min, draft_vocab=draft_vocab,
                   spec_auto=spec_auto, device=device, kv_type=kv_type)
        warm_up(llm)
    max_tokens = default_reply_cap(llm.n_ctx) if max_tokens is None else max_tokens
    if prompt is not None:
        return _complete(llm, prompt, max_tokens, list(stop), sampling)
    chat = _has_chat_template(llm)
    if prompt_arg is not None and not chat:
        return _complete(llm, prompt_arg, max_tokens, list(stop), sampling)
    from .chat_cli import ChatSession
    session = ChatSession(llm, system, max_tokens, list(stop), sampling, raw=not chat)
    if prompt_arg is not None:
        session.send(prompt_arg)
    else:
        session.loop()


def _has_chat_template(llm) -> bool:
    """False for a base model: no template in the file and none given. Its chat would be made up
    (the built-in fallback), so `run` completes text instead, and says so."""
    if llm.info()["chat_template"] != "built-in fallback":
        return True
    click.echo(f"localllm: {llm.path.name} has no chat template (a base model): completing text instead of "
               "chatting (--chat-template FILE to chat anyway).", err=True)
    return False


def _complete(llm, prompt: str, max_tokens: int, stop: list[str], sampling: dict) -> None:
    for piece in llm.generate(prompt, max_tokens=max_tokens, stop=stop, **sampling):
        sys.stdout.write(terminal_safe(piece))
        sys.stdout.flush()
    sys.stdout.write("\n")
    s = llm.last_stats
    spec = (f" | draft accepted {s['draft_accepted']}/{s['draft_proposed']}" if "draft_proposed" in s else "")
    click.echo(f"prompt: {s['evaluated_tokens']} tokens, {s['prompt_tps']:.1f} tok/s | "
               f"generated: {s['generated_tokens']} tokens, {s['gen_tps']:.1f} tok/s | stop: {s['stop_reason']}{spec}",
               err=True)


@main.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--tensors", is_flag=True, help="List every tensor and what it runs as.")
@click.option("--devices", is_flag=True, help="List OpenCL platforms and devices instead.")
@backend_option
@verbose_option
@_guard
def info(model, as_json, tensors, devices, backend):
    """Describe MODEL: architecture, shapes, tokenizer, context and memory (without MODEL: the
    supported architectures)."""
    if devices:
        return _devices(as_json)
    if model is None:
        from .models import supported
        archs = supported()
        click.echo(json.dumps({"supported_architectures": archs}) if as_json
                   else f"supported architectures: {', '.join(archs)}")
        return
    from . import load
    llm = load(model, backend=resolve_backend(backend))
    d = llm.info()
    if not tensors:
        d.pop("tensors_run_as", None)
    if as_json:
        click.echo(json.dumps(d, indent=2, default=str))
        return
    for key, value in d.items():   # metadata comes from the file: escaped like generated text
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(terminal_safe(f"  {k}: {v}"))
        else:
            click.echo(terminal_safe(f"{key}: {value}"))


def _devices(as_json: bool) -> None:
    try:
        from .backend.opencl import list_devices
    except ImportError:
        raise LocalLLMError("OpenCL support needs pyopencl: pip install 'localllm[opencl]'") from None
    devs = list_devices()
    if as_json:
        click.echo(json.dumps(devs, indent=2, default=str))
        return
    if not devs:
        click.echo("no OpenCL devices found", err=True)
    for d in devs:
        click.echo("  ".join(f"{k}={v}" for k, v in d.items()))


def _int_list(text: str, what: str, lo: int) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LocalLLMError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < lo:
        raise LocalLLMError(f"{what}: expected comma-separated integers >= {lo}, got {text!r}")
    return values


@main.command()
@click.argument("model")
@click.option("-p", "--n-prompt", default="512", show_default=True, help="Prompt batch sizes (e.g. 128,512; 0: none).")
@click.option("-n", "--n-gen", default="128", show_default=True, help="Generated token counts (e.g. 32,128; 0: none).")
@click.option("-t", "--threads", default="2", show_default=True, help="Thread counts (e.g. 1,2).")
@click.option("-r", "--repetitions", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs of each test (after one untimed warm-up run).")
@backend_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--plot", "plot_path", default=None, help="Draw decode tok/s against context depth to FILE.png.")
@verbose_option
@_guard
def bench(model, n_prompt, n_gen, threads, repetitions, backend, as_json, plot_path):
    """Measure prompt (pp) and generation (tg) tok/s, against the memory roofline (DRAM; a GPU: its own)."""
    from . import load
    from .bench import depth_sweep, markdown, plot, require_matplotlib, run_bench
    prompts, gens = _int_list(n_prompt, "-p/--n-prompt", 0), _int_list(n_gen, "-n/--n-gen", 0)
    thread_list = _int_list(threads, "-t/--threads", 1)
    if plot_path:
        require_matplotlib()      # before minutes of measuring, not after
    backend = resolve_backend(backend)
    n_ctx = max(prompts + gens + [0]) + 1 + (4096 if plot_path else 0)
    with first_run_notice(backend, [model]):
        llm = load(model, backend=backend, n_ctx=n_ctx, threads=max(thread_list))
        warm_up(llm)
    summary = run_bench(llm, prompts, gens, thread_list, repetitions, progress=sys.stderr.isatty())
    click.echo(json.dumps(summary, indent=2) if as_json else markdown(summary))
    if plot_path:
        plot(summary, depth_sweep(llm, [1, 256, 1024, 2048, 4096]), plot_path)
        click.echo(f"plot: {plot_path}", err=True)


@main.command()
@click.argument("name")
@verbose_option
@_guard
def pull(name):
    """Fetch catalog model NAME into the cache."""
    from .catalog import pull as do_pull
    path = do_pull(name, progress=True)
    click.echo(str(path))


@main.command(name="list")
@verbose_option
@_guard
def list_cmd():
    """Catalog models: chat (instruct) or base (text completion only), size, whether cached."""
    from .catalog import list_models
    for m in list_models():
        mark = "cached" if m["cached"] else "-"
        kind = "chat" if m["kind"] == "instruct" else "base"
        click.echo(f"{m['name']:<16} {kind:<5} {m['size'] / 2**20:8.1f} MiB  {mark:<7} {m['description']}")


@main.command()
@click.argument("model")
@click.argument("text")
@click.option("--ids", is_flag=True, help="Print only the ids.")
@click.option("--no-bos", is_flag=True, help="Never add BOS.")
@click.option("--no-special", is_flag=True, help="Treat special-token text literally.")
@verbose_option
@_guard
def tokenize(model, text, ids, no_bos, no_special):
    """Tokenize TEXT with MODEL's vocabulary."""
    from . import load
    llm = load(model, vocab_only=True)
    toks = llm.tokenize(text, add_bos=not no_bos, special=not no_special)
    if ids:
        click.echo(" ".join(map(str, toks)))
        return
    for t in toks:
        click.echo(f"{t:>7} {llm.tokenizer.token_to_piece(t)!r}")


@main.command()
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (other hosts: 0.0.0.0).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0 picks a free port.")
@click.option("--parallel", type=click.IntRange(min=1), default=4, show_default=True, help="Sequences decoded together (slots).")
@click.option("--queue", "queue_size", type=click.IntRange(min=1), default=64, show_default=True, help="Requests waiting for a slot.")
@click.option("-c", "--ctx", "n_ctx", type=int, default=None, help="Context length of each slot.")
@threads_option
@click.option("--backend", default="cpu", show_default=True, help="cpu, numpy (reference), opencl, auto.")
@click.option("--api-key", default=None, envvar="LOCALLLM_API_KEY", help="Require 'Authorization: Bearer KEY'.")
@click.option("--cors-origin", default=None, help="Allow browser requests from this origin.")
@_guard
def serve(model, host, port, parallel, queue_size, n_ctx, threads, backend, api_key, cors_origin):
    """Serve MODEL over HTTP: OpenAI (/v1) and ollama (/api) APIs, a chat page at /."""
    from .server import run_until_signal
    run_until_signal(model, host=host, port=port, parallel=parallel, queue_size=queue_size, n_ctx=n_ctx,
                     threads=threads, backend=backend, api_key=api_key, cors_origin=cors_origin)


def _register_tools() -> None:
    """quantize and perplexity live in cli_tools (which imports _guard from here)."""
    from .cli_tools import perplexity_cmd, quantize_cmd
    main.add_command(quantize_cmd, name="quantize")
    main.add_command(perplexity_cmd, name="perplexity")


_register_tools()


if __name__ == "__main__":
    main()
