/* watch.c -- cancel the engine requests of clients that hang up.
 *
 * Why a thread: an HTTP thread waiting for a request's next token sleeps on the engine's
 * condition variable, so nothing reads its socket; without help, a client that closed its
 * connection would be noticed only when a write fails, one or two tokens later -- or never,
 * while the request waits in the queue. This thread sleeps in poll() on every watched
 * socket for POLLRDHUP (the peer closed its end) plus an eventfd that says "the set
 * changed", with no timeout. On a hang-up it cancels the slot's requests (the engine frees
 * their KV blocks at once) and stops watching that slot.
 *
 * Invariants: a slot's requests are touched only under `lock`, and rt_watch_remove takes
 * the lock, so once it returns the caller may release them. An fd is watched only while its
 * HTTP request is live; MHD closes the socket after the response (and so the slot) is gone.
 * A slot whose fd reports POLLNVAL/POLLHUP/POLLERR is retired at once so poll() never spins.
 */
#include "server.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct slot {
    int fd;                    /* -1: free */
    int fired;                 /* hung up or retired: not polled any more */
    uint64_t gen;              /* distinguishes reuses of the slot */
    uint32_t n;
    eng_request *reqs[RT_MAX_CHOICES];
} slot;

struct rt_watch {
    pthread_mutex_t lock;
    pthread_t thread;
    int efd;
    int stop;
    int all_cancelled;         /* rt_watch_cancel_all ran: later additions are cancelled at once */
    slot *slots;
    size_t n_slots, cap;
    uint64_t next_gen;
};

static void kick(rt_watch *w)
{
    uint64_t one = 1;
    ssize_t r;
    do
        r = write(w->efd, &one, sizeof one);
    while (r < 0 && errno == EINTR);
}

static void *watch_main(void *arg)
{
    rt_watch *w = arg;
    size_t pcap = 64;
    struct pollfd *pfd = malloc(pcap * sizeof *pfd);
    size_t *idx = malloc(pcap * sizeof *idx);
    uint64_t *gens = malloc(pcap * sizeof *gens);
    while (pfd && idx && gens) {
        pthread_mutex_lock(&w->lock);
        if (w->stop) {
            pthread_mutex_unlock(&w->lock);
            break;
        }
        if (pcap < w->n_slots + 1) { /* on failure, watch the first pcap - 1 slots */
            size_t nc = w->n_slots + 16;
            struct pollfd *np = realloc(pfd, nc * sizeof *np);
            if (np)
                pfd = np;
            size_t *ni = realloc(idx, nc * sizeof *ni);
            if (ni)
                idx = ni;
            uint64_t *ng = realloc(gens, nc * sizeof *ng);
            if (ng)
                gens = ng;
            if (np && ni && ng)
                pcap = nc;
        }
        size_t n = 0;
        pfd[n++] = (struct pollfd){.fd = w->efd, .events = POLLIN};
        for (size_t i = 0; i < w->n_slots && n < pcap; i++) {
            if (w->slots[i].fd < 0 || w->slots[i].fired)
                continue;
            idx[n] = i;
            gens[n] = w->slots[i].gen;
            pfd[n++] = (struct pollfd){.fd = w->slots[i].fd, .events = POLLRDHUP};
        }
        pthread_mutex_unlock(&w->lock);

        int r = poll(pfd, n, -1);
        if (r < 0)
            continue; /* EINTR */
        if (pfd[0].revents & POLLIN) {
            uint64_t v;
            if (read(w->efd, &v, sizeof v) < 0) {
                /* nothing: the counter was already drained */
            }
        }
        pthread_mutex_lock(&w->lock);
        for (size_t k = 1; k < n; k++) {
            if (!pfd[k].revents)
                continue;
            slot *s = &w->slots[idx[k]];
            if (s->fd < 0 || s->gen != gens[k] || s->fired)
                continue;
            s->fired = 1;
            if (pfd[k].revents & (POLLRDHUP | POLLHUP | POLLERR))
                for (uint32_t j = 0; j < s->n; j++)
                    eng_request_cancel(s->reqs[j]);
        }
        pthread_mutex_unlock(&w->lock);
    }
    free(pfd);
    free(idx);
    free(gens);
    return NULL;
}

int rt_watch_create(rt_watch **out)
{
    rt_watch *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->efd < 0) {
        free(w);
        return -1;
    }
    pthread_mutex_init(&w->lock, NULL);
    if (pthread_create(&w->thread, NULL, watch_main, w)) {
        close(w->efd);
        pthread_mutex_destroy(&w->lock);
        free(w);
        return -1;
    }
    *out = w;
    return 0;
}

void rt_watch_destroy(rt_watch *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = 1;
    pthread_mutex_unlock(&w->lock);
    kick(w);
    pthread_join(w->thread, NULL);
    close(w->efd);
    pthread_mutex_destroy(&w->lock);
    free(w->slots);
    free(w);
}

int rt_watch_add(rt_watch *w, int fd, eng_request *const *reqs, uint32_t n)
{
    if (!w || n == 0 || n > RT_MAX_CHOICES)
        return -1;
    pthread_mutex_lock(&w->lock);
    size_t i = 0;
    while (i < w->n_slots && w->slots[i].fd >= 0)
        i++;
    if (i == w->n_slots) {
        if (w->n_slots == w->cap) {
            size_t nc = w->cap ? w->cap * 2 : 32;
            slot *ns = realloc(w->slots, nc * sizeof *ns);
            if (!ns) {
                pthread_mutex_unlock(&w->lock);
                return -1; /* not watched: the request still ends, only later */
            }
            w->slots = ns;
            w->cap = nc;
        }
        w->n_slots++;
    }
    slot *s = &w->slots[i];
    s->fd = fd < 0 ? INT_MAX : fd; /* no socket (tests): kept for rt_watch_cancel_all only */
    s->fired = fd < 0;
    s->gen = ++w->next_gen;
    s->n = n;
    memcpy(s->reqs, reqs, n * sizeof *reqs);
    if (w->all_cancelled)
        for (uint32_t j = 0; j < n; j++)
            eng_request_cancel(reqs[j]);
    pthread_mutex_unlock(&w->lock);
    kick(w);
    return (int)i;
}

void rt_watch_remove(rt_watch *w, int id)
{
    if (!w || id < 0)
        return;
    pthread_mutex_lock(&w->lock);
    if ((size_t)id < w->n_slots) {
        w->slots[id].fd = -1;
        w->slots[id].n = 0;
        while (w->n_slots && w->slots[w->n_slots - 1].fd < 0)
            w->n_slots--;
    }
    pthread_mutex_unlock(&w->lock);
    kick(w);
}

void rt_watch_cancel_all(rt_watch *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->all_cancelled = 1;
    for (size_t i = 0; i < w->n_slots; i++)
        for (uint32_t j = 0; w->slots[i].fd >= 0 && j < w->slots[i].n; j++)
            eng_request_cancel(w->slots[i].reqs[j]);
    pthread_mutex_unlock(&w->lock);
}
