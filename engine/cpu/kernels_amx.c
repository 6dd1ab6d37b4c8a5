/* kernels_amx.c -- the quantized matmul on AMX tiles, for batches (prefill, batched decode).
 * This file alone is compiled with -mamx-tile -mamx-int8 and the AVX-512 flags;
 * cpu_amx_available() checks the CPU and asks Linux for the tile state first.
 *
 * The arithmetic is the other kernels' (kernels.h), exactly: the int16 activations split
 * into a signed high and an unsigned low byte, x16 = 256 h + l, and two int8 tile products
 * give the exact integer block sums, isum = 256 (A_h B) + (A_l B) (combined as floats with the
 * same rounding as a conversion of isum: see magic[] below). With A = 16 tokens x 32
 * activations of one block and B = that block's 32 weights of a 16-row group, a product is
 * a 16 tokens x 16 rows tile of block sums; its rows (one token, 16 weight rows in lanes) go
 * through the same f32 epilogue as the AVX-512 kernel's lanes. So results are bitwise equal
 * to the vector kernels' for every batch.
 *
 * B is read straight from R16: a Q8 block's 8 quant chunks of 64 bytes are the 8 rows of B
 * (4 consecutive K entries of each of 16 weight rows), and a Q4 block's 4 chunks become 8
 * rows by splitting each byte's nibbles. The K order this gives is a permutation of the
 * block's 32 weights (pi below); A is built with the same permutation. */
#include "kernels.h"

#if defined(__x86_64__)
#include "snapshot.h"

#include <cpuid.h>
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

int cpu_amx_available(void)
{
    static int state = -1; /* computed once; the answer is the same from every thread */
    if (__atomic_load_n(&state, __ATOMIC_ACQUIRE) >= 0)
        return state;
    unsigned a, b, c, d;
    int ok = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 25 & 1) &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni") &&
             syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    __atomic_store_n(&state, ok, __ATOMIC_RELEASE);
    return ok;
}

/* The K order of a block's operands: position k holds element 8 (k / 8) + pi[k % 8], with pi
 * (0 4 1 5 2 6 3 7) for Q4 and (0 2 1 3 4 6 5 7) for Q8; as constant index vectors for one
 * half of the block (built at run time they would be stored and reloaded on every call). */
#define PI16(a, b, c, d, e, f, g, h) a, b, c, d, e, f, g, h, 8 + a, 8 + b, 8 + c, 8 + d, 8 + e, 8 + f, 8 + g, 8 + h
static const uint32_t pi32_q4[16] = {PI16(0, 4, 1, 5, 2, 6, 3, 7)};
static const uint32_t pi32_q8[16] = {PI16(0, 2, 1, 3, 4, 6, 5, 7)};

/* Where token t's s sits among a block's scales: s of tokens 0-7 then their sx, in one cache
 * line, then those of tokens 8-15 in the next, so two threads that quantize a half each (the
 * ops producing a decode batch's input, cpu.c's quant_ahead) do not write to the same line. */
#define SCALE_AT(t) ((t) / 8 * 16 + (t) % 8)

/* Quantizes token t's x[n] (n = a->n) straight into the A operands: the steps of
 * kernels_avx512.c's quant_act (the same x16, s and sx, bit for bit), split into the high and
 * low bytes of the operands, without writing x16. */
void cpu_amx_quant(const float *x, const cpu_act *a, uint32_t t, uint32_t dtype, uint8_t *tiles)
{
    const __m512i perm = _mm512_loadu_si512(dtype == SNAP_Q4 ? pi32_q4 : pi32_q8), lowb = _mm512_set1_epi32(0xff);
    const __m512 lim = _mm512_set1_ps(CPU_ACT_MAX), nlim = _mm512_set1_ps(-CPU_ACT_MAX);
    uint8_t *dst = tiles + (uint64_t)(t / 16) * a->nb * CPU_AMX_TILE_BYTES;
    for (uint64_t b = 0; b < a->nb; b++, dst += CPU_AMX_TILE_BYTES) {
        __m512 v0 = _mm512_loadu_ps(x + b * 32), v1 = _mm512_loadu_ps(x + b * 32 + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        float s = amax / CPU_ACT_MAX, inv = amax > 0 ? CPU_ACT_MAX / amax : 0.0f;
        __m512 iv = _mm512_set1_ps(inv);
        __m512i i0 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v0, iv), nlim), lim));
        __m512i i1 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v1, iv), nlim), lim));
        int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
        /* elements in operand order: positions 0..15 from elements 0..15 (a permutation within
         * each 8), positions 16..31 likewise from 16..31 */
        __m512i q0 = _mm512_permutexvar_epi32(perm, i0), q1 = _mm512_permutexvar_epi32(perm, i1);
        uint8_t *row = dst + (t % 16) * 32;
        _mm_storeu_si128((__m128i *)row, _mm512_cvtepi32_epi8(_mm512_srai_epi32(q0, 8)));
        _mm_storeu_si128((__m128i *)(row + 16), _mm512_cvtepi32_epi8(_mm512_srai_epi32(q1, 8)));
        _mm_storeu_si128((__m128i *)(row + 512), _mm512_cvtepi32_epi8(_mm512_and_si512(q0, lowb)));
        _mm_storeu_si128((__m128i *)(row + 528), _mm512_cvtepi32_epi8(_mm512_and_si512(q1, lowb)));
        float *sv = (float *)(dst + 1024) + SCALE_AT(t % 16);
        sv[0] = s, sv[8] = s * (float)sum;
    }
}

/* Tiles: 0 / 1 A high / low bytes (16 tokens x 32), 2 / 5 B of even / odd blocks (8 x 64),
 * 3-4 / 6-7 the two products of even / odd blocks (16 x 16 int32). Blocks alternate between
 * the two sets so one block's tile loads need not wait for the previous block's products. */
static void configure(void)
{
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[0] = cfg.rows[1] = 16, cfg.colsb[0] = cfg.colsb[1] = 32;
    cfg.rows[2] = cfg.rows[5] = 8, cfg.colsb[2] = cfg.colsb[5] = 64;
    for (int i = 3; i <= 7; i++)
        if (i != 5)
            cfg.rows[i] = 16, cfg.colsb[i] = 64;
    _tile_loadconfig(&cfg);
}

typedef struct group_ctx {
    const uint8_t *quants, *dp, *mp, *at; /* the group's quants, d, m; the token tile's A operands */
    uint64_t nb, qb;                      /* blocks per row, quant bytes per block */
    int q4;
} group_ctx;

/* Q4 block b's B operand: its nibbles split into bytes in buf. A tile load of bytes vector
 * stores wrote moments ago waits for those stores to complete, so blocks are split
 * EXPAND_AHEAD blocks before their products (a ring of EXPAND_AHEAD + 2 buffers). */
#define EXPAND_AHEAD 2

static inline __attribute__((always_inline)) void expand_q4(const group_ctx *g, uint64_t b, uint8_t *buf)
{
    const uint8_t *u = g->quants + b * g->qb;
    const __m512i nib = _mm512_set1_epi8(0x0f);
    for (int j = 0; j < 4; j++) {
        __m512i v = _mm512_load_si512((const void *)(u + 64 * j));
        _mm512_store_si512(buf + 128 * j, _mm512_and_si512(v, nib));
        _mm512_store_si512(buf + 128 * j + 64, _mm512_and_si512(_mm512_srli_epi32(v, 4), nib));
    }
}

/* Weights stream through this loop at a quarter of the vector kernels' rate, and with one
 * prefetch CPU_PREFETCH_BYTES ahead (theirs) a streamed pass took 56-58 ns per block step
 * against 48-49 with the weights in cache: prefetched far ahead into L2, then near into L1,
 * it takes 49-53 (bench/RESULTS.md). */
#define AMX_PREFETCH_L2 32768
#define AMX_PREFETCH_L1 512

/* B for block b: Q8 quants are B as stored; Q4 from the ring. */
static inline __attribute__((always_inline)) const uint8_t *b_operand(const group_ctx *g, uint64_t b,
                                                                      uint8_t (*ring)[512])
{
    const uint8_t *u = g->quants + b * g->qb;
    for (uint64_t l = 0; l < g->qb; l += 64) { /* every line of the block */
        _mm_prefetch((const char *)u + AMX_PREFETCH_L2 + l, _MM_HINT_T1);
        _mm_prefetch((const char *)u + AMX_PREFETCH_L1 + l, _MM_HINT_T0);
    }
    if (!g->q4)
        return u;
    if (b + EXPAND_AHEAD < g->nb)
        expand_q4(g, b + EXPAND_AHEAD, ring[(b + EXPAND_AHEAD) % (EXPAND_AHEAD + 2)]);
    return ring[b % (EXPAND_AHEAD + 2)];
}

/* The f32 epilogue of one block for token row t of the products in c (the vector kernels'
 * steps on the same lanes). Sixteen named accumulators, not an array: tile stores clobber
 * memory for the compiler, and an array would be kept there. */
#define EPI_T(t)                                                                                                   \
    do {                                                                                                           \
        __m512 isf = _mm512_add_ps(_mm512_sub_ps(_mm512_load_ps((const float *)c_ + 16 * t), kmag),               \
                                   _mm512_load_ps((const float *)c_ + 256 + 16 * t));                              \
        acc##t = _mm512_fmadd_ps(isf, _mm512_mul_ps(d_, _mm512_set1_ps(s_[SCALE_AT(t)])), acc##t);                 \
        if (q4)                                                                                                    \
            acc##t = _mm512_fmadd_ps(m_, _mm512_set1_ps(s_[SCALE_AT(t) + 8]), acc##t);                             \
    } while (0)

#define EPILOGUE(blk, cbuf)                                                                                        \
    do {                                                                                                           \
        const int32_t *c_ = (cbuf);                                                                                \
        const float *s_ = (const float *)(g.at + (blk) * CPU_AMX_TILE_BYTES + 1024); /* s, sx: SCALE_AT */          \
        __m512 d_ = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(g.dp + 32 * (blk))));                      \
        __m512 m_ = q4 ? _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(g.mp + 32 * (blk)))) : d_;           \
        EPI_T(0); EPI_T(1); EPI_T(2); EPI_T(3); EPI_T(4); EPI_T(5); EPI_T(6); EPI_T(7);                            \
        EPI_T(8); EPI_T(9); EPI_T(10); EPI_T(11); EPI_T(12); EPI_T(13); EPI_T(14); EPI_T(15);                      \
    } while (0)

/* Products of PHASE blocks are computed and stored, then their epilogues run: tile stores
 * and the vector loads of what they stored do not mix well. */
#define PHASE 4

#define PRODUCTS(B, CH, CL, q4)                                  \
    do {                                                         \
        _tile_loadd(CH, magic[0], 0); /* stride 0: every row */  \
        _tile_loadd(CL, magic[1], 0);                            \
        if (q4) {                                                \
            _tile_dpbsud(CH, 0, B); /* signed high x nibbles */  \
            _tile_dpbuud(CL, 1, B); /* unsigned low x nibbles */ \
        } else {                                                 \
            _tile_dpbssd(CH, 0, B);                              \
            _tile_dpbusd(CL, 1, B);                              \
        }                                                        \
    } while (0)

/* The tile load intrinsic does not tell the compiler it reads memory: a barrier keeps the
 * stores of a ring buffer before the load that reads it. */
#define LOAD_TILE(t, p, stride)                   \
    do {                                          \
        __asm__ volatile("" ::: "memory");        \
        _tile_loadd(t, p, stride);                \
    } while (0)

/* Block b's products into tiles CH / CL (B operand in tile B), stored to cb; tile numbers
 * must be constants, hence a macro for the two sets. */
#define BLOCK_PRODUCTS(B, CH, CL)                            \
    do {                                                     \
        LOAD_TILE(B, b_operand(&g, b, ring), 64);            \
        LOAD_TILE(0, at, 32);                                \
        LOAD_TILE(1, at + 512, 32);                          \
        PRODUCTS(B, CH, CL, q4);                             \
        _tile_stored(CH, cb, 64);                            \
        _tile_stored(CL, cb + 256, 64);                      \
    } while (0)

#define STORE(t)                                                                                    \
    if (t < n)                                                                                      \
        _mm512_mask_storeu_ps(out + (uint64_t)(t0 + t) * out_stride + gi * CPU_R16_ROWS, keep, acc##t);

/* The two products start from "magic" bit patterns instead of zero, so their sums arrive as
 * floats with no conversion. The high product's tile starts at the bits of 1.5 * 2^31, whose
 * last mantissa bit is worth 256: adding the integer sum h (|h| < 2^22) to the bits gives the
 * float 1.5 * 2^31 + 256 h. The low one starts at 1.5 * 2^23 (last bit worth 1): the float
 * 1.5 * 2^23 + l. Then
 *     (hi - (1.5 * 2^31 + 1.5 * 2^23)) + lo = 256 h + l = isum
 * where the subtraction is exact (a multiple of 256 under 2^28) and the addition rounds once,
 * to nearest, as the conversion of the integer isum does in the vector kernels: two float
 * operations per 16 sums instead of a shift, an add and a conversion (tests/test_forward.c
 * checks sums past 2^24, where that rounding happens). */
#define MAG16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
static const _Alignas(64) int32_t magic[2][16] = {{MAG16(0x4F400000)}, {MAG16(0x4B400000)}};
#define MAGIC_BOTH 3233808384.0f /* 1.5 * 2^31 + 1.5 * 2^23, exactly */

static inline __attribute__((always_inline)) void group(const cpu_r16 *w, uint64_t gi, const uint8_t *tiles,
                                                        uint32_t t0, uint32_t n, float *out, uint64_t out_stride,
                                                        const int q4)
{
    group_ctx g;
    g.nb = w->nb, g.qb = q4 ? 256 : 512, g.q4 = q4;
    g.quants = w->base + gi * g.nb * (q4 ? CPU_R16_Q4_UNIT : CPU_R16_Q8_UNIT);
    g.dp = g.quants + g.nb * g.qb, g.mp = g.dp + g.nb * 32;
    g.at = tiles + (uint64_t)(t0 / 16) * g.nb * CPU_AMX_TILE_BYTES;
    _Alignas(64) uint8_t ring[EXPAND_AHEAD + 2][512];
    _Alignas(64) int32_t c[PHASE][512];
    for (uint64_t b = 0; q4 && b < EXPAND_AHEAD && b < g.nb; b++)
        expand_q4(&g, b, ring[b]);
    const __m512 kmag = _mm512_set1_ps(MAGIC_BOTH);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0, acc4 = acc0, acc5 = acc0, acc6 = acc0,
           acc7 = acc0, acc8 = acc0, acc9 = acc0, acc10 = acc0, acc11 = acc0, acc12 = acc0, acc13 = acc0,
           acc14 = acc0, acc15 = acc0;
    for (uint64_t b0 = 0; b0 < g.nb; b0 += PHASE) {
        uint64_t b1 = b0 + PHASE < g.nb ? b0 + PHASE : g.nb;
        for (uint64_t b = b0; b < b1; b++) {
            const uint8_t *at = g.at + b * CPU_AMX_TILE_BYTES;
            int32_t *cb = c[b - b0];
            if (b % 2 == 0)
                BLOCK_PRODUCTS(2, 3, 4);
            else
                BLOCK_PRODUCTS(5, 6, 7);
        }
        for (uint64_t b = b0; b < b1; b++)
            EPILOGUE(b, c[b - b0]);
    }
    uint64_t left = w->rows - gi * CPU_R16_ROWS;
    __mmask16 keep = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5) STORE(6) STORE(7)
    STORE(8) STORE(9) STORE(10) STORE(11) STORE(12) STORE(13) STORE(14) STORE(15)
}

void cpu_amx_matmul(const cpu_r16 *w, uint64_t g0, uint64_t g1, const uint8_t *tiles, uint32_t n_tok,
                    float *out, uint64_t out_stride)
{
    configure();
    for (uint32_t t0 = 0; t0 < n_tok; t0 += 16) {
        uint32_t n = n_tok - t0 < 16 ? n_tok - t0 : 16;
        for (uint64_t g = g0; g < g1; g++) {
            if (w->dtype == SNAP_Q4)
                group(w, g, tiles, t0, n, out, out_stride, 1);
            else
                group(w, g, tiles, t0, n, out, out_stride, 0);
        }
    }
    _tile_release();
}
#else
int cpu_amx_available(void) { return 0; }
void cpu_amx_quant(const float *x, const cpu_act *a, uint32_t t, uint32_t dtype, uint8_t *tiles) {}
void cpu_amx_matmul(const cpu_r16 *w, uint64_t g0, uint64_t g1, const uint8_t *tiles, uint32_t n_tok,
                    float *out, uint64_t out_stride)
{
}
#endif
