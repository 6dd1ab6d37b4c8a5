/* engine.h -- the model: tokenizer, chat templates, sampler, and (below) the model and its
 * backends. The one header other folders include from engine/.
 *
 * Conventions: functions return 0 or a negative ENG_E* code; those that can fail for a
 * reason worth telling take `eng_err *` (may be NULL) and fill it with one line. Objects are
 * immutable after creation unless said otherwise; an immutable object may be shared by
 * threads. Nothing here allocates on the token path unless its comment says so.
 */
#ifndef THAW_ENGINE_H
#define THAW_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "snapshot.h"

#define ENG_ERRORS(X)                                                 \
    X(ENG_OK, 0, "ok")                                                \
    X(ENG_ENOMEM, -1, "out of memory")                                \
    X(ENG_EINVAL, -2, "invalid argument")                             \
    X(ENG_EUNSUPPORTED, -3, "unsupported")                            \
    X(ENG_ETOOLONG, -4, "input longer than the context")              \
    X(ENG_EBACKEND, -5, "backend failure")                            \
    X(ENG_ESNAPSHOT, -6, "snapshot error")                           \
    X(ENG_EBUSY, -7, "queue full")                                    \
    X(ENG_ESTOPPED, -8, "engine stopped")

enum eng_status {
#define ENG_X_ENUM(name, value, text) name = value,
    ENG_ERRORS(ENG_X_ENUM)
#undef ENG_X_ENUM
};
const char *eng_strerror(int code);

typedef struct eng_err {
    char msg[512];
} eng_err;

/* ======================================================================================
 * Tokenizer (engine/tokenizer.c)
 * Byte-level BPE with the GPT-2 / SmolLM / Llama 3 / Qwen2 pre-tokenizers, and
 * SentencePiece-style BPE (Llama 2). Reproduces the Hugging Face tokenizers exactly.
 * ====================================================================================== */
typedef struct eng_tokenizer eng_tokenizer;

/* Build from a snapshot's vocab (arrays are used in place: the snap_file must outlive the
 * tokenizer). Returns 0, ENG_ENOMEM or ENG_EUNSUPPORTED (unknown model/pre-tokenizer). */
int eng_tokenizer_create(const snap_vocab *v, eng_tokenizer **out, eng_err *err);
void eng_tokenizer_destroy(eng_tokenizer *t); /* accepts NULL */

/* Encode `len` bytes of text. Any bytes are accepted: invalid UTF-8 is tokenized as bytes
 * (byte-level BPE) or byte-fallback tokens (SentencePiece), never an error.
 *   add_special:   prepend BOS (and append EOS) as the vocab's add_bos/add_eos say.
 *   parse_special: text spelling a special/added token ("<|im_start|>") becomes its id;
 *                  otherwise it is tokenized as ordinary text (user content must not be
 *                  able to forge control tokens).
 * Writes up to `cap` ids and returns the total number of ids the text needs (which may be
 * larger than cap: call again with a larger buffer), or a negative ENG_E* code.
 * Thread-safe (uses no shared scratch). Allocates scratch proportional to len. */
long eng_tokenize(const eng_tokenizer *t, const char *text, size_t len, int add_special, int parse_special,
                  int32_t *ids, size_t cap);

uint32_t eng_vocab_size(const eng_tokenizer *t);
/* The raw bytes a token stands for (byte-level mapping undone, "▁" -> " ", <0xAB> -> byte).
 * Returns the byte count (may exceed cap; nothing past cap is written); 0 for an invalid id
 * or a control token (whose text is not part of generated output; /detokenize can keep it). */
size_t eng_token_bytes(const eng_tokenizer *t, int32_t id, char *buf, size_t cap);
/* The token's text as the vocab spells it (for special tokens: "<|im_end|>"); NULL if
 * id is out of range. *len receives its length. */
const char *eng_token_text(const eng_tokenizer *t, int32_t id, size_t *len);
/* Id of a token spelled exactly `text`, or -1. */
int32_t eng_token_lookup(const eng_tokenizer *t, const char *text, size_t len);
int eng_token_is_control(const eng_tokenizer *t, int32_t id);
int32_t eng_token_bos(const eng_tokenizer *t); /* -1 if none */
int32_t eng_token_eos(const eng_tokenizer *t);

/* Decode ids to bytes: control tokens skipped or, with keep_special, written as their text
 * (HF's decode with skip_special_tokens false). Byte tokens come out as they are, so the
 * result may be ill-formed UTF-8. Returns the bytes the whole text needs, writes up to cap. */
size_t eng_detokenize(const eng_tokenizer *t, const int32_t *ids, size_t n, int keep_special, char *out, size_t cap);

/* Streaming decode: bytes of a UTF-8 character split across tokens are held back until the
 * character is complete, so a stream never emits half a character. Caller storage. */
typedef struct eng_detok {
    uint8_t pending[8];
    uint32_t n_pending;
    int first;                 /* SentencePiece: strip the leading space of the first piece */
} eng_detok;
/* follows_text: the stream continues text already there (a completion after its prompt), so a
 * SentencePiece first piece keeps its leading space, as vLLM (which decodes after the prompt)
 * and llama.cpp's server give it; 0: the stream is the whole text, decoded like
 * eng_detokenize (HF's decode strips that space). */
void eng_detok_init(eng_detok *d, int follows_text);
/* Appends the token's text: returns how many bytes it newly completes, of which the first cap
 * are written to out. A cap of eng_detok_max() always takes them all. */
size_t eng_detok_push(const eng_tokenizer *t, eng_detok *d, int32_t id, char *out, size_t cap);
/* At end of stream: flush held-back bytes (an incomplete character is emitted as U+FFFD);
 * returns and writes as eng_detok_push. */
size_t eng_detok_flush(eng_detok *d, char *out, size_t cap);
/* Longest text a single push can produce. */
size_t eng_detok_max(const eng_tokenizer *t);

/* ======================================================================================
 * Chat templates (engine/chat.c)
 * ====================================================================================== */
enum eng_chat_kind {
    ENG_CHAT_CHATML = 1,
    ENG_CHAT_LLAMA3 = 2,
    ENG_CHAT_LLAMA2 = 3,
    ENG_CHAT_MISTRAL = 4,
    ENG_CHAT_LLAMA31 = 5, /* Llama 3.1 and later: a system block with the dates always comes first */
    ENG_CHAT_N_KINDS = 6
};

typedef struct eng_chat_msg {
    const char *role;          /* "system", "user", "assistant" */
    const char *content;       /* UTF-8, NUL-terminated */
} eng_chat_msg;

typedef struct eng_chat_template {
    int kind;                  /* enum eng_chat_kind */
    char default_system[512];  /* system prompt the model's template adds when none is given ("" = none) */
    char bos[32];              /* BOS text the template itself emits ("" when it does not) */
    char eos[32];              /* EOS text after assistant turns (Llama 2 / Mistral) */
    char date[32];             /* llama3.1: the "Today Date:" the template writes by default */
    int date_today;            /* llama3.1: the template asks for today's date (strftime_now) instead */
} eng_chat_template;

/* Recognise the family from the model's template text (snap_chat_template), or take
 * `override_name` ("chatml", "llama3", "llama3.1", "llama2", "mistral") when not NULL. An unrecognised
 * template without override -> ENG_EUNSUPPORTED with a message naming --chat-template. */
int eng_chat_template_init(eng_chat_template *ct, const char *template_text, const char *override_name, eng_err *err);
/* Render the conversation as the model's template would. Returns the bytes needed
 * (excluding the NUL), writes up to cap (NUL-terminated when it fits), or ENG_EINVAL for an
 * unknown role or a conversation the family cannot express (message says which). */
long eng_chat_render(const eng_chat_template *ct, const eng_chat_msg *msgs, size_t n, int add_generation_prompt,
                     char *out, size_t cap, eng_err *err);
const char *eng_chat_kind_name(int kind);
/* s[*begin, *end) is s[0, n) without leading and trailing whitespace, as Python's str.strip()
 * (which the templates' trim and strip are). */
void eng_chat_strip(const char *s, size_t n, size_t *begin, size_t *end);

/* ======================================================================================
 * Sampler (engine/sampler.c)
 * ====================================================================================== */
typedef struct eng_logit_bias {
    int32_t token;
    float bias;                /* added to the logit; -100 bans, +100 forces (OpenAI) */
} eng_logit_bias;

#define ENG_MAX_LOGPROBS 20

typedef struct eng_sampling {
    float temperature;         /* 0 = greedy (argmax) */
    int32_t top_k;             /* 0 = off */
    float top_p;               /* 1 = off */
    float min_p;               /* 0 = off */
    float repetition_penalty;  /* 1 = off; over prompt and output tokens (HF/vLLM semantics) */
    float presence_penalty;    /* 0 = off; over output tokens (OpenAI semantics) */
    float frequency_penalty;   /* 0 = off; over output tokens */
    uint64_t seed;             /* same seed + same request = same output */
    const eng_logit_bias *logit_bias;
    uint32_t n_logit_bias;
    uint32_t n_logprobs;       /* top-N log-probabilities to report, 0..ENG_MAX_LOGPROBS */
    int skip_logprob;          /* nobody reads eng_sample_result.logprob: spare greedy decoding
                                  a pass over the vocabulary (logprob is then 0) */
} eng_sampling;

/* Fills the neutral settings (greedy, everything off). */
void eng_sampling_defaults(eng_sampling *s);
/* Checks ranges: temperature 0..2 (OpenAI), top_p (0,1], min_p [0,1], top_k >= 0,
 * penalties -2..2, repetition_penalty (0, 10], logit bias ids in vocab and -100..100,
 * n_logprobs <= 20. Returns 0 or ENG_EINVAL with a message naming the field. */
int eng_sampling_check(const eng_sampling *s, uint32_t n_vocab, eng_err *err);

typedef struct eng_token_logprob {
    int32_t token;
    float logprob;
} eng_token_logprob;

typedef struct eng_sample_result {
    int32_t token;
    float logprob;             /* of the chosen token, under the distribution after penalties/bias, before temperature */
    uint32_t n_top;
    eng_token_logprob top[ENG_MAX_LOGPROBS];
} eng_sample_result;

/* Per-sequence sampler state: rng, output token counts, prompt token set, scratch sized to
 * the vocab once. Not thread-safe; one per sequence. */
typedef struct eng_sampler eng_sampler;
int eng_sampler_create(uint32_t n_vocab, const eng_sampling *params, eng_sampler **out);
void eng_sampler_destroy(eng_sampler *s);
/* Reset for a new request with these params (keeps allocations). */
void eng_sampler_reset(eng_sampler *s, const eng_sampling *params);
/* Record prompt tokens (for the repetition penalty). */
void eng_sampler_prompt(eng_sampler *s, const int32_t *ids, size_t n);
/* Sample from logits[n_vocab] (modified in place). Records the chosen token as output. */
void eng_sample(eng_sampler *s, float *logits, eng_sample_result *res);

/* ======================================================================================
 * Stop strings (engine/sampler.c): text is held back while it could still be the start of
 * a stop string, and a stop string is never emitted even when split across tokens.
 * ====================================================================================== */
#define ENG_MAX_STOP 4         /* OpenAI allows up to 4 stop sequences */
#define ENG_STOP_MAX_LEN 256

typedef struct eng_stop {
    char stops[ENG_MAX_STOP][ENG_STOP_MAX_LEN];
    uint32_t n_stops;
    char held[ENG_STOP_MAX_LEN * 2];
    uint32_t n_held;
    int matched;               /* set once a stop string was found: the stream must end */
} eng_stop;

/* Returns ENG_EINVAL for more than 4 stops, an empty stop or one longer than 255 bytes. */
int eng_stop_init(eng_stop *st, const char *const *stops, uint32_t n, eng_err *err);
/* Feed new text; writes the part that is safe to emit to out and returns its length. After a
 * match, st->matched is set, the text before the stop string is emitted and the rest dropped. */
size_t eng_stop_push(eng_stop *st, const char *text, size_t len, char *out, size_t cap);
/* End of stream without a match: emit whatever is held. */
size_t eng_stop_flush(eng_stop *st, char *out, size_t cap);

/* ======================================================================================
 * The model (engine/model.c): a snapshot loaded into a backend, with its tokenizer and
 * chat template. eng_seq is a single sequence for direct use (thaw generate, reference
 * tests); the server goes through the scheduler.
 * ====================================================================================== */
typedef struct eng_model eng_model;

typedef struct eng_model_opts {
    const char *device;        /* "cpu" (default), "cuda", "auto" */
    uint32_t n_threads;        /* CPU threads, 0 = online cores */
    const char *chat_template; /* override name, or NULL to recognise the model's own */
    uint32_t n_ctx;            /* longest sequence, 0 = the model's trained context */
    uint32_t max_batch_tokens; /* most tokens per forward pass, 0 = 512 */
    uint64_t kv_mem_bytes;     /* KV pool budget, 0 = backend default */
    double gpu_mem_fraction;   /* CUDA: share of GPU memory weights, scratch and KV may fill, 0 = 0.9 */
    uint32_t load_io;          /* enum snap_io: how the weights are read, 0 = the measured default */
} eng_model_opts;

/* Phase timings of a model load, seconds. */
typedef struct eng_load_report {
    double open_s;             /* snapshot header and tables */
    double backend_s;          /* backend create, weight load included */
    double tokenizer_s;
    snap_load_stats load;      /* the weight load's own breakdown */
} eng_load_report;

int eng_model_open(const char *path, const eng_model_opts *opts, eng_model **out, eng_load_report *report,
                   eng_err *err);
void eng_model_close(eng_model *m); /* accepts NULL */
const snap_config *eng_model_config(const eng_model *m);
const snap_gen_defaults *eng_model_gen_defaults(const eng_model *m);
const eng_tokenizer *eng_model_tokenizer(const eng_model *m);
/* The chat template, or NULL when the model's template was not recognised (then
 * eng_model_chat_error says why and names --chat-template). */
const eng_chat_template *eng_model_chat(const eng_model *m);
const char *eng_model_chat_error(const eng_model *m);
const char *eng_model_name(const eng_model *m);
const char *eng_model_backend(const eng_model *m);
uint32_t eng_model_n_ctx(const eng_model *m);
uint32_t eng_model_kv_blocks(const eng_model *m);
/* Is id a token that ends generation (eos, eot, the model's stop ids)? */
int eng_model_is_stop_token(const eng_model *m, int32_t id);

typedef struct eng_seq eng_seq;
/* A sequence with KV blocks for up to n_ctx tokens, taken from the model's pool.
 * ENG_ENOMEM when the pool cannot hold it. Not thread-safe; one forward at a time per model. */
int eng_seq_create(eng_model *m, eng_seq **out, eng_err *err);
void eng_seq_destroy(eng_seq *s);
uint32_t eng_seq_len(const eng_seq *s);
/* Append n tokens and run them. logits (may be NULL) receives n_vocab floats per requested
 * row: the last token's only (all = 0) or every appended token's (all = 1, n rows).
 * ENG_ETOOLONG if the sequence would pass n_ctx. */
int eng_seq_eval(eng_seq *s, const int32_t *ids, uint32_t n, int all, float *logits, eng_err *err);

/* ======================================================================================
 * The serving engine (engine/scheduler.c, engine/kv.c): one engine thread runs continuous
 * batching over a paged KV cache with prefix caching; any thread submits requests and reads
 * their events. Nothing polls: an idle engine thread sleeps on a condition variable, and a
 * consumer waiting for events sleeps on its request's.
 * ====================================================================================== */
typedef struct eng_engine eng_engine;

typedef struct eng_engine_opts {
    uint32_t max_seqs;         /* sequences decoding at once (--max-seqs), 0 = 16 */
    uint32_t max_batch_tokens; /* tokens per step, prefill chunks + decodes (--max-batch-tokens), 0 = the model's */
    uint32_t max_queue;        /* waiting requests beyond which submit fails with ENG_EBUSY (--max-queue), 0 = 64 */
} eng_engine_opts;

/* Start the engine thread over an open model (which must outlive the engine; the engine is
 * then the model's only user). */
int eng_engine_create(eng_model *m, const eng_engine_opts *o, eng_engine **out, eng_err *err);
/* Stop: every request still queued or running finishes with ENG_FINISH_CANCELLED, the thread
 * is joined, the memory freed. Requests not yet released stay valid until released. */
void eng_engine_destroy(eng_engine *e); /* accepts NULL */

typedef struct eng_request_params {
    const int32_t *prompt;     /* copied at submit */
    uint32_t n_prompt;
    uint32_t max_tokens;       /* >= 1; generation also stops at the context's end (finish: length) */
    eng_sampling sampling;     /* logit_bias is copied */
    const char *const *stop;   /* stop strings (copied), at most ENG_MAX_STOP */
    uint32_t n_stop;
    int ignore_eos;            /* keep going past end-of-generation tokens */
    int logprobs;              /* report each token's log-probability (eng_event.sample) */
} eng_request_params;

enum eng_finish {
    ENG_FINISH_NONE = 0,       /* still running */
    ENG_FINISH_STOP = 1,       /* a stop token or stop string */
    ENG_FINISH_LENGTH = 2,     /* max_tokens or the context's end */
    ENG_FINISH_CANCELLED = 3,  /* eng_request_cancel, or the engine stopped */
    ENG_FINISH_ERROR = 4,      /* see eng_event.error */
};

/* One generated token (or the end). Pointers are valid until the next eng_request_next
 * call on the same request or its release. */
typedef struct eng_event {
    int done;                  /* 1: no more tokens; finish and the usage counts are final */
    int32_t token;             /* done == 0: the token */
    const char *text;          /* the text this token made safe to emit (may be empty: a
                                * partial UTF-8 character or a possible stop string is held) */
    size_t text_len;
    const eng_sample_result *sample; /* logprob and top-N (n_top per params), or NULL */
    int finish;                /* enum eng_finish, when done */
    const char *error;         /* ENG_FINISH_ERROR: why */
    uint32_t n_prompt;         /* prompt tokens */
    uint32_t n_cached;         /* prompt tokens served from the prefix cache */
    uint32_t n_generated;      /* tokens generated so far */
    double queue_s;            /* submit -> first scheduled */
    double ttft_s;             /* submit -> first token */
} eng_event;

typedef struct eng_request eng_request;

/* Queue a request. Returns 0 and *out (release it with eng_request_release), ENG_EBUSY when
 * the queue is full (HTTP 429), ENG_ETOOLONG when the prompt alone does not fit the context
 * or the KV pool, ENG_EINVAL for bad parameters (message names the field), ENG_ESTOPPED
 * after eng_engine_drain. Thread-safe. */
int eng_submit(eng_engine *e, const eng_request_params *p, eng_request **out, eng_err *err);
/* Wait up to timeout_ms (< 0: forever) for the next event. Returns 1 with *ev filled, 0 on
 * timeout. After the done event it keeps returning it. One consumer thread per request. */
int eng_request_next(eng_request *r, eng_event *ev, int timeout_ms);
/* Stop generating (a client went away): the sequence's KV blocks are freed at once by the
 * engine thread; a done event with ENG_FINISH_CANCELLED follows. Thread-safe, idempotent. */
void eng_request_cancel(eng_request *r);
/* The consumer is finished with r (cancels it if still running). Frees it once the engine
 * thread has let go too. */
void eng_request_release(eng_request *r); /* accepts NULL */

/* Stop admitting (later submits fail with ENG_ESTOPPED); running and queued requests go on. */
void eng_engine_drain(eng_engine *e);
/* Wait until no request is queued or running, or timeout_ms passes. Returns 1 when idle. */
int eng_engine_wait_idle(eng_engine *e, int timeout_ms);

typedef struct eng_stats {
    uint32_t queued, running;
    uint32_t kv_blocks_total, kv_blocks_used, kv_blocks_cached, kv_blocks_free;
    uint64_t prefix_hits, prefix_misses;   /* prompt blocks looked up (the full ones before its last token),
                                            * found / not found in the cache, at first admission */
    uint64_t preemptions;
    uint64_t prompt_tokens, generated_tokens;
    uint64_t requests_finished;
} eng_stats;
void eng_engine_stats(eng_engine *e, eng_stats *st); /* thread-safe snapshot */
/* The bound on queued requests (eng_engine_opts.max_queue, its default resolved); fixed at
 * create, so read without the engine's lock. */
uint32_t eng_engine_max_queue(const eng_engine *e);

#endif
