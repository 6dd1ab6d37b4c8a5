/* kernels.cu -- the CUDA backend's kernels. Every formula mirrors engine/cpu/cpu.c (the
 * reference); differences are the KV cache in f16, f32 sums in another order, f16 activations
 * in the prefill GEMMs and int8 activations in the decode GEMV for SPLIT q4/q8 weights (see
 * "GEMV for SPLIT q4/q8"; tests/test_gpu.c states what each costs).
 *
 * Two GEMVs: gemv2_kernel for SPLIT q4/q8 (what `thaw pack --target cuda` writes; the fast
 * path) and gemv_kernel for everything else (f16, f32, BLOCKS layout), which reads weights
 * through load_block(): a block of 32 weights as floats whatever the dtype and layout, one
 * warp per row, f32 activations.
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

/* ---- programmatic dependent launch -------------------------------------------------------
 * On sm_90 and later the kernels of a forward (GEMVs, RoPE, attention, RMSNorm) launch with
 * programmatic stream serialization: every kernel first lets the next one in the stream be
 * launched (pdl_next), and that one runs up to its pdl_wait() while this one still runs. Before
 * pdl_wait() a kernel reads only what no kernel writes (weights, its arguments) and writes
 * nothing: the GEMVs issue their first weight loads there, so launch latency and a GEMV's ramp
 * overlap the kernel before it. pdl_wait() returns once the kernels before it in the stream
 * have finished and their writes are visible (a no-op in a plain launch). THAW_CUDA_PDL=0
 * launches plainly, for comparison. */
__device__ __forceinline__ void pdl_next(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* The device facts the launches use, read by ecu_prepare: whether programmatic dependent
 * launch is on (sm_90+, unless THAW_CUDA_PDL=0), multiprocessors, shared memory per
 * multiprocessor, and the dynamic shared memory a GEMV CTA may have -- the opt-in limit (H100:
 * 227 KB, A100: 163 KB, A10/Ada: 99 KB, T4: 64 KB) less CTA_SMEM_EXTRA for the kernel's own
 * static shared memory (the norm's partial sums): the two together must fit, or raising the
 * limit fails. */
#define CTA_SMEM_EXTRA 1024 /* static shared memory a GEMV CTA may have besides its dynamic */
#define CTA_SMEM_SYSTEM 1024 /* shared memory the system reserves per CTA */
static struct {
    bool pdl;
    int sms;
    uint32_t smem_sm, smem_max;
} dev;

/* k<<<grid, block, smem, s>>>(args..), with programmatic serialization where dev.pdl */
template <typename... P, typename... A>
static cudaError_t launch_pdl(void (*k)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, A... args)
{
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cfg.attrs = at;
    cfg.numAttrs = dev.pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, k, args...);
}

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

static bool g2_fits(const ecu_mat *m, uint32_t T);
static int g2_single(const ecu_mat *m, const float *d_x, uint64_t ldx, uint32_t n_tokens, float *d_y, uint64_t ldy,
                     const float *d_bias, void *stream, eng_err *err);

extern "C" int ecu_gemv(const ecu_mat *m, const float *d_x, uint64_t ldx, uint32_t n_tokens, float *d_y, uint64_t ldy,
                        const float *d_bias, void *stream, eng_err *err)
{
    if (g2_fits(m, n_tokens))
        return g2_single(m, d_x, ldx, n_tokens, d_y, ldy, d_bias, stream, err);
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

/* ---- GEMV for SPLIT q4/q8 (the layout `thaw pack --target cuda` writes) ---------------------
 *
 * Decode is bound by reading the weights once, so the arithmetic per weight must stay small:
 * with f32 activations a q4 weight costs ~5 instructions (unpack, convert, multiply-add) and
 * an H100 tops out near half its memory bandwidth. So the activations are quantized to
 * integers per block of 32 and each block is integer dot products (dp4a, 4 products each).
 * One int8 level (scale dx = max|x| / 127, as llama.cpp's CUDA backend does) cost too much:
 * SmolLM2's decode logits were 0.15 off the CPU's (normalised) and greedy answers changed.
 * So x is two int8 levels: qx = round(x / dx), then the rest, lx = round((x - qx dx) / ex)
 * with ex = dx / 254, about 15 bits in all (the divisions are multiplies by 127 / max|x| and
 * 254 times that):
 *   sum (d q + m) x  ~=  d ex sum(q (254 qx + lx)) + m sum(qx dx + lx ex)   (q8: m = 0)
 * i.e. 16 dp4a per block and row. Each CTA quantizes x itself into shared memory (x: f32
 * [T][cols] in global memory; shared: per token four planes of 16 bytes per block -- qx's
 * low and high halves, then lx's -- so 32 lanes reading 16 bytes each hit distinct banks,
 * then the scales ex and the sums).
 *
 * Each warp streams R = 2 weight rows: lane l owns blocks l, l + 32, ..; a block is one
 * 16-byte load of quants per row (two for q8) plus its f16 scale (and minimum), DEPTH blocks
 * ahead. CTAs are persistent (two per multiprocessor where their shared memory fits, else
 * one), taking rounds of G2_WARPS row groups.
 * Up to three matrices with the same columns run in one launch, rows stacked (Q, K, V); or a
 * gate and an up matrix run paired, each warp taking the same row of both and writing
 * silu(gate) * up (PAIR).
 */
#define G2_WARPS 8

typedef struct g2_args {
    ecu_mat m[3];
    float *y[3];
    const float *bias[3];
    uint64_t ldy[3];
    uint64_t row0[4]; /* stacked row starts; row0[n] = total */
    uint32_t n;
    const float *x;
    uint64_t ldx, cols;
    uint64_t groups;  /* row groups: R rows each (PAIR: R / 2 of each matrix) */
    const float *norm_w; /* set: x is RMS-normalised (times norm_w) on its way in */
    float eps;
    int accum;        /* y += W x (the residual add) instead of y = W x + bias */
} g2_args;

/* shared bytes for T tokens of nb blocks: four 16-byte planes and two floats per block */
__host__ __device__ static inline uint64_t g2_smem_bytes(uint32_t T, uint64_t nb) { return (uint64_t)T * nb * 72; }

/* token t's block scales ex in shared memory (NT tokens of nb blocks); its sums sx follow NT * nb
 * floats later */
__device__ __forceinline__ float *g2_scales(const uint8_t *sm, int NT, uint64_t nb, uint32_t t)
{
    return (float *)(sm + (uint64_t)NT * nb * 64) + (uint64_t)t * nb;
}

/* Block b of one row, loaded ahead of use: its quants, scale and (q4) minimum. */
template <int QB>
struct g2_blk {
    uint4 q[QB / 16];
    __half d, m;
};

template <int QB>
__device__ __forceinline__ void g2_load(const uint8_t *q, const __half *sp, const __half *mp, uint64_t b, g2_blk<QB> &v)
{
#pragma unroll
    for (int k = 0; k < QB / 16; k++)
        v.q[k] = __ldg((const uint4 *)(q + b * QB) + k);
    v.d = __ldg(sp + b);
    if (QB == 16)
        v.m = __ldg(mp + b);
}

/* sum over one block of q * qx (int): q4 nibbles 0-15 pair with x bytes 0-15 (low nibbles)
 * and 16-31 (high nibbles); q8 bytes pair with x bytes in order. */
template <int QB>
__device__ __forceinline__ int g2_dot(const g2_blk<QB> &v, const uint4 &x0, const uint4 &x1)
{
    const int xa[4] = {(int)x0.x, (int)x0.y, (int)x0.z, (int)x0.w}, xb[4] = {(int)x1.x, (int)x1.y, (int)x1.z, (int)x1.w};
    int s = 0;
    if (QB == 16) {
        const uint32_t w[4] = {v.q[0].x, v.q[0].y, v.q[0].z, v.q[0].w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            s = __dp4a((int)(w[k] & 0x0F0F0F0Fu), xa[k], s);
            s = __dp4a((int)((w[k] >> 4) & 0x0F0F0F0Fu), xb[k], s);
        }
    } else {
        const uint32_t w[8] = {v.q[0].x, v.q[0].y, v.q[0].z, v.q[0].w, v.q[1].x, v.q[1].y, v.q[1].z, v.q[1].w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            s = __dp4a((int)w[k], xa[k], s);
            s = __dp4a((int)w[k + 4], xb[k], s);
        }
    }
    return s;
}

/* x [T][cols] f32 -> shared int8 blocks. Eight lanes per block, four values each (one float4
 * load); a warp does 4 blocks per step and G2_QU steps with all their loads issued first, so
 * a CTA has 4 * G2_WARPS * G2_QU blocks' loads in flight at once. */
#define G2_QU 4

template <int NT>
__device__ __forceinline__ void g2_quantize(const float *x, uint64_t ldx, uint64_t nb, uint8_t *sm, const float *norm_w,
                                            float eps, float *ss /* [NT][G2_WARPS] */)
{
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, sub = lane % 8;
    for (int t = 0; t < NT; t++) {
        float sq = 0.0f; /* this thread's share of sum x^2 (norm_w set) */
        uint8_t *p0 = sm + (uint64_t)t * nb * 64;
        float *ex = g2_scales(sm, NT, nb, t), *sx = ex + (uint64_t)NT * nb;
        for (uint64_t base = 0; base < nb; base += 4 * G2_WARPS * G2_QU) {
            float4 v[G2_QU];
            uint64_t bl[G2_QU];
#pragma unroll
            for (int u = 0; u < G2_QU; u++) {
                bl[u] = base + (uint64_t)(u * G2_WARPS + warp) * 4 + lane / 8;
                v[u] = bl[u] < nb ? *(const float4 *)(x + t * ldx + bl[u] * 32 + sub * 4) : make_float4(0, 0, 0, 0);
            }
            if (norm_w) { /* quantize x * w; the 1 / rms factor goes into the block scales below */
#pragma unroll
                for (int u = 0; u < G2_QU; u++) {
                    sq += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
                    if (bl[u] < nb) {
                        const float4 w = *(const float4 *)(norm_w + bl[u] * 32 + sub * 4);
                        v[u].x *= w.x, v[u].y *= w.y, v[u].z *= w.z, v[u].w *= w.w;
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < G2_QU; u++) {
                float amax = fmaxf(fmaxf(fabsf(v[u].x), fabsf(v[u].y)), fmaxf(fabsf(v[u].z), fabsf(v[u].w)));
#pragma unroll
                for (int o = 4; o > 0; o /= 2) /* the 8 lanes of this block */
                    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
                /* each CTA quantizes all of x, so per value this is a few multiplies, no divides */
                const float d = amax / 127.0f, e = d / 254.0f, id = 127.0f / amax, ie = 254.0f * id;
                const float vv[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
                uint32_t hi = 0, lo = 0;
                int sh = 0, sl = 0;
                if (amax > 1e-36f) { /* below, 127 / max|x| overflows: the block is zeros */
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int q = __float2int_rn(vv[i] * id);
                        const int l = max(-127, min(127, __float2int_rn(__fmaf_rn(-(float)q, d, vv[i]) * ie)));
                        hi |= (uint32_t)(q & 0xFF) << (8 * i), lo |= (uint32_t)(l & 0xFF) << (8 * i);
                        sh += q, sl += l;
                    }
                }
#pragma unroll
                for (int o = 4; o > 0; o /= 2) {
                    sh += __shfl_xor_sync(0xffffffffu, sh, o);
                    sl += __shfl_xor_sync(0xffffffffu, sl, o);
                }
                if (bl[u] < nb) {
                    const int f = sub * 4; /* this lane's first value in the block: plane f / 16 */
                    uint8_t *ph = p0 + (f < 16 ? 0 : nb * 16) + bl[u] * 16 + f % 16;
                    *(uint32_t *)ph = hi;
                    *(uint32_t *)(ph + nb * 32) = lo;
                    if (sub == 0)
                        ex[bl[u]] = e, sx[bl[u]] = d * (float)sh + e * (float)sl;
                }
            }
        }
        if (norm_w) {
#pragma unroll
            for (int o = 16; o > 0; o /= 2)
                sq += __shfl_xor_sync(0xffffffffu, sq, o);
            if (lane == 0)
                ss[t * G2_WARPS + warp] = sq; /* summed in warp order below: deterministic */
        }
    }
    if (norm_w) { /* every block scale of token t times 1 / rms(x_t) */
        __syncthreads();
        for (int t = 0; t < NT; t++) {
            float sum = 0.0f;
            for (int w = 0; w < G2_WARPS; w++)
                sum += ss[t * G2_WARPS + w];
            const float r = 1.0f / sqrtf(sum / (float)(nb * 32) + eps);
            float *ex = g2_scales(sm, NT, nb, t), *sx = ex + (uint64_t)NT * nb;
            for (uint64_t b = threadIdx.x; b < nb; b += blockDim.x)
                ex[b] *= r, sx[b] *= r;
        }
    }
}

/* The R rows of row group grp: which matrix, which local row, its planes. */
template <int R, bool PAIR, int QB>
struct g2_rows {
    const uint8_t *qp[R];
    const __half *sp[R], *mp[R];
    bool ok[R];
    int mk[R];
    uint64_t lr[R];

    __device__ __forceinline__ void at(const g2_args &a, uint64_t grp, uint64_t nb)
    {
#pragma unroll
        for (int r = 0; r < R; r++) {
            int k;
            uint64_t row;
            if (PAIR) {
                k = r / (R / 2);
                row = grp * (R / 2) + r % (R / 2);
            } else {
                uint64_t g = grp * R + r;
                k = (g >= a.row0[1]) + (a.n > 2 && g >= a.row0[2]);
                row = g - a.row0[k];
            }
            ok[r] = grp < a.groups && row < a.m[k].rows;
            mk[r] = k;
            lr[r] = ok[r] ? row : 0;
            const ecu_mat &m = a.m[k];
            uint64_t total = m.rows * nb;
            qp[r] = m.d_base + lr[r] * nb * QB;
            sp[r] = (const __half *)(m.d_base + total * QB) + lr[r] * nb;
            mp[r] = sp[r] + total;
        }
    }

    __device__ __forceinline__ void load(uint64_t b, uint64_t nb, g2_blk<QB> *v) const
    {
#pragma unroll
        for (int r = 0; r < R; r++)
            if (ok[r] && b < nb)
                g2_load<QB>(qp[r], sp[r], mp[r], b, v[r]);
    }
};

/* Each warp walks its items (row group k of its rounds, block step j of J per row) with the
 * loads DEPTH items ahead, across row groups, so a warp never waits for a new row's first
 * blocks. Rounds: row groups base + warp, base + warp + gridDim.x * G2_WARPS, .. */
template <int NT, int R, bool PAIR, int QB>
__global__ void __launch_bounds__(G2_WARPS * 32, 2) gemv2_kernel(const __grid_constant__ g2_args a)
{
    extern __shared__ uint4 g2_sm[];
    constexpr int DEPTH = QB == 16 ? 4 : 2; /* items in flight per lane */
    const int lane = threadIdx.x % 32;
    const uint64_t nb = a.cols / 32, J = (nb + 31) / 32, step = (uint64_t)gridDim.x * G2_WARPS;
    const uint64_t first = (uint64_t)blockIdx.x * G2_WARPS;
    pdl_next();
    if (first >= a.groups)
        return; /* the whole CTA: before any barrier */
    const uint64_t items = (a.groups - first + step - 1) / step * J;
    const uint64_t grp0 = first + threadIdx.x / 32;
    const uint8_t *sm = (const uint8_t *)g2_sm;
    const float *s_ex = g2_scales(sm, NT, nb, 0), *s_sx = s_ex + (uint64_t)NT * nb;

    g2_rows<R, PAIR, QB> cur, pre;
    g2_blk<QB> v[DEPTH][R];
    uint64_t pk = 0, pj = 0; /* the next item to load: row group round pk, block step pj */
    pre.at(a, grp0, nb);
#pragma unroll
    for (int u = 0; u < DEPTH; u++) {
        if ((uint64_t)u < items) {
            if (pj == J)
                pk++, pj = 0, pre.at(a, grp0 + pk * step, nb);
            pre.load(lane + 32 * pj, nb, v[u]);
            pj++;
        }
    }
    pdl_wait(); /* x is the kernel before's output */
    __shared__ float ss[NT * G2_WARPS];
    g2_quantize<NT>(a.x, a.ldx, nb, (uint8_t *)g2_sm, a.norm_w, a.eps, ss);
    __syncthreads();

    float acc[R][NT];
    uint64_t k = 0, j = 0;
    for (uint64_t i0 = 0; i0 < items; i0 += DEPTH) {
#pragma unroll
        for (int u = 0; u < DEPTH; u++) {
            if (i0 + u >= items)
                break;
            if (j == 0) {
                cur.at(a, grp0 + k * step, nb);
#pragma unroll
                for (int r = 0; r < R; r++)
#pragma unroll
                    for (int t = 0; t < NT; t++)
                        acc[r][t] = 0.0f;
            }
            const uint64_t bb = lane + 32 * j;
            if (bb < nb) {
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const uint4 *p = (const uint4 *)(sm + (uint64_t)t * nb * 64) + bb;
                    const uint4 h0 = p[0], h1 = p[nb], l0 = p[2 * nb], l1 = p[3 * nb];
                    const float ex = s_ex[t * nb + bb], sx = s_sx[t * nb + bb];
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        const float d = __half2float(v[u][r].d);
                        const float m = QB == 16 ? __half2float(v[u][r].m) : 0.0f;
                        const int s = 254 * g2_dot<QB>(v[u][r], h0, h1) + g2_dot<QB>(v[u][r], l0, l1);
                        acc[r][t] += d * ex * (float)s + m * sx;
                    }
                }
            }
            /* refill this slot with the item DEPTH ahead */
            if (i0 + u + DEPTH < items) {
                if (pj == J)
                    pk++, pj = 0, pre.at(a, grp0 + pk * step, nb);
                pre.load(lane + 32 * pj, nb, v[u]);
                pj++;
            }
            if (++j == J) { /* the row group is done */
                j = 0;
                k++;
#pragma unroll
                for (int r = 0; r < R; r++)
#pragma unroll
                    for (int t = 0; t < NT; t++)
#pragma unroll
                        for (int o = 16; o > 0; o /= 2)
                            acc[r][t] += __shfl_xor_sync(0xffffffffu, acc[r][t], o);
                if (lane == 0) {
                    if (PAIR) {
#pragma unroll
                        for (int r = 0; r < R / 2; r++)
                            if (cur.ok[r])
#pragma unroll
                                for (int t = 0; t < NT; t++) {
                                    float g = acc[r][t], up = acc[r + R / 2][t];
                                    a.y[0][t * a.ldy[0] + cur.lr[r]] = g / (1.0f + expf(-g)) * up;
                                }
                    } else {
#pragma unroll
                        for (int r = 0; r < R; r++)
                            if (cur.ok[r]) {
                                const float *bias = a.bias[cur.mk[r]];
                                float bv = bias ? bias[cur.lr[r]] : 0.0f;
#pragma unroll
                                for (int t = 0; t < NT; t++) {
                                    float *y = &a.y[cur.mk[r]][t * a.ldy[cur.mk[r]] + cur.lr[r]];
                                    *y = (a.accum ? *y : 0.0f) + acc[r][t] + bv;
                                }
                            }
                    }
                }
            }
        }
    }
}

#define G2_R 2

/* CTAs for a persistent launch: two per multiprocessor (16 warps) where two CTAs' shared memory
 * fits (each also has 1 KB static and 1 KB the system reserves), else one; fewer for small
 * matrices. All are resident at once: a CTA of a second wave would start only when one ends. */
static unsigned g2_grid(uint64_t groups, uint64_t smem)
{
    uint64_t per_sm = 2 * (smem + CTA_SMEM_EXTRA + CTA_SMEM_SYSTEM) <= dev.smem_sm ? 2 : 1;
    uint64_t need = (groups + G2_WARPS - 1) / G2_WARPS, cap = per_sm * (uint64_t)dev.sms;
    return (unsigned)(need < cap ? need : cap);
}

template <bool PAIR, int QB>
static int g2_launch(g2_args &a, uint32_t T, uint64_t groups, cudaStream_t s, eng_err *err)
{
    a.groups = groups;
    size_t smem = (size_t)g2_smem_bytes(T, a.cols / 32);
    unsigned grid = g2_grid(groups, smem);
    switch (T) {
#define G2_CASE(NT)                                                                                                   \
    case NT:                                                                                                          \
        (void)launch_pdl(gemv2_kernel<NT, G2_R, PAIR, QB>, grid, G2_WARPS * 32, smem, s, a);                        \
        break;
        G2_CASE(1) G2_CASE(2) G2_CASE(3) G2_CASE(4)
#undef G2_CASE
    default: return eng_fail(err, ENG_EINVAL, "gemv: %u tokens (at most %d)", T, ECU_GEMV_MAX_TOKENS);
    }
    LAUNCH_CHECK(err);
}

template <bool PAIR, int QB>
static cudaError_t g2_raise(int bytes)
{
    cudaError_t e = cudaSuccess;
#define G2_RAISE(NT)                                                                                                  \
    if (e == cudaSuccess)                                                                                             \
        e = cudaFuncSetAttribute(gemv2_kernel<NT, G2_R, PAIR, QB>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    G2_RAISE(1) G2_RAISE(2) G2_RAISE(3) G2_RAISE(4)
#undef G2_RAISE
    return e;
}

/* Once per process, with the context current, before any launch or graph capture: the device
 * facts the launchers use, and the GEMV kernels' shared-memory limit. */
extern "C" int ecu_prepare(void)
{
    int d = 0, major = 0, sms = 0, optin = 0, per_sm = 0;
    const char *e_pdl = getenv("THAW_CUDA_PDL");
    cudaGetDevice(&d);
    dev.pdl = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d) == cudaSuccess && major >= 9 &&
              !(e_pdl && *e_pdl == '0');
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, d) != cudaSuccess || optin <= 0)
        optin = 48 << 10;
    if (cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, d) != cudaSuccess || per_sm <= 0)
        per_sm = optin;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, d) != cudaSuccess || sms <= 0)
        sms = 16;
    dev.smem_max = (uint32_t)optin - CTA_SMEM_EXTRA;
    dev.smem_sm = (uint32_t)per_sm;
    dev.sms = sms;
    int bytes = (int)dev.smem_max;
    if (bytes <= 47 << 10) /* up to 48 KB of static + dynamic needs no opt-in */
        return 0;
    cudaError_t e = g2_raise<false, 16>(bytes);
    if (e == cudaSuccess)
        e = g2_raise<false, 32>(bytes);
    if (e == cudaSuccess)
        e = g2_raise<true, 16>(bytes);
    if (e == cudaSuccess)
        e = g2_raise<true, 32>(bytes);
    return e == cudaSuccess ? 0 : -1;
}

static bool is_split_quant(const ecu_mat *m)
{
    return m->layout == SNAP_LAYOUT_SPLIT && (m->dtype == SNAP_Q4 || m->dtype == SNAP_Q8);
}

/* SPLIT q4/q8, and x of T tokens quantized fits in shared memory */
static bool g2_fits(const ecu_mat *m, uint32_t T)
{
    return is_split_quant(m) && T >= 1 && T <= ECU_GEMV_MAX_TOKENS && g2_smem_bytes(T, m->cols / 32) <= dev.smem_max;
}

/* Row groups from the stacked rows (PAIR: the gate's rows, R / 2 of them per group). */
static int g2_run(g2_args &a, bool pair, uint32_t T, void *stream, eng_err *err)
{
    uint64_t groups = pair ? (a.m[0].rows + G2_R / 2 - 1) / (G2_R / 2) : (a.row0[a.n] + G2_R - 1) / G2_R;
    bool q4 = a.m[0].dtype == SNAP_Q4;
    cudaStream_t s = st(stream);
    if (pair)
        return q4 ? g2_launch<true, 16>(a, T, groups, s, err) : g2_launch<true, 32>(a, T, groups, s, err);
    return q4 ? g2_launch<false, 16>(a, T, groups, s, err) : g2_launch<false, 32>(a, T, groups, s, err);
}

/* The arguments every launch shares: n matrices stacked by rows on x (row stride ldx), the
 * norm folded in or not. Outputs, biases and their strides are the caller's to set. */
static g2_args g2_setup(uint32_t n, const ecu_mat *m, const float *d_x, uint64_t ldx, const ecu_norm *norm)
{
    g2_args a = {};
    a.n = n;
    for (uint32_t i = 0; i < n; i++) {
        a.m[i] = m[i];
        a.ldy[i] = m[i].rows;
        a.row0[i + 1] = a.row0[i] + m[i].rows;
    }
    a.x = d_x;
    a.ldx = ldx;
    a.cols = m[0].cols;
    a.norm_w = norm ? norm->d_w : NULL;
    a.eps = norm ? norm->eps : 0.0f;
    return a;
}

/* ecu_gemv on a matrix g2_fits takes at n_tokens */
static int g2_single(const ecu_mat *m, const float *d_x, uint64_t ldx, uint32_t n_tokens, float *d_y, uint64_t ldy,
                     const float *d_bias, void *stream, eng_err *err)
{
    g2_args a = g2_setup(1, m, d_x, ldx, NULL);
    a.y[0] = d_y;
    a.bias[0] = d_bias;
    a.ldy[0] = ldy;
    return g2_run(a, false, n_tokens, stream, err);
}

extern "C" int ecu_gemv_multi(uint32_t n, const ecu_mat *m, const float *d_x, uint32_t n_tokens, float *const *d_y,
                              const float *const *d_bias, const ecu_norm *norm, int accum, void *stream, eng_err *err)
{
    if (n < 1 || n > 3 || n_tokens < 1 || n_tokens > ECU_GEMV_MAX_TOKENS)
        return eng_fail(err, ENG_EINVAL, "gemv: %u matrices, %u tokens", n, n_tokens);
    bool same = true;
    for (uint32_t i = 0; i < n; i++)
        same = same && g2_fits(&m[i], n_tokens) && m[i].dtype == m[0].dtype && m[i].cols == m[0].cols;
    if (!same && (norm || accum))
        return eng_fail(err, ENG_EUNSUPPORTED, "gemv: a fused norm or residual add needs SPLIT q4/q8 matrices");
    if (!same) {
        for (uint32_t i = 0; i < n; i++) {
            int rc = ecu_gemv(&m[i], d_x, m[i].cols, n_tokens, d_y[i], m[i].rows, d_bias ? d_bias[i] : NULL, stream, err);
            if (rc)
                return rc;
        }
        return 0;
    }
    g2_args a = g2_setup(n, m, d_x, m[0].cols, norm);
    for (uint32_t i = 0; i < n; i++) {
        a.y[i] = d_y[i];
        a.bias[i] = d_bias ? d_bias[i] : NULL;
    }
    a.accum = accum;
    return g2_run(a, false, n_tokens, stream, err);
}

extern "C" int ecu_gemv_swiglu(const ecu_mat *gate, const ecu_mat *up, const float *d_x, uint32_t n_tokens, float *d_y,
                               const ecu_norm *norm, void *stream, eng_err *err)
{
    if (n_tokens < 1 || n_tokens > ECU_GEMV_MAX_TOKENS || gate->rows != up->rows || gate->cols != up->cols)
        return eng_fail(err, ENG_EINVAL, "gemv_swiglu: shapes or %u tokens", n_tokens);
    if (!ecu_gemv_swiglu_ok(gate, up, n_tokens))
        return eng_fail(err, ENG_EUNSUPPORTED, "gemv_swiglu: needs SPLIT q4/q8 matrices of one dtype");
    const ecu_mat m[2] = {*gate, *up};
    g2_args a = g2_setup(2, m, d_x, gate->cols, norm);
    a.y[0] = d_y;
    return g2_run(a, true, n_tokens, stream, err);
}

extern "C" int ecu_gemv_fusable(const ecu_mat *m, uint32_t n_tokens) { return g2_fits(m, n_tokens); }

extern "C" int ecu_gemv_swiglu_ok(const ecu_mat *gate, const ecu_mat *up, uint32_t n_tokens)
{
    return g2_fits(gate, n_tokens) && g2_fits(up, n_tokens) && gate->dtype == up->dtype && gate->rows == up->rows &&
           gate->cols == up->cols;
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

/* SPLIT q4/q8 (the prefill fast path): four threads per block of 32, each writing 8 values as
 * one 16-byte store, so a warp writes 512 contiguous bytes. Same arithmetic as load_block. */
template <int QB>
__global__ void dequant_split_kernel(ecu_mat m, uint64_t r0, uint64_t n_rows, __half *out)
{
    const uint64_t nb = m.cols / 32, total = m.rows * nb, first = r0 * nb, n = n_rows * nb * 4;
    const __half *sc = (const __half *)(m.d_base + total * QB), *mn = sc + total;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t blk = first + i / 4;
        const int part = (int)(i % 4);
        const float d = __half2float(sc[blk]);
        float v[8];
        if (QB == 16) { /* values 0-15: low nibbles of bytes 0-15; 16-31: their high nibbles */
            const float mv = __half2float(mn[blk]);
            const uint2 q = *(const uint2 *)(m.d_base + blk * 16 + (part & 1) * 8);
            const int sh = (part >> 1) * 4;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                uint32_t byte = ((j < 4 ? q.x : q.y) >> (8 * (j % 4))) & 0xFF;
                v[j] = d * (float)((byte >> sh) & 0xF) + mv;
            }
        } else {
            const uint2 q = *(const uint2 *)(m.d_base + blk * 32 + part * 8);
#pragma unroll
            for (int j = 0; j < 8; j++)
                v[j] = d * (float)(int8_t)(((j < 4 ? q.x : q.y) >> (8 * (j % 4))) & 0xFF);
        }
        __half2 h[4];
#pragma unroll
        for (int j = 0; j < 4; j++)
            h[j] = __floats2half2_rn(v[2 * j], v[2 * j + 1]);
        *(uint4 *)(out + (i / 4) * 32 + part * 8) = *(const uint4 *)h;
    }
}

extern "C" int ecu_dequant_f16(const ecu_mat *m, uint64_t r0, uint64_t n_rows, void *d_out, void *stream, eng_err *err)
{
    if (is_split_quant(m)) {
        unsigned grid = grid_for(n_rows * (m->cols / 32) * 4, 256);
        if (m->dtype == SNAP_Q4)
            dequant_split_kernel<16><<<grid, 256, 0, st(stream)>>>(*m, r0, n_rows, (__half *)d_out);
        else
            dequant_split_kernel<32><<<grid, 256, 0, st(stream)>>>(*m, r0, n_rows, (__half *)d_out);
        LAUNCH_CHECK(err);
    }
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
    pdl_next(); /* launched plainly: the first kernel of a forward */
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

__global__ void rmsnorm_kernel(float *x, const float *add, const uint32_t *rows, const float *w, float *out, uint32_t n,
                               float eps)
{
    __shared__ float sh[32];
    pdl_next();
    pdl_wait();
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
    (void)launch_pdl(rmsnorm_kernel, n_rows, 1024, 0, st(stream), d_x, d_add, d_rows, d_w, d_out, n, eps);
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

/* One CTA per (token, head of q or k), a thread per rotated pair; the CTAs of the k heads
 * also store k and v into the token's cache slot. */
__global__ void rope_store_kernel(ecu_attn_shape s, ecu_kv_batch kb, const float *inv_freq, float *q, float *k,
                                  const float *v, __half *kc, __half *vc)
{
    const uint32_t t = blockIdx.x, h = blockIdx.y, D = s.head_dim, half = D / 2, H = s.n_head;
    pdl_next();
    pdl_wait();
    const int32_t p = kb.d_pos[t];
    const uint32_t i = threadIdx.x;
    float *vec = h < H ? q + ((uint64_t)t * H + h) * D : k + ((uint64_t)t * s.n_head_kv + (h - H)) * D;
    float sn, c;
    sincosf((float)p * inv_freq[i], &sn, &c);
    const uint32_t ia = s.rope_style == SNAP_ROPE_NEOX ? i : 2 * i, ib = s.rope_style == SNAP_ROPE_NEOX ? i + half : 2 * i + 1;
    const float x0 = vec[ia], x1 = vec[ib], y0 = x0 * c - x1 * sn, y1 = x0 * sn + x1 * c;
    vec[ia] = y0;
    vec[ib] = y1;
    if (h >= H) {
        const uint32_t kvh = h - H;
        const uint64_t o = kv_index(s, kv_block(kb, t, p), kvh, (uint32_t)p % ENG_BLOCK_TOKENS);
        kc[o + ia] = __float2half_rn(y0);
        kc[o + ib] = __float2half_rn(y1);
        const float *vr = v + ((uint64_t)t * s.n_head_kv + kvh) * D;
        vc[o + i] = __float2half_rn(vr[i]);
        vc[o + i + half] = __float2half_rn(vr[i + half]);
    }
}

extern "C" int ecu_rope_store(const ecu_attn_shape *s, const ecu_kv_batch *kb, uint32_t n_tokens, const float *d_inv_freq,
                              float *d_q, float *d_k, const float *d_v, void *d_kc, void *d_vc, void *stream, eng_err *err)
{
    dim3 grid(n_tokens, s->n_head + s->n_head_kv);
    (void)launch_pdl(rope_store_kernel, grid, s->head_dim / 2, 0, st(stream), *s, *kb, d_inv_freq, d_q, d_k, d_v,
                     (__half *)d_kc, (__half *)d_vc);
    LAUNCH_CHECK(err);
}

/* Attention for head sizes 32 * DL (64, 128, 256): one CTA of ATT_WARPS warps per (head,
 * token); warp w takes keys w, w + ATT_WARPS, .., ATT_KU of them at a time (their K and V
 * rows loaded before any is used); the lanes split the head's dims (DL each), so a key's
 * row is one coalesced load and its score one warp reduction. Each warp keeps its own
 * online softmax (max m, sum l, output acc); the CTA merges the warps' states at the end. */
#define ATT_WARPS 16
#define ATT_KU 8

template <int DL>
__device__ __forceinline__ void att_load(const __half *p, float *v)
{
    if (DL == 2) {
        float2 f = __half22float2(*(const __half2 *)p);
        v[0] = f.x, v[1] = f.y;
    } else if (DL == 4) {
        uint2 u = *(const uint2 *)p;
        float2 a = __half22float2(*(const __half2 *)&u.x), b = __half22float2(*(const __half2 *)&u.y);
        v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
    } else {
        uint4 u = *(const uint4 *)p;
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 f = __half22float2(*(const __half2 *)&w[i]);
            v[2 * i] = f.x, v[2 * i + 1] = f.y;
        }
    }
}

template <int DL>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_kernel(ecu_attn_shape s, ecu_kv_batch kb, const float *q, const __half *kc, const __half *vc, float *out)
{
    __shared__ float sm_acc[ATT_WARPS][32 * DL], sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    const uint32_t h = blockIdx.x, t = blockIdx.y, D = 32 * DL, H = s.n_head;
    const uint32_t kvh = h / (s.n_head / s.n_head_kv), lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    constexpr int KU = DL == 8 ? ATT_KU / 2 : ATT_KU; /* keys per round per warp (registers) */
    const float scale = 1.0f / sqrtf((float)D);
    pdl_next();
    pdl_wait();
    float qv[DL], acc[DL];
    const float *qp = q + ((uint64_t)t * H + h) * D + lane * DL;
#pragma unroll
    for (int i = 0; i < DL; i++)
        qv[i] = qp[i] * scale, acc[i] = 0.0f;
    const int32_t P = kb.d_pos[t];
    const int32_t *blocks = kb.d_blocks + kb.d_block_off[kb.d_seq[t]];
    float m = -INFINITY, l = 0.0f;
    for (int32_t j0 = (int32_t)warp; j0 <= P; j0 += ATT_WARPS * KU) {
        float kv[KU][DL], vv[KU][DL], sc[KU];
#pragma unroll
        for (int u = 0; u < KU; u++) {
            int32_t j = j0 + u * ATT_WARPS;
            if (j <= P) {
                uint64_t o = kv_index(s, blocks[j / ENG_BLOCK_TOKENS], kvh, (uint32_t)j % ENG_BLOCK_TOKENS) + lane * DL;
                att_load<DL>(kc + o, kv[u]);
                att_load<DL>(vc + o, vv[u]);
            }
        }
        float mt = m;
#pragma unroll
        for (int u = 0; u < KU; u++) {
            float d = 0.0f;
            if (j0 + u * ATT_WARPS <= P) {
#pragma unroll
                for (int i = 0; i < DL; i++)
                    d += qv[i] * kv[u][i];
            }
#pragma unroll
            for (int o = 16; o > 0; o /= 2)
                d += __shfl_xor_sync(0xffffffffu, d, o);
            sc[u] = j0 + u * ATT_WARPS <= P ? d : -INFINITY;
            mt = fmaxf(mt, sc[u]);
        }
        float corr = expf(m - mt); /* m = -inf on the first keys: 0 */
        l *= corr;
#pragma unroll
        for (int i = 0; i < DL; i++)
            acc[i] *= corr;
#pragma unroll
        for (int u = 0; u < KU; u++) {
            if (j0 + u * ATT_WARPS > P)
                break;
            float p = expf(sc[u] - mt);
            l += p;
#pragma unroll
            for (int i = 0; i < DL; i++)
                acc[i] += p * vv[u][i];
        }
        m = mt;
    }
#pragma unroll
    for (int i = 0; i < DL; i++)
        sm_acc[warp][lane * DL + i] = acc[i];
    if (lane == 0)
        sm_m[warp] = m, sm_l[warp] = l;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++)
        M = fmaxf(M, sm_m[w]);
    float L = 0.0f, f[ATT_WARPS];
    for (int w = 0; w < ATT_WARPS; w++) { /* a warp with no keys has m = -inf, l = 0 */
        f[w] = sm_l[w] > 0.0f ? expf(sm_m[w] - M) : 0.0f;
        L += sm_l[w] * f[w];
    }
    float *o = out + ((uint64_t)t * H + h) * D;
    for (uint32_t d = threadIdx.x; d < D; d += blockDim.x) {
        float a = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            a += sm_acc[w][d] * f[w];
        o[d] = a / L;
    }
}

extern "C" int ecu_attention(const ecu_attn_shape *s, const ecu_kv_batch *kb, uint32_t n_tokens, const float *d_q,
                             const void *d_kc, const void *d_vc, float *d_out, void *stream, eng_err *err)
{
    dim3 g2(s->n_head, n_tokens);
    const __half *k2 = (const __half *)d_kc, *v2 = (const __half *)d_vc;
    switch (s->head_dim) {
#define ATT_CASE(D, DL)                                                                                               \
    case D:                                                                                                           \
        (void)launch_pdl(attention_kernel<DL>, g2, ATT_WARPS * 32, 0, st(stream), *s, *kb, d_q, k2, v2, d_out);     \
        LAUNCH_CHECK(err);
        ATT_CASE(64, 2) ATT_CASE(128, 4) ATT_CASE(256, 8)
#undef ATT_CASE
    default:
        return eng_fail(err, ENG_EUNSUPPORTED, "attention: head_dim %u (the CUDA backend takes 64, 128 or 256)",
                        s->head_dim);
    }
}

extern "C" int ecu_attention_ok(uint32_t head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

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
