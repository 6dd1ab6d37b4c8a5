/* kv.c -- the KV block manager: fixed blocks of 16 token positions in the backend's pool,
 * reference counts, and a prefix cache of full blocks keyed by their content.
 *
 * Design notes
 *   A block is in exactly one of three states:
 *     FREE    ref == 0, no key, on the free stack
 *     USED    ref >= 1 (owned by that many sequences' block tables)
 *     CACHED  ref == 0, has a key, on the LRU list: its KV is still valid and a later
 *             sequence whose prefix matches takes it back to USED; it is evicted (to FREE and
 *             reused at once) only when no FREE block is left, least recently used first.
 *   Invariants (eng_kv_check):
 *     1. n_free + n_used + n_cached == n_blocks, and each count matches the states.
 *     2. the free stack holds exactly the FREE blocks, each once; the LRU list exactly the
 *        CACHED ones, each once.
 *     3. a block has a key iff it is in the key table, and the table maps that key to it;
 *        every other slot of the table is empty.
 *   Keys: a full block is identified by (parent key, its 16 token ids); the parent key of a
 *   sequence's first block is a fixed root. Lookups compare the stored tokens and the parent
 *   key exactly, so a collision in the table's slots is harmless; but the parent key stands
 *   for the whole prefix before the block in 64 bits, so two different prefixes share a
 *   block's KV only if their parent keys collide (about 2^-64 for a pair; the key is not a
 *   cryptographic hash).
 *   Transitions: alloc (FREE or evicted CACHED -> USED), ref (USED -> USED, or CACHED ->
 *   USED on a prefix hit), unref (USED -> FREE or CACHED when the count reaches 0 and the
 *   block has a key), publish (give a USED full block its key).
 *   Not thread-safe: the engine thread alone calls it.
 */
#include "kv.h"

#include <stdlib.h>
#include <string.h>

enum { ST_FREE, ST_USED, ST_CACHED };

typedef struct kv_block {
    uint32_t ref;
    uint8_t state;
    uint8_t keyed;
    int32_t prev, next;          /* LRU links (CACHED only) */
    uint64_t key, parent;
    int32_t tokens[ENG_BLOCK_TOKENS];
} kv_block;

struct eng_kv {
    uint32_t n;
    kv_block *b;
    int32_t *free_stack;
    uint32_t n_free, n_used, n_cached;
    int32_t lru_head, lru_tail;  /* head = least recently used */
    int32_t *table;              /* open addressing, linear probing: key -> block, -1 empty */
    uint32_t table_cap;
};

uint64_t eng_kv_block_key(uint64_t parent, const int32_t *tokens)
{
    /* FNV-1a over the parent key and the ids, then a final mix */
    uint64_t h = 1469598103934665603ull ^ parent;
    for (int i = 0; i < ENG_BLOCK_TOKENS; i++) {
        uint32_t t = (uint32_t)tokens[i];
        for (int k = 0; k < 4; k++) {
            h ^= (t >> (8 * k)) & 0xff;
            h *= 1099511628211ull;
        }
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

int eng_kv_create(uint32_t n_blocks, eng_kv **out)
{
    *out = NULL;
    eng_kv *kv = calloc(1, sizeof *kv);
    if (!kv)
        return ENG_ENOMEM;
    kv->n = n_blocks;
    kv->table_cap = 16;
    while (kv->table_cap < n_blocks * 2u)
        kv->table_cap <<= 1;
    kv->b = calloc(n_blocks ? n_blocks : 1, sizeof *kv->b);
    kv->free_stack = malloc((n_blocks ? n_blocks : 1) * sizeof *kv->free_stack);
    kv->table = malloc(kv->table_cap * sizeof *kv->table);
    if (!kv->b || !kv->free_stack || !kv->table) {
        eng_kv_destroy(kv);
        return ENG_ENOMEM;
    }
    for (uint32_t i = 0; i < kv->table_cap; i++)
        kv->table[i] = -1;
    for (uint32_t i = 0; i < n_blocks; i++)
        kv->free_stack[i] = (int32_t)(n_blocks - 1 - i); /* low ids first */
    kv->n_free = n_blocks;
    kv->lru_head = kv->lru_tail = -1;
    *out = kv;
    return 0;
}

void eng_kv_destroy(eng_kv *kv)
{
    if (!kv)
        return;
    free(kv->b);
    free(kv->free_stack);
    free(kv->table);
    free(kv);
}

/* ---- the key table ------------------------------------------------------------------------ */

static uint32_t slot_of(const eng_kv *kv, uint64_t key) { return (uint32_t)key & (kv->table_cap - 1); }

static int32_t table_find(const eng_kv *kv, uint64_t key, uint64_t parent, const int32_t *tokens)
{
    for (uint32_t s = slot_of(kv, key), n = 0; n < kv->table_cap; s = (s + 1) & (kv->table_cap - 1), n++) {
        int32_t id = kv->table[s];
        if (id == -1)
            return -1;
        if (kv->b[id].key == key && kv->b[id].parent == parent &&
            memcmp(kv->b[id].tokens, tokens, sizeof kv->b[id].tokens) == 0)
            return id;
    }
    return -1;
}

static void table_insert(eng_kv *kv, int32_t id)
{
    uint32_t s = slot_of(kv, kv->b[id].key);
    while (kv->table[s] != -1)
        s = (s + 1) & (kv->table_cap - 1);
    kv->table[s] = id;
}

/* Deletion without tombstones (which would pile up under churn until every miss probed the
 * whole table): the entries after the hole move back into it when their home slot allows. */
static void table_remove(eng_kv *kv, int32_t id)
{
    uint32_t mask = kv->table_cap - 1, hole = slot_of(kv, kv->b[id].key);
    while (kv->table[hole] != id) {
        ENG_ASSERT(kv->table[hole] != -1); /* a keyed block is always in the table */
        hole = (hole + 1) & mask;
    }
    for (uint32_t s = (hole + 1) & mask; kv->table[s] != -1; s = (s + 1) & mask) {
        uint32_t home = slot_of(kv, kv->b[kv->table[s]].key);
        /* it may fill the hole unless its home lies cyclically in (hole, s] */
        if (((s - home) & mask) >= ((s - hole) & mask)) {
            kv->table[hole] = kv->table[s];
            hole = s;
        }
    }
    kv->table[hole] = -1;
}

/* ---- LRU ----------------------------------------------------------------------------------- */

static void lru_push_tail(eng_kv *kv, int32_t id)
{
    kv_block *b = &kv->b[id];
    b->prev = kv->lru_tail;
    b->next = -1;
    if (kv->lru_tail >= 0)
        kv->b[kv->lru_tail].next = id;
    else
        kv->lru_head = id;
    kv->lru_tail = id;
}

static void lru_unlink(eng_kv *kv, int32_t id)
{
    kv_block *b = &kv->b[id];
    if (b->prev >= 0)
        kv->b[b->prev].next = b->next;
    else
        kv->lru_head = b->next;
    if (b->next >= 0)
        kv->b[b->next].prev = b->prev;
    else
        kv->lru_tail = b->prev;
    b->prev = b->next = -1;
}

/* ---- transitions --------------------------------------------------------------------------- */

int32_t eng_kv_alloc(eng_kv *kv)
{
    int32_t id;
    if (kv->n_free > 0) {
        id = kv->free_stack[--kv->n_free];
    } else if (kv->lru_head >= 0) { /* evict the least recently used cached block */
        id = kv->lru_head;
        lru_unlink(kv, id);
        table_remove(kv, id);
        kv->b[id].keyed = 0;
        kv->n_cached--;
    } else {
        return -1;
    }
    kv->b[id].state = ST_USED;
    kv->b[id].ref = 1;
    kv->n_used++;
    return id;
}

void eng_kv_ref(eng_kv *kv, int32_t id)
{
    kv_block *b = &kv->b[id];
    ENG_ASSERT(b->state != ST_FREE);
    if (b->state == ST_CACHED) {
        lru_unlink(kv, id);
        b->state = ST_USED;
        kv->n_cached--;
        kv->n_used++;
    }
    b->ref++;
}

void eng_kv_unref(eng_kv *kv, int32_t id)
{
    kv_block *b = &kv->b[id];
    ENG_ASSERT(b->state == ST_USED && b->ref > 0);
    if (--b->ref > 0)
        return;
    kv->n_used--;
    if (b->keyed) {
        b->state = ST_CACHED;
        lru_push_tail(kv, id);
        kv->n_cached++;
    } else {
        b->state = ST_FREE;
        kv->free_stack[kv->n_free++] = id;
    }
}

int32_t eng_kv_lookup(eng_kv *kv, uint64_t parent, const int32_t *tokens, uint64_t *key)
{
    *key = eng_kv_block_key(parent, tokens);
    int32_t id = table_find(kv, *key, parent, tokens);
    if (id >= 0)
        eng_kv_ref(kv, id);
    return id;
}

int eng_kv_publish(eng_kv *kv, int32_t id, uint64_t parent, const int32_t *tokens, uint64_t *key)
{
    kv_block *b = &kv->b[id];
    ENG_ASSERT(b->state == ST_USED);
    *key = eng_kv_block_key(parent, tokens);
    if (b->keyed)
        return b->key == *key ? 1 : 0;
    if (table_find(kv, *key, parent, tokens) >= 0)
        return 0; /* another block already holds this content; this one stays private */
    b->key = *key;
    b->parent = parent;
    memcpy(b->tokens, tokens, sizeof b->tokens);
    b->keyed = 1;
    table_insert(kv, id);
    return 1;
}

void eng_kv_counts(const eng_kv *kv, uint32_t *n_free, uint32_t *n_used, uint32_t *n_cached)
{
    *n_free = kv->n_free;
    *n_used = kv->n_used;
    *n_cached = kv->n_cached;
}

uint32_t eng_kv_available(const eng_kv *kv) { return kv->n_free + kv->n_cached; }
uint32_t eng_kv_total(const eng_kv *kv) { return kv->n; }

int eng_kv_check(const eng_kv *kv)
{
    uint32_t counts[3] = {0, 0, 0};
    uint8_t *seen = calloc(kv->n ? kv->n : 1, 1);
    if (!seen)
        return 0;
    int ok = kv->n_free + kv->n_used + kv->n_cached == kv->n;
    for (uint32_t i = 0; i < kv->n; i++) {
        const kv_block *b = &kv->b[i];
        counts[b->state]++;
        ok &= (b->state == ST_USED) == (b->ref > 0);
        ok &= b->state != ST_CACHED || b->keyed;
        ok &= b->state != ST_FREE || !b->keyed;
        if (b->keyed)
            ok &= table_find(kv, b->key, b->parent, b->tokens) == (int32_t)i;
    }
    ok &= counts[ST_FREE] == kv->n_free && counts[ST_USED] == kv->n_used && counts[ST_CACHED] == kv->n_cached;
    for (uint32_t i = 0; i < kv->n_free && ok; i++) {
        int32_t id = kv->free_stack[i];
        ok &= id >= 0 && (uint32_t)id < kv->n && kv->b[id].state == ST_FREE && !seen[id];
        if (ok)
            seen[id] = 1;
    }
    uint32_t n_lru = 0;
    for (int32_t id = kv->lru_head; id >= 0 && ok && n_lru <= kv->n; id = kv->b[id].next, n_lru++) {
        ok &= kv->b[id].state == ST_CACHED && !seen[id];
        seen[id] = 1;
    }
    ok &= n_lru == kv->n_cached;
    uint32_t in_table = 0, empty = 0, keyed = 0;
    for (uint32_t s = 0; s < kv->table_cap; s++)
        in_table += kv->table[s] >= 0, empty += kv->table[s] == -1;
    for (uint32_t i = 0; i < kv->n; i++)
        keyed += kv->b[i].keyed;
    ok &= in_table == keyed && in_table + empty == kv->table_cap; /* no other marks in the table */
    free(seen);
    return ok;
}
