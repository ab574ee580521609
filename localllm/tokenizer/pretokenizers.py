"""Byte-level BPE pre-tokenizers: `tokenizer.ggml.pre` name -> the regexes llama.cpp splits text with.

The expressions are llama.cpp's (`llm_tokenizer_bpe` in llama-vocab.cpp), rewritten for the `regex`
module only where the engines differ:
- capturing groups become non-capturing ones (llama.cpp compiles with `nosubs`; here the whole
  expression is wrapped in one group so `regex.split` returns matches and gaps in one C call);
- `\\d` becomes `[0-9]` and `$` becomes `\\Z`: llama.cpp runs expressions without `\\p{..}` through
  `std::wregex` in the C locale, where `\\d` is ASCII-only and `$` means end of the piece;
- llama.cpp hands `std::wregex` every non-ASCII whitespace character as U+000B, so such a character
  can match only `\\s`, never a literal range: deepseek-llm's range `　-。` therefore starts at U+3001;
- `\\p{..}` means llama.cpp's Unicode 15.1 categories, not the `regex` module's (see categories.py).
llama.cpp's hand-written matchers (`unicode_regex_split_custom_*`) behave like the expressions they
stand for, which `regex` runs as written; Kimi-K2's custom matcher is spelled out below.

Adding a family is one entry in `PRE_TOKENIZERS`.
"""
from __future__ import annotations

from dataclasses import dataclass

import regex

from .categories import category_fix


@dataclass(frozen=True)
class PreTokenizer:
    """One pre-tokenizer family and the vocabulary flags llama.cpp sets along with it."""

    regexes: tuple[str, ...]
    clean_spaces: bool = True     # llama.cpp's clean_up_tokenization_spaces on detokenize
    ignore_merges: bool = False   # a whole pre-token found in the vocabulary is emitted as is
    add_bos: bool = False         # default for `tokenizer.ggml.add_bos_token`
    has_bos: bool = True          # False: llama.cpp drops the default BOS id (ChatGLM)


_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_JAIS2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)"
          r"|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}")
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
# Upper/lower case through lookaheads, as llama.cpp adapted them: non-ASCII letters count as both.
_UPPER_RUN = r"(?:(?=[\p{L}])[^a-z])"
_LOWER_RUN = r"(?:(?=[\p{L}])[^A-Z])"
_TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER_RUN}*{_LOWER_RUN}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER_RUN}+{_LOWER_RUN}*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER_RUN}*{_LOWER_RUN}+{_CONTRACTIONS}?"
          rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER_RUN}+{_LOWER_RUN}*{_CONTRACTIONS}?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK3 = (
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
# The character ranges unicode.cpp's unicode_cpt_is_han() treats as Han.
_HAN = (r"\u4E00-\u9FFF\u3400-\u4DBF\U00020000-\U0002A6DF\U0002A700-\U0002B73F\U0002B740-\U0002B81F"
        r"\U0002B820-\U0002CEAF\U0002CEB0-\U0002EBEF\uF900-\uFAFF\U0002F800-\U0002FA1F")
# unicode_regex_split_custom_kimi_k2 as an expression: its letter runs exclude Han and take no marks.
_KIMI_K2 = (rf"[{_HAN}]+|[^\r\n\p{{L}}\p{{N}}]?(?:(?![{_HAN}])\p{{L}})+"
            r"(?:'[sS]|'[tT]|'[mM]|'[dD]|'[rR][eE]|'[vV][eE]|'[lL][lL])?"
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")
_STARCODER = (r"\p{N}", _GPT2)

_FAMILIES: list[tuple[tuple[str, ...], PreTokenizer]] = [
    (("default",), PreTokenizer(_DEFAULT)),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
     PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)),
    (("dbrx", "smaug-bpe"), PreTokenizer((_LLAMA3,))),
    (("jais-2",), PreTokenizer((_JAIS2,))),
    (("deepseek-llm",), PreTokenizer((
        "[\r\n]",
        (r"\s?["
         r"A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF"
         r"\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1"
         r"\u03A3-\u03F5\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5"
         r"\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A"
         r"\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D"
         r"\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3"
         r"\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102\u2107\u210A-\u2113\u2115"
         r"\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139\u213C-\u213F\u2145-\u2149"
         r"\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3\uA640-\uA66D"
         r"\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06"
         r"\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400-\U0001044F\U000104B0-\U000104D3"
         r"\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-\U000118DF"
         r"\U0001E900-\U0001E943"
         r"]+"),
        r"\s?[!-/:-~！-／：-～‘-‟、-。]+",
        r"\s+\Z",
        r"[一-龥ࠀ-一가-퟿]+",
        r"\p{N}+",
    ), clean_spaces=False)),
    (("deepseek-coder",), PreTokenizer((
        "[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}",
    ), clean_spaces=False)),
    (("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"), PreTokenizer(_DEEPSEEK3, clean_spaces=False)),
    (("falcon",), PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"))),
    (("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"), PreTokenizer(_STARCODER)),
    (("command-r", "smollm"), PreTokenizer(_STARCODER, clean_spaces=False)),
    (("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
      "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "exaone4"),
     PreTokenizer((_GPT2,))),
    (("trillion", "granite-docling"), PreTokenizer((_GPT2,), clean_spaces=False)),
    (("stablelm2", "megrez"), PreTokenizer((_QWEN2,))),
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2"),
     PreTokenizer((_QWEN2,), clean_spaces=False)),
    (("poro-chat",), PreTokenizer((_BLOOM,), clean_spaces=False)),
    (("bloom", "gpt3-finnish"), PreTokenizer((_BLOOM,))),
    (("viking",), PreTokenizer((_BLOOM, r"\p{N}"), clean_spaces=False)),
    (("chatglm-bpe",), PreTokenizer((_LLAMA3,), has_bos=False)),
    (("glm4", "glm5"), PreTokenizer((_LLAMA3,), ignore_merges=True, has_bos=False)),
    (("tekken",), PreTokenizer((_TEKKEN,), clean_spaces=False, ignore_merges=True, add_bos=True)),
    (("chameleon",), PreTokenizer((
        r"<sentinel:[0-9]+>",
        r"IMGIMG(?:A|B|C|D|E|F|G|H|I){1,4}Z",
        r"[\t\n]|    |  ",
        r"\p{N}",
        r"[\p{P}!-/:-@\[-`{-~]",
        _GPT2,
    ), clean_spaces=False, add_bos=True)),
    (("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), PreTokenizer((_GPT4O,), clean_spaces=False)),
    (("superbpe",), PreTokenizer((r"\p{N}+", r"(?=(?:[0-9]{3})+(?![0-9]))"), clean_spaces=False)),
    (("seed-coder",), PreTokenizer((
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
    ), clean_spaces=False)),
    (("bailingmoe", "bailingmoe2", "llada-moe"), PreTokenizer((
        r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]|\s+(?!\S)|\s+",
    ), clean_spaces=False)),
    (("kimi-k2",), PreTokenizer((_KIMI_K2,), clean_spaces=False)),
    (("qwen35",), PreTokenizer((
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+",
    ), clean_spaces=False)),
    (("laguna",), PreTokenizer((r"[^\n]+|[\n]+", _QWEN2), clean_spaces=False)),
    (("tiny_aya", "cohere2moe"), PreTokenizer((
        # \d and \b of a std::wregex in the C locale: ASCII digits, ASCII word characters
        r"[0-9]{1,3}(?=(?:[0-9]{3})*(?![A-Za-z0-9_]))",
        rf"[^\r\n\p{{L}}\p{{N}}]?[\p{{Lu}}\p{{Lt}}\p{{Lm}}\p{{Lo}}\p{{M}}]*[\p{{Ll}}\p{{Lm}}\p{{Lo}}\p{{M}}]+{_CONTRACTIONS}?"
        rf"|[^\r\n\p{{L}}\p{{N}}]?[\p{{Lu}}\p{{Lt}}\p{{Lm}}\p{{Lo}}\p{{M}}]+[\p{{Ll}}\p{{Lm}}\p{{Lo}}\p{{M}}]*{_CONTRACTIONS}?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ), clean_spaces=False)),
    (("exaone-moe",), PreTokenizer((
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?"
        r"|\s*[\r\n]|\s+(?!\S)|\s+",
    ))),
    (("granite-embed-multi-97m",), PreTokenizer((
        rf"[^\r\n\p{{L}}\p{{N}}]?(?:(?=[\p{{L}}\p{{M}}])[^a-z])*(?:(?=[\p{{L}}\p{{M}}])[^A-Z])+{_CONTRACTIONS}?"
        rf"|[^\r\n\p{{L}}\p{{N}}]?(?:(?=[\p{{L}}\p{{M}}])[^a-z])+(?:(?=[\p{{L}}\p{{M}}])[^A-Z])*{_CONTRACTIONS}?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ), clean_spaces=False, ignore_merges=True)),
    (("minicpm5",), PreTokenizer((
        r"\p{N}{1,3}",
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ), ignore_merges=True)),
    (("spark2_5",), PreTokenizer((
        r"\p{N}{1,3}",
        r"[一-龥぀-ゟ゠-ヿ]+",
        r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+"""
        r"|[\r\n]|\s+(?!\S)|\s+",
        r"\p{N}",
    ), clean_spaces=False)),
    (("youtu",), PreTokenizer((
        r"[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
        rf"[^\r\n\p{{L}}\p{{N}}]?[\p{{Lu}}\p{{Lt}}\p{{Lm}}\p{{Lo}}\p{{M}}]*[\p{{Ll}}\p{{Lm}}\p{{Lo}}\p{{M}}]+{_CONTRACTIONS}?"
        rf"|[^\r\n\p{{L}}\p{{N}}]?[\p{{Lu}}\p{{Lt}}\p{{Lm}}\p{{Lo}}\p{{M}}]+[\p{{Ll}}\p{{Lm}}\p{{Lo}}\p{{M}}]*{_CONTRACTIONS}?"
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ), clean_spaces=False, ignore_merges=True)),
    (("ufakzeka",), PreTokenizer((
        r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ), clean_spaces=False)),
]

# llama.cpp's families this splitter cannot express, and why: refused by name, never approximated.
UNSUPPORTED_PRE_TOKENIZERS = {
    **dict.fromkeys(("gemma4", "granite-embed-multi-311m", "sarvam-moe", "whitespace"),
                    "its vocabulary holds raw UTF-8 pieces (no GPT-2 byte encoding), which this BPE does not read"),
    "afmoe": "it splits digits by llama.cpp's custom \\p{AFMoE_digits} class",
}

PRE_TOKENIZERS: dict[str, PreTokenizer] = {name: pre for names, pre in _FAMILIES for name in names}


class PreSplitter:
    """llama.cpp's unicode_regex_split: each expression splits every piece the previous one made;
    the text between two matches is a piece too. Empty pieces are dropped (they yield no tokens)."""

    def __init__(self, regexes: tuple[str, ...]) -> None:
        # One capturing group around the expression: split() then returns gaps and matches in order.
        self._stages = [(regex.compile(f"({expr})").split, r"\p{" in expr) for expr in regexes]
        self._uses_categories = any(uses for _, uses in self._stages)

    def split(self, text: str) -> list[str]:
        fix = category_fix() if self._uses_categories else None
        if fix is not None and fix.affects(text):
            return self._split_substituted(text, fix.substitute(text))
        pieces = [text]
        for split, _ in self._stages:
            pieces = [word for piece in pieces for word in split(piece) if word]
        return pieces

    def _split_substituted(self, text: str, substituted: str) -> list[str]:
        """The same split, with expressions that use categories reading `substituted` (llama.cpp's
        categories, see categories.py); pieces are tracked as spans of the original text."""
        spans = [(0, len(text))]
        for split, uses_categories in self._stages:
            source = substituted if uses_categories else text
            next_spans = []
            for start, end in spans:
                pos = start
                for word in split(source[start:end]):
                    if word:
                        next_spans.append((pos, pos + len(word)))
                    pos += len(word)
            spans = next_spans
        return [text[start:end] for start, end in spans]
