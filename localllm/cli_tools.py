"""`localllm quantize` and `localllm perplexity` (registered by cli.py with main.add_command)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .cli_common import (_guard, backend_option, first_run_notice, resolve_backend, threads_option,
                         verbose_option, warm_up)
from .errors import LocalLLMError


@click.command(name="quantize")
@click.argument("src", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
@click.argument("type_name", metavar="TYPE")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@verbose_option
@_guard
def quantize_cmd(src: str, dst: str, type_name: str, quiet: bool) -> None:
    """Write OUT: the GGUF model IN converted to TYPE with llama-quantize's rules.

    TYPE: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16, BF16 or F32."""
    from .quantize import quantize_file
    s = quantize_file(src, dst, type_name, progress=not quiet)
    types = ", ".join(f"{n} {k}" for k, n in sorted(s["tensor_types"].items()))
    note = f" (requantized from {', '.join(s['requantized_from'])})" if s["requantized_from"] else ""
    click.echo(f"{dst}: {s['n_tensors']} tensors ({types}){note}, {s['bytes_in'] / 2**20:.1f} MiB -> "
               f"{s['bytes_out'] / 2**20:.1f} MiB of weights, {s['seconds']:.1f} s", err=True)


@click.command(name="perplexity")
@click.argument("model")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-c", "--ctx-size", "n_ctx", type=click.IntRange(min=2), default=512, show_default=True,
              help="Tokens per chunk (llama-perplexity's -c).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@backend_option
@threads_option
@verbose_option
@_guard
def perplexity_cmd(model: str, file: str, n_ctx: int, as_json: bool, backend: str, threads: int | None) -> None:
    """Perplexity of MODEL over the text in FILE, as llama-perplexity computes it."""
    from . import load
    from .perplexity import perplexity
    try:
        text = Path(file).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise LocalLLMError(f"cannot read {file}: {e.strerror}") from None
    backend = resolve_backend(backend)
    with first_run_notice(backend, [model]):
        llm = load(model, backend=backend, n_ctx=n_ctx, threads=threads)
        warm_up(llm)
    r = perplexity(llm, text, n_ctx=n_ctx, progress=not as_json)
    if as_json:
        click.echo(json.dumps(r))
    else:
        click.echo(f"PPL = {r['ppl']:.4f} +/- {r['ppl_stderr']:.4f} "
                   f"({r['n_chunks']} chunks of {n_ctx}, {r['n_tokens_scored']} tokens scored)")
