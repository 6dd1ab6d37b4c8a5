/* gpu.c -- CUDA backend bench (built only with CUDA=1):
 *   bench/gpu SNAPSHOT [max_concurrency=256]
 *   bench/gpu --synthetic NAME OUT.thaw   packs a synthetic model (q4, target cuda), prints
 *                                         gpu_pack and exits: a GPU machine needs no ./thaw
 * Prints one machine-readable line per result:
 *   gpu_limits   pinned H2D GB/s and device-to-device (HBM) GB/s, measured in this run
 *   gpu_load     exec->ready and exec->first token with the phase breakdown; load GB/s and
 *                its ratio to the pinned H2D bandwidth
 *   gpu_graphs   the wait for the decode graphs captured after ready, and how many are left
 *   gpu_decode   batch-1 decode tok/s and the HBM roofline (snap_decode_bytes / D2D bandwidth)
 *   gpu_profile  time per op kind in the second prefill and in batch-1 decode steps
 *   gpu_batch    output tok/s at concurrency c = 1, 2, 4 .. max for 128-token prompts and
 *                128 output tokens per request (all requests prefilled, then decoded together)
 * "exec" is this process's start (its first instruction in main, after the dynamic loader).
 * THAW_LOAD_IO=pread|mmap picks how the snapshot is read (default: the loader's measured one).
 */
#include "internal.h"
#include "cuda/kernels.h"

#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    double t0 = now_s();
    if (argc < 2) {
        fprintf(stderr, "usage: %s SNAPSHOT [max_concurrency]\n", argv[0]);
        return 2;
    }
    if (!strcmp(argv[1], "--synthetic")) {
        if (argc != 4) {
            fprintf(stderr, "usage: %s --synthetic NAME OUT.thaw\n", argv[0]);
            return 2;
        }
        snap_pack_opts po = {.quant = SNAP_QUANT_Q4, .target = SNAP_TARGET_CUDA};
        snap_err se = {{0}};
        if (snap_pack_synthetic(argv[2], argv[3], &po, &se) != 0) {
            fprintf(stderr, "pack: %s\n", se.msg);
            return 1;
        }
        printf("gpu_pack name=%s seconds=%.1f\n", argv[2], now_s() - t0);
        return 0;
    }
    uint32_t max_c = argc > 2 ? (uint32_t)atoi(argv[2]) : 256;
    if (ecu_device_count() <= 0) {
        printf("gpu_skip reason=no_gpu\n");
        return 0;
    }
    const uint32_t P = 128, G = 128, ctx = P + G;
    uint32_t max_tokens = max_c > 512 ? max_c : 512;
    eng_model_opts o = {.device = "cuda", .n_ctx = ctx, .max_batch_tokens = max_tokens};
    const char *io = getenv("THAW_LOAD_IO"); /* "pread" or "mmap": the load's reads, for A/B */
    if (io)
        o.load_io = !strcmp(io, "pread") ? SNAP_IO_PREAD : !strcmp(io, "mmap") ? SNAP_IO_MMAP : SNAP_IO_AUTO;
    eng_model *m = NULL;
    eng_load_report rep;
    eng_err err = {{0}};
    if (eng_model_open(argv[1], &o, &m, &rep, &err) != 0) {
        fprintf(stderr, "open: %s\n", err.msg);
        return 1;
    }
    double t_ready = now_s();
    const snap_config *c = eng_model_config(m);
    uint32_t V = c->n_vocab;
    float *logits = malloc((size_t)max_tokens * V * sizeof(float));
    int32_t *toks = malloc(max_tokens * sizeof(int32_t)), *pos = malloc(max_tokens * sizeof(int32_t));
    uint32_t *seq = malloc(max_tokens * sizeof(uint32_t)), *out = malloc(max_tokens * sizeof(uint32_t));
    uint32_t bps = (ctx + ENG_BLOCK_TOKENS - 1) / ENG_BLOCK_TOKENS;
    uint32_t n_kv = eng_model_kv_blocks(m);
    if (max_c * bps > n_kv) {
        max_c = n_kv / bps;
        fprintf(stderr, "KV pool holds %u blocks: concurrency capped at %u\n", n_kv, max_c);
    }
    int32_t *blocks = malloc((size_t)max_c * bps * sizeof(int32_t));
    eng_batch_seq *seqs = malloc(max_c * sizeof *seqs);
    for (uint32_t i = 0; i < max_c * bps; i++)
        blocks[i] = (int32_t)i;
    for (uint32_t s = 0; s < max_c; s++)
        seqs[s] = (eng_batch_seq){blocks + (size_t)s * bps, bps};

    /* first token: one prefill of P tokens and its logits */
    for (uint32_t i = 0; i < P; i++)
        toks[i] = (int32_t)((i * 7919 + 1) % V), pos[i] = (int32_t)i, seq[i] = 0;
    out[0] = P - 1;
    eng_batch b = {P, toks, pos, seq, 1, seqs, 1, out};
    if (eng_model_forward(m, &b, logits, &err) != 0) {
        fprintf(stderr, "forward: %s\n", err.msg);
        return 1;
    }
    double t_first = now_s();
    ecu_profile(1, NULL, NULL); /* the same prefill again, op by op (warm) */
    if (eng_model_forward(m, &b, logits, &err) != 0)
        return 1;
    ecu_profile(0, stdout, "prefill=128");
    double h2d = ecu_h2d_bandwidth(256ull << 20), d2d = ecu_d2d_bandwidth(1ull << 30);
    printf("gpu_limits device=\"%s\" h2d_pinned_GBps=%.2f d2d_GBps=%.1f\n", ecu_device_name(), h2d / 1e9, d2d / 1e9);
    double load_bps = rep.load.total_s > 0 ? rep.load.bytes_raw / rep.load.total_s : 0;
    printf("gpu_load exec_to_ready_s=%.3f exec_to_first_token_s=%.3f open_s=%.3f tokenizer_s=%.3f backend_s=%.3f "
           "load_s=%.3f read_s=%.3f decompress_s=%.3f checksum_s=%.3f copy_sink_s=%.3f first_prefill_s=%.3f "
           "bytes=%llu load_GBps=%.2f load_vs_h2d=%.2f\n",
           t_ready - t0, t_first - t0, rep.open_s, rep.tokenizer_s, rep.backend_s, rep.load.total_s, rep.load.read_s,
           rep.load.decompress_s, rep.load.checksum_s, rep.load.sink_s, t_first - t_ready,
           (unsigned long long)rep.load.bytes_raw, load_bps / 1e9, h2d > 0 ? load_bps / h2d : 0);

    /* batch-1 decode, once the decode graphs (captured after ready, in the background) are in */
    double tg = now_s();
    while (ecu_graphs_pending() > 0 && now_s() - tg < 30)
        usleep(1000);
    printf("gpu_graphs wait_s=%.3f pending=%d\n", now_s() - tg, ecu_graphs_pending());
    uint32_t n_dec = 64;
    double t = now_s();
    for (uint32_t i = 0; i < n_dec; i++) {
        int32_t tk = (int32_t)(i % V), ps = (int32_t)(P + i);
        uint32_t sq = 0, o1 = 0;
        eng_batch d = {1, &tk, &ps, &sq, 1, seqs, 1, &o1};
        if (eng_model_forward(m, &d, logits, &err) != 0) {
            fprintf(stderr, "decode: %s\n", err.msg);
            return 1;
        }
    }
    double tps = n_dec / (now_s() - t);
    /* The roofline: a decode token reads its weights once (snap_decode_bytes) at the HBM
     * bandwidth the D2D copy measured (bytes read + written per second). KV reads are left
     * out: a stricter limit. */
    uint64_t wbytes = 0;
    {
        snap_file *f = NULL;
        snap_err se = {{0}};
        if (snap_open(argv[1], &f, &se) == 0) {
            wbytes = snap_decode_bytes(f);
            snap_close(f);
        }
    }
    double roof = d2d > 0 && wbytes ? d2d / (double)wbytes : 0;
    printf("gpu_decode batch=1 tok_s=%.1f roofline_tok_s=%.1f ratio=%.2f bytes_per_token=%llu\n", tps, roof,
           roof > 0 ? tps / roof : 0, (unsigned long long)wbytes);

    /* where a decode step's time goes (events around each op; a separate run, not timed above) */
    ecu_profile(1, NULL, NULL);
    for (uint32_t i = 0; i < 32; i++) {
        int32_t tk = (int32_t)(i % V), ps = (int32_t)(P + n_dec + i);
        uint32_t sq = 0, o1 = 0;
        eng_batch d = {1, &tk, &ps, &sq, 1, seqs, 1, &o1};
        if (eng_model_forward(m, &d, logits, &err) != 0)
            return 1;
    }
    ecu_profile(0, stdout, "batch=1");

    /* batched: c requests of P prompt tokens then G decode steps together */
    for (uint32_t cc = 1; cc <= max_c; cc *= 2) {
        double tb = now_s();
        for (uint32_t s = 0; s < cc; s += max_tokens / P) { /* prefill in chunks that fit */
            uint32_t n = 0, no = 0, k = 0;
            for (uint32_t r = s; r < cc && k < max_tokens / P; r++, k++) {
                for (uint32_t i = 0; i < P; i++, n++)
                    toks[n] = (int32_t)((r + i * 31) % V), pos[n] = (int32_t)i, seq[n] = r;
                out[no++] = n - 1;
            }
            eng_batch pb = {n, toks, pos, seq, cc, seqs, no, out};
            if (eng_model_forward(m, &pb, logits, &err) != 0) {
                fprintf(stderr, "prefill c=%u: %s\n", cc, err.msg);
                return 1;
            }
        }
        for (uint32_t g = 0; g < G; g++) {
            for (uint32_t r = 0; r < cc; r++)
                toks[r] = (int32_t)((r + g) % V), pos[r] = (int32_t)(P + g), seq[r] = r, out[r] = r;
            eng_batch db = {cc, toks, pos, seq, cc, seqs, cc, out};
            if (eng_model_forward(m, &db, logits, &err) != 0) {
                fprintf(stderr, "decode c=%u: %s\n", cc, err.msg);
                return 1;
            }
        }
        double el = now_s() - tb;
        printf("gpu_batch concurrency=%u prompt=%u output=%u output_tok_s=%.1f total_s=%.3f\n", cc, P, G,
               (double)cc * G / el, el);
    }
    free(logits), free(toks), free(pos), free(seq), free(out), free(blocks), free(seqs);
    eng_model_close(m);
    return 0;
}
