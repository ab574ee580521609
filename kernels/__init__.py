"""Numba CPU kernels (installed as localllm.kernels).

simd     512-bit vector types and intrinsics (vpdpbusd, vpmaddubsw, loads, float16 conversion)
isa      which instruction-set paths the host runs; one kernel source compiled per path
quant    r8 weight repacking and Q8_0 activation quantization
qmatmul  r8 x Q8_0 matmul (SIMD build per instruction set, plus the portable twin)
ops      float matmul, RMSNorm, RoPE, SwiGLU/GeGLU, online-softmax attention over the KV cache
"""
