/* fuzz_snapshot.c -- libFuzzer target: snapshot header, sections and tables (snap_open). */
#include "snapshot.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the reader uses the tables in place and needs 8-byte alignment, as a mapping has */
    void *buf = aligned_alloc(8, (size + 8) / 8 * 8);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    snap_file *f = NULL;
    snap_err err;
    if (snap_open_memory(buf, size, "fuzz", &f, &err) == 0) {
        /* walk what a consumer would walk */
        const snap_vocab *v = snap_get_vocab(f);
        size_t total = 0;
        for (uint32_t i = 0; i < v->n_tokens; i++)
            total += v->offsets[i + 1] - v->offsets[i];
        for (size_t i = 0; i < snap_n_tensors(f); i++)
            total += snap_tensor_find(f, snap_tensor_at(f, i)->name) != NULL;
        (void)total;
        snap_close(f);
    }
    free(buf);
    return 0;
}
