"""Chat templates: the 50 reference templates render, hostile templates are stopped before they
do anything, and GGUFs without a template get the right built-in one."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import gguf
import numpy as np
import pytest

from localllm.chat_template import (
    CHATML_TEMPLATE,
    ChatTemplateError,
    RenderLimits,
    fallback_chat_template,
    render_chat_template,
    template_for,
)
from localllm.gguf_file import GGUFFile

from support import DATA, llama_cpp_models

# The 50 popular templates of llama.cpp's collection: names and features in tests/data, the files
# from llama.cpp's sdist (fetched once when a test first needs them).
TEMPLATE_FEATURES = {line.split()[0]: set(line.split()[1:])
                     for line in (DATA / "chat_templates.txt").read_text().splitlines() if not line.startswith("#")}
TEMPLATES = sorted(TEMPLATE_FEATURES)


def template_path(name: str) -> Path:
    return llama_cpp_models() / "templates" / f"{name}.jinja"

CONVERSATION = [
    {"role": "system", "content": "SYS-TEXT: answer briefly."},
    {"role": "user", "content": "USER-ONE: what is 2+2?"},
    {"role": "assistant", "content": "ASSISTANT-ONE: 4."},
    {"role": "user", "content": "USER-TWO: and 3+3?"},
]
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city, e.g. Paris"}},
            "required": ["city"],
        },
    },
}]
TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}

# Variables some templates need, passed as llama.cpp's common/chat.cpp passes them.
EXTRA_VARIABLES = {
    # firefunction reads the tool list and the date from its own variables, not from `tools`
    "fireworks-ai-llama-3-firefunction-v2": {
        "functions": json.dumps([t["function"] for t in TOOLS], indent=2),
        "datetime": "Jan 01 2025",
    },
    # the tool-use variant iterates `tools` unconditionally (transformers fails without it too)
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": {"tools": TOOLS},
}


def _render(path: Path, add_generation_prompt: bool = True, messages: list[dict] = CONVERSATION, **extra) -> str:
    variables = {**TOKENS, **EXTRA_VARIABLES.get(path.stem, {}), **extra}
    return render_chat_template(path.read_text(), messages, add_generation_prompt, **variables)


def test_reference_templates_present():
    assert len(TEMPLATES) == 50
    assert all(template_path(name).is_file() for name in TEMPLATES)


# --- the 50 reference templates -------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATES)
def test_reference_template_renders_conversation(name: str):
    path = template_path(name)
    text = _render(path)
    texts = [m["content"] for m in CONVERSATION]
    pos = [text.find(t) for t in texts]
    assert all(p >= 0 for p in pos), f"missing {[t for t, p in zip(texts, pos) if p < 0]} in {text!r}"
    assert pos == sorted(pos), f"messages out of order in {text!r}"
    assert text[pos[-1] + len(texts[-1]):].strip(), "no generation prompt after the last user message"


@pytest.mark.parametrize("name", TEMPLATES)
def test_reference_template_generation_prompt(name: str):
    path = template_path(name)
    with_prompt, without = _render(path, True), _render(path, False)
    if "add_generation_prompt" not in path.read_text():
        # Command R7B, firefunction and Mistral's always end with the assistant cue (or with
        # `[/INST]`, which is one)
        assert with_prompt == without
        return
    assert with_prompt != without
    last_user = CONVERSATION[-1]["content"]
    assert with_prompt.rfind(last_user) == without.rfind(last_user)  # same conversation before it
    if path.stem != "microsoft-Phi-3.5-mini-instruct":  # Phi closes a prompt-less chat with eos instead
        assert with_prompt.startswith(without) and len(with_prompt) > len(without)


@pytest.mark.parametrize("name", [n for n in TEMPLATES if "tools" in TEMPLATE_FEATURES[n]])
def test_reference_template_renders_tools(name: str):
    text = _render(template_path(name), tools=TOOLS)
    assert "get_current_weather" in text
    assert CONVERSATION[-1]["content"] in text


def _tool_conversation(arguments: dict | str) -> list[dict]:
    call = {"id": "call00001", "type": "function", "function": {"name": "get_current_weather", "arguments": arguments}}
    return [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call00001", "name": "get_current_weather", "content": "TOOL-RESULT: 22C"},
            {"role": "assistant", "content": "It is 22C."},
            {"role": "user", "content": "Thanks"}]


@pytest.mark.parametrize("form", ["object", "string"])
@pytest.mark.parametrize("name", [n for n in TEMPLATES if "tool_calls" in TEMPLATE_FEATURES[n]])
def test_reference_template_renders_tool_calls(name: str, form: str):
    path = template_path(name)
    # OpenAI clients send arguments as a JSON string, transformers users as a dict: each
    # template gets the form it prints (llama.cpp's polyfill), so neither fails nor is encoded twice
    arguments = {"city": "Paris"}
    text = _render(path, messages=_tool_conversation(arguments if form == "object" else json.dumps(arguments)),
                   tools=TOOLS)
    assert "Paris" in text and "TOOL-RESULT: 22C" in text
    if path.stem != "fireworks-ai-llama-3-firefunction-v2":  # its probes need `functions`: arguments go as given
        assert '\\"city\\"' not in text


@pytest.mark.parametrize("name", TEMPLATES)
def test_content_parts_render_like_strings(name: str):
    path = template_path(name)
    parts = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in CONVERSATION]
    assert _render(path, messages=parts) == _render(path)


def test_content_form_follows_the_template():
    # a template that only reads parts gets parts (minja's requires_typed_content), the others
    # get text, with the text parts joined by newlines as llama.cpp does
    typed = "{% for m in messages %}{% for p in m.content %}[{{ p.text }}]{% endfor %}{% endfor %}"
    assert render_chat_template(typed, [{"role": "user", "content": "Hi"}]) == "[Hi]"
    plain = "{% for m in messages %}{{ m.content }}{% endfor %}"
    parts = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    assert render_chat_template(plain, [{"role": "user", "content": parts}]) == "a\nb"


def test_gemma2_system_message_is_merged_into_first_user_turn():
    path = template_path("google-gemma-2-2b-it")
    text = _render(path)
    first_turn = "<s><start_of_turn>user\nSYS-TEXT: answer briefly.\n\nUSER-ONE: what is 2+2?<end_of_turn>\n"
    assert text.startswith(first_turn)
    # a refusal that merging cannot fix still comes through, with the template's own words
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        _render(path, messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


# --- the model files -----------------------------------------------------------------------

SMOLLM2_HI = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_smollm2_template_renders_like_transformers(smollm2_path: Path):
    metadata = GGUFFile(smollm2_path).metadata
    template = template_for(metadata)
    assert template == metadata["tokenizer.chat_template"]
    assert render_chat_template(template, [{"role": "user", "content": "Hi"}]) == SMOLLM2_HI
    assert render_chat_template(template, [{"role": "user", "content": "Hi"}], add_generation_prompt=False) \
        == SMOLLM2_HI.removesuffix("<|im_start|>assistant\n")


def test_gemma3_gguf_gets_gemma_fallback(gemma3_path: Path):
    metadata = GGUFFile(gemma3_path).metadata
    assert "tokenizer.chat_template" not in metadata
    text = render_chat_template(template_for(metadata), [{"role": "user", "content": "Hi"}], bos_token="<bos>")
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


# --- built-in templates --------------------------------------------------------------------


def _metadata(arch: str, *special: str) -> dict:
    return {"general.architecture": arch, "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", *special, "a", "b"]}


GEMMA_META = _metadata("gemma3", "<start_of_turn>", "<end_of_turn>")


def test_gemma_fallback_format():
    template = fallback_chat_template(GEMMA_META)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    assert render_chat_template(template, chat, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n")
    assert not render_chat_template(template, chat[:2], add_generation_prompt=False).endswith("model\n")


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3"])
def test_gemma_architectures_choose_gemma(arch: str):
    assert fallback_chat_template(_metadata(arch)) == fallback_chat_template(GEMMA_META)


@pytest.mark.parametrize("special, expected", [
    ("<|im_start|>", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ("<|start_header_id|>", "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                            "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("[INST]", "<s>[INST] Hi [/INST]"),
    ("<other>", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
])
def test_fallback_follows_special_tokens(special: str, expected: str):
    template = fallback_chat_template(_metadata("llama", special))
    assert render_chat_template(template, [{"role": "user", "content": "Hi"}], bos_token="<s>") == expected


def test_mistral_fallback_merges_system_and_closes_answers():
    template = fallback_chat_template(_metadata("llama", "[INST]"))
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    expected = "<s>[INST] Be brief.\n\nHi [/INST] Hello</s>[INST] Bye [/INST]"
    assert render_chat_template(template, chat, **TOKENS) == expected


def test_template_for_precedence():
    metadata = {**_metadata("llama", "<|start_header_id|>"), "tokenizer.chat_template": "EMBEDDED"}
    assert template_for(metadata, override="OVERRIDE") == "OVERRIDE"
    assert template_for(metadata) == "EMBEDDED"
    assert template_for({**metadata, "tokenizer.chat_template": ""}) == fallback_chat_template(metadata)
    assert template_for({"general.architecture": "llama"}) == CHATML_TEMPLATE


# --- what templates may use ----------------------------------------------------------------


def _one(template: str, **variables) -> str:
    return render_chat_template(template, [{"role": "user", "content": " Hello, World "}], **variables)


def test_huggingface_extras():
    assert _one("{{ strftime_now('%Y') }}") == str(datetime.now().year)
    value = {"b": [1, 2], "a": "é<tag>"}
    assert _one("{{ v|tojson }}", v=value) == json.dumps(value, ensure_ascii=False)
    assert _one("{{ v|tojson(indent=2, sort_keys=True) }}", v=value) \
        == json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)
    assert _one("{{ v|tojson(separators=(',', ':'), ensure_ascii=True) }}", v=value) \
        == json.dumps(value, separators=(",", ":"))
    loop = ("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}"
            "{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}")
    assert _one(loop) == "02"
    assert _one("{% generation %}{{ messages[0].content }}{% endgeneration %}") == " Hello, World "
    assert _one("{{ bos_token }}|{{ eos_token }}|{{ tools }}|{{ add_generation_prompt }}") == "||None|True"
    assert _one("{{ documents[0].title }}", documents=[{"title": "Doc"}]) == "Doc"
    assert _one('{{ \'{"a": 1}\'|from_json }}') == "{'a': 1}"


def test_raise_exception_carries_the_message():
    with pytest.raises(ChatTemplateError, match="Only user and assistant roles are supported") as e:
        _one("{{ raise_exception('Only user and assistant roles\nare supported') }}")
    assert "\n" not in str(e.value)


def test_string_methods_and_filters():
    template = ("{% set c = messages[0].content.strip() %}{{ c.split(', ')|join('|') }} {{ c.startswith('Hello') }} "
                "{{ c.lower().replace('world', 'you') }} {{ '{}-{}'.format(1, 2) }} {{ '%s!' % c }} "
                "{% for k, v in {'x': 1}|items %}{{ k }}={{ v }}{% endfor %} {{ c ~ '.' }} "
                "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}")
    assert _one(template) == "Hello|World True hello, you 1-2 Hello, World! x=1 Hello, World. 1"


def test_templates_may_grow_their_own_lists_but_not_the_callers():
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    template = ("{% set ids = [] %}{% set _ = ids.append(1) %}{{ ids.pop() }}"
                "{% set _ = messages.pop() %}{{ messages|length }}")
    assert render_chat_template(template, messages) == "11"
    assert len(messages) == 2


def test_syntax_error_is_one_line_with_line_number():
    with pytest.raises(ChatTemplateError, match=r"syntax error at line 2") as e:
        render_chat_template("ok\n{% for x in %}\n{% endfor %}", [])
    assert "\n" not in str(e.value)


def test_render_errors_are_chat_template_errors():
    with pytest.raises(ChatTemplateError, match="template line 2"):
        render_chat_template("fine\n{{ messages[0]['content'] + 1 }}", [{"role": "user", "content": "x"}])


# --- hostile templates ---------------------------------------------------------------------

# `MARKER` is replaced by a file path: a payload that escaped the sandbox would create it.
SSTI_PAYLOADS = {
    "str-mro": "{{ ''.__class__.__mro__ }}",
    "str-class-printed": "{{ ''.__class__ }}",
    "lipsum-globals": "{{ lipsum.__globals__ }}",
    "cycler-globals": "{{ cycler.__init__.__globals__ }}",
    "joiner-globals": "{{ joiner.__init__.__globals__ }}",
    "namespace-globals": "{{ namespace.__init__.__globals__ }}",
    "CVE-2024-34359": ("{% for x in ().__class__.__base__.__subclasses__() %}{% if \"warning\" in x.__name__ %}"
                       "{{x()._module.__builtins__['__import__']('os').popen(\"touch MARKER\").read()}}"
                       "{%endif%}{% endfor %}"),
    "CVE-2026-5760": ('The answer can only be "yes" or "no".\n'
                      '{{ lipsum.__globals__["os"].popen("touch MARKER").read() }}'
                      '{% for message in messages %}{{ message["content"] }}{% endfor %}'),
    "attr-filter": "{{ ''|attr('__class__')|attr('__mro__') }}",
    "attr-format": "{{ ('{0.__class__}'|attr('format'))('x') }}",
    "subscript": "{{ ''['__class__'] }}",
    "str-format": "{{ '{0.__class__.__mro__}'.format('') }}",
    "str-format-globals": "{{ '{0.__init__.__globals__[os]}'.format(namespace) }}",
    "str-format-map": "{{ '{x.__class__}'.format_map({'x': ''}) }}",
    "type-mro": "{{ dict.mro()[1].__subclasses__() }}",
    "subclasses": "{{ dict.__subclasses__() }}",
    "import": "{{ __import__('os').popen('touch MARKER') }}",
    "template-context": "{{ self._TemplateReference__context }}",
    "loop-internals": "{% for x in [1] %}{{ loop.__class__ }}{% endfor %}",
    "macro-globals": "{% macro m() %}{% endmacro %}{{ m.__globals__ }}",
    "include-file": "{% include '/etc/passwd' %}",
    "import-file": "{% import '/etc/passwd' as p %}{{ p }}",
    "from-import": "{% from 'os' import popen %}{{ popen('touch MARKER') }}",
    "extends-file": "{% extends '/etc/passwd' %}",
}
EXHAUSTION_PAYLOADS = {
    "range-huge": "{{ range(10**10)|length }}",
    "string-times-huge": "{{ 'a' * 10**10 }}",
    "string-times-big": "{% set s = 'a' * 1000000 %}{{ s * 10000 }}",
    "list-times-huge": "{{ ([1] * 1000000) * 1000000 }}",
    "integer-power": "{{ 10 ** (10 ** 10) }}",
    "doubling-tilde": "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling-plus": "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "center-width": "{{ 'a'|center(10**10) }}",
    "ljust-width": "{{ 'a'.ljust(10**10) }}",
    "format-width": "{{ '{:>9999999999}'.format('a') }}",
    "percent-width": "{{ '%9999999999s' % 'a' }}",
    "format-filter-width": "{{ '%9999999999s'|format('a') }}",
    "join-separator": "{% set s = 'a' * 3000000 %}{{ s|join(s) }}",
    "replace-empty": "{% set s = 'a' * 1000000 %}{{ s.replace('', s) }}",
    "indent-lines": "{{ ('\\n' * 1000000)|indent(1000000) }}",
    "join-shared-refs": ("{% set s = 'a' * 1000000 %}{% set l = [] %}{% for i in range(100000) %}"
                         "{% set _ = l.append(s) %}{% endfor %}{{ l|join }}"),
    "print-nested-refs": ("{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}"
                          "{% endfor %}{{ ns.l }}"),
    "output-flood": "{% set s = 'a' * 1000000 %}{% for i in range(100000) %}{{ s }}{% endfor %}",
    "set-block-flood": ("{% set s = 'a' * 1000000 %}{% set x %}{% for i in range(100000) %}{{ s }}{% endfor %}"
                        "{% endset %}"),
    "recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
}


@pytest.mark.parametrize("payload", list(SSTI_PAYLOADS.values()) + list(EXHAUSTION_PAYLOADS.values()),
                         ids=list(SSTI_PAYLOADS) + list(EXHAUSTION_PAYLOADS))
def test_hostile_template_is_stopped(payload: str, tmp_path: Path):
    marker = tmp_path / "pwned"
    with pytest.raises(ChatTemplateError) as e:
        render_chat_template(payload.replace("MARKER", str(marker)), [{"role": "user", "content": "hi"}])
    message = str(e.value)
    assert message.startswith("chat template") and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["{{ ''.__class__ }}", SSTI_PAYLOADS["CVE-2026-5760"]])
def test_ssti_is_reported_as_blocked(payload: str):
    with pytest.raises(ChatTemplateError, match="blocked: access to attribute '__"):
        render_chat_template(payload, [])


@pytest.mark.parametrize("name", ["include-file", "import-file", "from-import", "extends-file"])
def test_loading_other_templates_is_reported_as_blocked(name: str):
    with pytest.raises(ChatTemplateError, match="blocked: loading another template .* is not allowed"):
        render_chat_template(SSTI_PAYLOADS[name], [])


def test_render_time_budget():
    spin = "{% set s = 'a' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="longer than 0.3 s"):
        render_chat_template(spin, [], limits=RenderLimits(timeout_s=0.3))


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="the heap is measured through /proc")
@pytest.mark.parametrize("payload", [
    # each step is small; what they keep adds up
    "{% set s = 'a' * 1000000 %}{% set l = [] %}{% for i in range(100000) %}{% set _ = l.append(s ~ i) %}{% endfor %}",
    "{% set ns = namespace(keep=[], s='a' * 1000000) %}{% for i in range(100000) %}"
    "{% set ns.keep = [ns.keep, ns.s ~ i] %}{% endfor %}",
    "{% set s = 'a' * 1000000 %}{{ ''.join(range(1000)|map('string')|map('replace', '', s)) }}",
])
def test_render_memory_budget(payload: str):
    with pytest.raises(ChatTemplateError, match="used more than 64 MiB of memory"):
        render_chat_template(payload, [], limits=RenderLimits(max_memory=64 << 20))


def test_output_cap_is_configurable():
    messages = [{"role": "user", "content": "x" * 600}]
    template = "{{ messages[0].content }}{{ messages[0].content }}"
    assert len(render_chat_template(template, messages)) == 1200
    with pytest.raises(ChatTemplateError, match="exceed 1,000 characters"):
        render_chat_template(template, messages, limits=RenderLimits(max_chars=1000))


def test_large_real_conversation_is_not_a_false_positive():
    template = template_path("Qwen-Qwen3-0.6B").read_text()
    chat = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 2000}
            for i in range(200)]
    text = render_chat_template(template, chat)
    assert len(text) > 2_000_000 and "turn 199 " in text


def _write_gguf(path: Path, arch: str, template: str) -> None:
    """A tiny GPT-2-vocabulary GGUF whose only payload is its chat template."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<|endoftext|>", "a", "b", "ab"])
    writer.add_token_types([gguf.TokenType.CONTROL, *[gguf.TokenType.NORMAL] * 3])
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_chat_template(template)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("arch, name", [("llama", "CVE-2024-34359"), ("qwen3", "CVE-2026-5760")])
def test_hostile_gguf_template_is_stopped(arch: str, name: str, tmp_path: Path):
    marker = tmp_path / "pwned"
    payload = SSTI_PAYLOADS[name].replace("MARKER", str(marker))
    path = tmp_path / "hostile.gguf"
    _write_gguf(path, arch, payload)
    metadata = GGUFFile(path).metadata
    template = template_for(metadata)
    assert template == payload
    with pytest.raises(ChatTemplateError, match="blocked"):
        render_chat_template(template, [{"role": "user", "content": "Is the sky blue?"}], bos_token="<|endoftext|>")
    assert not marker.exists()
