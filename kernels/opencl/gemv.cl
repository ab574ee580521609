// Matrix-vector products for decode (few activation rows): y[t, row] = sum_e w[row, e] * x[t, e].
// A team of TPR lanes (on GPUs the whole work-group) shares RPW rows and walks their 16-element
// units (half a 32-block) in turn, so consecutive lanes read consecutive weight bytes; partial
// sums meet in local memory. The weights are read in their quantized form: this kernel is bound
// by the bytes it reads. Launch: see GEMV below.

inline float dot16(float8 a, float8 b, float8 c, float8 e)
{
    return dot(a.lo, b.lo) + dot(a.hi, b.hi) + dot(c.lo, e.lo) + dot(c.hi, e.hi);
}

// Offset in x of unit u's first eight activations (see unit_w).
inline int unit_x(const int wt, int u)
{
    if (wt == W_Q4_K || wt == W_Q5_K) return (u >> 2) * 64 + (u & 3) * 8;    // 8 bytes of a 64-column chunk
    if (wt == W_Q6_K) return (u >> 3) * 128 + (u & 7) * 8;   // 8 ql bytes of a 128-column half
    return wt == W_Q4_0 || wt == W_Q4_1 ? (u >> 1) * 32 + (u & 1) * 8 : u * 16;
}

// A unit of a row: 16 weights (half a 32-block) as stored, loaded before they are needed (a
// lane issues the next unit's loads, and a fused norm's, before this unit's arithmetic).
// Q4_0/Q4_1: a.xy the 8 quant bytes, d (and m); Q8_0: a the 16 quants, d; F16: a, b the 16
// halfs; F32: a, b, c, e the 16 floats' bits; Q4_K: a.xy the 8 quant bytes, a.z the unit's
// (sc, sc', m, m'), d and m the super-block's d and dmin; Q5_K: as Q4_K, b.xy the matching qh
// bytes shifted to this unit's bits; Q6_K: a.xy the 8 ql bytes, a.zw the
// matching qh bytes shifted to this unit's bits, a.z of b its two scales, d. The fields a kind
// does not use are dropped by the compiler (wt is a constant in every kernel).
typedef struct { uint4 a, b, c, e; float d, m; } unit_t;

inline unit_t unit_load(const int wt, WARGS, size_t row, int u, int k)
{
    unit_t w;
    size_t blk = row * (size_t)(k / 32) + (u >> 1);
    int h = u & 1;
    // vector-typed loads where the address is known aligned (8 and 16 bytes: one load each)
    if (wt == W_Q4_0 || wt == W_Q4_1) {
        w.a.xy = *(__global const uint2 *)(wq + blk * 16 + h * 8);
        w.d = vload_half(blk, wd);
        if (wt == W_Q4_1) w.m = vload_half(blk, wm);
    } else if (wt == W_Q8_0) {
        w.a = *(__global const uint4 *)(wq + blk * 32 + h * 16);
        w.d = vload_half(blk, wd);
    } else if (wt == W_Q4_K || wt == W_Q5_K) {
        size_t sb = row * (size_t)(k / 256) + (u >> 4);
        __global const uchar *b = wq + sb * (wt == W_Q5_K ? 160 : 128);
        if (wt == W_Q5_K) {
            w.b.xy = *(__global const uint2 *)(b + (u & 3) * 8) >> (uint2)(2 * ((u >> 2) & 3));
            b += 32;
        }
        w.a.xy = *(__global const uint2 *)(b + (u & 15) * 8);
        w.a.z = ((__global const uint *)wm)[sb * 4 + ((u >> 2) & 3)];
        w.d = vload_half(2 * sb, wd);
        w.m = vload_half(2 * sb + 1, wd);
    } else if (wt == W_Q6_K) {
        size_t sb = row * (size_t)(k / 256) + (u >> 4);
        int hf = (u >> 3) & 1, p = (u & 7) * 8;   // ql bytes p..p+7 of the half; qh bits by p's quarter
        __global const uchar *b = wq + sb * 192;
        w.a.xy = *(__global const uint2 *)(b + hf * 64 + p);
        w.a.zw = *(__global const uint2 *)(b + 128 + hf * 32 + (p & 31)) >> (uint2)(2 * (p >> 5));
        w.b.z = ((__global const ushort *)wm)[sb * 8 + hf * 4 + (p >> 4)];
        w.d = vload_half(sb, wd);
    } else if (wt == W_F16) {
        __global const half *p = (__global const half *)wq + row * (size_t)k + u * 16;
        if (k % 8 == 0) {                        // rows start 16-byte aligned
            w.a = ((__global const uint4 *)p)[0];
            w.b = ((__global const uint4 *)p)[1];
        } else {
            w.a = as_uint4(vload8(0, (__global const ushort *)p));
            w.b = as_uint4(vload8(1, (__global const ushort *)p));
        }
    } else {
        __global const float *p = (__global const float *)wq + row * (size_t)k + u * 16;
        if (k % 4 == 0) {
            w.a = ((__global const uint4 *)p)[0];
            w.b = ((__global const uint4 *)p)[1];
            w.c = ((__global const uint4 *)p)[2];
            w.e = ((__global const uint4 *)p)[3];
        } else {
            w.a = as_uint4(vload4(0, p));
            w.b = as_uint4(vload4(1, p));
            w.c = as_uint4(vload4(2, p));
            w.e = as_uint4(vload4(3, p));
        }
    }
    return w;
}

// Eight bytes' fields at bit s (width 4 or 8: mask) as floats, exactly (float)field - bias for
// an integer bias in 0..256: the field ORed into the mantissa of 2^23, minus 2^23 + bias
// (integer and float-add ops, where a conversion instruction runs at a quarter of their rate
// on NVIDIA GPUs).
inline float8 bytes8(uint2 v, int s, uint mask, float bias)
{
    uint8 b = (uint8)(v.x >> s, v.x >> (s + 8), v.x >> (s + 16), v.x >> (s + 24),
                      v.y >> s, v.y >> (s + 8), v.y >> (s + 16), v.y >> (s + 24));
    return as_float8((b & mask) | 0x4B000000u) - (8388608.0f + bias);
}

// A loaded unit dequantized into wa, wb (see unit_x for the activations they meet); the same
// floats as d * convert_float8(q) (+ m).
inline void unit_deq(const int wt, unit_t w, float8 *wa, float8 *wb)
{
    if (wt == W_Q4_0 || wt == W_Q4_1) {
        float m = wt == W_Q4_0 ? -8.0f * w.d : w.m;
        *wa = w.d * bytes8(w.a.xy, 0, 15u, 0.0f) + m;
        *wb = w.d * bytes8(w.a.xy, 4, 15u, 0.0f) + m;
    } else if (wt == W_Q8_0) {
        uint4 u = w.a ^ (uint4)0x80808080u;               // int8 q as q + 128 in 0..255
        *wa = w.d * bytes8(u.xy, 0, 255u, 128.0f);
        *wb = w.d * bytes8(u.zw, 0, 255u, 128.0f);
    } else if (wt == W_Q4_K || wt == W_Q5_K) {            // (d*sc) * q - dmin*m, as ggml
        uint s = w.a.z;
        uint2 lo = w.a.xy & 0x0F0F0F0Fu, hi = (w.a.xy >> 4) & 0x0F0F0F0Fu;
        if (wt == W_Q5_K) {
            lo |= (w.b.xy & 0x01010101u) << 4;
            hi |= (w.b.xy & 0x02020202u) << 3;
        }
        *wa = w.d * (float)(s & 255u) * bytes8(lo, 0, 255u, 0.0f) - w.m * (float)((s >> 16) & 255u);
        *wb = w.d * (float)((s >> 8) & 255u) * bytes8(hi, 0, 255u, 0.0f) - w.m * (float)(s >> 24);
    } else if (wt == W_Q6_K) {                            // (d*sc) * (q - 32), as ggml
        uint2 lo = (w.a.xy & 0x0F0F0F0Fu) | ((w.a.zw & 0x03030303u) << 4);
        uint2 hi = ((w.a.xy >> 4) & 0x0F0F0F0Fu) | (w.a.zw & 0x30303030u);
        *wa = w.d * (float)as_char((uchar)(w.b.z & 255u)) * bytes8(lo, 0, 255u, 32.0f);
        *wb = w.d * (float)as_char((uchar)(w.b.z >> 8)) * bytes8(hi, 0, 255u, 32.0f);
    } else if (wt == W_F16) {
        uint4 h[2] = {w.a, w.b};
        *wa = vload_half8(0, (const __private half *)h);
        *wb = vload_half8(1, (const __private half *)h);
    } else {
        *wa = as_float8((uint8)(w.a, w.b));
        *wb = as_float8((uint8)(w.c, w.e));
    }
}

// Q4_0 and Q8_0 scale each unit's sum of integer quants times activations once: d * sum((q -
// 8) x) (gemv's products; it saves the per-weight multiply of a dequantization). unit_int
// gives those integers as floats (exactly); the other kinds dequantize (unit_deq).
inline bool unit_scaled(const int wt)
{
    return wt == W_Q4_0 || wt == W_Q8_0;
}

inline void unit_int(const int wt, unit_t w, float8 *wa, float8 *wb)
{
    if (wt == W_Q4_0) {
        *wa = bytes8(w.a.xy, 0, 15u, 8.0f);
        *wb = bytes8(w.a.xy, 4, 15u, 8.0f);
    } else if (wt == W_Q8_0) {
        uint4 u = w.a ^ (uint4)0x80808080u;               // int8 q as q + 128 in 0..255
        *wa = bytes8(u.xy, 0, 255u, 128.0f);
        *wb = bytes8(u.zw, 0, 255u, 128.0f);
    } else {
        unit_deq(wt, w, wa, wb);
    }
}

// Unit u of a row (16 weights) dequantized into wa, wb; returns the offset in x of wa's eight
// activations (wb's follow at +16 for the 4-bit kinds, whose bytes pair elements j and j+16,
// else at +8).
inline int unit_w(const int wt, WARGS, size_t row, int u, int k, float8 *wa, float8 *wb)
{
    unit_deq(wt, unit_load(wt, WPASS, row, u, k), wa, wb);
    return unit_x(wt, u);
}

inline int second_half(const int wt)
{
    return wt == W_Q4_K || wt == W_Q5_K ? 32 : wt == W_Q6_K ? 64 : wt == W_Q4_0 || wt == W_Q4_1 ? 16 : 8;
}

// RPW (build-time constant) rows per team of TPR lanes: a lane loads its activation slice once
// and multiplies it by the weights of RPW rows, so x is read RPW times less and each lane has
// RPW weight loads in flight.
// rms_norm_f32's scale 1 / sqrt(mean(x^2) + eps) of x [d], by the same lanes in the same order
// so a product with a fused RMSNorm sees exactly the normalized values rms_norm_f32 would write.
inline float rms_inv(__global const float *x, int d, float eps, __local float *part)
{
    return 1.0f / sqrt(sum_squares(x, d, part) / d + eps);
}

// Unit u of row `row` numbered across up to three matrices A (rows [0, na)), B, C of one kind.
inline unit_t unit_load3(const int wt, WARGS, __global const uchar *bq, __global const half *bd,
                         __global const half *bm, __global const uchar *cq, __global const half *cd,
                         __global const half *cm, int na, int nb, int row, int u, int k)
{
    int in_b = row >= na, in_c = row >= na + nb;
    __global const uchar *q = in_c ? cq : in_b ? bq : wq;
    __global const half *d = in_c ? cd : in_b ? bd : wd, *m = in_c ? cm : in_b ? bm : wm;
    return unit_load(wt, q, d, m, row - (in_c ? na + nb : in_b ? na : 0), u, k);
}

// x's units o (eight activations) and o2, RMS-normed (x * inv * nw, as rms_norm_f32 computes
// it) when nw is non-null.
#define UNIT_X(wt, u) \
    int o = unit_x(wt, u), o2 = o + second_half(wt); \
    float8 xa = load_f8(x + o), xb = load_f8(x + o2); \
    if (nw) { \
        xa = xa * inv * load_f8(nw + o); \
        xb = xb * inv * load_f8(nw + o2); \
    }

// This lane's shares of the dot products of rows row0..row0+rpw-1 with x, into acc. The rows
// are numbered across up to three matrices of one kind and width k: [0, na) are A's, then
// [na, na+nb) B's, then C's (plain products pass nb = nc = 0). With nw, x is first RMS-normed
// (rms_inv, by every lane of the group: part is its scratch). Software-pipelined: the lane's
// first unit of each row is requested before the norm's sum (whose loads and barriers then
// overlap the weights' latency), and each next unit before this one's arithmetic. Past the end
// the last row is read again (branch-free), its sums unused.
inline void rows_part(const int wt, WARGS, __global const uchar *bq, __global const half *bd,
                      __global const half *bm, __global const uchar *cq, __global const half *cd,
                      __global const half *cm, int na, int nb, int nc, __global const float *x,
                      __global const float *nw, float eps, __local float *part, int row0, int k, int lane,
                      const int rpw, float *acc)
{
    int n = na + nb + nc, nu = k / 16;
    unit_t w[RPW_MAX];
    for (int r = 0; r < rpw; r++) acc[r] = 0.0f;
    if (row0 < n && lane < nu)
        for (int r = 0; r < rpw; r++)
            w[r] = unit_load3(wt, WPASS, bq, bd, bm, cq, cd, cm, na, nb, min(row0 + r, n - 1), lane, k);
    float inv = nw ? rms_inv(x, k, eps, part) : 1.0f;
    if (row0 >= n) return;
    for (int u = lane; u < nu; u += TPR) {
        UNIT_X(wt, u);
        for (int r = 0; r < rpw; r++) {
            float8 wa, wb;
            float d = unit_scaled(wt) ? w[r].d : 1.0f;
            unit_int(wt, w[r], &wa, &wb);
            if (u + TPR < nu)
                w[r] = unit_load3(wt, WPASS, bq, bd, bm, cq, cd, cm, na, nb, min(row0 + r, n - 1), u + TPR, k);
            float s = dot16(wa, xa, wb, xb);
            acc[r] += unit_scaled(wt) ? d * s : s;
        }
    }
    for (int e = nu * 16 + lane; e < k; e += TPR) {   // float kinds: the k % 16 tail
        float xe = nw ? x[e] * inv * nw[e] : x[e];
        for (int r = 0; r < rpw && row0 + r < n; r++) {
            int row = row0 + r;
            float w = row < na ? load1(wt, WPASS, row, e, k)
                    : row < na + nb ? load1(wt, bq, bd, bm, row - na, e, k) : load1(wt, cq, cd, cm, row - na - nb, e, k);
            acc[r] += w * xe;
        }
    }
}

// rows_part for the same rpw rows of two matrices G and U of one kind (gate and up): x is loaded
// (and normed) once for both; into g and u.
inline void rows_part2(const int wt, WARGS, __global const uchar *uq, __global const half *ud,
                       __global const half *um, int n, __global const float *x, __global const float *nw,
                       float eps, __local float *part, int row0, int k, int lane, const int rpw, float *g, float *u)
{
    int nu = k / 16;
    unit_t wg[RPW_MAX], wu[RPW_MAX];
    for (int r = 0; r < rpw; r++) g[r] = u[r] = 0.0f;
    if (row0 < n && lane < nu)
        for (int r = 0; r < rpw; r++) {
            int row = min(row0 + r, n - 1);
            wg[r] = unit_load(wt, WPASS, row, lane, k);
            wu[r] = unit_load(wt, uq, ud, um, row, lane, k);
        }
    float inv = nw ? rms_inv(x, k, eps, part) : 1.0f;
    if (row0 >= n) return;
    for (int c = lane; c < nu; c += TPR) {
        UNIT_X(wt, c);
        for (int r = 0; r < rpw; r++) {
            int row = min(row0 + r, n - 1);
            float8 wa, wb, va, vb;
            float dg = unit_scaled(wt) ? wg[r].d : 1.0f, du = unit_scaled(wt) ? wu[r].d : 1.0f;
            unit_int(wt, wg[r], &wa, &wb);
            unit_int(wt, wu[r], &va, &vb);
            if (c + TPR < nu) {
                wg[r] = unit_load(wt, WPASS, row, c + TPR, k);
                wu[r] = unit_load(wt, uq, ud, um, row, c + TPR, k);
            }
            float sg = dot16(wa, xa, wb, xb), su = dot16(va, xa, vb, xb);
            g[r] += unit_scaled(wt) ? dg * sg : sg;
            u[r] += unit_scaled(wt) ? du * su : su;
        }
    }
    for (int e = nu * 16 + lane; e < k; e += TPR) {   // float kinds: the k % 16 tail
        float xe = nw ? x[e] * inv * nw[e] : x[e];
        for (int r = 0; r < rpw && row0 + r < n; r++) {
            g[r] += load1(wt, WPASS, row0 + r, e, k) * xe;
            u[r] += load1(wt, uq, ud, um, row0 + r, e, k) * xe;
        }
    }
}

// Sums each of acc[0..nr) over the TPR lanes of the team (part: [nr * LS] local floats); every
// lane of the team gets the totals in acc. Two folds with three barriers instead of a tree's
// log2(TPR): first FOLD partials at a stride of TPR/FOLD (consecutive lanes, consecutive words),
// then the TPR/FOLD sums of a row by one lane. Each fold writes only the first word it reads,
// which no other lane reads, so it can sum in place. Every lane must call it.
#define FOLD 8
inline void rows_total(__local float *part, float *acc, int nr)
{
    const int S = TPR / FOLD;                       // sums per row after the first fold
    int lid = get_local_id(0), lane = lid % TPR;
    __local float *team = part + (lid - lane);
    for (int r = 0; r < nr; r++) team[r * LS + lane] = acc[r];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int i = lane; i < nr * S; i += TPR) {
        __local float *p = team + (i / S) * LS + i % S;
        float s = p[0];
        for (int j = 1; j < FOLD; j++) s += p[j * S];
        p[0] = s;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int r = lane; r < nr; r += TPR) {
        __local float *p = team + r * LS;
        float s = p[0];
        for (int j = 1; j < S; j++) s += p[j];
        p[0] = s;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int r = 0; r < nr; r++) acc[r] = team[r * LS];
}

// The team's first row (LS/TPR teams of rpw rows per group), this lane's place, the token.
#define GEMV_ROWS(rpw) int lid = get_local_id(0), lane = lid % TPR, \
    row0 = (get_group_id(0) * (LS / TPR) + lid / TPR) * (rpw), t = get_global_id(1)
#define ONE(n) WPASS, WPASS, WPASS, n, 0, 0
// x of token t; needs k in scope
#define GEMV_X x += (size_t)t * k

// y = W x (+ res when res is non-null: a residual add), x RMS-normed first when nw is non-null;
// rpw rows per team.
inline void gemv(const int wt, WARGS, __global const float *x, __global const float *nw, float eps,
                 __global const float *res, __global float *y, int n, int k, __local float *part, const int rpw)
{
    GEMV_ROWS(rpw);
    float acc[RPW_MAX], rs[RPW_MAX];
    if (res && lane == 0)            // requested now, used after the sums
        for (int r = 0; r < rpw; r++) rs[r] = row0 + r < n ? res[(size_t)t * n + row0 + r] : 0.0f;
    GEMV_X;
    rows_part(wt, ONE(n), x, nw, eps, part, row0, k, lane, rpw, acc);
    rows_total(part, acc, rpw);
    for (int r = 0; r < rpw; r++) {
        size_t i = (size_t)t * n + row0 + r;
        if (lane == 0 && row0 + r < n) y[i] = res ? rs[r] + acc[r] : acc[r];
    }
}

// Launch of every gemv kernel: global (ceil(rows / (LS/TPR*rpw)) * LS, T), local (LS, 1), with
// the kernel family's rows per team rpw: RPW, RPW_ADD (gemv_add), RPW_NORM (gemv_norm).
#define GEMV(NAME, WT) \
__kernel void NAME(WKARGS(w), __global const float *x, __global float *y, int n, int k) \
{ WUNPACK(w); __local float part[RPW * LS]; gemv(WT, WPASS, x, 0, 0.0f, 0, y, n, k, part, RPW); }

GEMV(gemv_q4_0_f32, W_Q4_0)
GEMV(gemv_q4_1_f32, W_Q4_1)
GEMV(gemv_q8_0_f32, W_Q8_0)
GEMV(gemv_q4_k_f32, W_Q4_K)
GEMV(gemv_q5_k_f32, W_Q5_K)
GEMV(gemv_q6_k_f32, W_Q6_K)
GEMV(gemv_f16_f32, W_F16)
GEMV(gemv_f32_f32, W_F32)

// Fused forms of gemv that a recorded decode step uses (fuse.py): each does in one launch what
// a gemv and the ops around it did in several, with the same float32 operations in the same
// order. The RMSNorm before a product is fused as rms_inv + rows_part's nw (may be null).

// y = res + W x (a residual add).
#define GEMV_ADD(NAME, WT) \
__kernel void NAME(WKARGS(w), __global const float *x, __global const float *res, __global float *y, int n, int k) \
{ WUNPACK(w); __local float part[RPW_ADD * LS]; gemv(WT, WPASS, x, 0, 0.0f, res, y, n, k, part, RPW_ADD); }

GEMV_ADD(gemv_add_q4_0_f32, W_Q4_0)
GEMV_ADD(gemv_add_q4_1_f32, W_Q4_1)
GEMV_ADD(gemv_add_q8_0_f32, W_Q8_0)
GEMV_ADD(gemv_add_q4_k_f32, W_Q4_K)
GEMV_ADD(gemv_add_q5_k_f32, W_Q5_K)
GEMV_ADD(gemv_add_q6_k_f32, W_Q6_K)
GEMV_ADD(gemv_add_f16_f32, W_F16)
GEMV_ADD(gemv_add_f32_f32, W_F32)

// y = W rms_norm(x, nw) (the output head after the final norm).
#define GEMV_NORM(NAME, WT) \
__kernel void NAME(WKARGS(w), __global const float *x, __global const float *nw, float eps, __global float *y, \
                   int n, int k) \
{ WUNPACK(w); __local float part[RPW_NORM * LS]; gemv(WT, WPASS, x, nw, eps, 0, y, n, k, part, RPW_NORM); }

GEMV_NORM(gemv_norm_q4_0_f32, W_Q4_0)
GEMV_NORM(gemv_norm_q4_1_f32, W_Q4_1)
GEMV_NORM(gemv_norm_q8_0_f32, W_Q8_0)
GEMV_NORM(gemv_norm_q4_k_f32, W_Q4_K)
GEMV_NORM(gemv_norm_q5_k_f32, W_Q5_K)
GEMV_NORM(gemv_norm_q6_k_f32, W_Q6_K)
GEMV_NORM(gemv_norm_f16_f32, W_F16)
GEMV_NORM(gemv_norm_f32_f32, W_F32)

// y = silu(Wg h) * (Wu h), h = x or rms_norm(x, nw): the gate and up products and SwiGLU.
// Wg, Wu [n, k] of one kind.
#define GEMV_SWIGLU(NAME, WT) \
__kernel void NAME(WKARGS(w), WKARGS(u), \
                   __global const float *x, __global const float *nw, float eps, __global float *y, int n, int k) \
{ \
    WUNPACK(w); \
    WUNPACK(u); \
    __local float part[2 * RPW * LS]; \
    GEMV_ROWS(RPW); \
    float gu[2 * RPW]; \
    GEMV_X; \
    rows_part2(WT, WPASS, uq, ud, um, n, x, nw, eps, part, row0, k, lane, RPW, gu, gu + RPW); \
    rows_total(part, gu, 2 * RPW); \
    for (int r = 0; r < RPW; r++) { \
        float g = gu[r]; \
        if (lane == 0 && row0 + r < n) y[(size_t)t * n + row0 + r] = g / (1.0f + exp(-g)) * gu[RPW + r]; \
    } \
}

GEMV_SWIGLU(gemv_swiglu_q4_0_f32, W_Q4_0)
GEMV_SWIGLU(gemv_swiglu_q4_1_f32, W_Q4_1)
GEMV_SWIGLU(gemv_swiglu_q8_0_f32, W_Q8_0)
GEMV_SWIGLU(gemv_swiglu_q4_k_f32, W_Q4_K)
GEMV_SWIGLU(gemv_swiglu_q5_k_f32, W_Q5_K)
GEMV_SWIGLU(gemv_swiglu_q6_k_f32, W_Q6_K)
GEMV_SWIGLU(gemv_swiglu_f16_f32, W_F16)
GEMV_SWIGLU(gemv_swiglu_f32_f32, W_F32)

// Three products of one input h = x or rms_norm(x, nw) (Q, K, V): rows [0, na) of the launch
// are A's, then B's, then C's, each written to its own output. A, B, C [n_i, k] of one kind;
// rows = na + nb + nc.
// acc[r]: row row0 + r of A|B|C times h, summed over the team (whole in lane 0); shared with
// gemv3_rope_kv (attention.cl).
#define GEMV3_ACC(WT) \
    WUNPACK(w); \
    WUNPACK(b); \
    WUNPACK(c); \
    __local float part[RPW * LS]; \
    GEMV_ROWS(RPW); \
    float acc[RPW]; \
    GEMV_X; \
    rows_part(WT, WPASS, bq, bd, bm, cq, cd, cm, na, nb, nc, x, nw, eps, part, row0, k, lane, RPW, acc); \
    rows_total(part, acc, RPW)

#define GEMV3(NAME, WT) \
__kernel void NAME(WKARGS(w), WKARGS(b), WKARGS(c), \
                   __global const float *x, __global const float *nw, float eps, \
                   __global float *ya, __global float *yb, __global float *yc, int na, int nb, int nc, int k) \
{ \
    GEMV3_ACC(WT); \
    for (int r = 0; r < RPW; r++) { \
        int row = row0 + r; \
        if (lane != 0) continue; \
        if (row < na) ya[(size_t)t * na + row] = acc[r]; \
        else if (row < na + nb) yb[(size_t)t * nb + row - na] = acc[r]; \
        else if (row < na + nb + nc) yc[(size_t)t * nc + row - na - nb] = acc[r]; \
    } \
}

GEMV3(gemv3_q4_0_f32, W_Q4_0)
GEMV3(gemv3_q4_1_f32, W_Q4_1)
GEMV3(gemv3_q8_0_f32, W_Q8_0)
GEMV3(gemv3_q4_k_f32, W_Q4_K)
GEMV3(gemv3_q5_k_f32, W_Q5_K)
GEMV3(gemv3_q6_k_f32, W_Q6_K)
GEMV3(gemv3_f16_f32, W_F16)
GEMV3(gemv3_f32_f32, W_F32)

// The same products without local memory or barriers, for CPU devices (PoCL): a work-item owns
// one row and RB tokens, dequantizes each unit once and reuses it for its RB activation rows.
// Launch: global (n, ceil(T / RB)), local chosen by the runtime.
#define RB 8

inline void matmul_rows(const int wt, WARGS, __global const float *x, __global float *y, int n, int k, int T)
{
    int row = get_global_id(0), t0 = get_global_id(1) * RB, nt = min(RB, T - t0);
    if (row >= n || nt <= 0) return;
    float acc[RB];
    for (int j = 0; j < RB; j++) acc[j] = 0.0f;
    for (int u = 0; u < k / 16; u++) {
        float8 wa, wb;
        int o = unit_w(wt, WPASS, row, u, k, &wa, &wb), o2 = o + second_half(wt);
        for (int j = 0; j < nt; j++) {
            __global const float *xr = x + (size_t)(t0 + j) * k;
            acc[j] += dot16(wa, vload8(0, xr + o), wb, vload8(0, xr + o2));
        }
    }
    for (int e = (k / 16) * 16; e < k; e++) {               // float kinds: the k % 16 tail
        float w = load1(wt, WPASS, row, e, k);
        for (int j = 0; j < nt; j++) acc[j] += w * x[(size_t)(t0 + j) * k + e];
    }
    for (int j = 0; j < nt; j++) y[(size_t)(t0 + j) * n + row] = acc[j];
}

#define MATMUL_ROWS(NAME, WT) \
__kernel void NAME(WKARGS(w), __global const float *x, __global float *y, int n, int k, int T) \
{ WUNPACK(w); matmul_rows(WT, WPASS, x, y, n, k, T); }

MATMUL_ROWS(matmul_rows_q4_0_f32, W_Q4_0)
MATMUL_ROWS(matmul_rows_q4_1_f32, W_Q4_1)
MATMUL_ROWS(matmul_rows_q8_0_f32, W_Q8_0)
MATMUL_ROWS(matmul_rows_q4_k_f32, W_Q4_K)
MATMUL_ROWS(matmul_rows_q5_k_f32, W_Q5_K)
MATMUL_ROWS(matmul_rows_q6_k_f32, W_Q6_K)
MATMUL_ROWS(matmul_rows_f16_f32, W_F16)
MATMUL_ROWS(matmul_rows_f32_f32, W_F32)
