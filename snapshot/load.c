/* load.c -- the streaming loader: worker threads take chunks in file order, read them in
 * large aligned ranges, verify checksums, decompress LZ4 chunks, and deliver raw image bytes
 * either into a host image (CPU backend) or to a consumer's buffers (snap_sink: the CUDA
 * backend's pinned staging ring).
 *
 * Design notes
 *   - Work distribution: one atomic counter; a worker takes the next chunk index. Chunks are
 *     fixed-size (4 MiB by default), large enough that per-chunk overhead is noise and small
 *     enough that a 2-core machine or a 16-core GPU host both get even work.
 *   - Host image, zero copy: the image is one anonymous reservation; each raw chunk is then
 *     mapped over its slot with MAP_FIXED from the file (chunk file offsets, image offsets and
 *     the chunk size are all page multiples by construction), so raw weights are the page
 *     cache's own pages. LZ4 chunks are decompressed into the anonymous pages.
 *   - I/O mode (SNAP_IO_AUTO = mmap): measured with bench/coldload on the 2-core development
 *     machine, default SmolLM2 snapshot (97 MB, all chunks raw), page cache warm, 2 threads,
 *     best of 7 (bench/RESULTS.md): host image mmap 10.8 GB/s vs pread 3.9 GB/s (pread must
 *     copy every byte into freshly faulted anonymous pages; mmap only populates page tables
 *     over the page cache); stream into a consumer buffer mmap+memcpy 8.0-8.5 GB/s vs pread
 *     7.3-7.7 GB/s (both copy once; the mapping avoids a syscall per chunk). So mmap is the
 *     default for both; pread stays selectable for filesystems where mapping is slow or
 *     unsafe (some FUSE mounts).
 *   - Verification hashes the stored bytes (XXH3-64), so a corrupt LZ4 chunk is caught before
 *     it is decompressed; LZ4_decompress_safe never writes past raw_size in any case.
 *   - Files are assumed immutable while loaded (snapshots are build artefacts); a file
 *     truncated under a live mapping would fault, one truncated before open fails cleanly.
 */
#include "internal.h"

#include <errno.h>
#include <lz4.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

enum load_mode { MODE_HOST, MODE_STREAM, MODE_VERIFY };

typedef struct worker_stats {
    double read_s, decompress_s, checksum_s, sink_s;
    uint64_t bytes_stored;
} worker_stats;

typedef struct load_job {
    snap_file *f;
    int mode;                 /* enum load_mode */
    int io;                   /* SNAP_IO_MMAP or SNAP_IO_PREAD (resolved) */
    int verify;
    uint8_t *image;           /* MODE_HOST: the reservation */
    const snap_sink *sink;    /* MODE_STREAM */
    atomic_uint next;
    atomic_int failed;
    pthread_mutex_t err_lock;
    int rc;
    snap_err *err;
    uint32_t n_threads;
    worker_stats *stats;      /* [n_threads] */
} load_job;

typedef struct worker_arg {
    load_job *job;
    uint32_t id;
} worker_arg;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Records the first error; later ones are dropped. */
static void job_fail(load_job *job, int rc, const snap_err *e)
{
    pthread_mutex_lock(&job->err_lock);
    if (!job->rc) {
        job->rc = rc;
        if (job->err && e)
            *job->err = *e;
    }
    pthread_mutex_unlock(&job->err_lock);
    atomic_store(&job->failed, 1);
}

/* Names the tensors in image bytes [lo, hi) for error messages. */
static void describe_range(const snap_file *f, uint64_t lo, uint64_t hi, char *out, size_t len)
{
    const snap_tensor *first = NULL, *last = NULL;
    size_t count = 0;
    for (size_t i = 0; i < snap_n_tensors(f); i++) {
        const snap_tensor *t = snap_tensor_at(f, i);
        if (t->offset < hi && t->offset + t->size > lo) {
            if (!first || t->offset < first->offset)
                first = t;
            if (!last || t->offset > last->offset)
                last = t;
            count++;
        }
    }
    if (!first)
        snprintf(out, len, "padding only");
    else if (count == 1)
        snprintf(out, len, "tensor '%s'", first->name);
    else
        snprintf(out, len, "%zu tensors '%s' .. '%s'", count, first->name, last->name);
}

static int chunk_fail(load_job *job, uint32_t i, int code, const char *what)
{
    const snap_chunk *c = snap_chunk_at(job->f, i);
    uint64_t lo = (uint64_t)i * snap_chunk_size(job->f);
    char where[200];
    describe_range(job->f, lo, lo + c->raw_size, where, sizeof where);
    snap_err e;
    snap_fail(&e, code, "%s: chunk %u at file offset %llu (%u bytes stored, image bytes %llu..%llu, %s): %s",
              snap_path(job->f), i, (unsigned long long)c->file_offset, c->stored_size, (unsigned long long)lo,
              (unsigned long long)(lo + c->raw_size), where, what);
    job_fail(job, code, &e);
    return code;
}

static int pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    uint8_t *b = buf;
    while (n) {
        ssize_t k = pread(fd, b, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -errno;
        if (k == 0)
            return -EIO; /* the file shrank after it was opened */
        b += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

/* Makes the stored bytes of chunk i readable at *src: in place from the file mapping, or
 * read into scratch. */
static int get_stored(load_job *job, uint32_t i, uint8_t *scratch, const uint8_t **src, worker_stats *ws)
{
    const snap_chunk *c = snap_chunk_at(job->f, i);
    double t = now_s();
    if (job->io == SNAP_IO_MMAP) {
        *src = snap_file_base(job->f) + c->file_offset;
    } else {
        int e = pread_full(snap_file_fd(job->f), scratch, c->stored_size, c->file_offset);
        if (e) {
            char what[128];
            snprintf(what, sizeof what, "read failed: %s", strerror(-e));
            return chunk_fail(job, i, SNAP_EIO, what);
        }
        *src = scratch;
    }
    ws->read_s += now_s() - t;
    ws->bytes_stored += c->stored_size;
    return 0;
}

static int check_sum(load_job *job, uint32_t i, const uint8_t *stored, worker_stats *ws)
{
    if (!job->verify)
        return 0;
    const snap_chunk *c = snap_chunk_at(job->f, i);
    double t = now_s();
    uint64_t h = XXH3_64bits(stored, c->stored_size);
    ws->checksum_s += now_s() - t;
    if (h != c->checksum) {
        char what[128];
        snprintf(what, sizeof what, "checksum mismatch (stored %016llx, computed %016llx)",
                 (unsigned long long)c->checksum, (unsigned long long)h);
        return chunk_fail(job, i, SNAP_ECHECKSUM, what);
    }
    return 0;
}

static int decompress(load_job *job, uint32_t i, const uint8_t *src, uint8_t *dst, worker_stats *ws)
{
    const snap_chunk *c = snap_chunk_at(job->f, i);
    double t = now_s();
    int k = LZ4_decompress_safe((const char *)src, (char *)dst, (int)c->stored_size, (int)c->raw_size);
    ws->decompress_s += now_s() - t;
    if (k != (int)c->raw_size) {
        char what[128];
        snprintf(what, sizeof what, "LZ4 data %s (%d of %u bytes)", k < 0 ? "is corrupt" : "decompresses short", k,
                 c->raw_size);
        return chunk_fail(job, i, SNAP_EFORMAT, what);
    }
    return 0;
}

static int do_chunk(load_job *job, uint32_t i, uint8_t *scratch, uint8_t *scratch2, worker_stats *ws)
{
    snap_file *f = job->f;
    const snap_chunk *c = snap_chunk_at(f, i);
    uint64_t img_off = (uint64_t)i * snap_chunk_size(f);
    const uint8_t *stored;
    int rc;

    if (job->mode == MODE_HOST) {
        uint8_t *dst = job->image + img_off;
        if (c->codec == SNAP_CODEC_RAW && job->io == SNAP_IO_MMAP) {
            double t = now_s();
            void *p = mmap(dst, snap_align_up(c->raw_size, SNAP_PAGE), PROT_READ, MAP_PRIVATE | MAP_FIXED | MAP_POPULATE,
                           snap_file_fd(f), (off_t)c->file_offset);
            ws->read_s += now_s() - t;
            if (p == MAP_FAILED) {
                char what[128];
                snprintf(what, sizeof what, "mmap failed: %s", strerror(errno));
                return chunk_fail(job, i, SNAP_EIO, what);
            }
            ws->bytes_stored += c->stored_size;
            return check_sum(job, i, dst, ws);
        }
        if (c->codec == SNAP_CODEC_RAW) { /* pread straight into place */
            if ((rc = get_stored(job, i, dst, &stored, ws)))
                return rc;
            return check_sum(job, i, dst, ws);
        }
        if ((rc = get_stored(job, i, scratch, &stored, ws)) || (rc = check_sum(job, i, stored, ws)))
            return rc;
        return decompress(job, i, stored, dst, ws);
    }

    /* STREAM and VERIFY: deliver raw bytes into a buffer */
    void *buf = scratch2;
    if (job->mode == MODE_STREAM) {
        double t = now_s();
        int e = job->sink->acquire(job->sink->ctx, i, c->raw_size, &buf);
        ws->sink_s += now_s() - t;
        if (e || !buf)
            return chunk_fail(job, i, SNAP_ESINK, "the consumer could not provide a buffer");
    }
    if (c->codec == SNAP_CODEC_RAW) {
        if (job->mode == MODE_STREAM && job->io == SNAP_IO_MMAP) {
            if ((rc = get_stored(job, i, NULL, &stored, ws)))
                return rc;
            double t = now_s();
            memcpy(buf, stored, c->raw_size);
            ws->read_s += now_s() - t;
        } else if (job->mode == MODE_STREAM) {
            if ((rc = get_stored(job, i, buf, &stored, ws)))
                return rc;
        } else if ((rc = get_stored(job, i, scratch, &stored, ws))) {
            return rc;
        }
        if ((rc = check_sum(job, i, job->mode == MODE_STREAM ? buf : stored, ws)))
            return rc;
    } else {
        if ((rc = get_stored(job, i, scratch, &stored, ws)) || (rc = check_sum(job, i, stored, ws)) ||
            (rc = decompress(job, i, stored, buf, ws)))
            return rc;
    }
    if (job->mode == MODE_STREAM) {
        double t = now_s();
        int e = job->sink->commit(job->sink->ctx, i, img_off, buf, c->raw_size);
        ws->sink_s += now_s() - t;
        if (e)
            return chunk_fail(job, i, SNAP_ESINK, "the consumer rejected the chunk");
    }
    return 0;
}

static void *worker(void *arg)
{
    worker_arg *wa = arg;
    load_job *job = wa->job;
    worker_stats *ws = &job->stats[wa->id];
    size_t cs = snap_chunk_size(job->f);
    /* scratch: stored bytes (pread mode, LZ4 chunks); scratch2: verify's output */
    uint8_t *scratch = malloc((size_t)LZ4_compressBound((int)cs));
    uint8_t *scratch2 = job->mode == MODE_VERIFY ? malloc(cs) : NULL;
    if (!scratch || (job->mode == MODE_VERIFY && !scratch2)) {
        snap_err e;
        snap_fail(&e, SNAP_ENOMEM, "%s: out of memory for load buffers", snap_path(job->f));
        job_fail(job, SNAP_ENOMEM, &e);
    }
    uint32_t n = (uint32_t)snap_n_chunks(job->f);
    while (!atomic_load(&job->failed)) {
        uint32_t i = atomic_fetch_add(&job->next, 1);
        if (i >= n)
            break;
        if (do_chunk(job, i, scratch, scratch2, ws))
            break;
    }
    free(scratch);
    free(scratch2);
    return NULL;
}

static uint32_t default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 16 ? 16 : (uint32_t)n;
}

static int run_job(load_job *job, const snap_load_opts *opts, snap_load_stats *stats)
{
    double t0 = now_s();
    uint32_t nt = opts && opts->n_threads ? opts->n_threads : default_threads();
    if (nt > snap_n_chunks(job->f))
        nt = (uint32_t)snap_n_chunks(job->f);
    if (nt < 1)
        nt = 1;
    job->n_threads = nt;
    job->stats = calloc(nt, sizeof *job->stats);
    pthread_t *tids = calloc(nt, sizeof *tids);
    worker_arg *args = calloc(nt, sizeof *args);
    if (!job->stats || !tids || !args) {
        free(job->stats);
        free(tids);
        free(args);
        return snap_fail(job->err, SNAP_ENOMEM, "%s: out of memory", snap_path(job->f));
    }
    uint32_t started = 0;
    for (uint32_t t = 0; t < nt; t++) {
        args[t] = (worker_arg){job, t};
        if (t == 0 || pthread_create(&tids[t], NULL, worker, &args[t]) == 0)
            started++;
        else
            break; /* fewer threads is still a correct load */
    }
    worker(&args[0]); /* the caller is worker 0 */
    for (uint32_t t = 1; t < started; t++)
        pthread_join(tids[t], NULL);
    if (stats) {
        memset(stats, 0, sizeof *stats);
        for (uint32_t t = 0; t < started; t++) {
            stats->read_s += job->stats[t].read_s;
            stats->decompress_s += job->stats[t].decompress_s;
            stats->checksum_s += job->stats[t].checksum_s;
            stats->sink_s += job->stats[t].sink_s;
            stats->bytes_stored += job->stats[t].bytes_stored;
        }
        for (size_t i = 0; i < snap_n_chunks(job->f); i++) {
            if (snap_chunk_at(job->f, i)->codec == SNAP_CODEC_LZ4)
                stats->n_chunks_lz4++;
            else
                stats->n_chunks_raw++;
        }
        stats->bytes_raw = snap_image_size(job->f);
        stats->n_threads = started;
        stats->io = (uint32_t)job->io;
        stats->total_s = now_s() - t0;
    }
    free(job->stats);
    free(tids);
    free(args);
    return job->rc;
}

static int job_init(load_job *job, snap_file *f, int mode, const snap_load_opts *opts, snap_err *err)
{
    memset(job, 0, sizeof *job);
    job->f = f;
    job->mode = mode;
    job->err = err;
    job->verify = mode == MODE_VERIFY || !opts || opts->verify;
    uint32_t io = opts ? opts->io : SNAP_IO_AUTO;
    if (io == SNAP_IO_AUTO)
        io = SNAP_IO_MMAP; /* measured: see the notes at the top */
    job->io = (int)io;
    if (snap_file_fd(f) < 0)
        return snap_fail(err, SNAP_EARG, "%s: loading needs a file (opened with snap_open)", snap_path(f));
    atomic_init(&job->next, 0);
    atomic_init(&job->failed, 0);
    pthread_mutex_init(&job->err_lock, NULL);
    return 0;
}

struct host_priv {
    void *region;
    size_t len;
};

int snap_load_host(snap_file *f, const snap_load_opts *opts, snap_image **out, snap_load_stats *stats, snap_err *err)
{
    *out = NULL;
    load_job job;
    int rc = job_init(&job, f, MODE_HOST, opts, err);
    if (rc)
        return rc;
    size_t len = snap_align_up(snap_image_size(f), SNAP_PAGE);
    snap_image *img = calloc(1, sizeof *img);
    struct host_priv *hp = calloc(1, sizeof *hp);
    void *region = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!img || !hp || region == MAP_FAILED) {
        free(img);
        free(hp);
        if (region != MAP_FAILED)
            munmap(region, len);
        pthread_mutex_destroy(&job.err_lock);
        return snap_fail(err, SNAP_ENOMEM, "%s: cannot reserve %zu bytes for the image", snap_path(f), len);
    }
    job.image = region;
    rc = run_job(&job, opts, stats);
    pthread_mutex_destroy(&job.err_lock);
    if (rc) {
        munmap(region, len);
        free(img);
        free(hp);
        return rc;
    }
    /* The image is read-only for the engine: catch a stray write at its source. */
    mprotect(region, len, PROT_READ);
    hp->region = region;
    hp->len = len;
    img->data = region;
    img->size = snap_image_size(f);
    img->priv_ = hp;
    *out = img;
    return 0;
}

void snap_image_free(snap_image *img)
{
    if (!img)
        return;
    struct host_priv *hp = img->priv_;
    if (hp) {
        munmap(hp->region, hp->len);
        free(hp);
    }
    free(img);
}

int snap_load_stream(snap_file *f, const snap_sink *sink, const snap_load_opts *opts, snap_load_stats *stats,
                     snap_err *err)
{
    if (!sink || !sink->acquire || !sink->commit)
        return snap_fail(err, SNAP_EARG, "%s: stream load needs a sink with acquire and commit", snap_path(f));
    load_job job;
    int rc = job_init(&job, f, MODE_STREAM, opts, err);
    if (rc)
        return rc;
    job.sink = sink;
    rc = run_job(&job, opts, stats);
    pthread_mutex_destroy(&job.err_lock);
    if (rc == 0 && sink->finish && sink->finish(sink->ctx) != 0)
        rc = snap_fail(err, SNAP_ESINK, "%s: the consumer failed to finish the load", snap_path(f));
    return rc;
}

int snap_verify(snap_file *f, const snap_load_opts *opts, snap_load_stats *stats, snap_err *err)
{
    load_job job;
    int rc = job_init(&job, f, MODE_VERIFY, opts, err);
    if (rc)
        return rc;
    rc = run_job(&job, opts, stats);
    pthread_mutex_destroy(&job.err_lock);
    return rc;
}
