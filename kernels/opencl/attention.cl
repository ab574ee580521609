// Attention over a device-resident KV cache, one layer's buffers, of one of two kinds:
//   KV_F16   kc [n_ctx, KV, dk], vc [n_ctx, KV, dv] (half, stored with round-to-nearest-even)
//   KV_Q8_0  kc, vc the same shapes in int8, kd [n_ctx, KV, dk/32], vd [..., dv/32] half scales:
//            each 32 values x stored as q = rint(x * (1 / d)), d = max|x| / 127 (rounded to half
//            for storage), read as d * q: localllm/kv_cache.py's quantize_q8_0
#define KV_F16 0
#define KV_Q8_0 1

// Write the new rows k [T, KV, dk], v [T, KV, dv] at positions pos[0].. (pos [T] on the device).
// Launch: global max(nk, nv).
__kernel void kv_store_f16(__global const float *k, __global const float *v, __global half *kc,
                           __global half *vc, __global const int *pos, int row_k, int row_v, int nk, int nv)
{
    int i = get_global_id(0), pos0 = pos[0];
    if (i < nk) vstore_half_rte(k[i], (size_t)pos0 * row_k + i, kc);
    if (i < nv) vstore_half_rte(v[i], (size_t)pos0 * row_v + i, vc);
}

// RoPE of q and k and the KV store in one launch (a recorded decode step's fusion, fuse.py), the
// same float32 operations as rope_f32 on q and k followed by kv_store_f16: launch rows
// [0, T*hq) rotate q [T, hq, d] into qo; rows [T*hq, T*(hq+hkv)) rotate k [T, hkv, d] into the
// cache and copy v [T, hkv, dv] there, at positions pos[0]...
// Launch: global (d/2 rounded up, T*(hq+hkv)).
__kernel void rope_qk_kv_store_f32(__global const float *q, __global const float *k, __global const float *v,
                                   __global const int *pos, __global const float *inv, __global float *qo,
                                   __global half *kc, __global half *vc, int hq, int hkv, int d, int n_rot,
                                   int neox, float freq_scale, int dv)
{
    int i = get_global_id(0), row = get_global_id(1), half_d = d / 2, a, b;
    int n_qrows = get_global_size(1) / (hq + hkv) * hq, t = row < n_qrows ? row / hq : (row - n_qrows) / hkv;
    if (i >= half_d) return;
    float p = (float)pos[t] * freq_scale;
    if (row < n_qrows) {
        size_t base = (size_t)row * d;
        float2 r = rope_at(q + base, i, n_rot, neox, p, inv, &a, &b);
        qo[base + a] = r.x;
        qo[base + b] = r.y;
        return;
    }
    int kr = row - n_qrows, head = kr % hkv;
    size_t cache_row = (size_t)(pos[0] + t) * hkv;           // the position's first head
    float2 r = rope_at(k + (size_t)kr * d, i, n_rot, neox, p, inv, &a, &b);
    vstore_half_rte(r.x, (cache_row + head) * d + a, kc);
    vstore_half_rte(r.y, (cache_row + head) * d + b, kc);
    for (int e = i; e < dv; e += half_d)
        vstore_half_rte(v[(size_t)kr * dv + e], (cache_row + head) * dv + e, vc);
}

// Q, K, V products (gemv3, with its optional fused RMSNorm) whose epilogue does RoPE in NORM
// mode and the KV store: rows (2i, 2i+1) of a head are a rotated pair and RPW is even, so a
// team's first lane holds both rows of every pair. q [T, na] roped -> yq; k roped, and v, go to
// the caches at positions pos[0].. (rows of nb = hkv*d halfs in kc, nc = hkv*dv in vc). The same
// float32 operations as gemv3, then rope_f32 and kv_store_f16. Launch as gemv3.
#define GEMV3_ROPE_KV(NAME, WT) \
__kernel void NAME(WKARGS(w), WKARGS(b), WKARGS(c), \
                   __global const float *x, __global const float *nw, float eps, __global float *yq, \
                   __global const int *pos, __global const float *freq, __global half *kc, __global half *vc, \
                   int na, int nb, int nc, int k, int d, int n_rot, float freq_scale) \
{ \
    GEMV3_ACC(WT); \
    if (lane != 0) return; \
    float p = (float)pos[t] * freq_scale; \
    size_t at = (size_t)(pos[0] + t); \
    for (int r = 0; r < RPW; r += 2) { \
        int row = row0 + r; \
        if (row >= na + nb + nc) break; \
        if (row < na + nb) { \
            int kr = row < na ? row : row - na; \
            float2 y = rope_rot(acc[r], acc[r + 1], (kr % d) / 2, n_rot, p, freq); \
            if (row < na) { yq[(size_t)t * na + kr] = y.x; yq[(size_t)t * na + kr + 1] = y.y; } \
            else { vstore_half_rte(y.x, at * nb + kr, kc); vstore_half_rte(y.y, at * nb + kr + 1, kc); } \
        } else { \
            int vr = row - na - nb; \
            vstore_half_rte(acc[r], at * nc + vr, vc); \
            if (vr + 1 < nc) vstore_half_rte(acc[r + 1], at * nc + vr + 1, vc); \
        } \
    } \
}

GEMV3_ROPE_KV(gemv3_rope_kv_q4_0_f32, W_Q4_0)
GEMV3_ROPE_KV(gemv3_rope_kv_q4_1_f32, W_Q4_1)
GEMV3_ROPE_KV(gemv3_rope_kv_q8_0_f32, W_Q8_0)
GEMV3_ROPE_KV(gemv3_rope_kv_q4_k_f32, W_Q4_K)
GEMV3_ROPE_KV(gemv3_rope_kv_q5_k_f32, W_Q5_K)
GEMV3_ROPE_KV(gemv3_rope_kv_q6_k_f32, W_Q6_K)
GEMV3_ROPE_KV(gemv3_rope_kv_f16_f32, W_F16)
GEMV3_ROPE_KV(gemv3_rope_kv_f32_f32, W_F32)

// The Q8_0 rows k [T, KV, dk], v [T, KV, dv] (one work-item per 32-value block) at positions
// pos[0].. of the caches. Launch: global max(nk, nv) / 32.
__kernel void kv_store_q8_0(__global const float *k, __global const float *v, __global char *kc, __global half *kd,
                            __global char *vc, __global half *vd, __global const int *pos, int row_k, int row_v,
                            int nk, int nv)
{
    int b = get_global_id(0), pos0 = pos[0];
    for (int which = 0; which < 2; which++) {
        __global const float *x = which ? v : k;
        int n = which ? nv : nk;
        size_t at = (size_t)pos0 * (which ? row_v : row_k) + b * 32;
        if (b * 32 >= n) continue;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmax(amax, fabs(x[b * 32 + j]));
        float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < 32; j++) (which ? vc : kc)[at + j] = (char)rint(x[b * 32 + j] * inv);
        vstore_half_rte(d, at / 32, which ? vd : kd);
    }
}

// Sixteen values of a cached K row from element i (a multiple of 16) as four float4.
inline void kv_load16(const int kvt, __global const uchar *c, __global const half *cd, size_t row, int dk, int i,
                      float4 *v)
{
    if (kvt == KV_F16) {
        load_h16((__global const half *)c + row * dk + i, v);
        return;
    }
    char16 q = as_char16(*(__global const uint4 *)(c + row * dk + i));   // rows are 32-byte aligned
    float d = vload_half((row * dk + i) / 32, cd);
    v[0] = d * convert_float4(q.s0123);
    v[1] = d * convert_float4(q.s4567);
    v[2] = d * convert_float4(q.s89ab);
    v[3] = d * convert_float4(q.scdef);
}

// Cached value at flat element index e.
inline float kv_at(const int kvt, __global const uchar *c, __global const half *cd, size_t e)
{
    return kvt == KV_F16 ? vload_half(e, (__global const half *)c) : vload_half(e / 32, cd) * (float)((__global const char *)c)[e];
}

#define VB 8   // keys per batch of V loads in attention

// acc + q . k as four fmas in element order (the order every score of attention uses)
inline float dot4_fma(float4 q, float4 k, float acc)
{
    return fma(q.w, k.w, fma(q.z, k.z, fma(q.y, k.y, fma(q.x, k.x, acc))));
}

// Max over a team's ATT_LS lanes (in the team's part `p` of local memory, tl the lane in the
// team); every lane of the team gets it. Two folds, three barriers (max is exact in any order).
// Every lane of the group must call it (barriers).
inline float team_max(__local float *p, float v, int tl)
{
    const int S = ATT_LS >= 8 ? ATT_LS / 8 : 1;       // maxima after the first fold
    p[tl] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (tl < S) {
        float m = p[tl];
        for (int j = 1; j < ATT_LS / S; j++) m = fmax(m, p[tl + j * S]);
        p[tl] = m;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    float mx = p[0];
    for (int j = 1; j < S; j++) mx = fmax(mx, p[j]);
    barrier(CLK_LOCAL_MEM_FENCE);
    return mx;
}

// Causal GQA attention with an online softmax: one work-group per (head, token), ATT_NS teams of
// ATT_LS lanes (split-K inside the group: GPUs give a head several teams, so one token's
// attention still fills the device). Team j takes the chunks j, j + ATT_NS, ... of ATT_LS keys:
// lane i scores key i, the team takes the chunk's max and rescales its running sums, then each
// lane accumulates its own output dims over the chunk's values. At the end the teams' (max,
// sum, V sums) are merged. window > 0 keeps only keys with qpos - kpos < window (sliding-window
// layers); softcap > 0 caps each scaled score at softcap * tanh(s / softcap). pos [T]: the tokens' positions (consecutive). q [T, H, dk] (`scale` multiplies the
// scores), out [T, H, dv].
// Launch: global (H * ATT_NS * ATT_LS, T), local (ATT_NS * ATT_LS, 1).
// Local memory (the kernels below declare it): qs [MAX_DK]; p [ATT_NS * ATT_LS] each team's
// chunk weights; ml [2 * ATT_NS] each team's running max, then sum; vs [ATT_NS * MAX_DV_PER *
// ATT_LS] each team's V sums.
inline void attention(const int kvt, __global const float *q, __global const uchar *kc, __global const half *kd,
                      __global const uchar *vc, __global const half *vd, __global float *out, int H, int KV,
                      int dk, int dv, __global const int *pos, float scale, int window, float softcap,
                      __local float *qs, __local float *p, __local float *ml, __local float *vs)
{
    int lid = get_local_id(0), team = lid / ATT_LS, tl = lid % ATT_LS;
    int h = get_group_id(0), t = get_group_id(1), pos0 = pos[0];
    int g = h / (H / KV), qpos = pos0 + t, nr = (dv + ATT_LS - 1) / ATT_LS;   // V dims per lane
    int s_end = qpos + 1, s0 = window > 0 ? max(0, qpos - window + 1) : 0;
    __local float *pt = p + team * ATT_LS;
    for (int i = lid; i < dk; i += ATT_NS * ATT_LS)
        qs[i] = q[((size_t)t * H + h) * dk + i];
    barrier(CLK_LOCAL_MEM_FENCE);

    float m = -INFINITY, l = 0.0f, acc[MAX_DV_PER];
    for (int j = 0; j < MAX_DV_PER; j++) acc[j] = 0.0f;
    for (int c = s0; c < s_end; c += ATT_NS * ATT_LS) {   // rounds: the same count for every team
        int c0 = c + team * ATT_LS, s = c0 + tl, n_in = clamp(s_end - c0, 0, ATT_LS);
        float sc = -INFINITY;
        if (s < s_end) {
            size_t row = (size_t)s * KV + g;
            __global const half *kr = (__global const half *)kc + row * dk;   // float16 only
            float dotp = 0.0f;
            int i = 0;
            for (; i + 16 <= dk; i += 16) {        // 16 values loaded before the first fma
                float4 kv[4];
                kv_load16(kvt, kc, kd, row, dk, i, kv);
                for (int u = 0; u < 4; u++) dotp = dot4_fma(vload4(u, qs + i), kv[u], dotp);
            }
            // Q8_0 rows are whole 32-blocks: only float16 rows have a tail
            for (; i + 4 <= dk; i += 4) dotp = dot4_fma(vload4(0, qs + i), vload_half4(0, kr + i), dotp);
            for (; i < dk; i++) dotp = fma(qs[i], vload_half(i, kr), dotp);
            sc = dotp * scale;
            if (softcap > 0.0f) sc = softcap * tanh(sc / softcap);
        }
        float cm = fmax(m, team_max(pt, sc, tl));
        // a team that has seen no key yet (cm = -inf) adds nothing (exp(-inf - -inf) is NaN)
        pt[tl] = cm == -INFINITY ? 0.0f : exp(sc - cm);   // 0 for lanes past the end
        barrier(CLK_LOCAL_MEM_FENCE);
        float alpha = cm == -INFINITY ? 1.0f : exp(m - cm);   // exp(-inf) = 0 on a first chunk
        l *= alpha;
        for (int r = 0; r < nr; r++) acc[r] *= alpha;
        // VB keys' values are loaded before the first of their fmas (a chunk's keys one at a
        // time paid a load latency each); the fmas keep the key order
        int j = 0;
        for (; j + VB <= n_in; j += VB) {
            size_t vr = ((size_t)(c0 + j) * KV + g) * dv + tl;
            for (int u = 0; u < VB; u++) l += pt[j + u];
            for (int r = 0; r < nr; r++) {
                if (tl + r * ATT_LS >= dv) continue;
                float vv[VB];
                for (int u = 0; u < VB; u++) vv[u] = kv_at(kvt, vc, vd, vr + r * ATT_LS + u * KV * dv);
                for (int u = 0; u < VB; u++) acc[r] = fma(pt[j + u], vv[u], acc[r]);
            }
        }
        for (; j < n_in; j++) {
            float pj = pt[j];
            size_t vr = ((size_t)(c0 + j) * KV + g) * dv + tl;
            l += pj;
            for (int r = 0; r < nr; r++)
                if (tl + r * ATT_LS < dv) acc[r] = fma(pj, kv_at(kvt, vc, vd, vr + r * ATT_LS), acc[r]);
        }
        m = cm;
        barrier(CLK_LOCAL_MEM_FENCE);              // p is rewritten by the next chunk
    }
    // merge the teams: weights exp(m_j - M) (team 0 always saw the first key, so M is finite)
    if (tl == 0) {
        ml[team] = m;
        ml[ATT_NS + team] = l;
    }
    for (int r = 0; r < nr; r++)
        if (tl + r * ATT_LS < dv) vs[(team * MAX_DV_PER + r) * ATT_LS + tl] = acc[r];
    barrier(CLK_LOCAL_MEM_FENCE);
    if (team != 0) return;
    float M = ml[0], L = 0.0f, w[ATT_NS];
    for (int j = 1; j < ATT_NS; j++) M = fmax(M, ml[j]);
    for (int j = 0; j < ATT_NS; j++) {
        w[j] = ml[j] == -INFINITY ? 0.0f : exp(ml[j] - M);
        L += ml[ATT_NS + j] * w[j];
    }
    for (int r = 0; r < nr; r++) {
        int e = tl + r * ATT_LS;
        if (e >= dv) continue;
        float o = 0.0f;
        for (int j = 0; j < ATT_NS; j++) o += vs[(j * MAX_DV_PER + r) * ATT_LS + tl] * w[j];
        out[((size_t)t * H + h) * dv + e] = o / L;
    }
}

#define ATTENTION_LOCALS \
    __local float qs[MAX_DK], p[ATT_NS * ATT_LS], ml[2 * ATT_NS], vs[ATT_NS * MAX_DV_PER * ATT_LS]

__kernel void attention_f32_f16kv(__global const float *q, __global const half *kc,
                                  __global const half *vc, __global float *out, int H, int KV,
                                  int dk, int dv, __global const int *pos, float scale, int window,
                                  float softcap)
{
    ATTENTION_LOCALS;
    attention(KV_F16, q, (__global const uchar *)kc, 0, (__global const uchar *)vc, 0, out, H, KV, dk, dv, pos,
              scale, window, softcap, qs, p, ml, vs);
}

__kernel void attention_f32_q8_0kv(__global const float *q, __global const char *kc, __global const half *kd,
                                   __global const char *vc, __global const half *vd, __global float *out, int H,
                                   int KV, int dk, int dv, __global const int *pos, float scale, int window,
                                   float softcap)
{
    ATTENTION_LOCALS;
    attention(KV_Q8_0, q, (__global const uchar *)kc, kd, (__global const uchar *)vc, vd, out, H, KV, dk, dv, pos,
              scale, window, softcap, qs, p, ml, vs);
}
