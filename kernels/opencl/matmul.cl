// Tiled matrix product for prefill: y[t, row] = sum_e w[row, e] * x[t, e] for many tokens t.
// A 16x16 work-group computes a 32 (rows) x 32 (tokens) tile, each lane 2x2 outputs; every
// 32-wide step of k is dequantized once into local memory and reused by 32 tokens.
// Launch: global (ceil(n/32)*16, ceil(T/32)*16), local (16, 16).
#define TILE 32

inline void matmul_tiled(const int wt, WARGS, __global const float *x, __global float *y,
                         int n, int k, int T, __local float (*ws)[TILE + 1], __local float (*xs)[TILE + 1])
{
    int tx = get_local_id(0), ty = get_local_id(1), tid = ty * 16 + tx;
    int n0 = get_group_id(0) * TILE, t0 = get_group_id(1) * TILE;
    int lr = tid / 8, lc = (tid % 8) * 4;          // this lane loads tile row lr, columns lc..lc+3
    float a00 = 0.0f, a01 = 0.0f, a10 = 0.0f, a11 = 0.0f;
    for (int k0 = 0; k0 < k; k0 += TILE) {
        float4 w4 = 0.0f, x4 = 0.0f;
        if (n0 + lr < n && k0 + lc < k)
            w4 = load4(wt, WPASS, n0 + lr, k0 + lc, k);
        if (t0 + lr < T && k0 + lc < k)
            x4 = load4(W_F32, (__global const uchar *)x, wd, wm, t0 + lr, k0 + lc, k);
        ws[lr][lc] = w4.s0; ws[lr][lc + 1] = w4.s1; ws[lr][lc + 2] = w4.s2; ws[lr][lc + 3] = w4.s3;
        xs[lr][lc] = x4.s0; xs[lr][lc + 1] = x4.s1; xs[lr][lc + 2] = x4.s2; xs[lr][lc + 3] = x4.s3;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int e = 0; e < TILE; e++) {
            float w0 = ws[tx][e], w1 = ws[tx + 16][e], x0 = xs[ty][e], x1 = xs[ty + 16][e];
            a00 = fma(w0, x0, a00); a01 = fma(w0, x1, a01);
            a10 = fma(w1, x0, a10); a11 = fma(w1, x1, a11);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    int r0 = n0 + tx, r1 = r0 + 16, c0 = t0 + ty, c1 = c0 + 16;
    if (r0 < n && c0 < T) y[(size_t)c0 * n + r0] = a00;
    if (r0 < n && c1 < T) y[(size_t)c1 * n + r0] = a01;
    if (r1 < n && c0 < T) y[(size_t)c0 * n + r1] = a10;
    if (r1 < n && c1 < T) y[(size_t)c1 * n + r1] = a11;
}

#define MATMUL(NAME, WT) \
__kernel void NAME(WKARGS(w), __global const float *x, __global float *y, int n, int k, int T) \
{ \
    WUNPACK(w); \
    __local float ws[TILE][TILE + 1], xs[TILE][TILE + 1]; \
    matmul_tiled(WT, WPASS, x, y, n, k, T, ws, xs); \
}

MATMUL(matmul_q4_0_f32, W_Q4_0)
MATMUL(matmul_q4_1_f32, W_Q4_1)
MATMUL(matmul_q8_0_f32, W_Q8_0)
MATMUL(matmul_q4_k_f32, W_Q4_K)
MATMUL(matmul_q5_k_f32, W_Q5_K)
MATMUL(matmul_q6_k_f32, W_Q6_K)
MATMUL(matmul_f16_f32, W_F16)
MATMUL(matmul_f32_f32, W_F32)

// Embedding lookup: y[t, e] = w[ids[t], e]. Launch: global (k, T).
#define GET_ROWS(NAME, WT) \
__kernel void NAME(WKARGS(w), __global const int *ids, __global float *y, int k) \
{ \
    WUNPACK(w); \
    int e = get_global_id(0), t = get_global_id(1); \
    if (e < k) y[(size_t)t * k + e] = load1(WT, WPASS, ids[t], e, k); \
}

GET_ROWS(get_rows_q4_0, W_Q4_0)
GET_ROWS(get_rows_q4_1, W_Q4_1)
GET_ROWS(get_rows_q8_0, W_Q8_0)
GET_ROWS(get_rows_q4_k, W_Q4_K)
GET_ROWS(get_rows_q5_k, W_Q5_K)
GET_ROWS(get_rows_q6_k, W_Q6_K)
GET_ROWS(get_rows_f16, W_F16)
GET_ROWS(get_rows_f32, W_F32)
