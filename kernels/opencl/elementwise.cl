// Row-wise and element-wise ops on float32 activations. Element-wise launches: global n rounded
// up to the local size, so every kernel guards its index.

// RMSNorm over rows of d: y = x / sqrt(mean(x^2) + eps) * w. One work-group (LS) per row.
__kernel void rms_norm_f32(__global const float *x, __global const float *w, __global float *y,
                           int d, float eps)
{
    __local float part[LS];
    size_t base = (size_t)get_group_id(0) * d;
    float inv = 1.0f / sqrt(sum_squares(x + base, d, part) / d + eps);
    for (int i = get_local_id(0); i < d; i += LS)
        y[base + i] = x[base + i] * inv * w[i];
}

// RoPE on x [T, heads, d] at positions pos [T] (read on the device, so a recorded decode step
// replays at any position). theta_i = (pos * freq_scale) * inv[i], inv [n_rot/2] uploaded by the
// host as the reference computes it: the same float32 products, then cos/sin to a few ulp.
// NORM mode rotates pairs (2i, 2i+1), NEOX (i, i + n_rot/2); dims past n_rot are copied.
// Launch: global (d/2, T*heads).
// The pair (xa, xb) = elements (a, b) of a head row rotated by angle p * inv[i], p = pos *
// freq_scale (pair i of n_rot/2; pairs past n_rot are returned as they are).
inline float2 rope_rot(float xa, float xb, int i, int n_rot, float p, __global const float *inv)
{
    if (i >= n_rot / 2)
        return (float2)(xa, xb);
    float theta = p * inv[i];
    float c = cos(theta), s = sin(theta);
    return (float2)(xa * c - xb * s, xa * s + xb * c);
}

// Lane i's pair of a head row xr [d] rotated; sets *a, *b to the pair's indices: NORM mode
// (2i, 2i+1), NEOX (i, i + n_rot/2), past n_rot (n_rot + 2j, n_rot + 2j + 1).
inline float2 rope_at(__global const float *xr, int i, int n_rot, int neox, float p,
                      __global const float *inv, int *a, int *b)
{
    if (i >= n_rot / 2) {
        *a = n_rot + 2 * (i - n_rot / 2);
        *b = *a + 1;
    } else {
        *a = neox ? i : 2 * i;
        *b = neox ? i + n_rot / 2 : 2 * i + 1;
    }
    return rope_rot(xr[*a], xr[*b], i, n_rot, p, inv);
}

__kernel void rope_f32(__global const float *x, __global const int *pos, __global const float *inv,
                       __global float *y, int heads, int d, int n_rot, int neox, float freq_scale)
{
    int i = get_global_id(0), row = get_global_id(1), t = row / heads, a, b;
    if (i >= d / 2) return;
    size_t base = (size_t)row * d;
    float2 r = rope_at(x + base, i, n_rot, neox, (float)pos[t] * freq_scale, inv, &a, &b);
    y[base + a] = r.x;
    y[base + b] = r.y;
}

// rope_f32 with cos and sin times mscale (YaRN's magnitude, LongRoPE's attn_factor): the rotated
// pair times mscale; dims past n_rot are copied unscaled.
__kernel void rope_mscale_f32(__global const float *x, __global const int *pos, __global const float *inv,
                              __global float *y, int heads, int d, int n_rot, int neox, float freq_scale,
                              float mscale)
{
    int i = get_global_id(0), row = get_global_id(1), t = row / heads, a, b;
    if (i >= d / 2) return;
    size_t base = (size_t)row * d;
    float2 r = rope_at(x + base, i, n_rot, neox, (float)pos[t] * freq_scale, inv, &a, &b);
    float m = i < n_rot / 2 ? mscale : 1.0f;
    y[base + a] = r.x * m;
    y[base + b] = r.y * m;
}

// y = x + b broadcast over rows: x, y [n / d, d], b [d] (projection biases).
__kernel void add_row_f32(__global const float *x, __global const float *b, __global float *y, int d, int n)
{
    int i = get_global_id(0);
    if (i < n) y[i] = x[i] + b[i % d];
}

// y = cap * tanh(x / cap) (final logit soft-capping).
__kernel void softcap_f32(__global const float *x, __global float *y, float cap, int n)
{
    int i = get_global_id(0);
    if (i < n) y[i] = cap * tanh(x[i] / cap);
}

__kernel void add_f32(__global const float *a, __global const float *b, __global float *y, int n)
{
    int i = get_global_id(0);
    if (i < n) y[i] = a[i] + b[i];
}

__kernel void scale_f32(__global const float *x, __global float *y, float s, int n)
{
    int i = get_global_id(0);
    if (i < n) y[i] = x[i] * s;
}

__kernel void swiglu_f32(__global const float *g, __global const float *u, __global float *y, int n)
{
    int i = get_global_id(0);
    if (i < n) y[i] = g[i] / (1.0f + exp(-g[i])) * u[i];
}

// GELU with ggml's tanh approximation, times up.
__kernel void geglu_f32(__global const float *g, __global const float *u, __global float *y, int n)
{
    int i = get_global_id(0);
    if (i >= n) return;
    float x = g[i];
    y[i] = 0.5f * x * (1.0f + tanh(0.7978845608028654f * (x + 0.044715f * x * x * x))) * u[i];
}

// Bandwidth probe for the bench: a float4 copy reads and writes n4 * 16 bytes.
__kernel void copy_f32x4(__global const float4 *src, __global float4 *dst, int n4)
{
    int i = get_global_id(0);
    if (i < n4) dst[i] = src[i];
}
