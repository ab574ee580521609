"""Chat templates: render a GGUF's Jinja `tokenizer.chat_template`, or pick a built-in one.

A chat template is code that arrives inside a downloaded file, so it runs in jinja2's
`ImmutableSandboxedEnvironment` (as Hugging Face transformers does) hardened further:

* any access to a private or internal attribute raises at once (jinja's sandbox only returns an
  undefined value, which a template can still print or test), so SSTI payloads such as
  CVE-2024-34359 fail on their first step;
* every step that can build a large string or list in one go (`*`, `+`, `%`, `~`, string methods,
  filters, printing, each `str.format` field with its width and precision) is measured before it
  runs and the output is capped;
* a watchdog stops a render that runs too long or grows the process's heap too much (a loop that
  keeps copies of a 4 MB string never takes one large step); compiling, capability probes and the
  render of one call share one time budget;
* nesting too deep for jinja's parser is a `ChatTemplateError`, and printing a function (whose
  text shows a memory address) is refused.

Like llama.cpp (minja's polyfills), messages are adapted to what each template can print:
content parts or plain text, tool-call arguments as JSON text or objects, and a system message
merged into the first user turn for templates that refuse one (Gemma 2).

Every failure is a `ChatTemplateError` with a one-line message.
"""
from __future__ import annotations

import contextvars
import copy
import ctypes
import functools
import json
import logging
import mmap
import re
import threading
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter, SecurityError
from jinja2.utils import Namespace

from .errors import LocalLLMError

log = logging.getLogger(__name__)


class ChatTemplateError(LocalLLMError):
    """A chat template failed to compile or render, or tried something the sandbox forbids."""


class _Blocked(ChatTemplateError):
    """The sandbox stopped the template (forbidden access, size or time limit)."""


@dataclass(frozen=True)
class RenderLimits:
    """Resource caps for one render. Real templates stay far below them: the output of a
    template is a prompt, and even a 1M-token context is about 4M characters."""

    max_chars: int = 4_000_000  # the output, and any one string or list the template builds
    max_memory: int = 512 << 20  # bytes the process's heap may grow by during the render
    timeout_s: float = 5.0


DEFAULT_LIMITS = RenderLimits()

_MAX_INT_BITS = 4096  # `10**1000` is fine; `10**10**10` would take the CPU hostage
_MAX_DEPTH = 64  # nesting beyond this is treated as too large to print
_OPAQUE_SIZE = 64  # printed size assumed for objects that are not text, numbers or containers
_FLOAT_DIGITS = 320  # the most characters `%f` prints for a float (1e308) without a precision
_MAX_WIDTH_DIGITS = 9  # a width or precision of more digits is past any cap, and slow to parse
# Printed, these show a memory address (`<function ... at 0x7f...>`): never what a prompt needs.
_CODE_TYPES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.MethodWrapperType,
               types.WrapperDescriptorType, types.MethodDescriptorType, functools.partial, type)
# minja (llama.cpp's engine) lets templates grow their own lists, and Kimi's templates rely on
# it; the inputs are deep-copied before rendering, so this never reaches the caller's data.
_LIST_MUTATORS = frozenset({"append", "pop"})


# ---------------------------------------------------------------------------------------------
# Measuring: how big a step's result would be, before the step runs


def _text_size(value: Any, limit: int, depth: int = 0) -> int:
    """Roughly len(str(value)), counting containers through (shared references included: that is
    how a tiny list prints as gigabytes); stops counting once past `limit`."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, _CODE_TYPES):
        raise SecurityError("template prints a function or class (its text would leak a memory address)")
    if isinstance(value, (bool, float)) or value is None:
        return 24
    if isinstance(value, int):
        return value.bit_length() * 3 // 10 + 2
    if isinstance(value, Namespace):  # prints as its attribute dict
        value = object.__getattribute__(value, "_Namespace__attrs")
    if not isinstance(value, (list, tuple, dict, set, frozenset)):
        return _OPAQUE_SIZE
    if depth > _MAX_DEPTH:
        return limit + 1
    total = 2
    for item in value.items() if isinstance(value, dict) else value:
        total += _text_size(item, limit - total, depth + 1) + 2
        if total > limit:
            break
    return total


def _checked(result: Any, limits: RenderLimits) -> Any:
    """Reject a single string or list over `max_chars` (what the pre-checks could not foresee,
    such as `upper()` lengthening a few characters)."""
    if isinstance(result, (str, list, tuple, dict)) and len(result) > limits.max_chars:
        raise SecurityError(f"template builds a value of {len(result):,} items (limit {limits.max_chars:,})")
    return result


def _check_size(size: int, what: str, limits: RenderLimits) -> None:
    if size > limits.max_chars:
        raise SecurityError(f"{what} would exceed {limits.max_chars:,} characters")


def _check_ints(values: Any, limits: RenderLimits) -> None:
    """Widths, counts and tab sizes (`center`, `ljust`, `zfill`, `'{:>N}'`) size one allocation."""
    for v in values:
        if isinstance(v, int) and abs(v) > limits.max_chars:
            raise SecurityError(f"argument {v} is too large")


def _materialized(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """jinja's map/select/... return generators, which cannot be measured: make them lists."""
    return tuple(list(a) if isinstance(a, types.GeneratorType) else a for a in args)


def _joined_size(items: Any, sep: Any, limit: int) -> int:
    count = len(items) if isinstance(items, (str, list, tuple, dict, set, frozenset)) else 0
    return _text_size(items, limit) + count * len(str(sep))


def _spec_widths(spec: str, limits: RenderLimits) -> int:
    """The sum of the numbers in a format spec (widths, precisions): a bound on the padding and
    digits they add."""
    runs = re.findall(r"\d+", spec)
    if any(len(run) > _MAX_WIDTH_DIGITS for run in runs):
        raise SecurityError("format width is too large")
    return sum(map(int, runs))


def _check_format(fmt: str, values: list[Any], limits: RenderLimits) -> None:
    """`%` formatting: the result is at most the format string plus, for each field, every value,
    a float's digits, and the widths and precisions written in the string or taken by `*` from an
    integer argument (`'%9999999999s'`, `'%*s' % (999999999, 'a')`, `'%s%s%s' % (big, big, big)`)."""
    _check_ints(values, limits)
    star = max((abs(v) for v in values if isinstance(v, int)), default=0)
    per_field = sum(_text_size(v, limits.max_chars) for v in values) + _FLOAT_DIGITS
    size = len(fmt) + _spec_widths(fmt, limits) + fmt.count("*") * star + fmt.count("%") * per_field
    _check_size(size, "formatted string", limits)


class _MeasuredFormatter(SandboxedFormatter):
    """`str.format` with each field measured before it is formatted: its value, and its spec's
    width and precision once nested fields are filled in (`'{:{}}'.format('a', '999999999')`
    takes its width from an argument, so the format string alone cannot tell)."""

    def __init__(self, env: Any, limits: RenderLimits) -> None:
        super().__init__(env)
        self.limits, self.total = limits, 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        size = _text_size(value, self.limits.max_chars) + _spec_widths(format_spec, self.limits) + _FLOAT_DIGITS
        _check_size(self.total + size, "formatted string", self.limits)
        out = super().format_field(value, format_spec)
        self.total += len(out)
        return out


# Upper bounds on the result of the str methods that can outgrow their inputs by more than a
# small factor (the width-taking ones are bounded by `_check_ints`).
def _replace_size(s: str, old: Any = "", new: Any = "", *_: Any) -> int:
    hits = s.count(old) if isinstance(old, str) and old else len(s) + 1
    return len(s) + hits * len(str(new))


def _expandtabs_size(s: str, tabsize: Any = 8) -> int:
    return len(s) + s.count("\t") * (tabsize if isinstance(tabsize, int) else 8)


def _translate_size(s: str, table: Any = None) -> int:
    values = table.values() if isinstance(table, dict) else []
    return len(s) * max([1, *(len(v) for v in values if isinstance(v, str))])


_STR_GROWTH: dict[str, Callable[..., int]] = {
    "replace": _replace_size,
    "expandtabs": _expandtabs_size,
    "translate": _translate_size,
}


# ---------------------------------------------------------------------------------------------
# The sandbox


class _CodeGenerator(CodeGenerator):
    """Routes `a ~ b` through the environment: jinja compiles it to an inline join the sandbox
    never sees, and `{% set s = s ~ s %}` in a loop doubles a string each time."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Any) -> None:
        self.write("environment.join_text((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for transformers' training
    masks (SmolLM3, Apertus use it); rendering only needs the body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _NoTemplateFiles(jinja2.BaseLoader):
    """`{% include %}`, `{% import %}` and `{% extends %}` name other templates: a chat template has
    none, and a name such as '/etc/passwd' is a probe; refuse it like any other escape attempt."""

    def get_source(self, environment: Any, template: str) -> NoReturn:
        name = template if len(template) <= 40 else template[:37] + "..."
        raise SecurityError(f"loading another template ({name!r}) is not allowed")


class _Sandbox(ImmutableSandboxedEnvironment):
    """transformers' chat-template environment, with every way out of the sandbox raising and
    every way to build something huge measured first."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _CodeGenerator

    def __init__(self, limits: RenderLimits) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols, _GenerationTag],
            finalize=self._finalize,
            loader=_NoTemplateFiles(),
        )
        self.limits = limits
        for unused in ("lipsum", "cycler", "joiner"):  # no chat template needs these toys
            del self.globals[unused]
        self.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        del self.filters["pprint"]  # indents by depth: multiplies a nested value's size
        self.filters.update(tojson=self._tojson, from_json=_from_json)
        self.filters = {name: self._guard_filter(name, f) for name, f in self.filters.items()}

    # Attribute access ------------------------------------------------------------------------
    def getattr(self, obj: Any, attribute: str) -> Any:
        # Refuse `x.__name__` even where it does not exist (`lipsum.__globals__` once lipsum is
        # gone): a template probing for dunders is hostile, and should hear so at once.
        if attribute.startswith("__"):
            self.unsafe_undefined(obj, attribute)
        return super().getattr(obj, attribute)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, list) and attr in _LIST_MUTATORS:
            return True
        return super().is_safe_attribute(obj, attr, value)

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        # jinja returns an Undefined that fails only when used; a probe like `{{ x.__class__ }}`
        # would then print nothing and go on. Stop at the first attempt instead.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is not allowed")

    # Operators, calls, filters, output --------------------------------------------------------
    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self._check_binop(operator, left, right)
        return _checked(super().call_binop(context, operator, left, right), self.limits)

    def _check_binop(self, operator: str, left: Any, right: Any) -> None:
        limit = self.limits.max_chars
        if operator == "*" and isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise SecurityError("integer product is too large")
        elif operator == "*":
            count = right if isinstance(right, int) else left if isinstance(left, int) else 1
            seq = left if isinstance(right, int) else right
            _check_size(_text_size(seq, limit) * max(count, 0), "repeated sequence", self.limits)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and left.bit_length() * right > _MAX_INT_BITS:
                raise SecurityError("integer power is too large")
        elif operator == "+" and isinstance(left, (str, list, tuple)):
            _check_size(_text_size(left, limit) + _text_size(right, limit), "concatenation", self.limits)
        elif operator == "%" and isinstance(left, str):
            _check_format(left, list(right) if isinstance(right, tuple) else [right], self.limits)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        args = _materialized(args)
        __self._check_call(__obj, args, kwargs)
        return _checked(super().call(__context, __obj, *args, **kwargs), __self.limits)

    def _check_call(self, func: Any, args: tuple, kwargs: dict) -> None:
        """Widths and counts for every call; the result size for str methods that can dwarf
        their inputs."""
        _check_ints((*args, *kwargs.values()), self.limits)
        target = getattr(func, "__wrapped__", func)  # the sandbox wraps str.format in a closure
        owner, name = getattr(target, "__self__", None), getattr(target, "__name__", "")
        if not isinstance(owner, str):
            return
        if name == "join" and args:
            _check_size(_joined_size(args[0], owner, self.limits.max_chars), "joined string", self.limits)
        elif name in _STR_GROWTH:
            _check_size(_STR_GROWTH[name](owner, *args), f"str.{name} result", self.limits)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `format_map` through `_MeasuredFormatter` (jinja's own hook: it also
        catches a format method fetched as an attribute and called later)."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) \
                or value.__name__ not in ("format", "format_map") or not isinstance(value.__self__, str):
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        def measured(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return _MeasuredFormatter(self, self.limits).vformat(fmt, args, kwargs)

        return functools.update_wrapper(measured, value)

    def _guard_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)  # keeps jinja's pass_context/pass_eval_context marker
        def guarded(*args: Any, **kwargs: Any) -> Any:
            args = _materialized(args)
            values = (*args, *kwargs.values())
            _check_ints(values, self.limits)
            for value in values:
                _check_size(_text_size(value, self.limits.max_chars), "filter input", self.limits)
            _check_filter(name, args, kwargs, self.limits)
            return _checked(func(*args, **kwargs), self.limits)

        return guarded

    def join_text(self, parts: tuple[Any, ...]) -> str:
        """`a ~ b ~ c`, measured before the pieces are turned into text."""
        _check_size(sum(_text_size(p, self.limits.max_chars) for p in parts), "concatenation", self.limits)
        return _checked("".join(map(str, parts)), self.limits)

    def concat(self, pieces: Any) -> str:  # type: ignore[override]
        """Joins the output of the template, a macro or a `{% set %}` block: stop at the cap."""
        out, total = [], 0
        for piece in pieces:
            total += len(piece)
            _check_size(total, "template output", self.limits)
            out.append(piece)
        return _checked("".join(out), self.limits)

    def _finalize(self, value: Any) -> Any:
        """Every `{{ value }}` is printed with str(): measure containers before they are."""
        _check_size(_text_size(value, self.limits.max_chars), "printed value", self.limits)
        return value

    def _tojson(self, value: Any, ensure_ascii: bool = False, indent: int | None = None,
                separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        """transformers' `tojson` (json.dumps, no HTML escaping, same keyword arguments),
        encoded piece by piece so that a deep structure stops at the cap instead of after."""
        encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                                   sort_keys=sort_keys)
        return self.concat(encoder.iterencode(value))


def _check_filter(name: str, args: tuple, kwargs: dict, limits: RenderLimits) -> None:
    """Filters whose output can exceed their inputs by more than a small factor (`args` start
    with jinja's eval context for `join` and `replace`)."""
    if name == "indent" and args:
        width = kwargs.get("width", args[1] if len(args) > 1 else 4)
        text = str(args[0])
        per_line = width if isinstance(width, int) else len(str(width))
        _check_size(len(text) + (text.count("\n") + 1) * per_line, "indented text", limits)
    elif name == "replace" and len(args) >= 4:
        _check_size(_replace_size(str(args[1]), args[2], args[3]), "replaced text", limits)
    elif name == "join" and len(args) >= 2:
        separator = kwargs.get("d", args[2] if len(args) > 2 else "")
        _check_size(_joined_size(args[1], separator, limits.max_chars), "joined string", limits)
    elif name == "format" and args and isinstance(args[0], str):
        _check_format(args[0], [*args[1:], *kwargs.values()], limits)


# Extras that Hugging Face (and minja) give templates --------------------------------------------


class _TemplateRefusal(ChatTemplateError):
    """The template itself rejected the conversation (`raise_exception`)."""


def _raise_exception(message: Any) -> None:
    raise _TemplateRefusal(f"chat template refused the conversation: {_one_line(str(message))}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _from_json(text: str) -> Any:
    """minja's `from_json` (DeepSeek V3.2/V4 parse tool-call arguments with it)."""
    return json.loads(text)


# ---------------------------------------------------------------------------------------------
# Time and memory budget


class _Interrupted(BaseException):
    """Raised inside the rendering thread by the watchdog; a BaseException so that no `except
    Exception` in jinja swallows it."""


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    # None clears a pending exception (the C API takes NULL for that).
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


def _heap_bytes() -> int | None:
    """Resident memory not backed by files: the Python heap, not the memory-mapped weights.
    None where /proc is missing (not Linux): the memory check is then skipped."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
    except OSError:
        return None
    return (int(fields[1]) - int(fields[2])) * mmap.PAGESIZE


# The deadline of the whole `render_chat_template` call in progress (compiling, probing and
# rendering share one time budget).
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("chat_template_deadline", default=None)


class _Watchdog:
    """Interrupts the rendering thread once it runs past `timeout_s` or the process's heap grew
    by more than `max_memory`. A template is a program: three nested loops over a long string spin
    for hours, and a loop keeping copies of a 4 MB string eats gigabytes, without any one step
    the sandbox sees being large. (The heap is the whole process's: another thread allocating
    hundreds of megabytes during a render would be blamed on the template.)"""

    POLL_S = 0.01

    def __init__(self, limits: RenderLimits) -> None:
        self.reason = ""
        self._limits = limits
        self._thread_id = threading.get_ident()
        call_deadline = _DEADLINE.get()   # read here: the watcher thread has its own context
        self._deadline = min(time.monotonic() + limits.timeout_s, call_deadline or float("inf"))
        self._lock = threading.Lock()
        self._armed = True
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="chat-template-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._watcher.start()
        return self

    def _watch(self) -> None:
        deadline = self._deadline
        start_heap = _heap_bytes()
        while not self._done.wait(self.POLL_S):
            reason = self._overrun(deadline, start_heap)
            if reason:
                self._interrupt(reason)
                return

    def _overrun(self, deadline: float, start_heap: int | None) -> str:
        if time.monotonic() > deadline:
            return f"took longer than {self._limits.timeout_s:g} s to render"
        heap = _heap_bytes()
        if start_heap is not None and heap is not None and heap - start_heap > self._limits.max_memory:
            return f"used more than {self._limits.max_memory >> 20} MiB of memory"
        return ""

    def _interrupt(self, reason: str) -> None:
        with self._lock:
            if self._armed:
                self.reason = reason
                _set_async_exc(self._thread_id, _Interrupted)

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        with self._lock:
            self._armed = False
            if self.reason:  # fired as the render finished: drop it if not yet delivered
                _set_async_exc(self._thread_id, None)


# ---------------------------------------------------------------------------------------------
# Compiling and rendering


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _template_line(exc: BaseException) -> str:
    """jinja rewrites tracebacks so that template frames carry the template's line numbers."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<template>"]
    return f" (template line {lines[-1]})" if lines else ""


@functools.lru_cache(maxsize=8)
def _sandbox(limits: RenderLimits) -> _Sandbox:
    return _Sandbox(limits)


@functools.lru_cache(maxsize=32)
def _compile(template: str, limits: RenderLimits) -> jinja2.Template:
    watchdog = _Watchdog(limits)
    try:
        with watchdog:
            return _sandbox(limits).from_string(template)
    except jinja2.TemplateSyntaxError as e:
        message = _one_line(e.message or "")
        raise ChatTemplateError(f"chat template syntax error at line {e.lineno}: {message}") from None
    except (RecursionError, SyntaxError, MemoryError):   # jinja's parser and Python's compiler recurse
        raise ChatTemplateError("chat template nests too deeply to compile") from None
    except _Interrupted:
        raise _Blocked(f"chat template {watchdog.reason} (compiling)") from None


def _render(compiled: jinja2.Template, context: dict[str, Any], limits: RenderLimits) -> str:
    watchdog = _Watchdog(limits)
    try:
        with watchdog:
            context = copy.deepcopy(context)  # templates may mutate lists; never the caller's
            return compiled.render(context)
    except ChatTemplateError:
        raise
    except _Interrupted:
        raise _Blocked(f"chat template {watchdog.reason}") from None
    except SecurityError as e:
        raise _Blocked(f"chat template blocked: {_one_line(str(e))}{_template_line(e)}") from None
    except Exception as e:  # a template can fail in any way its code allows
        detail = _one_line(str(e)) or type(e).__name__
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {detail}{_template_line(e)}") from None


def _base_context(variables: dict[str, Any]) -> dict[str, Any]:
    # transformers passes tools=None and documents=None when absent; templates test `is not none`.
    return {"bos_token": "", "eos_token": "", "tools": None, "documents": None, **variables}


@dataclass(frozen=True)
class _Needs:
    """What a template insists on, found like minja's capability probes (llama.cpp then adapts
    the messages the same way): content as a list of parts; tool-call arguments as "object"
    (most templates iterate them) or "string" (Functionary prints them), "" if either works."""

    typed_content: bool
    arguments: str


_NEEDLE = "localllm_probe_needle"
# The needle printed as such: not inside a JSON string that was encoded twice (`\"needle\"`).
_SHOWN = re.compile(rf"(?<!\\\")(?<!\\'){_NEEDLE}")


@functools.lru_cache(maxsize=32)
def _probe(template: str, limits: RenderLimits) -> _Needs:
    """Render tiny conversations in each form and see which ones the template prints."""
    def shows(messages: list[dict]) -> bool:
        context = _base_context({"messages": messages, "add_generation_prompt": False})
        try:
            return bool(_SHOWN.search(_render(_compile(template, limits), context, limits)))
        except _Blocked:
            raise  # a hostile template: fail now rather than once per probe
        except ChatTemplateError:
            return False

    def tool_call(arguments: Any) -> list[dict]:
        # a 9-character alphanumeric id: Mistral's templates refuse any other
        call = {"id": "call00001", "type": "function", "function": {"name": "probe", "arguments": arguments}}
        return [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": [call]}]

    typed = not shows([{"role": "user", "content": _NEEDLE}]) \
        and shows([{"role": "user", "content": [{"type": "text", "text": _NEEDLE}]}])
    arguments = {_NEEDLE: "Hello"}
    as_string, as_object = shows(tool_call(json.dumps(arguments))), shows(tool_call(arguments))
    form = "object" if as_object and not as_string else "string" if as_string and not as_object else ""
    return _Needs(typed, form)


def _text_of(parts: list[Any]) -> str:
    """llama.cpp's flattening of content parts for templates that expect plain strings."""
    texts = []
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            log.warning("chat template takes text only: ignoring a %r content part", kind)
    return "\n".join(texts)


def _converted_arguments(tool_calls: list[Any], form: str) -> list[Any]:
    """Tool calls with their arguments as a JSON string (as the OpenAI API sends them) or as an
    object (as transformers users pass them), whichever the template needs."""
    converted = []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        try:
            if form == "object" and isinstance(arguments, str):
                call = {**call, "function": {**function, "arguments": json.loads(arguments)}}
            elif form == "string" and isinstance(arguments, (dict, list)):
                call = {**call, "function": {**function, "arguments": json.dumps(arguments, ensure_ascii=False)}}
        except json.JSONDecodeError:
            pass  # not JSON: the template gets the string and decides
        converted.append(call)
    return converted


def _prepare_messages(messages: list[dict], needs: _Needs) -> list[dict]:
    """Give each message in the form the template handles: content as a list of parts for
    templates that require one, a plain string otherwise; tool-call arguments in the form the
    template prints."""
    prepared = []
    for message in messages:
        content = message.get("content")
        if needs.typed_content and isinstance(content, str):
            message = {**message, "content": [{"type": "text", "text": content}]}
        elif not needs.typed_content and isinstance(content, list):
            message = {**message, "content": _text_of(content)}
        if needs.arguments and isinstance(message.get("tool_calls"), list):
            message = {**message, "tool_calls": _converted_arguments(message["tool_calls"], needs.arguments)}
        prepared.append(message)
    return prepared


def _fold_system(messages: list[dict]) -> list[dict] | None:
    """The conversation with a leading system message merged into the first user message (as
    Gemma's own templates do), or None when there is nothing to merge."""
    if len(messages) < 2 or messages[0].get("role") != "system" or messages[1].get("role") != "user":
        return None
    system, user = messages[0].get("content"), messages[1].get("content")
    system = _text_of(system) if isinstance(system, list) else str(system or "")
    if isinstance(user, list):  # the template takes parts: the system text becomes the first part
        return [{**messages[1], "content": [{"type": "text", "text": system + "\n\n"}, *user]}, *messages[2:]]
    return [{**messages[1], "content": f"{system}\n\n{user}"}, *messages[2:]]


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool = True,
                         *, limits: RenderLimits | None = None, **variables: Any) -> str:
    """Render `messages` (OpenAI-style dicts; content a string or a list of parts) with a Jinja
    chat template, as transformers' `apply_chat_template` would. `variables` go to the template:
    `bos_token`, `eos_token` (default ''), `tools`, `documents` (default None), or any other."""
    limits = limits or DEFAULT_LIMITS
    budget = _DEADLINE.set(time.monotonic() + limits.timeout_s)   # one budget for the whole call
    try:
        return _render_messages(template, messages, add_generation_prompt, limits, variables)
    finally:
        _DEADLINE.reset(budget)


def _render_messages(template: str, messages: list[dict], add_generation_prompt: bool, limits: RenderLimits,
                     variables: dict[str, Any]) -> str:
    compiled = _compile(template, limits)
    needs = _probe(template, limits)

    def render(msgs: list[dict]) -> str:
        context = _base_context(variables)
        context.update(messages=msgs, add_generation_prompt=add_generation_prompt)
        return _render(compiled, context, limits)

    prepared = _prepare_messages(messages, needs)
    try:
        return render(prepared)
    except _TemplateRefusal as refusal:
        # Like minja's system-role polyfill: templates such as Gemma 2's refuse a system message;
        # llama.cpp then prepends it to the first user message.
        folded = _fold_system(prepared)
        if folded is None:
            raise
        try:
            text = render(folded)
        except ChatTemplateError:
            raise refusal from None
        log.info("chat template refused the system message; merged it into the first user message")
        return text


# ---------------------------------------------------------------------------------------------
# Built-in templates for GGUFs that carry none


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Mistral's official v1 format (Llama 2's without <<SYS>>): the system prompt opens the first
# user turn; the [/INST] already asks for the answer, so there is no generation prompt.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Gemma's official template (Gemma 3's, text only): no system role, so the system prompt is
# merged into the first user turn; the assistant is called "model".
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def fallback_chat_template(metadata: dict[str, Any]) -> str:
    """A built-in template for a GGUF without `tokenizer.chat_template`, chosen like llama.cpp's
    `llm_chat_detect_template` from the architecture and the vocabulary's special tokens."""
    arch = str(metadata.get("general.architecture", ""))
    tokens = set(metadata.get("tokenizer.ggml.tokens") or ())
    if arch.startswith("gemma") or "<start_of_turn>" in tokens:
        return GEMMA_TEMPLATE
    if "<|im_start|>" in tokens:
        return CHATML_TEMPLATE
    if "<|start_header_id|>" in tokens:
        return LLAMA3_TEMPLATE
    if "[INST]" in tokens:
        return MISTRAL_TEMPLATE
    return CHATML_TEMPLATE


def template_for(metadata: dict[str, Any], override: str | None = None) -> str:
    """The template to use: `override` text, else the GGUF's own, else a built-in fallback."""
    if override:
        return override
    embedded = metadata.get("tokenizer.chat_template")
    if isinstance(embedded, str) and embedded.strip():
        return embedded
    log.info("GGUF has no tokenizer.chat_template; using a built-in template")
    return fallback_chat_template(metadata)
