/* snapshot.h -- the thaw snapshot: one file that is one deployable model.
 *
 * A snapshot holds the model config, the tokenizer, the chat template, generation
 * defaults, and the "device image": every tensor laid out exactly as the target
 * backend wants it in memory, cut into fixed-size chunks that are each stored raw or
 * LZ4-compressed, checksummed, and page-aligned in the file. snapshot/FORMAT.md
 * specifies the bytes; this header is the manual for code that reads or writes them.
 *
 * Lifecycle:
 *   snap_open()      reads and validates the header, tables and metadata (no tensor data).
 *   snap_load_host() materialises the image in host memory (CPU backend): raw chunks are
 *                    mapped in place from the file (zero copy), LZ4 chunks are decompressed.
 *   snap_load_stream() hands every chunk's raw bytes to a consumer (snap_sink), e.g. the
 *                    CUDA backend's pinned staging ring; decompression runs on worker threads.
 *   snap_verify()    checks every chunk checksum without keeping the data.
 *   snap_close()     releases the file.
 *
 * Errors: functions return 0 or a negative SNAP_E* code (-errno for system failures is
 * folded into SNAP_EIO with the errno text in the message). Every failing call that takes
 * a `snap_err *` fills it with one line naming the file and, where it applies, the chunk,
 * tensor and offset. Thread-safety: a snap_file is immutable after snap_open and may be
 * read from many threads; loads on the same file must not run concurrently.
 */
#ifndef THAW_SNAPSHOT_H
#define THAW_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

/* ---- error codes: one list makes the enum and the strings -------------------------- */
#define SNAP_ERRORS(X)                                                     \
    X(SNAP_OK, 0, "ok")                                                    \
    X(SNAP_EIO, -1, "i/o error")                                           \
    X(SNAP_ENOMEM, -2, "out of memory")                                    \
    X(SNAP_EFORMAT, -3, "malformed file")                                  \
    X(SNAP_EVERSION, -4, "unsupported format version")                     \
    X(SNAP_ECHECKSUM, -5, "checksum mismatch")                             \
    X(SNAP_EUNSUPPORTED, -6, "unsupported model or tensor type")           \
    X(SNAP_EARG, -7, "invalid argument")                                   \
    X(SNAP_ESINK, -8, "consumer failed")                                  \
    X(SNAP_ENET, -9, "network or remote source error")

enum snap_status {
#define SNAP_X_ENUM(name, value, text) name = value,
    SNAP_ERRORS(SNAP_X_ENUM)
#undef SNAP_X_ENUM
};

/* Human-readable text for a SNAP_E* code. Never NULL. */
const char *snap_strerror(int code);

/* One line describing what went wrong and where. Filled by failing calls; may be NULL. */
typedef struct snap_err {
    char msg[512];
} snap_err;

/* ---- persisted enums (values are part of the file format: only ever add) ------------- */
enum snap_arch { SNAP_ARCH_LLAMA = 1, SNAP_ARCH_QWEN2 = 2 };

/* How RoPE pairs dimensions: NORM rotates (2i, 2i+1) (GGUF Llama, Q/K pre-permuted);
 * NEOX rotates (i, i + head_dim/2) (Hugging Face Llama layout, Qwen2). */
enum snap_rope_style { SNAP_ROPE_NORM = 0, SNAP_ROPE_NEOX = 1 };
enum snap_rope_scaling { SNAP_ROPE_SCALING_NONE = 0, SNAP_ROPE_SCALING_LINEAR = 1, SNAP_ROPE_SCALING_LLAMA3 = 2 };

enum snap_config_flags { SNAP_FLAG_TIED_EMBED = 1u << 0, SNAP_FLAG_QKV_BIAS = 1u << 1 };

/* Tensor element types in the image.
 * Q8: blocks of 32 weights: f16 scale d, 32 x int8 q; w = d * q.          (34 bytes/block)
 * Q4: blocks of 32 weights: f16 scale d, f16 minimum m, 16 bytes of nibbles;
 *     element j < 16 is the low nibble of byte j, element j >= 16 the high nibble of
 *     byte j - 16; w = d * q + m.                                           (20 bytes/block)
 * The layout (FORMAT.md) says whether blocks are stored whole or split into planes. */
enum snap_dtype { SNAP_F32 = 0, SNAP_F16 = 1, SNAP_BF16 = 2, SNAP_Q8 = 3, SNAP_Q4 = 4, SNAP_DTYPE_COUNT };

/* BLOCKS: each row is an array of whole blocks (ggml-compatible).
 * SPLIT:  per tensor, three planes: all quants (row-major), then all f16 scales
 *         [rows][cols/32], then (Q4 only) all f16 minimums [rows][cols/32] (the CUDA
 *         layout: 16-byte aligned loads of quants, scales read separately).
 * R16:    rows in groups of 16, each group's blocks interleaved so one 64-byte load holds
 *         4 bytes of every row (the CPU layout: FORMAT.md; 2-D, rows a multiple of 16). */
enum snap_layout { SNAP_LAYOUT_BLOCKS = 0, SNAP_LAYOUT_SPLIT = 1, SNAP_LAYOUT_R16 = 2 };
#define SNAP_R16_ROWS 16
#define SNAP_R16_Q4_UNIT 320 /* bytes per block of a 16-row group: 256 quants + 16 d + 16 m (f16) */
#define SNAP_R16_Q8_UNIT 544 /* 512 quants + 16 d */

enum snap_target { SNAP_TARGET_CPU = 0, SNAP_TARGET_CUDA = 1 };
enum snap_quant { SNAP_QUANT_Q4 = 0, SNAP_QUANT_Q8 = 1, SNAP_QUANT_F16 = 2 };
enum snap_codec { SNAP_CODEC_RAW = 0, SNAP_CODEC_LZ4 = 1 };

enum snap_tok_model { SNAP_TOK_BPE = 1 /* byte-level BPE (GPT-2 style) */, SNAP_TOK_SPM = 2 /* SentencePiece BPE */ };
/* Where SentencePiece puts a "▁" before the text (a vocab's add_space_prefix). */
enum snap_space_prefix {
    SNAP_SPACE_NONE = 0,
    SNAP_SPACE_LEGACY = 1, /* at the start and after every added token (llama.cpp; HF's Prepend normalizer) */
    SNAP_SPACE_ALWAYS = 2, /* HF Metaspace "always": as LEGACY, but not where the piece starts with a space */
    SNAP_SPACE_FIRST = 3,  /* HF Metaspace "first": only at the text's start, unless it starts with a space */
};

enum snap_tok_pre {
    SNAP_PRE_NONE = 0,   /* SentencePiece: no pre-tokenizer, spaces become U+2581 */
    SNAP_PRE_GPT2 = 1,   /* GPT-2 regex */
    SNAP_PRE_SMOLLM = 2, /* digits split individually, then the GPT-2 regex (SmolLM/StarCoder) */
    SNAP_PRE_LLAMA3 = 3, /* Llama 3 regex (numbers in runs of 1-3) */
    SNAP_PRE_QWEN2 = 4,  /* Qwen2 regex (single digits) */
};
/* Token types, GGUF's values. */
enum snap_tok_type {
    SNAP_TOKT_NORMAL = 1, SNAP_TOKT_UNKNOWN = 2, SNAP_TOKT_CONTROL = 3,
    SNAP_TOKT_USER_DEFINED = 4, SNAP_TOKT_UNUSED = 5, SNAP_TOKT_BYTE = 6,
};

#define SNAP_NAME_MAX 64      /* tensor name including the terminating NUL */
#define SNAP_MAX_DIMS 4
#define SNAP_MAX_STOP_IDS 8
#define SNAP_QBLOCK 32        /* weights per Q4/Q8 block */
#define SNAP_Q4_BLOCK_BYTES 20
#define SNAP_Q8_BLOCK_BYTES 34

/* ---- the model, as stored --------------------------------------------------------- */
typedef struct snap_config {
    uint32_t arch;          /* enum snap_arch */
    uint32_t n_vocab;
    uint32_t n_ctx_train;   /* context length the model was trained for */
    uint32_t n_embd;
    uint32_t n_layer;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t head_dim;
    uint32_t n_ff;
    uint32_t rope_style;    /* enum snap_rope_style */
    uint32_t rope_scaling;  /* enum snap_rope_scaling */
    uint32_t rope_orig_ctx; /* LLAMA3 scaling: original_max_position_embeddings */
    float rope_theta;
    float rope_factor;      /* LINEAR/LLAMA3 scaling factor, 1 otherwise */
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    float rms_eps;
    uint32_t flags;         /* enum snap_config_flags */
    char name[64];          /* NUL-terminated display name ("SmolLM2-135M-Instruct") */
} snap_config;              /* 136 bytes on disk, see FORMAT.md */

typedef struct snap_gen_defaults {
    float temperature;      /* NaN = not set by the model */
    float top_p;            /* NaN = not set */
    int32_t top_k;          /* -1 = not set */
    float repetition_penalty; /* NaN = not set */
    uint32_t n_stop_ids;    /* end-of-generation token ids besides eos */
    int32_t stop_ids[SNAP_MAX_STOP_IDS];
} snap_gen_defaults;        /* 52 bytes on disk */

/* The tokenizer's data; arrays point into the snapshot's mapping (or, while packing, into
 * the source's memory). Token i's text is blob[offsets[i] .. offsets[i+1]). */
typedef struct snap_vocab {
    uint32_t model;         /* enum snap_tok_model */
    uint32_t pre;           /* enum snap_tok_pre */
    uint32_t n_tokens;
    uint32_t n_merges;
    int32_t bos_id, eos_id, eot_id, unk_id, pad_id; /* -1 = none */
    uint8_t add_bos, add_eos;
    uint8_t add_space_prefix; /* SentencePiece: enum snap_space_prefix */
    uint8_t spm_split;        /* SentencePiece: every "▁" starts a new piece for the merges (Metaspace split) */
    const uint32_t *offsets; /* [n_tokens + 1] */
    const char *blob;        /* [offsets[n_tokens]] token bytes, as the source vocab spells them */
    const float *scores;     /* [n_tokens] SentencePiece scores, or NULL */
    const uint8_t *types;    /* [n_tokens] enum snap_tok_type */
    const uint32_t *merges;  /* [n_merges][2] (left id, right id), in rank order */
} snap_vocab;

typedef struct snap_tensor {
    char name[SNAP_NAME_MAX]; /* GGUF-style canonical name: "blk.3.attn_q.weight" */
    uint32_t dtype;           /* enum snap_dtype */
    uint32_t layout;          /* enum snap_layout */
    uint32_t n_dims;
    uint64_t shape[SNAP_MAX_DIMS]; /* outermost first; shape[n_dims-1] is contiguous */
    uint64_t offset;          /* byte offset in the image (256-aligned) */
    uint64_t size;            /* bytes in the image */
} snap_tensor;

typedef struct snap_chunk {
    uint64_t file_offset;     /* page-aligned */
    uint32_t stored_size;     /* bytes in the file */
    uint32_t raw_size;        /* bytes of image it yields */
    uint32_t codec;           /* enum snap_codec */
    uint32_t reserved;
    uint64_t checksum;        /* XXH3-64 of the stored bytes */
} snap_chunk;

typedef struct snap_file snap_file;

/* ---- opening and reading ------------------------------------------------------------ */

/* Open and validate `path`: header, metadata, tensor table and chunk table are checked
 * for every bound and overlap (no tensor data is read). On success *out owns the file
 * (close with snap_close). Returns 0, SNAP_EIO, SNAP_EFORMAT, SNAP_EVERSION,
 * SNAP_ECHECKSUM (metadata), SNAP_EUNSUPPORTED or SNAP_ENOMEM. */
int snap_open(const char *path, snap_file **out, snap_err *err);

/* Validate a snapshot held in memory (len bytes at buf, not copied: it must outlive the
 * handle). Used by the fuzz target and by sources that are not files. Loads need a file. */
int snap_open_memory(const void *buf, size_t len, const char *name, snap_file **out, snap_err *err);

void snap_close(snap_file *f); /* accepts NULL */

const char *snap_path(const snap_file *f);
uint32_t snap_version(const snap_file *f);
uint32_t snap_target(const snap_file *f);     /* enum snap_target */
uint32_t snap_quant(const snap_file *f);      /* enum snap_quant */
uint64_t snap_file_size(const snap_file *f);
uint64_t snap_image_size(const snap_file *f);
uint32_t snap_chunk_size(const snap_file *f); /* raw bytes per chunk (last may be shorter) */
const snap_config *snap_get_config(const snap_file *f);
const snap_vocab *snap_get_vocab(const snap_file *f);
const snap_gen_defaults *snap_get_gen_defaults(const snap_file *f);
const char *snap_chat_template(const snap_file *f); /* "" when the model has none */

size_t snap_n_tensors(const snap_file *f);
const snap_tensor *snap_tensor_at(const snap_file *f, size_t i);
const snap_tensor *snap_tensor_find(const snap_file *f, const char *name); /* NULL if absent */
/* Weight bytes one decoded token reads: every tensor, but of the embedding table only the row
 * it looks up, unless the table is also the output head (the benches' memory roofline). */
uint64_t snap_decode_bytes(const snap_file *f);
size_t snap_n_chunks(const snap_file *f);
const snap_chunk *snap_chunk_at(const snap_file *f, size_t i);

/* Bytes a tensor of this dtype/shape occupies (0 if the shape is invalid for the dtype). */
uint64_t snap_tensor_bytes(uint32_t dtype, uint32_t n_dims, const uint64_t *shape);
const char *snap_dtype_name(uint32_t dtype);
/* IEEE binary16 <-> binary32 (round to nearest even), as the format stores scales and f16 tensors. */
float snap_f16_to_f32(uint16_t h);
uint16_t snap_f32_to_f16(float f);
/* Row `row` of a 2-D tensor (or the whole of a 1-D one) as floats, out[shape[n_dims-1]],
 * whatever its type and layout; `image` is the loaded image. */
void snap_tensor_row_f32(const snap_tensor *t, const uint8_t *image, uint64_t row, float *out);

/* R16 (FORMAT.md) for a Q4 / Q8 matrix of nb blocks per row: put / get row r's block b as
 * its f16 d, f16 m (Q4) and 32 plain quant values (Q4 0..15, Q8 -128..127). Rows past the
 * matrix in its last group are zero. */
void snap_r16_put(uint8_t *dst, uint32_t dtype, uint64_t nb, uint64_t r, uint64_t b, uint16_t d, uint16_t m,
                  const int8_t q[32]);
void snap_r16_get(const uint8_t *src, uint32_t dtype, uint64_t nb, uint64_t r, uint64_t b, uint16_t *d, uint16_t *m,
                  int8_t q[32]);
/* A rows x cols Q4/Q8 matrix stored as BLOCKS or SPLIT (layout), rearranged into R16 in dst
 * (snap_r16_bytes; rows past the matrix in its last group zero). */
void snap_to_r16(uint32_t dtype, uint32_t layout, uint64_t rows, uint64_t cols, const uint8_t *src, uint8_t *dst);
/* An R16 matrix t's bytes as SPLIT (the same size): a snapshot packed for the CPU on a GPU. */
void snap_r16_to_split(const snap_tensor *t, const uint8_t *src, uint8_t *dst);
/* Bytes of an R16 matrix: ceil(rows / 16) * 16 rows. */
uint64_t snap_r16_bytes(uint32_t dtype, uint64_t rows, uint64_t cols);
const char *snap_arch_name(uint32_t arch);

/* ---- loading ------------------------------------------------------------------------ */

/* Per-phase timings and byte counts of one load. Times are wall-clock seconds summed over
 * worker threads for read/decompress/checksum/sink, and wall-clock for total. */
typedef struct snap_load_stats {
    double total_s;
    double read_s;          /* pread / page faults of stored bytes */
    double decompress_s;
    double checksum_s;
    double sink_s;          /* time spent inside the consumer's callbacks */
    uint64_t bytes_stored;  /* bytes read from the file */
    uint64_t bytes_raw;     /* image bytes produced */
    uint32_t n_chunks_raw, n_chunks_lz4;
    uint32_t n_threads;
    uint32_t io;            /* the read mode used (enum snap_io, AUTO resolved) */
} snap_load_stats;

enum snap_io { SNAP_IO_AUTO = 0, SNAP_IO_MMAP = 1, SNAP_IO_PREAD = 2 };

typedef struct snap_load_opts {
    uint32_t n_threads;     /* 0 = number of online CPUs (capped at 16) */
    uint32_t io;            /* enum snap_io; AUTO = the measured faster one (load.c) */
    int verify;             /* nonzero: check every checksum (the default for serving) */
} snap_load_opts;

/* The image in host memory. data[0 .. size) is readable for the handle's lifetime; raw
 * chunks alias the file's page cache (MAP_PRIVATE, read-only). */
typedef struct snap_image {
    const uint8_t *data;
    uint64_t size;
    void *priv_;            /* owned by the loader */
} snap_image;

/* Load the whole image into host memory. *out owns it (free with snap_image_free).
 * Returns 0, SNAP_EIO, SNAP_ECHECKSUM (message names the chunk and its file offset),
 * SNAP_EFORMAT (a chunk that does not decompress to its raw size), SNAP_ENOMEM. */
int snap_load_host(snap_file *f, const snap_load_opts *opts, snap_image **out,
                   snap_load_stats *stats, snap_err *err);
void snap_image_free(snap_image *img); /* accepts NULL */

/* A consumer of chunks (a backend's upload path). Callbacks run on loader worker threads,
 * concurrently for different chunks; chunks arrive in no particular order.
 *   acquire: give a writable buffer of at least `raw_size` bytes for chunk `index` (may
 *            block until one is free: this is how a small staging ring applies back-pressure).
 *   commit:  the buffer now holds the chunk's verified raw bytes, destined for image bytes
 *            [image_offset, image_offset + raw_size). The consumer owns the buffer again and
 *            releases it when its copy is done.
 *   finish:  optional (may be NULL): all chunks committed; wait for outstanding copies.
 * A nonzero return aborts the load with SNAP_ESINK. */
typedef struct snap_sink {
    void *ctx;
    int (*acquire)(void *ctx, uint32_t index, size_t raw_size, void **buf);
    int (*commit)(void *ctx, uint32_t index, uint64_t image_offset, void *buf, size_t raw_size);
    int (*finish)(void *ctx);
} snap_sink;

int snap_load_stream(snap_file *f, const snap_sink *sink, const snap_load_opts *opts,
                     snap_load_stats *stats, snap_err *err);

/* Read and check every chunk's checksum and decompressed size. On the first bad chunk
 * returns SNAP_ECHECKSUM or SNAP_EFORMAT with a message naming chunk, file offset and the
 * tensors it holds. */
int snap_verify(snap_file *f, const snap_load_opts *opts, snap_load_stats *stats, snap_err *err);

/* ---- packing ------------------------------------------------------------------------ */

typedef struct snap_pack_opts {
    uint32_t quant;         /* enum snap_quant */
    uint32_t target;        /* enum snap_target */
    uint32_t chunk_size;    /* 0 = default (4 MiB); must be a multiple of 4096 */
    int progress;           /* 1 = progress line on stderr (the CLI sets it for a TTY) */
    const char *name;       /* display name override, or NULL */
    /* generation defaults to record instead of the source's (e.g. a model card's
     * recommended sampling, which GGUF files rarely carry); bits of gen_set say which */
    snap_gen_defaults gen;
    uint32_t gen_set;       /* SNAP_GEN_SET_* */
} snap_pack_opts;

enum { SNAP_GEN_SET_TEMPERATURE = 1, SNAP_GEN_SET_TOP_P = 2, SNAP_GEN_SET_TOP_K = 4, SNAP_GEN_SET_REPETITION = 8 };

/* Pack a GGUF file or a Hugging Face model folder at `src` into a snapshot at `out`.
 * The output is written to a temporary file beside it (`out`.XXXXXX.tmp, made anew) and
 * renamed on success, so a failure leaves no partial file. */
int snap_pack(const char *src, const char *out, const snap_pack_opts *opts, snap_err *err);

/* Pack a synthetic model: random weights (deterministic, seeded by tensor name and row) with
 * the exact config, tensor names and shapes of a real model, and a byte-level vocabulary of
 * its size (bytes, then "<tok_N>" fillers, then ChatML control tokens). For measuring real
 * sizes where the weights cannot be fetched. Weights are generated row by row while packing:
 * memory stays bounded by the largest tensor's stored bytes. Returns as snap_pack, or
 * SNAP_EARG for an unknown name. */
int snap_pack_synthetic(const char *name, const char *out, const snap_pack_opts *opts, snap_err *err);
/* NULL-terminated list of the synthetic model names ("smollm2-135m", ...). */
const char *const *snap_synthetic_names(void);

/* ---- remote sources (remote.c) ------------------------------------------------------
 * A model source is a local path (image layer, OSS/NAS mount), an http(s):// URL or
 * oss://bucket/key. Remote sources are downloaded with parallel ranged GETs (libcurl), each
 * range retried from where its connection dropped, into an anonymous in-memory file
 * (memfd) whose /proc/self/fd path snap_open maps like any file: zero copy on the CPU
 * backend and no temporary file on disk. With a cache directory the file is written there
 * instead (atomically, after its checksums verify) and reused next time if it still
 * verifies; the cache key is the URL, so publish changed snapshots under new names.
 * Integrity is the snapshot's own: the header, tables and every chunk carry checksums
 * checked by snap_open / the loads, so a corrupt download never loads.
 *
 * oss:// requests are signed (OSS V1: HMAC-SHA1, "Authorization: OSS id:signature") with
 * ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET and, when set, ALIBABA_CLOUD_SECURITY_TOKEN (the
 * FC function role's temporary credentials); without a key id they are anonymous.
 * THAW_OSS_DEBUG=1 prints each string-to-sign (token redacted) and signature on stderr. */

typedef struct snap_fetch_opts {
    uint32_t n_conns;          /* parallel connections, 0 = $THAW_FETCH_CONNS, else 8 */
    uint32_t range_bytes;      /* bytes per ranged GET, 0 = $THAW_FETCH_RANGE_BYTES, else
                                * 16 MiB; at most 1 GiB, rounded up to 64 KiB */
    uint32_t max_retries;      /* attempts without progress per range before failing, 0 = 6 */
    const char *oss_endpoint;  /* "oss-cn-hangzhou-internal.aliyuncs.com" or with a scheme
                                * ("http://127.0.0.1:9000": IP/localhost hosts use path-style
                                * URLs); NULL = $THAW_OSS_ENDPOINT, else the FC region's
                                * internal endpoint from $FC_REGION */
    const char *cache_dir;     /* NULL = in memory (memfd) */
    int verbose;               /* 1 = one summary line per download on stderr */
} snap_fetch_opts;

typedef struct snap_fetch_stats {
    uint64_t bytes;            /* bytes received into the file */
    uint32_t n_requests;       /* GETs issued, retries included */
    uint32_t n_retries;
    double total_s;
    int from_cache;            /* 1 = an existing cache file verified and was reused */
} snap_fetch_stats;

/* Nonzero when `src` names a remote source (http://, https://, oss://). */
int snap_is_remote(const char *src);

/* Make `src` openable by snap_open: writes a local path into path_out[path_cap].
 *   local path: copied unchanged; *fd_out = -1.
 *   remote, no cache_dir: downloaded into a memfd; path_out = "/proc/self/fd/N" and
 *     *fd_out = N. The caller keeps N open until snap_open (or eng_model_open) has opened
 *     the path, then closes it (the open file keeps the memory alive).
 *   remote with cache_dir: path_out = the cache file; *fd_out = -1.
 * opts may be NULL (defaults); stats may be NULL. Blocking; thread-safe (no shared
 * state beyond curl's one-time global init). Returns 0, SNAP_ENET (message names the URL,
 * without its query string, and the HTTP status or transfer error), SNAP_EARG (malformed
 * source, missing OSS endpoint), SNAP_EIO (memfd/cache file), SNAP_ENOMEM. */
int snap_fetch(const char *src, const snap_fetch_opts *opts, char *path_out, size_t path_cap, int *fd_out,
               snap_fetch_stats *stats, snap_err *err);

/* snap_fetch + snap_open: the one call a command needs. The returned file does not depend
 * on any descriptor the caller must keep. */
int snap_open_source(const char *src, const snap_fetch_opts *opts, snap_file **out, snap_fetch_stats *stats,
                     snap_err *err);

/* OSS V1 signature of `string_to_sign` with `secret`: base64(HMAC-SHA1), written to
 * out[out_cap] (29 bytes suffice). Exposed for tests. Returns 0 or SNAP_EARG. */
int snap_oss_sign(const char *secret, const char *string_to_sign, char *out, size_t out_cap);

#endif
