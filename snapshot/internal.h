/* internal.h -- shared inside snapshot/: the source model that readers (GGUF, Hugging
 * Face folder, synthetic) produce and the packer consumes, plus numeric helpers. */
#ifndef THAW_SNAPSHOT_INTERNAL_H
#define THAW_SNAPSHOT_INTERNAL_H

#include "snapshot.h"

#include <stdarg.h>
#include <stdbool.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Always-on assert for states that cannot happen whatever the input. */
#define SNAP_ASSERT(c)                                                                \
    do {                                                                              \
        if (!(c)) {                                                                   \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                                  \
        }                                                                             \
    } while (0)

/* Element types of tensors in source files (GGUF or safetensors). */
enum snap_src_type {
    SRC_F32, SRC_F16, SRC_BF16, SRC_Q8_0, SRC_Q4_0, SRC_Q4_1, SRC_Q4_K, SRC_Q6_K, SRC_TYPE_COUNT
};

struct snap_src_tensor;
/* Generates row `row` of a tensor as floats, out[cols] (synthetic models: weights made on the
 * fly so that an 8B-shape model packs in bounded memory). */
typedef void (*snap_src_gen_fn)(const struct snap_src_tensor *t, uint64_t row, float *out, uint64_t cols);

typedef struct snap_src_tensor {
    char name[SNAP_NAME_MAX];      /* canonical GGUF-style name */
    uint32_t type;                 /* enum snap_src_type */
    uint32_t n_dims;
    uint64_t shape[SNAP_MAX_DIMS]; /* outermost first; last dimension contiguous */
    const uint8_t *data;           /* source bytes, inside the reader's mapping */
    uint64_t n_bytes;
    snap_src_gen_fn gen;           /* when set: rows come from gen() as f32, and data/n_bytes
                                    * are unused (type must be SRC_F32) */
} snap_src_tensor;

/* A model as read from its source. Everything a reader allocates hangs off `owned`
 * (freed by snap_src_free); tensor data and vocab arrays may point into mappings listed
 * in `maps`. */
typedef struct snap_src_model {
    snap_config config;
    snap_vocab vocab;              /* arrays owned by the reader (see owned) */
    snap_gen_defaults gen;
    char *chat_template;           /* malloc'd, NUL-terminated, or NULL; freed by snap_src_free
                                    * directly (do not also register it with snap_src_own) */
    snap_src_tensor *tensors;      /* malloc'd [n_tensors] */
    size_t n_tensors;
    /* owned memory and mappings, released by snap_src_free */
    void **owned;
    size_t n_owned, cap_owned;
    struct { void *addr; size_t len; } *maps;
    size_t n_maps, cap_maps;
} snap_src_model;

void snap_src_init(snap_src_model *m);
void snap_src_free(snap_src_model *m);
/* Register malloc'd memory / an mmap with the model so snap_src_free releases it.
 * Returns 0 or SNAP_ENOMEM (in which case the caller still owns p). */
int snap_src_own(snap_src_model *m, void *p);
int snap_src_own_map(snap_src_model *m, void *addr, size_t len);
/* Append a tensor (copied). Returns 0 or SNAP_ENOMEM. */
int snap_src_add_tensor(snap_src_model *m, const snap_src_tensor *t);
const snap_src_tensor *snap_src_find(const snap_src_model *m, const char *name);
/* Checks the model is complete and consistent for its architecture (every tensor the
 * forward pass needs, with the shapes the config implies). Fills err naming the tensor. */
int snap_src_validate(const snap_src_model *m, const char *path, snap_err *err);

/* Readers. Each fills a zeroed (snap_src_init) model from `path`; on failure the model
 * may hold partial state that snap_src_free releases. Messages name the file, and the
 * key/tensor/offset at fault. */
int snap_read_gguf(const char *path, snap_src_model *m, snap_err *err);
int snap_read_gguf_memory(const uint8_t *buf, size_t len, const char *name, snap_src_model *m, snap_err *err);
int snap_read_hf(const char *dir, snap_src_model *m, snap_err *err);

/* Synthetic models (synth.c): random weights with the exact shapes of a real model.
 * Fills a zeroed model for `name` (see snap_synthetic_names) or fails with SNAP_EARG. */
int snap_synth_model(const char *name, snap_src_model *m, snap_err *err);

/* Pack an already-read model (snap_pack = a reader + this). */
int snap_pack_model(const snap_src_model *m, const char *out, const snap_pack_opts *opts, snap_err *err);

/* Source element types: block size in elements and bytes per block. */
uint32_t snap_src_block_elems(uint32_t type);
uint32_t snap_src_block_bytes(uint32_t type);
const char *snap_src_type_name(uint32_t type);
/* Bytes of a source tensor with n elements (0 if n is not a whole number of blocks). */
uint64_t snap_src_bytes(uint32_t type, uint64_t n_elems);

/* Dequantize n elements (n a multiple of the type's block) of `src` to f32 exactly as the
 * GGUF/ggml format defines each type. */
void snap_dequant_row(uint32_t type, const void *src, float *dst, uint64_t n);

/* Quantize n floats (n a multiple of 32) into Q4 / Q8 blocks (BLOCKS layout). */
void snap_quant_q4_row(const float *src, uint8_t *dst, uint64_t n);
void snap_quant_q8_row(const float *src, uint8_t *dst, uint64_t n);
/* Dequantize our own Q4 / Q8 blocks (BLOCKS layout). */
void snap_dequant_q4_row(const uint8_t *src, float *dst, uint64_t n);
void snap_dequant_q8_row(const uint8_t *src, float *dst, uint64_t n);

float snap_bf16_to_f32(uint16_t h);
uint16_t snap_f32_to_bf16(float f);  /* round to nearest even */

/* Checks a config's values are in range and the model's tensors exist with the shapes it
 * implies. `shape_of` looks a tensor up by name: returns 0 and fills n_dims/shape, or -1
 * when absent. Shared by the packer's readers and snap_open. */
typedef int (*snap_shape_fn)(const void *ctx, const char *name, uint32_t *n_dims, const uint64_t **shape);
int snap_model_check(const snap_config *c, uint32_t n_tokens, snap_shape_fn shape_of, const void *ctx,
                     const char *path, snap_err *err);

/* On-disk sizes (FORMAT.md). */
#define SNAP_MAGIC "THAWSNAP"
#define SNAP_VERSION 1
#define SNAP_PAGE 4096u
#define SNAP_HEADER_BYTES 128u
#define SNAP_SECTION_HEAD_BYTES 16u
#define SNAP_TENSOR_ENTRY_BYTES 128u
#define SNAP_CHUNK_ENTRY_BYTES 32u
#define SNAP_CONFIG_BYTES 136u
#define SNAP_GEN_BYTES 52u
#define SNAP_VOCAB_HEAD_BYTES 48u
#define SNAP_TENSOR_ALIGN 256u
#define SNAP_DEFAULT_CHUNK (4u << 20)
enum snap_section_tag { SNAP_SEC_CONFIG = 1, SNAP_SEC_VOCAB = 2, SNAP_SEC_CHAT_TEMPLATE = 3, SNAP_SEC_GEN = 4 };

static inline uint64_t snap_align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }
static inline uint32_t snap_rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t snap_rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void snap_wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void snap_wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* file.c internals for load.c: the open descriptor (-1 for memory) and the whole-file mapping. */
int snap_file_fd(const snap_file *f);
const uint8_t *snap_file_base(const snap_file *f);

/* Formats into err (if not NULL) and returns code. */
int snap_fail(snap_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* After renaming a finished file into place: fsync its directory, so the new name survives a
 * crash too. Best effort (some filesystems cannot sync a directory; the file itself is synced). */
int snap_sync_dir(const char *path); /* 0 or -errno */

/* A small open-addressing map from byte strings to ids (tokens -> id, for merges). Keys
 * are not copied: they must outlive the map. */
typedef struct snap_strmap {
    uint32_t cap;                  /* power of two */
    uint32_t *slots;               /* id + 1, 0 = empty */
    const uint32_t *offsets;       /* key i is blob[offsets[i] .. offsets[i+1]) */
    const char *blob;
} snap_strmap;
int snap_strmap_build(snap_strmap *map, const uint32_t *offsets, const char *blob, uint32_t n);
int32_t snap_strmap_get(const snap_strmap *map, const char *key, size_t len); /* -1 if absent */
void snap_strmap_free(snap_strmap *map);

#endif
