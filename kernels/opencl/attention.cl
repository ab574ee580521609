// Attention over a device-resident float16 KV cache, one layer's buffers:
//   kc [n_ctx, KV, dk], vc [n_ctx, KV, dv] (half, stored with round-to-nearest-even).

// Write the new rows k [T, KV, dk], v [T, KV, dv] at position pos0. Launch: global max(nk, nv).
__kernel void kv_store_f16(__global const float *k, __global const float *v, __global half *kc,
                           __global half *vc, int pos0, int row_k, int row_v, int nk, int nv)
{
    int i = get_global_id(0);
    if (i < nk) vstore_half_rte(k[i], (size_t)pos0 * row_k + i, kc);
    if (i < nv) vstore_half_rte(v[i], (size_t)pos0 * row_v + i, vc);
}

// Max over the ATT_LS lanes (tree in local memory); every lane gets it. `p` is left as scratch.
inline float group_max(__local float *p, float v)
{
    int lid = get_local_id(0);
    p[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = ATT_LS / 2; s > 0; s >>= 1) {
        if (lid < s) p[lid] = fmax(p[lid], p[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float mx = p[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return mx;
}

// Causal GQA attention with an online softmax: one work-group of ATT_LS lanes per (head, token).
// Each chunk of ATT_LS keys: lane j scores key j, all lanes take the chunk's max and rescale
// their running sums, then each lane accumulates its own output dims over the chunk's values.
// window > 0 keeps only keys with qpos - kpos < window (sliding-window layers).
// q [T, H, dk] (already scaled or not: `scale` multiplies the scores), out [T, H, dv].
// Launch: global (H * ATT_LS, T), local (ATT_LS, 1).
__kernel void attention_f32_f16kv(__global const float *q, __global const half *kc,
                                  __global const half *vc, __global float *out, int H, int KV,
                                  int dk, int dv, int pos0, float scale, int window)
{
    __local float qs[MAX_DK];
    __local float p[ATT_LS];
    int lid = get_local_id(0), h = get_group_id(0), t = get_group_id(1);
    int g = h / (H / KV), qpos = pos0 + t, nr = (dv + ATT_LS - 1) / ATT_LS;   // V dims per lane
    int s_end = qpos + 1, s0 = window > 0 ? max(0, qpos - window + 1) : 0;
    for (int i = lid; i < dk; i += ATT_LS)
        qs[i] = q[((size_t)t * H + h) * dk + i];
    barrier(CLK_LOCAL_MEM_FENCE);

    float m = -INFINITY, l = 0.0f, acc[MAX_DV_PER];
    for (int j = 0; j < MAX_DV_PER; j++) acc[j] = 0.0f;
    for (int c0 = s0; c0 < s_end; c0 += ATT_LS) {
        int s = c0 + lid, n_in = min(ATT_LS, s_end - c0);
        float sc = -INFINITY;
        if (s < s_end) {
            __global const half *kr = kc + ((size_t)s * KV + g) * dk;
            float dotp = 0.0f;
            for (int i = 0; i < dk; i++) dotp = fma(qs[i], vload_half(i, kr), dotp);
            sc = dotp * scale;
        }
        float cm = fmax(m, group_max(p, sc));
        p[lid] = exp(sc - cm);                     // 0 for lanes past the end
        barrier(CLK_LOCAL_MEM_FENCE);
        float alpha = exp(m - cm);                 // exp(-inf) = 0 on the first chunk
        l *= alpha;
        for (int r = 0; r < nr; r++) acc[r] *= alpha;
        for (int j = 0; j < n_in; j++) {
            float pj = p[j];
            __global const half *vr = vc + ((size_t)(c0 + j) * KV + g) * dv + lid;
            l += pj;
            for (int r = 0; r < nr; r++)
                if (lid + r * ATT_LS < dv) acc[r] = fma(pj, vload_half(r * ATT_LS, vr), acc[r]);
        }
        m = cm;
        barrier(CLK_LOCAL_MEM_FENCE);              // p is rewritten by the next chunk
    }
    for (int r = 0; r < nr; r++) {
        int e = lid + r * ATT_LS;
        if (e < dv) out[((size_t)t * H + h) * dv + e] = acc[r] / l;
    }
}
