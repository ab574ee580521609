// Shared by every OpenCL kernel of localllm. OpenCL C 1.2, float32 arithmetic only: half is used
// as a storage type through vload_half/vstore_half (core 1.2, no cl_khr_fp16), never fp64.
//
// Build-time constants (set by localllm/backend/opencl/device.py from the device's properties):
//   LS      work-group size of the row-reduction kernels (a power of two, a multiple of TPR)
//   TPR     lanes that share one weight row in a matvec (a power of two)
//   RPW     rows per team of TPR lanes in a matvec; RPW_ADD, RPW_NORM the same for the gemv_add
//           and gemv_norm kernels (default RPW: the rows a team takes do not change any sum)
//   ATT_LS  work-group size of the attention kernel (a power of two)
//   MAX_DK  largest head dimension attention keeps in local memory
//   MAX_DV_PER  output dims of V each attention lane accumulates (dv <= MAX_DV_PER * ATT_LS)

#ifndef RPW_ADD
#define RPW_ADD RPW
#endif
#ifndef RPW_NORM
#define RPW_NORM RPW
#endif
#define RPW_MAX (RPW > RPW_ADD ? (RPW > RPW_NORM ? RPW : RPW_NORM) : (RPW_ADD > RPW_NORM ? RPW_ADD : RPW_NORM))

// Weight kinds: the first-class layouts every matrix is uploaded as. All are row-major [n, k]:
//   Q4_0  wq: u8 [n, k/2] ggml nibble order, wd: f16 [n, k/32]        w = d * (q - 8)
//   Q4_1  as Q4_0 plus wm: f16 [n, k/32]                                 w = d * q + m
//   Q8_0  wq: i8 [n, k], wd: f16 [n, k/32]                              w = d * q
//   F16   wq: f16 [n, k];  F32  wq: f32 [n, k]   (wd, wm unused)
//   Q4_K  per super-block of 256 (sb): wq: u8 [128] ggml's order (byte l of 64-column chunk c
//         holds columns 64c + l low, 64c + 32 + l high), wd: f16 [2] (d, dmin), wm: u8 [16]:
//         per chunk c (sc, sc', m, m') of its sub-blocks 2c, 2c+1     w = d*sc * q - dmin*m
//   Q5_K  as Q4_K, wq: u8 [160] ggml's qh [32] (bit i of byte l: the fifth bit of column 32i + l)
//         then the 128 nibble bytes                                  w = d*sc * q - dmin*m
//   Q6_K  per super-block: wq: u8 [192] ggml's ql [128] then qh [64], wd: f16 d, wm: i8 [16]:
//         per 128-column half h and j < 4 (sc[8h+j], sc[8h+j+4])     w = d*sc * (q - 32)
#define W_Q4_0 0
#define W_Q4_1 1
#define W_Q8_0 2
#define W_F16 3
#define W_F32 4
#define W_Q4_K 5
#define W_Q6_K 6
#define W_Q5_K 7

#define WARGS __global const uchar *wq, __global const half *wd, __global const half *wm
#define WPASS wq, wd, wm

// A matrix p as kernel arguments: one buffer, p##q, holding the quants (or values), then the
// scales at byte offset p##d_off and the minima at p##m_off (weights.py; offsets of kinds without
// them are unused). One buffer argument per matrix rather than three: NVIDIA's OpenCL spends ~0.4
// us of host time per buffer argument of every enqueue and little per scalar. WUNPACK(p), first
// in the kernel, names the scales p##d and minima p##m.
#define WKARGS(p) __global const uchar *p##q, long p##d_off, long p##m_off
#define WUNPACK(p) __global const half *p##d = (__global const half *)(p##q + p##d_off), \
                                        *p##m = (__global const half *)(p##q + p##m_off)

// Four consecutive elements w[row, e..e+3] of a k-quant, e a multiple of 4 (one sub-block).
inline float4 load4_k(const int wt, WARGS, size_t row, int e, int k)
{
    size_t sb = row * (size_t)(k / 256) + e / 256;
    int j = e % 256;
    if (wt == W_Q4_K || wt == W_Q5_K) {
        int hi = (j >> 5) & 1, q5 = wt == W_Q5_K;          // the chunk's second sub-block: high nibbles
        __global const uchar *blk = wq + sb * (q5 ? 160 : 128);
        uchar4 b = vload4(0, blk + q5 * 32 + (j >> 6) * 32 + (j & 31));
        uchar4 q = hi ? b >> (uchar4)4 : b & (uchar4)15;
        if (q5) q |= ((vload4(0, blk + (j & 31)) >> (uchar4)(j >> 5)) & (uchar4)1) << (uchar4)4;
        uint s = ((__global const uint *)wm)[sb * 4 + (j >> 6)] >> (8 * hi);
        float d = vload_half(2 * sb, wd) * (float)(s & 255u), m = vload_half(2 * sb + 1, wd) * (float)((s >> 16) & 255u);
        return d * convert_float4(q) - m;
    }
    int h = j >> 7, p = j & 63, up = (j >> 6) & 1;          // Q6_K: half, ql byte, high nibbles
    __global const uchar *blk = wq + sb * 192;
    uchar4 ql = vload4(0, blk + h * 64 + p), qh = vload4(0, blk + 128 + h * 32 + (p & 31));
    uchar4 q = (up ? ql >> (uchar4)4 : ql & (uchar4)15) | (((qh >> (uchar4)(2 * (p >> 5) + 4 * up)) & (uchar4)3) << (uchar4)4);
    int sub = (j & 127) >> 4;                               // sub-block of 16 within the half
    float sc = (float)((__global const char *)wm)[sb * 16 + h * 8 + 2 * (sub & 3) + (sub >> 2)];
    return vload_half(sb, wd) * sc * (convert_float4(q) - 32.0f);
}

// One element w[row, e] (embedding lookups: speed does not matter there).
inline float load1(const int wt, WARGS, size_t row, int e, int k)
{
    if (wt == W_Q4_K || wt == W_Q5_K || wt == W_Q6_K) {
        float4 v = load4_k(wt, WPASS, row, e & ~3, k);
        int i = e & 3;
        return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
    }
    size_t blk = row * (size_t)(k / 32) + e / 32;
    int j = e % 32;
    switch (wt) {
    case W_Q4_0: case W_Q4_1: {
        uchar b = wq[blk * 16 + (j & 15)];
        float q = (float)(j < 16 ? (b & 15) : (b >> 4));
        return wt == W_Q4_0 ? vload_half(blk, wd) * (q - 8.0f) : vload_half(blk, wd) * q + vload_half(blk, wm);
    }
    case W_Q8_0: return vload_half(blk, wd) * (float)((__global const char *)wq)[blk * 32 + j];
    case W_F16: return vload_half(row * k + e, (__global const half *)wq);
    default: return ((__global const float *)wq)[row * k + e];
    }
}

// Four consecutive elements w[row, e..e+3], e a multiple of 4 (tile loads of the prefill matmul).
// Float kinds may have k % 4 != 0: elements past k read as 0.
inline float4 load4(const int wt, WARGS, size_t row, int e, int k)
{
    if (wt == W_F16 || wt == W_F32) {
        float4 v = 0.0f;
        if (e + 3 < k)
            return wt == W_F16 ? vload_half4(0, (__global const half *)wq + row * k + e)
                               : vload4(0, (__global const float *)wq + row * k + e);
        for (int i = 0; i < 4 && e + i < k; i++) {
            float f = wt == W_F16 ? vload_half(row * k + e + i, (__global const half *)wq)
                                  : ((__global const float *)wq)[row * k + e + i];
            if (i == 0) v.s0 = f; else if (i == 1) v.s1 = f; else v.s2 = f;
        }
        return v;
    }
    if (wt == W_Q4_K || wt == W_Q5_K || wt == W_Q6_K)
        return load4_k(wt, WPASS, row, e, k);
    size_t blk = row * (size_t)(k / 32) + e / 32;
    int j = e % 32;
    float d = vload_half(blk, wd);
    if (wt == W_Q8_0)
        return d * convert_float4(vload4(0, (__global const char *)wq + blk * 32 + j));
    uchar4 b = vload4(0, wq + blk * 16 + (j & 15));
    float4 q = convert_float4(j < 16 ? (b & (uchar4)15) : (b >> (uchar4)4));
    return wt == W_Q4_0 ? d * (q - 8.0f) : d * q + vload_half(blk, wm);
}

// Activation loads: vloadn of a float or half pointer compiles to n scalar loads on NVIDIA's
// OpenCL (it may not assume more than the element's alignment), which matters where a lane's
// loads are far apart (each then touches a sector of its own). These take one 16-byte load per
// 16 bytes where p is 16-byte aligned (a quantized row's activations and norm weights, the KV
// cache's rows always are), else vloadn; the same values either way.
inline float4 load_f4(__global const float *p)
{
    return ((size_t)p & 15) == 0 ? *(__global const float4 *)p : vload4(0, p);
}

inline float8 load_f8(__global const float *p)
{
    if (((size_t)p & 15) == 0) {
        __global const float4 *v = (__global const float4 *)p;
        return (float8)(v[0], v[1]);
    }
    return vload8(0, p);
}

// Sixteen halfs at p as four float4 (v[0] = p[0..3], ...).
inline void load_h16(__global const half *p, float4 *v)
{
    if (((size_t)p & 15) == 0) {
        uint4 raw[2] = {((__global const uint4 *)p)[0], ((__global const uint4 *)p)[1]};
        for (int u = 0; u < 4; u++) v[u] = vload_half4(u, (const __private half *)raw);
    } else {
        for (int u = 0; u < 4; u++) v[u] = vload_half4(u, p);
    }
}

// Sum over the LS lanes of a work-group; every lane gets the total. Two folds with three barriers
// (a tree takes log2(LS)): LS/8 lanes each sum 8 values at a stride of LS/8, then every lane
// sums those LS/8 sums itself, in the same order, so all lanes hold the same float.
inline float group_sum(__local float *part, float v)
{
    const int S = LS / 8;
    int lid = get_local_id(0);
    part[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid < S) {
        float s = part[lid];
        for (int j = 1; j < 8; j++) s += part[lid + j * S];
        part[lid] = s;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    float total = part[0];
    for (int j = 1; j < S; j++) total += part[j];
    barrier(CLK_LOCAL_MEM_FENCE);  // part is reused by the caller's next sum
    return total;
}

// Sum of squares of x [d] over the LS lanes of a work-group, four elements per load (rms_norm_f32
// and the products with a fused norm share it, so both see the same float32 sum); every lane gets
// the total.
inline float sum_squares(__global const float *x, int d, __local float *part)
{
    float ss = 0.0f;
    int d4 = d / 4 * 4, i = get_local_id(0) * 4;
    for (; i + 3 * LS * 4 < d4; i += 4 * LS * 4) {    // four loads in flight, then their sums in order
        float4 v[4];
        for (int u = 0; u < 4; u++) v[u] = load_f4(x + i + u * LS * 4);
        for (int u = 0; u < 4; u++) ss += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
    }
    for (; i < d4; i += LS * 4) {
        float4 v = load_f4(x + i);
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    for (int i = d4 + get_local_id(0); i < d; i += LS)
        ss += x[i] * x[i];
    return group_sum(part, ss);
}
