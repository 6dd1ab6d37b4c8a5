/* kv.h -- the KV block manager (engine-internal; see kv.c's design notes). */
#ifndef THAW_ENGINE_KV_H
#define THAW_ENGINE_KV_H

#include "internal.h"

typedef struct eng_kv eng_kv;

int eng_kv_create(uint32_t n_blocks, eng_kv **out);
void eng_kv_destroy(eng_kv *kv); /* accepts NULL */
/* A block for a sequence (ref 1): a free one, else the least recently used cached one is
 * evicted. -1 when every block is in use. */
int32_t eng_kv_alloc(eng_kv *kv);
void eng_kv_ref(eng_kv *kv, int32_t id);
/* Drop one reference; at zero the block is cached (if published) or freed. */
void eng_kv_unref(eng_kv *kv, int32_t id);
/* Key of a full block with these 16 tokens after `parent` (ENG_KV_ROOT for the first). */
uint64_t eng_kv_block_key(uint64_t parent, const int32_t *tokens);
#define ENG_KV_ROOT 0x7468617770726566ull
/* Prefix-cache lookup: the block holding exactly these tokens after parent, referenced for
 * the caller, or -1. *key receives the block's key (the next block's parent). */
int32_t eng_kv_lookup(eng_kv *kv, uint64_t parent, const int32_t *tokens, uint64_t *key);
/* Make a full, computed, used block findable. Returns 1 if it now is, 0 if another block
 * already holds the same content. *key receives its key. */
int eng_kv_publish(eng_kv *kv, int32_t id, uint64_t parent, const int32_t *tokens, uint64_t *key);
void eng_kv_counts(const eng_kv *kv, uint32_t *n_free, uint32_t *n_used, uint32_t *n_cached);
uint32_t eng_kv_available(const eng_kv *kv); /* free + cached (evictable) */
uint32_t eng_kv_total(const eng_kv *kv);
/* The invariants of kv.c's notes; 1 when they hold. Called in debug builds and tests. */
int eng_kv_check(const eng_kv *kv);

#endif
