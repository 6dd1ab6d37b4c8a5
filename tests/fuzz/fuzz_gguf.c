/* fuzz_gguf.c -- libFuzzer target: the GGUF reader (snap_read_gguf_memory), then a walk
 * over what it returned, so a tensor extent or vocab offset that escapes the input shows
 * up as an out-of-bounds read under ASan. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* Dequantize the first and last row of a tensor: touches its first and last data bytes. */
static void touch_tensor(const snap_src_tensor *t)
{
    uint64_t row = t->shape[t->n_dims - 1], n = 1;
    for (uint32_t d = 0; d < t->n_dims; d++)
        n *= t->shape[d];
    if (row == 0 || n == 0 || row > (1u << 22))
        return;
    float *buf = malloc(row * sizeof *buf);
    if (!buf)
        return;
    uint64_t row_bytes = snap_src_bytes(t->type, row);
    snap_dequant_row(t->type, t->data, buf, row);
    snap_dequant_row(t->type, t->data + t->n_bytes - row_bytes, buf, row);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exactly sized copy: the reader must never read past it */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    snap_src_model m;
    snap_src_init(&m);
    snap_err err;
    if (snap_read_gguf_memory(buf, size, "fuzz.gguf", &m, &err) == 0) {
        const snap_vocab *v = &m.vocab;
        size_t total = 0;
        for (uint32_t i = 0; i < v->n_tokens; i++)
            total += (size_t)(v->offsets[i + 1] - v->offsets[i]) + v->types[i] +
                     (v->scores ? (v->scores[i] > 0) : 0);
        if (v->n_tokens && v->offsets[v->n_tokens])
            total += (uint8_t)v->blob[v->offsets[v->n_tokens] - 1]; /* the blob's last byte */
        for (uint32_t i = 0; i < 2 * v->n_merges; i++)
            total += v->merges[i] < v->n_tokens;
        if (m.chat_template)
            total += strlen(m.chat_template);
        for (size_t i = 0; i < m.n_tensors; i++)
            touch_tensor(&m.tensors[i]);
        (void)total;
    }
    snap_src_free(&m);
    free(buf);
    return 0;
}
