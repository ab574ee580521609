"""Checks `localllm bench`'s DRAM figure against a C read loop (AVX-512 or AVX2 XOR-reduce,
OpenMP) over the same 1 GiB, alternating runs. The numba probe should land within 10%.

    python bench/dram_check.py [--threads 2]
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

C_SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <omp.h>
#ifdef __AVX512F__
typedef __m512i V;
#define ZERO _mm512_setzero_si512()
#define XOR _mm512_xor_si512
#else
typedef __m256i V;
#define ZERO _mm256_setzero_si256()
#define XOR _mm256_xor_si256
#endif
int main(int argc, char **argv) {
  int th = atoi(argv[1]); size_t bytes = 1UL << 30, n = bytes / sizeof(V);
  V *a = aligned_alloc(64, bytes); for (size_t i = 0; i < bytes / 8; i++) ((long *)a)[i] = i;
  double best = 0; long sink = 0;
  for (int r = 0; r < 5; r++) {
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
    #pragma omp parallel num_threads(th) reduction(^:sink)
    { V s0 = ZERO, s1 = ZERO, s2 = ZERO, s3 = ZERO;
      #pragma omp for
      for (size_t i = 0; i < n; i += 4) { s0 = XOR(s0, a[i]); s1 = XOR(s1, a[i+1]); s2 = XOR(s2, a[i+2]); s3 = XOR(s3, a[i+3]); }
      V s = XOR(XOR(s0, s1), XOR(s2, s3)); sink ^= ((long *)&s)[0]; }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double gb = bytes / ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9) / 1e9; if (gb > best) best = gb;
  }
  printf("%.2f %ld\n", best, sink & 1); return 0;
}
"""


def c_read_gbps(threads: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        src, exe = Path(d) / "bw.c", Path(d) / "bw"
        src.write_text(C_SOURCE)
        subprocess.run(["gcc", "-O2", "-march=native", "-fopenmp", str(src), "-o", str(exe)], check=True)
        return float(subprocess.run([str(exe), str(threads)], capture_output=True, text=True, check=True).stdout.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from localllm.bench import dram_read_gbps
    c, ours = [], []
    for _ in range(args.rounds):
        c.append(c_read_gbps(args.threads))
        ours.append(dram_read_gbps(args.threads))
    print("| probe | threads | best GB/s |\n| --- | --- | --- |")
    print(f"| C (gcc -O2 -march=native, OpenMP) | {args.threads} | {max(c):.1f} |")
    print(f"| localllm (numba, kernels/membw.py) | {args.threads} | {max(ours):.1f} |")
    print(f"ratio: {max(ours) / max(c):.2f}")


if __name__ == "__main__":
    main()
