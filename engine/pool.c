/* pool.c -- a fork/join thread pool for the forward pass.
 *
 * Every op of a forward pass is a parallel-for over all threads. Ops follow each other
 * within microseconds, so a worker that finished spins on the generation counter for a
 * short while before sleeping: a futex round trip per op would cost more than small ops
 * take. Between requests the workers sleep on a condition variable, so an idle process
 * has no runnable thread (FC freezes idle instances; nothing may poll).
 */
#include "internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#define SPIN_NS 200000 /* 0.2 ms: longer than any gap between ops, far shorter than a request gap */

struct eng_pool {
    uint32_t n;
    pthread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_uint generation;   /* bumped for each task */
    atomic_uint remaining;    /* workers still running the current task */
    atomic_int stop;
    eng_task_fn fn;
    void *arg;
};

typedef struct worker_arg {
    eng_pool *p;
    uint32_t ith;
} worker_arg;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *worker(void *a)
{
    worker_arg *wa = a;
    eng_pool *p = wa->p;
    uint32_t ith = wa->ith;
    free(wa);
    /* the generation at creation, not now: a task may be posted before this thread runs */
    unsigned seen = 0;
    for (;;) {
        /* spin, then sleep, until the generation moves */
        uint64_t t0 = now_ns();
        unsigned g;
        while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
               !atomic_load(&p->stop)) {
            if (now_ns() - t0 > SPIN_NS) {
                pthread_mutex_lock(&p->lock);
                while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop))
                    pthread_cond_wait(&p->wake, &p->lock);
                pthread_mutex_unlock(&p->lock);
                break;
            }
            sched_yield();
        }
        if (atomic_load(&p->stop))
            return NULL;
        seen = g;
        p->fn(p->arg, ith, p->n);
        atomic_fetch_sub_explicit(&p->remaining, 1, memory_order_release);
    }
}

int eng_pool_create(uint32_t n_threads, eng_pool **out)
{
    *out = NULL;
    eng_pool *p = calloc(1, sizeof *p);
    if (!p)
        return ENG_ENOMEM;
    p->n = n_threads ? n_threads : 1;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->remaining, 0);
    atomic_init(&p->stop, 0);
    p->threads = calloc(p->n, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return ENG_ENOMEM;
    }
    for (uint32_t i = 1; i < p->n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) {
            wa->p = p;
            wa->ith = i;
        }
        if (!wa || pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
            free(wa);
            p->n = i; /* run with the threads we got */
            break;
        }
    }
    *out = p;
    return 0;
}

uint32_t eng_pool_size(const eng_pool *p) { return p->n; }

void eng_pool_run(eng_pool *p, eng_task_fn fn, void *arg)
{
    if (p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->remaining, p->n - 1);
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    fn(arg, 0, p->n);
    while (atomic_load_explicit(&p->remaining, memory_order_acquire) != 0)
        sched_yield();
}

void eng_pool_destroy(eng_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (uint32_t i = 1; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    free(p->threads);
    free(p);
}
