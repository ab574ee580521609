"""The interactive chat of `localllm run`: streaming replies, history, slash commands.
Ctrl-C stops the current answer; Ctrl-C at the prompt (or EOF) exits. Works with a piped stdin.
A failed message or command prints one error line and the conversation goes on as it was.
For a base model (raw=True) each message is completed as plain text, with no history."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from . import validate
from .cli_common import terminal_safe
from .errors import ContextOverflowError, LocalLLMError

HELP = """commands:
  /help             this list
  /clear            forget the conversation
  /regen            answer the last message again
  /read FILE        send the contents of FILE as your message
  /set PARAM VALUE  temp, top_k, top_p, min_p, repeat_penalty, seed, max_tokens
  /save FILE        save the conversation and its KV cache
  /load FILE        restore a conversation saved with /save (same model only)
  /exit             quit"""

PARAMS = {"temp": ("temperature", float), "temperature": ("temperature", float), "top_k": ("top_k", int),
          "top_p": ("top_p", float), "min_p": ("min_p", float), "repeat_penalty": ("repeat_penalty", float),
          "seed": ("seed", int), "max_tokens": ("max_tokens", int), "n": ("max_tokens", int)}


class ChatSession:
    def __init__(self, llm, system: str | None, max_tokens: int, stop: list[str], sampling: dict,
                 raw: bool = False) -> None:
        self.llm, self.system, self.stop, self.raw = llm, system, stop, raw
        self.settings = dict(sampling, max_tokens=max_tokens)
        self.history: list[dict] = []
        self.interactive = sys.stdin.isatty()

    def _messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def loop(self) -> None:
        if self.interactive:
            what = "completing text with" if self.raw else "chatting with"
            click.echo(f"localllm: {what} {self.llm.path.name}. /help for commands, Ctrl-C or /exit to quit.",
                       err=True)
        while True:
            try:
                line = input("> " if self.interactive else "")
            except (EOFError, KeyboardInterrupt):
                click.echo("", err=True)
                return
            if not line.strip():
                continue
            try:
                if line.startswith("/"):
                    if self.command(line.strip()) == "exit":
                        return
                    continue
                self.send(line)
            except (LocalLLMError, OSError) as e:
                click.echo(f"error: {e}", err=True)

    def send(self, text: str) -> None:
        """One user message and its reply; a message that fails leaves the history as it was."""
        if self.raw:
            self.history = []
        self.history.append({"role": "user", "content": text})
        try:
            self.reply()
        except (LocalLLMError, OSError):
            self.history.pop()
            raise

    def command(self, line: str) -> str | None:
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        if cmd in ("/exit", "/quit", "/bye"):
            return "exit"
        if cmd in ("/save", "/load", "/read", "/set") and not arg:
            click.echo(f"error: {cmd} needs an argument (/help for the list)", err=True)
            return None
        if cmd == "/clear":
            self.history.clear()
            self.llm.reset()
            click.echo("(conversation cleared)", err=True)
        elif cmd == "/regen":
            if self.history and self.history[-1]["role"] == "assistant":
                self.history.pop()
            if self.history:
                self.reply()
        elif cmd == "/read":
            try:
                text = Path(arg).expanduser().read_text(errors="replace")
            except OSError as e:
                raise LocalLLMError(f"cannot read {arg!r}: {e.strerror}") from None
            self.send(text)
        elif cmd == "/set":
            self.set_param(arg)
        elif cmd == "/save":
            self.llm.save_state(Path(arg).expanduser(), extra={"messages": self.history, "system": self.system})
            click.echo(f"(saved {len(self.history)} messages to {arg})", err=True)
        elif cmd == "/load":
            extra = self.llm.load_state(Path(arg).expanduser())
            self.history, self.system = list(extra.get("messages", [])), extra.get("system", self.system)
            click.echo(f"(loaded {len(self.history)} messages)", err=True)
        elif cmd in ("/help", "/?"):
            click.echo(HELP, err=True)
        else:
            click.echo(f"error: unknown command {cmd} (/help for the list)", err=True)
        return None

    def set_param(self, arg: str) -> None:
        name, _, value = arg.strip().partition(" ")
        if name not in PARAMS:
            click.echo(f"error: unknown parameter {name!r} (one of: {', '.join(sorted(PARAMS))})", err=True)
            return
        key, kind = PARAMS[name]
        try:
            settings = {**self.settings, key: kind(value.strip())}
        except ValueError:
            click.echo(f"error: {name} needs a {kind.__name__} value, got {value.strip()!r}", err=True)
            return
        try:   # checked now rather than failing the next reply
            validate.sampling(**{k: v for k, v in settings.items() if k in validate.SAMPLING_KEYS})
        except LocalLLMError as e:
            click.echo(f"error: {e}", err=True)
            return
        self.settings = settings
        click.echo(f"({key} = {self.settings[key]})", err=True)

    def _stream(self):
        """The reply's pieces: the conversation through the chat template, or (raw) the last
        message completed as plain text."""
        if self.raw:
            return self.llm.generate(self.history[-1]["content"], stop=self.stop, **self.settings)
        messages, reserve = self._messages(), min(256, self.llm.n_ctx // 4)
        alone = len(self.llm.chat_tokens(messages[:-1][:1 if self.system else 0] + messages[-1:]))
        if alone + reserve > self.llm.n_ctx:    # refused before older turns are dropped for it
            raise ContextOverflowError(f"message too long: {alone} tokens, and the context holds {self.llm.n_ctx} "
                                       f"with {reserve} kept for the reply")
        fitted = self.llm.fit_messages(messages, reserve=reserve)
        if len(fitted) < len(messages):
            click.echo(f"(context full: dropped the {len(messages) - len(fitted)} oldest messages)", err=True)
            self.history = [m for m in fitted if m.get("role") != "system" or not self.system]
        return self.llm.chat(fitted, stop=self.stop, **self.settings)

    def reply(self) -> None:
        parts: list[str] = []
        try:
            for piece in self._stream():
                parts.append(piece)
                sys.stdout.write(terminal_safe(piece))
                sys.stdout.flush()
        except KeyboardInterrupt:
            click.echo("\n(stopped)", err=True)
        sys.stdout.write("\n")
        sys.stdout.flush()
        self.history.append({"role": "assistant", "content": "".join(parts)})
        s = self.llm.last_stats
        click.echo(f"[{s.get('generated_tokens', 0)} tokens, {s.get('gen_tps', 0):.1f} tok/s, "
                   f"prompt {s.get('evaluated_tokens', 0)} new + {s.get('cached_tokens', 0)} cached]", err=True)
