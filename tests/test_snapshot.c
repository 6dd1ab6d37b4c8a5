/* test_snapshot.c -- the snapshot format: pack -> open -> load round trips, codec choice,
 * layouts, and every kind of bad input failing cleanly with a message that says where. */
#include "internal.h"
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <dirent.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- a tiny synthetic llama built in memory ------------------------------------------ */

enum { EMBD = 64, HEADS = 4, KV = 2, HD = 16, FF = 96, LAYERS = 2, VOCAB = 40 };

typedef struct tiny {
    snap_src_model m;
    float *data[64];
    size_t n_data;
    uint32_t offsets[VOCAB + 1];
    char blob[VOCAB * 8];
    uint8_t types[VOCAB];
    uint32_t merges[4];
} tiny;

/* Row r of a Q4 / Q8 tensor as BLOCKS (ggml) bytes whatever its layout: R16 rows are
 * reassembled from their blocks' d, m and quants. */
static void row_as_blocks(const snap_tensor *t, const uint8_t *img, uint64_t r, uint8_t *out)
{
    uint32_t bb = t->dtype == SNAP_Q4 ? SNAP_Q4_BLOCK_BYTES : SNAP_Q8_BLOCK_BYTES;
    uint64_t nb = t->shape[t->n_dims - 1] / 32;
    if (t->layout != SNAP_LAYOUT_R16) {
        memcpy(out, img + t->offset + r * nb * bb, nb * bb);
        return;
    }
    for (uint64_t b = 0; b < nb; b++) {
        uint16_t d, m;
        int8_t q[32];
        uint8_t *blk = out + b * bb;
        snap_r16_get(img + t->offset, t->dtype, nb, r, b, &d, &m, q);
        memset(blk, 0, bb);
        blk[0] = (uint8_t)d, blk[1] = (uint8_t)(d >> 8);
        if (t->dtype == SNAP_Q4) {
            blk[2] = (uint8_t)m, blk[3] = (uint8_t)(m >> 8);
            for (int j = 0; j < 16; j++)
                blk[4 + j] = (uint8_t)(q[j] | q[j + 16] << 4);
        } else {
            memcpy(blk + 2, q, 32);
        }
    }
}

static uint64_t rng_state = 88172645463325252ull;
static float frand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static void add(tiny *t, const char *name, uint64_t d0, uint64_t d1, int zero)
{
    snap_src_tensor s = {0};
    snprintf(s.name, sizeof s.name, "%s", name);
    s.type = SRC_F32;
    s.n_dims = d1 ? 2 : 1;
    s.shape[0] = d0;
    s.shape[1] = d1;
    uint64_t n = d0 * (d1 ? d1 : 1);
    float *p = malloc(n * sizeof *p);
    for (uint64_t i = 0; i < n; i++)
        p[i] = zero ? 0.0f : (d1 ? frand() * 0.1f : 1.0f + 0.01f * frand());
    t->data[t->n_data++] = p;
    s.data = (const uint8_t *)p;
    s.n_bytes = n * 4;
    snap_src_add_tensor(&t->m, &s);
}

/* zero_ffn: make every ffn_up all zeros so that whole chunks compress */
static void tiny_init(tiny *t, int zero_ffn)
{
    memset(t, 0, sizeof *t);
    rng_state = 88172645463325252ull; /* the same model every time */
    snap_src_init(&t->m);
    snap_config *c = &t->m.config;
    c->arch = SNAP_ARCH_LLAMA;
    c->n_vocab = VOCAB;
    c->n_ctx_train = 256;
    c->n_embd = EMBD;
    c->n_layer = LAYERS;
    c->n_head = HEADS;
    c->n_head_kv = KV;
    c->head_dim = HD;
    c->n_ff = FF;
    c->rope_theta = 10000.0f;
    c->rms_eps = 1e-5f;
    c->flags = SNAP_FLAG_TIED_EMBED;
    snprintf(c->name, sizeof c->name, "tiny-test");
    /* vocab: "t0".."t39" */
    uint32_t off = 0;
    for (int i = 0; i < VOCAB; i++) {
        t->offsets[i] = off;
        off += (uint32_t)sprintf(t->blob + off, "t%d", i);
        t->types[i] = i < 2 ? SNAP_TOKT_CONTROL : SNAP_TOKT_NORMAL;
    }
    t->offsets[VOCAB] = off;
    t->merges[0] = 2, t->merges[1] = 3, t->merges[2] = 4, t->merges[3] = 5;
    snap_vocab *v = &t->m.vocab;
    v->model = SNAP_TOK_BPE;
    v->pre = SNAP_PRE_SMOLLM;
    v->n_tokens = VOCAB;
    v->n_merges = 2;
    v->offsets = t->offsets;
    v->blob = t->blob;
    v->types = t->types;
    v->merges = t->merges;
    v->bos_id = 0;
    v->eos_id = 1;
    t->m.gen.temperature = 0.7f;
    t->m.gen.n_stop_ids = 1;
    t->m.gen.stop_ids[0] = 1;
    t->m.chat_template = strdup("{% for message in messages %}<|im_start|>{% endfor %}");
    add(t, "token_embd.weight", VOCAB, EMBD, 0);
    for (int l = 0; l < LAYERS; l++) {
        char n[64];
#define ADD(suffix, a, b, z)                           \
    snprintf(n, sizeof n, "blk.%d." suffix, l);        \
    add(t, n, a, b, z)
        ADD("attn_norm.weight", EMBD, 0, 0);
        ADD("attn_q.weight", HEADS * HD, EMBD, 0);
        ADD("attn_k.weight", KV * HD, EMBD, 0);
        ADD("attn_v.weight", KV * HD, EMBD, 0);
        ADD("attn_output.weight", EMBD, HEADS * HD, 0);
        ADD("ffn_norm.weight", EMBD, 0, 0);
        ADD("ffn_gate.weight", FF, EMBD, 0);
        ADD("ffn_up.weight", FF, EMBD, zero_ffn);
        ADD("ffn_down.weight", EMBD, FF, 0);
#undef ADD
    }
    add(t, "output_norm.weight", EMBD, 0, 0);
}

static void tiny_free(tiny *t)
{
    for (size_t i = 0; i < t->n_data; i++)
        free(t->data[i]);
    snap_src_free(&t->m);
}

static const char *tmp_path(const char *name)
{
    static char buf[8][256];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 256, "%s/thaw-test-%d-%s", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid(), name);
    return p;
}

/* Files in path's folder whose names start with path's name and a dot (its temporaries). */
static int files_starting(const char *path)
{
    char dir[256];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    DIR *d = slash ? (*slash = 0, opendir(dir)) : NULL;
    if (!d)
        return -1;
    size_t n = strlen(slash + 1);
    int count = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        count += !strncmp(e->d_name, slash + 1, n) && e->d_name[n] == '.';
    closedir(d);
    return count;
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    *len = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = aligned_alloc(4096, (*len + 4096) / 4096 * 4096);
    if (b && fread(b, 1, *len, fp) != *len) {
        free(b);
        b = NULL;
    }
    fclose(fp);
    return b;
}

static void write_file(const char *path, const uint8_t *b, size_t len)
{
    FILE *fp = fopen(path, "wb");
    if (fp) {
        fwrite(b, 1, len, fp);
        fclose(fp);
    }
}

/* Recompute the metadata and header checksums after a deliberate edit, so the test reaches
 * the validation behind them. */
static void reseal(uint8_t *b)
{
    uint64_t meta_off = snap_rd64(b + 56), meta_size = snap_rd64(b + 64);
    snap_wr64(b + 96, XXH3_64bits(b + meta_off, meta_size));
    snap_wr64(b + 120, XXH3_64bits(b, 120));
}

static int pack_tiny(const char *out, uint32_t quant, uint32_t target, int zero_ffn)
{
    tiny t;
    tiny_init(&t, zero_ffn);
    snap_pack_opts o = {.quant = quant, .target = target, .chunk_size = 4096};
    snap_err err = {{0}};
    int rc = snap_pack_model(&t.m, out, &o, &err);
    if (rc)
        fprintf(stderr, "  pack: %s\n", err.msg);
    tiny_free(&t);
    return rc;
}

/* ---- tests --------------------------------------------------------------------------- */

static void test_round_trip_metadata(void)
{
    const char *p = tmp_path("meta.thaw");
    REQUIRE(pack_tiny(p, SNAP_QUANT_Q4, SNAP_TARGET_CPU, 0) == 0);
    snap_file *f = NULL;
    snap_err err = {{0}};
    REQUIRE(snap_open(p, &f, &err) == 0);
    const snap_config *c = snap_get_config(f);
    CHECK_INT(c->arch, SNAP_ARCH_LLAMA);
    CHECK_INT(c->n_layer, LAYERS);
    CHECK_INT(c->n_head_kv, KV);
    CHECK_INT(c->flags, SNAP_FLAG_TIED_EMBED);
    CHECK_STR(c->name, "tiny-test");
    const snap_vocab *v = snap_get_vocab(f);
    CHECK_INT(v->n_tokens, VOCAB);
    CHECK_INT(v->n_merges, 2);
    CHECK_INT(v->merges[2], 4);
    CHECK_INT(v->pre, SNAP_PRE_SMOLLM);
    CHECK_INT(v->types[1], SNAP_TOKT_CONTROL);
    CHECK(v->offsets[13] - v->offsets[12] == 3 && memcmp(v->blob + v->offsets[12], "t12", 3) == 0);
    CHECK_INT(v->eos_id, 1);
    CHECK(v->scores == NULL);
    CHECK_STR(snap_chat_template(f), "{% for message in messages %}<|im_start|>{% endfor %}");
    CHECK_NEAR(snap_get_gen_defaults(f)->temperature, 0.7, 1e-7);
    CHECK(isnan(snap_get_gen_defaults(f)->top_p));
    CHECK_INT(snap_get_gen_defaults(f)->stop_ids[0], 1);
    const snap_tensor *t = snap_tensor_find(f, "blk.1.ffn_down.weight");
    REQUIRE(t != NULL);
    CHECK_INT(t->dtype, SNAP_Q4);
    CHECK_INT(t->shape[0], EMBD);
    CHECK_INT(t->shape[1], FF);
    CHECK_INT(snap_tensor_find(f, "token_embd.weight")->dtype, SNAP_Q8);
    CHECK_INT(snap_tensor_find(f, "output_norm.weight")->dtype, SNAP_F32);
    CHECK(snap_tensor_find(f, "output.weight") == NULL);
    /* image order: embedding first, layers in order, the rest last */
    CHECK_STR(snap_tensor_at(f, 0)->name, "token_embd.weight");
    CHECK_STR(snap_tensor_at(f, snap_n_tensors(f) - 1)->name, "output_norm.weight");
    snap_close(f);
    unlink(p);
}

/* Loaded tensors equal the source converted independently of the packer's chunking. */
static void check_image_matches_source(const snap_file *f, const uint8_t *img, const tiny *src)
{
    for (size_t i = 0; i < src->m.n_tensors; i++) {
        const snap_src_tensor *s = &src->m.tensors[i];
        const snap_tensor *t = snap_tensor_find(f, s->name);
        REQUIRE(t != NULL);
        uint64_t cols = s->shape[s->n_dims - 1], rows = s->n_dims > 1 ? s->shape[0] : 1;
        const float *x = (const float *)s->data;
        float *back = malloc(cols * sizeof *back);
        uint8_t *blk = malloc(cols * 2 + 64);
        double max_err = 0;
        int exact = 1;
        for (uint64_t r = 0; r < rows; r++) {
            uint8_t *rowbuf = malloc(t->size / rows);
            const uint8_t *row = img + t->offset + r * (t->size / rows);
            if (t->dtype == SNAP_Q4 || t->dtype == SNAP_Q8) {
                row_as_blocks(t, img, r, rowbuf);
                row = rowbuf;
            }
            switch (t->dtype) {
            case SNAP_F32: exact &= memcmp(row, x + r * cols, cols * 4) == 0; break;
            case SNAP_Q8:
                snap_quant_q8_row(x + r * cols, blk, cols);
                exact &= memcmp(row, blk, t->size / rows) == 0;
                snap_dequant_q8_row(row, back, cols);
                break;
            case SNAP_Q4:
                snap_quant_q4_row(x + r * cols, blk, cols);
                exact &= memcmp(row, blk, t->size / rows) == 0;
                snap_dequant_q4_row(row, back, cols);
                break;
            case SNAP_F16:
                for (uint64_t j = 0; j < cols; j++) {
                    uint16_t h;
                    memcpy(&h, row + 2 * j, 2);
                    back[j] = snap_f16_to_f32(h);
                }
                break;
            }
            free(rowbuf);
            if (t->dtype != SNAP_F32)
                for (uint64_t j = 0; j < cols; j++)
                    if (fabs(back[j] - x[r * cols + j]) > max_err)
                        max_err = fabs(back[j] - x[r * cols + j]);
        }
        CHECK(exact);
        /* weights are in [-0.1, 0.1]: q4 step 0.2/15, half a step is the bound */
        double bound = t->dtype == SNAP_Q4 ? 0.2 / 15 / 2 + 1e-4 : t->dtype == SNAP_Q8 ? 0.1 / 127 / 2 + 1e-4 : 1e-4;
        if (!(max_err <= bound))
            fprintf(stderr, "  tensor %s (%s): max error %g > %g\n", s->name, snap_dtype_name(t->dtype), max_err, bound);
        CHECK(max_err <= bound);
        free(back);
        free(blk);
    }
}

static int copy_commit(void *ctx, uint32_t index, uint64_t off, void *buf, size_t raw)
{
    memcpy((uint8_t *)ctx + off, buf, raw);
    return 0;
}
static __thread uint8_t stage[4096];
static int stage_acquire(void *ctx, uint32_t index, size_t raw, void **buf)
{
    if (raw > sizeof stage)
        return -1;
    *buf = stage; /* per-thread staging buffer, reused: like a pinned ring slot */
    return 0;
}

static void test_load_modes_agree(void)
{
    for (uint32_t quant = SNAP_QUANT_Q4; quant <= SNAP_QUANT_F16; quant++) {
        const char *p = tmp_path("load.thaw");
        REQUIRE(pack_tiny(p, quant, SNAP_TARGET_CPU, 1) == 0);
        snap_file *f = NULL;
        snap_err err = {{0}};
        REQUIRE(snap_open(p, &f, &err) == 0);
        tiny src;
        tiny_init(&src, 1);
        snap_image *a = NULL, *b = NULL;
        snap_load_opts om = {.n_threads = 3, .io = SNAP_IO_MMAP, .verify = 1};
        snap_load_opts op = {.n_threads = 2, .io = SNAP_IO_PREAD, .verify = 1};
        snap_load_stats st;
        REQUIRE(snap_load_host(f, &om, &a, &st, &err) == 0);
        CHECK_INT(st.bytes_raw, snap_image_size(f));
        CHECK(st.n_chunks_raw + st.n_chunks_lz4 == snap_n_chunks(f));
        REQUIRE(snap_load_host(f, &op, &b, NULL, &err) == 0);
        CHECK(memcmp(a->data, b->data, a->size) == 0);
        uint8_t *c = calloc(1, snap_image_size(f));
        snap_sink sink = {c, stage_acquire, copy_commit, NULL};
        REQUIRE(snap_load_stream(f, &sink, &op, NULL, &err) == 0);
        CHECK(memcmp(a->data, c, a->size) == 0);
        memset(c, 0, snap_image_size(f));
        REQUIRE(snap_load_stream(f, &sink, &om, NULL, &err) == 0);
        CHECK(memcmp(a->data, c, a->size) == 0);
        check_image_matches_source(f, a->data, &src);
        CHECK(snap_verify(f, NULL, NULL, &err) == 0);
        free(c);
        snap_image_free(a);
        snap_image_free(b);
        tiny_free(&src);
        snap_close(f);
        unlink(p);
    }
}

static void test_codec_choice(void)
{
    /* zeros compress, random q4 does not: both codecs appear, each chosen by measurement */
    const char *p = tmp_path("codec.thaw");
    REQUIRE(pack_tiny(p, SNAP_QUANT_Q4, SNAP_TARGET_CPU, 1) == 0);
    snap_file *f = NULL;
    snap_err err;
    REQUIRE(snap_open(p, &f, &err) == 0);
    size_t n_lz4 = 0, n_raw = 0;
    for (size_t i = 0; i < snap_n_chunks(f); i++) {
        const snap_chunk *c = snap_chunk_at(f, i);
        CHECK(c->file_offset % 4096 == 0);
        if (c->codec == SNAP_CODEC_LZ4) {
            n_lz4++;
            CHECK(c->stored_size <= c->raw_size * 0.97);
        } else {
            n_raw++;
            CHECK_INT(c->stored_size, c->raw_size);
        }
    }
    CHECK(n_lz4 > 0);
    CHECK(n_raw > 0);
    /* the chunk that holds only q4 of random weights must be raw: find one inside blk.0.ffn_gate */
    const snap_tensor *g = snap_tensor_find(f, "blk.0.ffn_gate.weight");
    uint64_t first_full = (g->offset + 4095) / 4096;
    if ((first_full + 1) * 4096 <= g->offset + g->size)
        CHECK_INT(snap_chunk_at(f, first_full)->codec, SNAP_CODEC_RAW);
    snap_close(f);
    unlink(p);
}

static void test_split_layout(void)
{
    /* cuda target: same bytes as cpu, regrouped into planes */
    const char *pc = tmp_path("cpu.thaw"), *pg = tmp_path("cuda.thaw");
    REQUIRE(pack_tiny(pc, SNAP_QUANT_Q4, SNAP_TARGET_CPU, 0) == 0);
    REQUIRE(pack_tiny(pg, SNAP_QUANT_Q4, SNAP_TARGET_CUDA, 0) == 0);
    snap_file *fc = NULL, *fg = NULL;
    snap_err err;
    REQUIRE(snap_open(pc, &fc, &err) == 0);
    REQUIRE(snap_open(pg, &fg, &err) == 0);
    CHECK_INT(snap_target(fg), SNAP_TARGET_CUDA);
    snap_image *ic = NULL, *ig = NULL;
    REQUIRE(snap_load_host(fc, NULL, &ic, NULL, &err) == 0);
    REQUIRE(snap_load_host(fg, NULL, &ig, NULL, &err) == 0);
    for (size_t i = 0; i < snap_n_tensors(fc); i++) {
        const snap_tensor *a = snap_tensor_at(fc, i), *b = snap_tensor_find(fg, a->name);
        REQUIRE(b && a->size == b->size);
        if (a->dtype != SNAP_Q4 && a->dtype != SNAP_Q8) {
            CHECK_INT(b->layout, SNAP_LAYOUT_BLOCKS);
            CHECK(memcmp(ic->data + a->offset, ig->data + b->offset, a->size) == 0);
            continue;
        }
        CHECK_INT(b->layout, SNAP_LAYOUT_SPLIT);
        uint32_t bb = a->dtype == SNAP_Q4 ? 20 : 34, head = a->dtype == SNAP_Q4 ? 4 : 2, qb = bb - head;
        uint64_t nb = a->size / bb, rows = a->shape[0], row_bytes = a->size / rows;
        uint8_t *blocks = malloc(a->size);
        for (uint64_t r = 0; r < rows; r++)
            row_as_blocks(a, ic->data, r, blocks + r * row_bytes);
        const uint8_t *q = ig->data + b->offset, *sc = q + nb * qb, *mn = sc + nb * 2;
        int ok = 1;
        for (uint64_t k = 0; k < nb; k++) {
            ok &= memcmp(blocks + k * bb, sc + 2 * k, 2) == 0;
            if (a->dtype == SNAP_Q4)
                ok &= memcmp(blocks + k * bb + 2, mn + 2 * k, 2) == 0;
            ok &= memcmp(blocks + k * bb + head, q + k * qb, qb) == 0;
        }
        free(blocks);
        CHECK(ok);
    }
    snap_image_free(ic);
    snap_image_free(ig);
    snap_close(fc);
    snap_close(fg);
    unlink(pc);
    unlink(pg);
}

/* Opens a mutated copy; returns the code and leaves the message in err. */
static int open_bytes(const uint8_t *b, size_t len, snap_err *err)
{
    const char *p = tmp_path("bad.thaw");
    write_file(p, b, len);
    snap_file *f = NULL;
    memset(err, 0, sizeof *err);
    int rc = snap_open(p, &f, err);
    if (rc == 0) {
        /* the tables were fine: the data must still be checked */
        rc = snap_verify(f, NULL, NULL, err);
        snap_close(f);
    }
    unlink(p);
    return rc;
}

static void test_bad_files(void)
{
    snap_err err;
    snap_file *f = NULL;
    CHECK_INT(snap_open("/nonexistent/model.thaw", &f, &err), SNAP_EIO);
    CHECK_CONTAINS(err.msg, "/nonexistent/model.thaw");
    CHECK(f == NULL);

    const char *p = tmp_path("good.thaw");
    REQUIRE(pack_tiny(p, SNAP_QUANT_Q4, SNAP_TARGET_CPU, 1) == 0);
    size_t len;
    uint8_t *good = read_file(p, &len);
    REQUIRE(good != NULL);
    uint8_t *b = aligned_alloc(4096, (len + 4096) / 4096 * 4096);
    unlink(p);

    /* empty */
    CHECK_INT(open_bytes(good, 0, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "empty file");
    /* truncated anywhere: every 97th byte and around every page boundary */
    int all_clean = 1;
    for (size_t cut = 1; cut < len; cut += (cut % 4096 < 8 || cut % 4096 > 4088) ? 1 : 97) {
        int rc = open_bytes(good, cut, &err);
        if (rc != SNAP_EFORMAT && rc != SNAP_ECHECKSUM) {
            fprintf(stderr, "  truncation at %zu: rc %d (%s)\n", cut, rc, err.msg);
            all_clean = 0;
        }
    }
    CHECK(all_clean);
    CHECK_INT(open_bytes(good, len - 4096, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "truncated");

    /* bad magic */
    memcpy(b, good, len);
    b[0] = 'X';
    CHECK_INT(open_bytes(b, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "bad magic");
    /* newer version */
    memcpy(b, good, len);
    snap_wr32(b + 8, 2);
    reseal(b);
    CHECK_INT(open_bytes(b, len, &err), SNAP_EVERSION);
    CHECK_CONTAINS(err.msg, "version 2");
    /* header and metadata corruption */
    memcpy(b, good, len);
    b[50] ^= 1;
    CHECK_INT(open_bytes(b, len, &err), SNAP_ECHECKSUM);
    memcpy(b, good, len);
    b[4096 + 20] ^= 1;
    CHECK_INT(open_bytes(b, len, &err), SNAP_ECHECKSUM);
    CHECK_CONTAINS(err.msg, "metadata checksum");

    /* an unaligned buffer is refused with its name */
    snap_err e2;
    memcpy(b + 1, good, len - 1);
    CHECK_INT(snap_open_memory(b + 1, len - 1, "unaligned-buffer", &f, &e2), SNAP_EARG);
    CHECK_CONTAINS(e2.msg, "unaligned-buffer: buffer must be 8-byte aligned");

    /* a flipped byte in every chunk's data is caught, naming that chunk */
    REQUIRE(snap_open_memory(good, len, "x", &f, &e2) == 0);
    size_t n_chunks = snap_n_chunks(f);
    int named = 1;
    for (size_t i = 0; i < n_chunks; i++) {
        const snap_chunk *c = snap_chunk_at(f, i);
        memcpy(b, good, len);
        b[c->file_offset + c->stored_size / 2] ^= 0x40;
        int rc = open_bytes(b, len, &err);
        char want[64];
        snprintf(want, sizeof want, "chunk %zu at file offset %llu", i, (unsigned long long)c->file_offset);
        if (rc != SNAP_ECHECKSUM || !strstr(err.msg, want)) {
            fprintf(stderr, "  chunk %zu: rc %d, message: %s\n", i, rc, err.msg);
            named = 0;
        }
    }
    CHECK(named);
    CHECK_CONTAINS(err.msg, "checksum mismatch");

    uint64_t tt = snap_rd64(good + 72), ct = snap_rd64(good + 80);
    /* unknown tensor type */
    memcpy(b, good, len);
    snap_wr32(b + tt + 64, 99);
    reseal(b);
    CHECK_INT(open_bytes(b, len, &err), SNAP_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "token_embd.weight");
    /* tensor extents overlapping: move tensor 2 onto tensor 1 */
    memcpy(b, good, len);
    snap_wr64(b + tt + 2 * 128 + 112, snap_rd64(b + tt + 1 * 128 + 112));
    reseal(b);
    CHECK_INT(open_bytes(b, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "overlap");
    /* tensor past the end of the image */
    memcpy(b, good, len);
    snap_wr64(b + tt + 112, snap_align_up(snap_rd64(b + 48), 256));
    reseal(b);
    CHECK_INT(open_bytes(b, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "past the image");
    /* dimensions out of range */
    memcpy(b, good, len);
    snap_wr32(b + tt + 72, 7);
    reseal(b);
    CHECK_INT(open_bytes(b, len, &err), SNAP_EFORMAT);
    memcpy(b, good, len);
    snap_wr64(b + tt + 80, 1ull << 62);
    reseal(b);
    CHECK_INT(open_bytes(b, len, &err), SNAP_EFORMAT);
    /* config out of range */
    memcpy(b, good, len);
    snap_wr32(b + 4096 + 16 + 16, 0); /* n_layer = 0 */
    reseal(b);
    CHECK_INT(open_bytes(b, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "config out of range");
    /* chunk past the end of the file */
    memcpy(b, good, len);
    snap_wr64(b + ct + 32 * (n_chunks - 1), len);
    reseal(b);
    CHECK_INT(open_bytes(b, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "chunk");
    /* chunks overlapping */
    memcpy(b, good, len);
    snap_wr64(b + ct + 32 * 1, snap_rd64(b + ct));
    reseal(b);
    CHECK_INT(open_bytes(b, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "overlaps chunk 0");
    /* a raw chunk claiming another size */
    memcpy(b, good, len);
    snap_wr32(b + ct + 8, 100);
    reseal(b);
    CHECK_INT(open_bytes(b, len, &err), SNAP_EFORMAT);
    /* unknown codec */
    memcpy(b, good, len);
    snap_wr32(b + ct + 16, 7);
    reseal(b);
    CHECK_INT(open_bytes(b, len, &err), SNAP_EUNSUPPORTED);
    /* a missing required tensor: rename blk.0.ffn_up */
    memcpy(b, good, len);
    for (size_t i = 0; i < snap_n_tensors(f); i++)
        if (!strcmp((char *)b + tt + i * 128, "blk.0.ffn_up.weight"))
            memcpy(b + tt + i * 128, "blk.0.ffn_upx.weight", 21);
    reseal(b);
    CHECK_INT(open_bytes(b, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "missing tensor 'blk.0.ffn_up.weight'");
    snap_close(f);
    free(good);
    free(b);
}

static void test_pack_failure_leaves_nothing(void)
{
    const char *out = tmp_path("never.thaw");
    snap_err err;
    /* a source that does not exist, and a model that fails validation */
    CHECK(snap_pack("/nonexistent.gguf", out, NULL, &err) != 0);
    CHECK(access(out, F_OK) != 0);
    CHECK_INT(files_starting(out), 0); /* no temporary file left either */
    /* an unwritable destination */
    tiny t;
    tiny_init(&t, 0);
    CHECK_INT(snap_pack_model(&t.m, "/nonexistent-dir/x.thaw", NULL, &err), SNAP_EIO);
    CHECK_CONTAINS(err.msg, "/nonexistent-dir/x.thaw.");
    /* a weight beyond f16 range cannot be stored in a 16-bit scaled type */
    t.data[3][5] = 1e6f;
    CHECK_INT(snap_pack_model(&t.m, out, NULL, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "cannot be stored");
    CHECK(access(out, F_OK) != 0);
    tiny_free(&t);
}

int main(void)
{
    TEST_RUN(test_round_trip_metadata);
    TEST_RUN(test_load_modes_agree);
    TEST_RUN(test_codec_choice);
    TEST_RUN(test_split_layout);
    TEST_RUN(test_bad_files);
    TEST_RUN(test_pack_failure_leaves_nothing);
    TEST_END();
}
