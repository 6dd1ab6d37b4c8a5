/* kernels.cu -- the CUDA backend's kernels. Every formula mirrors engine/cpu/cpu.c (the
 * reference); differences are the KV cache in f16 and f32 sums in another order.
 *
 * Weights are read through one accessor, load_block(), that yields a block of 32 weights as
 * floats whatever the dtype and layout: SPLIT q4 is one 16-byte load of quants plus two f16
 * (scale, minimum) from their planes; SPLIT q8 two 16-byte loads. GEMV gives each warp one
 * row, each lane whole blocks (lanes stride by 32 blocks, two blocks unrolled so several
 * 16-byte loads are in flight per lane), and keeps up to 4 tokens' sums in registers.
 */
#include "kernels.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define LAUNCH_CHECK(err)                                                                          \
    do {                                                                                           \
        cudaError_t e_ = cudaGetLastError();                                                       \
        if (e_ != cudaSuccess)                                                                     \
            return eng_fail(err, ENG_EBACKEND, "%s: kernel launch: %s", __func__, cudaGetErrorString(e_)); \
        return 0;                                                                                  \
    } while (0)

static inline cudaStream_t st(void *s) { return (cudaStream_t)s; }

/* ---- weight access ------------------------------------------------------------------------ */

/* Block b (of nb per row) of row r, as 32 floats. */
__device__ __forceinline__ void load_block(const ecu_mat &m, uint64_t r, uint64_t b, float w[32])
{
    uint64_t nb = m.cols / 32, i = r * nb + b, total = m.rows * nb;
    if (m.dtype == SNAP_Q4) {
        uint32_t q[4];
        float d, mn;
        if (m.layout == SNAP_LAYOUT_SPLIT) {
            uint4 v = __ldg((const uint4 *)(m.d_base + i * 16));
            q[0] = v.x, q[1] = v.y, q[2] = v.z, q[3] = v.w;
            const __half *sc = (const __half *)(m.d_base + total * 16);
            d = __half2float(sc[i]);
            mn = __half2float(sc[total + i]);
        } else { /* BLOCKS: d, m, 16 bytes; 4-byte aligned */
            const uint8_t *p = m.d_base + i * SNAP_Q4_BLOCK_BYTES;
            d = __half2float(*(const __half *)p);
            mn = __half2float(*(const __half *)(p + 2));
            for (int k = 0; k < 4; k++)
                q[k] = *(const uint32_t *)(p + 4 + 4 * k);
        }
#pragma unroll
        for (int j = 0; j < 16; j++) {
            uint32_t byte = (q[j / 4] >> (8 * (j % 4))) & 0xFF;
            w[j] = d * (float)(byte & 0xF) + mn;
            w[j + 16] = d * (float)(byte >> 4) + mn;
        }
    } else if (m.dtype == SNAP_Q8) {
        float d;
        int8_t q[32];
        if (m.layout == SNAP_LAYOUT_SPLIT) {
            const uint4 *p = (const uint4 *)(m.d_base + i * 32);
            uint4 v0 = __ldg(p), v1 = __ldg(p + 1);
            memcpy(q, &v0, 16);
            memcpy(q + 16, &v1, 16);
            d = __half2float(((const __half *)(m.d_base + total * 32))[i]);
        } else { /* BLOCKS: d, 32 x i8; 2-byte aligned */
            const uint8_t *p = m.d_base + i * SNAP_Q8_BLOCK_BYTES;
            d = __half2float(*(const __half *)p);
            for (int k = 0; k < 16; k++) {
                uint16_t h = *(const uint16_t *)(p + 2 + 2 * k);
                q[2 * k] = (int8_t)(h & 0xFF);
                q[2 * k + 1] = (int8_t)(h >> 8);
            }
        }
#pragma unroll
        for (int j = 0; j < 32; j++)
            w[j] = d * (float)q[j];
    } else if (m.dtype == SNAP_F16) {
        const uint4 *p = (const uint4 *)(m.d_base + (r * m.cols + b * 32) * 2);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint4 v = __ldg(p + k);
            const __half *h = (const __half *)&v;
            for (int j = 0; j < 8; j++)
                w[8 * k + j] = __half2float(h[j]);
        }
    } else { /* F32 */
        const float4 *p = (const float4 *)(m.d_base + (r * m.cols + b * 32) * 4);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float4 v = __ldg(p + k);
            w[4 * k] = v.x, w[4 * k + 1] = v.y, w[4 * k + 2] = v.z, w[4 * k + 3] = v.w;
        }
    }
}

/* ---- GEMV (decode) -------------------------------------------------------------------------- */

#define GEMV_WARPS 4

template <int NT>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_kernel(ecu_mat m, const float *__restrict__ x, uint64_t ldx, float *__restrict__ y, uint64_t ldy,
            const float *__restrict__ bias)
{
    uint64_t r = (uint64_t)blockIdx.x * GEMV_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (r >= m.rows)
        return;
    uint64_t nb = m.cols / 32;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
#pragma unroll 2
    for (uint64_t b = lane; b < nb; b += 32) {
        float w[32];
        load_block(m, r, b, w);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float4 *xv = (const float4 *)(x + t * ldx + b * 32);
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float4 v = xv[k];
                s += w[4 * k] * v.x + w[4 * k + 1] * v.y + w[4 * k + 2] * v.z + w[4 * k + 3] * v.w;
            }
            acc[t] += s;
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = acc[t];
        for (int o = 16; o > 0; o /= 2)
            s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0)
            y[t * ldy + r] = s + (bias ? bias[r] : 0.0f);
    }
}

extern "C" int ecu_gemv(const ecu_mat *m, const float *d_x, uint64_t ldx, uint32_t n_tokens, float *d_y, uint64_t ldy,
                        const float *d_bias, void *stream, eng_err *err)
{
    unsigned grid = (unsigned)((m->rows + GEMV_WARPS - 1) / GEMV_WARPS);
    dim3 blk(GEMV_WARPS * 32);
    switch (n_tokens) {
    case 1: gemv_kernel<1><<<grid, blk, 0, st(stream)>>>(*m, d_x, ldx, d_y, ldy, d_bias); break;
    case 2: gemv_kernel<2><<<grid, blk, 0, st(stream)>>>(*m, d_x, ldx, d_y, ldy, d_bias); break;
    case 3: gemv_kernel<3><<<grid, blk, 0, st(stream)>>>(*m, d_x, ldx, d_y, ldy, d_bias); break;
    case 4: gemv_kernel<4><<<grid, blk, 0, st(stream)>>>(*m, d_x, ldx, d_y, ldy, d_bias); break;
    default: return eng_fail(err, ENG_EINVAL, "ecu_gemv: %u tokens (at most %d)", n_tokens, ECU_GEMV_MAX_TOKENS);
    }
    LAUNCH_CHECK(err);
}

/* ---- dequantize / convert (prefill) ------------------------------------------------------------ */

__global__ void dequant_kernel(ecu_mat m, uint64_t r0, uint64_t n_rows, __half *out)
{
    uint64_t nb = m.cols / 32;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_rows * nb;
         i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t r = i / nb, b = i % nb;
        float w[32];
        load_block(m, r0 + r, b, w);
        __half2 *o = (__half2 *)(out + r * m.cols + b * 32);
#pragma unroll
        for (int j = 0; j < 16; j++)
            o[j] = __floats2half2_rn(w[2 * j], w[2 * j + 1]);
    }
}

static unsigned grid_for(uint64_t n, unsigned block)
{
    uint64_t g = (n + block - 1) / block;
    return g > 65535u * 8 ? 65535u * 8 : (unsigned)(g ? g : 1);
}

extern "C" int ecu_dequant_f16(const ecu_mat *m, uint64_t r0, uint64_t n_rows, void *d_out, void *stream, eng_err *err)
{
    dequant_kernel<<<grid_for(n_rows * (m->cols / 32), 256), 256, 0, st(stream)>>>(*m, r0, n_rows, (__half *)d_out);
    LAUNCH_CHECK(err);
}

__global__ void to_f16_kernel(const float *x, __half *o, uint64_t n)
{
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        o[i] = __float2half_rn(x[i]);
}

extern "C" int ecu_to_f16(const float *d_x, void *d_out, uint64_t n, void *stream, eng_err *err)
{
    to_f16_kernel<<<grid_for(n, 256), 256, 0, st(stream)>>>(d_x, (__half *)d_out, n);
    LAUNCH_CHECK(err);
}

__global__ void add_bias_kernel(float *y, const float *bias, uint64_t rows, uint64_t n)
{
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        y[i] += bias[i % rows];
}

extern "C" int ecu_add_bias(float *d_y, const float *d_bias, uint64_t rows, uint32_t n_tokens, void *stream, eng_err *err)
{
    uint64_t n = rows * n_tokens;
    add_bias_kernel<<<grid_for(n, 256), 256, 0, st(stream)>>>(d_y, d_bias, rows, n);
    LAUNCH_CHECK(err);
}

__global__ void embed_kernel(ecu_mat m, const int32_t *tokens, uint32_t n_tokens, float *x)
{
    uint64_t nb = m.cols / 32;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_tokens * nb;
         i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t t = i / nb, b = i % nb;
        float w[32];
        load_block(m, (uint64_t)tokens[t], b, w);
        float *o = x + t * m.cols + b * 32;
#pragma unroll
        for (int j = 0; j < 32; j++)
            o[j] = w[j];
    }
}

extern "C" int ecu_embed(const ecu_mat *m, const int32_t *d_tokens, uint32_t n_tokens, float *d_x, void *stream,
                         eng_err *err)
{
    embed_kernel<<<grid_for((uint64_t)n_tokens * (m->cols / 32), 128), 128, 0, st(stream)>>>(*m, d_tokens, n_tokens, d_x);
    LAUNCH_CHECK(err);
}

/* ---- norms and elementwise --------------------------------------------------------------------- */

/* Sum over the block (blockDim a multiple of 32, at most 1024); every thread gets it. */
__device__ float block_sum(float v, float *sh)
{
    for (int o = 16; o > 0; o /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = threadIdx.x / 32, nw = blockDim.x / 32;
    __syncthreads();
    if (threadIdx.x % 32 == 0)
        sh[w] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < nw; i++)
        s += sh[i];
    return s;
}

__device__ float block_max(float v, float *sh)
{
    for (int o = 16; o > 0; o /= 2)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int w = threadIdx.x / 32, nw = blockDim.x / 32;
    __syncthreads();
    if (threadIdx.x % 32 == 0)
        sh[w] = v;
    __syncthreads();
    float s = -INFINITY;
    for (int i = 0; i < nw; i++)
        s = fmaxf(s, sh[i]);
    return s;
}

__global__ void rmsnorm_kernel(float *x, const float *add, const uint32_t *rows, const float *w, float *out, uint32_t n,
                               float eps)
{
    __shared__ float sh[32];
    uint64_t row = rows ? rows[blockIdx.x] : blockIdx.x;
    float *xr = x + row * n;
    float ss = 0.0f;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i];
        if (add) {
            v += add[row * n + i];
            xr[i] = v;
        }
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    float scale = 1.0f / sqrtf(ss / (float)n + eps);
    float *o = out + (uint64_t)blockIdx.x * n;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
        o[i] = xr[i] * scale * w[i];
}

extern "C" int ecu_rmsnorm(float *d_x, const float *d_add, const uint32_t *d_rows, const float *d_w, float *d_out,
                           uint32_t n_rows, uint32_t n, float eps, void *stream, eng_err *err)
{
    rmsnorm_kernel<<<n_rows, 256, 0, st(stream)>>>(d_x, d_add, d_rows, d_w, d_out, n, eps);
    LAUNCH_CHECK(err);
}

__global__ void add_kernel(float *x, const float *y, uint64_t n)
{
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

extern "C" int ecu_add(float *d_x, const float *d_y, uint64_t n, void *stream, eng_err *err)
{
    add_kernel<<<grid_for(n, 256), 256, 0, st(stream)>>>(d_x, d_y, n);
    LAUNCH_CHECK(err);
}

__global__ void swiglu_kernel(float *g, const float *u, uint64_t n)
{
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

extern "C" int ecu_swiglu(float *d_g, const float *d_u, uint64_t n, void *stream, eng_err *err)
{
    swiglu_kernel<<<grid_for(n, 256), 256, 0, st(stream)>>>(d_g, d_u, n);
    LAUNCH_CHECK(err);
}

/* ---- RoPE, KV store, paged attention ------------------------------------------------------------ */

__device__ __forceinline__ uint64_t kv_index(const ecu_attn_shape &s, int32_t block, uint32_t kvh, uint32_t slot)
{
    return (((uint64_t)block * s.n_head_kv + kvh) * ENG_BLOCK_TOKENS + slot) * s.head_dim;
}

__device__ __forceinline__ int32_t kv_block(const ecu_kv_batch &kb, uint32_t t, int32_t p)
{
    return kb.d_blocks[kb.d_block_off[kb.d_seq[t]] + (uint32_t)p / ENG_BLOCK_TOKENS];
}

__global__ void rope_store_kernel(ecu_attn_shape s, ecu_kv_batch kb, const float *inv_freq, float *q, float *k,
                                  const float *v, __half *kc, __half *vc)
{
    uint32_t t = blockIdx.x, D = s.head_dim, half = D / 2, H = s.n_head, K = s.n_head_kv;
    int32_t p = kb.d_pos[t];
    float pos = (float)p * s.pos_scale;
    int32_t blk = kv_block(kb, t, p);
    uint32_t slot = (uint32_t)p % ENG_BLOCK_TOKENS;
    for (uint32_t w = threadIdx.x; w < (H + K) * half; w += blockDim.x) {
        uint32_t h = w / half, i = w % half;
        float a = pos * inv_freq[i], c = cosf(a), sn = sinf(a);
        uint32_t ia = s.rope_style == SNAP_ROPE_NEOX ? i : 2 * i, ib = s.rope_style == SNAP_ROPE_NEOX ? i + half : 2 * i + 1;
        float *vec = h < H ? q + ((uint64_t)t * H + h) * D : k + ((uint64_t)t * K + (h - H)) * D;
        float x0 = vec[ia], x1 = vec[ib];
        float y0 = x0 * c - x1 * sn, y1 = x0 * sn + x1 * c;
        vec[ia] = y0;
        vec[ib] = y1;
        if (h >= H) {
            uint64_t o = kv_index(s, blk, h - H, slot);
            kc[o + ia] = __float2half_rn(y0);
            kc[o + ib] = __float2half_rn(y1);
        }
    }
    for (uint32_t w = threadIdx.x; w < K * D; w += blockDim.x) {
        uint32_t h = w / D, d = w % D;
        vc[kv_index(s, blk, h, slot) + d] = __float2half_rn(v[((uint64_t)t * K + h) * D + d]);
    }
}

extern "C" int ecu_rope_store(const ecu_attn_shape *s, const ecu_kv_batch *kb, uint32_t n_tokens, const float *d_inv_freq,
                              float *d_q, float *d_k, const float *d_v, void *d_kc, void *d_vc, void *stream, eng_err *err)
{
    rope_store_kernel<<<n_tokens, 128, 0, st(stream)>>>(*s, *kb, d_inv_freq, d_q, d_k, d_v, (__half *)d_kc, (__half *)d_vc);
    LAUNCH_CHECK(err);
}

#define ATTN_THREADS 128
#define ATTN_MAX_DIMS_PER_THREAD 4 /* head_dim <= 512 */

/* One block per (head, token): keys in tiles of ATTN_THREADS, one key per thread; an online
 * softmax (running max m, running sum l) rescales the output accumulators per tile, so no
 * buffer proportional to the context is needed. Each thread owns output dims tid, tid+128.. */
__global__ void __launch_bounds__(ATTN_THREADS)
attention_kernel(ecu_attn_shape s, ecu_kv_batch kb, const float *q, const __half *kc, const __half *vc, float *out)
{
    extern __shared__ float sm[]; /* q [D], p [ATTN_THREADS], reduce [32] */
    uint32_t h = blockIdx.x, t = blockIdx.y, D = s.head_dim, H = s.n_head;
    uint32_t kvh = h / (s.n_head / s.n_head_kv);
    float *qs = sm, *pb = sm + D, *red = pb + ATTN_THREADS;
    const float *qv = q + ((uint64_t)t * H + h) * D;
    for (uint32_t d = threadIdx.x; d < D; d += blockDim.x)
        qs[d] = qv[d];
    __syncthreads();
    int32_t P = kb.d_pos[t];
    const int32_t *blocks = kb.d_blocks + kb.d_block_off[kb.d_seq[t]];
    float scale = 1.0f / sqrtf((float)D);
    float m = -INFINITY, l = 0.0f, acc[ATTN_MAX_DIMS_PER_THREAD] = {0, 0, 0, 0};
    for (int32_t j0 = 0; j0 <= P; j0 += ATTN_THREADS) {
        int32_t j = j0 + (int32_t)threadIdx.x;
        float sc = -INFINITY;
        if (j <= P) {
            const __half *kp = kc + kv_index(s, blocks[j / ENG_BLOCK_TOKENS], kvh, (uint32_t)j % ENG_BLOCK_TOKENS);
            float d0 = 0.0f;
            for (uint32_t d = 0; d < D; d += 2) {
                float2 kk = __half22float2(*(const __half2 *)(kp + d));
                d0 += qs[d] * kk.x + qs[d + 1] * kk.y;
            }
            sc = d0 * scale;
        }
        float mt = block_max(sc, red);
        float mnew = fmaxf(m, mt), alpha = expf(m - mnew);
        float pj = j <= P ? expf(sc - mnew) : 0.0f;
        float sum = block_sum(pj, red);
        pb[threadIdx.x] = pj;
        __syncthreads();
        l = l * alpha + sum;
        int32_t n = P - j0 + 1 < ATTN_THREADS ? P - j0 + 1 : ATTN_THREADS;
        for (int k = 0; k < ATTN_MAX_DIMS_PER_THREAD; k++) {
            uint32_t d = threadIdx.x + k * ATTN_THREADS;
            if (d >= D)
                break;
            float a = acc[k] * alpha;
            for (int32_t jj = 0; jj < n; jj++) {
                int32_t jx = j0 + jj;
                a += pb[jj] * __half2float(vc[kv_index(s, blocks[jx / ENG_BLOCK_TOKENS], kvh, (uint32_t)jx % ENG_BLOCK_TOKENS) + d]);
            }
            acc[k] = a;
        }
        m = mnew;
        __syncthreads();
    }
    float *o = out + ((uint64_t)t * H + h) * D;
    float inv = 1.0f / l;
    for (int k = 0; k < ATTN_MAX_DIMS_PER_THREAD; k++) {
        uint32_t d = threadIdx.x + k * ATTN_THREADS;
        if (d < D)
            o[d] = acc[k] * inv;
    }
}

extern "C" int ecu_attention(const ecu_attn_shape *s, const ecu_kv_batch *kb, uint32_t n_tokens, const float *d_q,
                             const void *d_kc, const void *d_vc, float *d_out, void *stream, eng_err *err)
{
    if (s->head_dim > ATTN_THREADS * ATTN_MAX_DIMS_PER_THREAD)
        return eng_fail(err, ENG_EUNSUPPORTED, "attention: head_dim %u > %d", s->head_dim,
                        ATTN_THREADS * ATTN_MAX_DIMS_PER_THREAD);
    dim3 grid(s->n_head, n_tokens);
    size_t shm = (s->head_dim + ATTN_THREADS + 32) * sizeof(float);
    attention_kernel<<<grid, ATTN_THREADS, shm, st(stream)>>>(*s, *kb, d_q, (const __half *)d_kc, (const __half *)d_vc,
                                                              d_out);
    LAUNCH_CHECK(err);
}

/* ---- helpers ------------------------------------------------------------------------------------ */

extern "C" int ecu_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver" error */
        return 0;
    }
    return n;
}

extern "C" int eng_cuda_device_count(void) { return ecu_device_count(); }

extern "C" void *ecu_malloc(uint64_t n)
{
    void *p = NULL;
    return cudaMalloc(&p, n) == cudaSuccess ? p : NULL;
}

extern "C" void ecu_free(void *d) { cudaFree(d); }
extern "C" int ecu_h2d(void *d, const void *h, uint64_t n) { return cudaMemcpy(d, h, n, cudaMemcpyHostToDevice) == cudaSuccess ? 0 : -1; }
extern "C" int ecu_d2h(void *h, const void *d, uint64_t n) { return cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost) == cudaSuccess ? 0 : -1; }
extern "C" int ecu_sync(void) { return cudaDeviceSynchronize() == cudaSuccess ? 0 : -1; }

static double time_copies(void *dst, const void *src, uint64_t n, cudaMemcpyKind kind, int reps)
{
    cudaEvent_t a, b;
    if (cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess)
        return 0;
    cudaMemcpy(dst, src, n, kind); /* warm */
    cudaEventRecord(a);
    for (int i = 0; i < reps; i++)
        cudaMemcpyAsync(dst, src, n, kind);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms > 0 ? (double)n * reps / (ms / 1e3) : 0;
}

extern "C" double ecu_h2d_bandwidth(uint64_t n)
{
    void *h = NULL, *d = NULL;
    double bw = 0;
    if (cudaHostAlloc(&h, n, cudaHostAllocDefault) == cudaSuccess && cudaMalloc(&d, n) == cudaSuccess) {
        memset(h, 1, n);
        bw = time_copies(d, h, n, cudaMemcpyHostToDevice, 5);
    }
    cudaFree(d);
    cudaFreeHost(h);
    return bw;
}

extern "C" double ecu_d2d_bandwidth(uint64_t n)
{
    void *a = NULL, *b = NULL;
    double bw = 0;
    if (cudaMalloc(&a, n) == cudaSuccess && cudaMalloc(&b, n) == cudaSuccess) {
        cudaMemset(a, 1, n);
        bw = 2 * time_copies(b, a, n, cudaMemcpyDeviceToDevice, 10); /* read + write */
    }
    cudaFree(a);
    cudaFree(b);
    return bw;
}

extern "C" const char *ecu_device_name(void)
{
    static char name[256];
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess)
        return "none";
    snprintf(name, sizeof name, "%s", p.name);
    return name;
}
