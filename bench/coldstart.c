/* coldstart.c -- `thaw serve` from exec to ready and to the first streamed token.
 *
 * usage: coldstart [-m MODEL] [--runs N] [--thaw PATH] [--lazy] [--threads N]
 *
 * Each run picks a free port, fork/execs `thaw serve -m MODEL --port P`, and from the moment
 * before exec measures: the port accepting a connection (listen), GET /health answering 200
 * (ready), and a streaming chat request sent right then receiving its first content chunk
 * (first token). It then reads the server's own phase breakdown from GET /metrics
 * (thaw_startup_seconds), sends SIGTERM and checks the exit status. A first, uncounted run
 * warms the page cache (binary, libraries, snapshot): the figures are "from the page cache".
 * Polling here is the client's business (a connect or a GET every 0.2 ms); the server waits
 * on nothing.
 *
 * Output: one line per run and a summary, `key=value`:
 *   coldstart run=1 lazy=0 listen_ms=.. ready_ms=.. first_token_ms=.. server_listen_ms=..
 *             server_ready_ms=.. model_open_ms=.. load_read_ms=.. ... exit=0
 *   coldstart summary runs=.. ready_ms_mean=.. ready_ms_min=.. ready_ms_max=.. first_token_ms_mean=..
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void nap(void)
{
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) || getsockname(fd, (struct sockaddr *)&sa, &len)) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* One request with Connection: close; reads the answer into buf (NUL-terminated) until the
 * server closes, or -- when `until` is given -- until that text appears (then *t_seen). */
static int http(int port, const char *method, const char *path, const char *body, char *buf, size_t cap,
                const char *until, double *t_seen)
{
    int fd = dial(port);
    if (fd < 0)
        return -1;
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     method, path, body ? strlen(body) : 0, body ? body : "");
    if (send_all(fd, req, (size_t)n)) {
        close(fd);
        return -1;
    }
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r <= 0)
            break;
        len += (size_t)r;
        buf[len] = 0;
        if (until && strstr(buf, until)) {
            *t_seen = now_s();
            break;
        }
        if (len + 1 >= cap)
            break;
    }
    buf[len] = 0;
    close(fd);
    return len ? atoi(buf + 9) : -1; /* "HTTP/1.1 200" */
}

static double metric(const char *text, const char *phase)
{
    char key[128];
    snprintf(key, sizeof key, "thaw_startup_seconds{phase=\"%s\"} ", phase);
    const char *p = strstr(text, key);
    return p ? atof(p + strlen(key)) : NAN;
}

typedef struct run_result {
    double listen, ready, first;
    int exit_status;
} run_result;

static int one_run(const char *thaw, const char *model, int lazy, const char *threads, int verbose, int idx,
                   run_result *res)
{
    int port = free_port();
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    char *argv[16];
    int k = 0;
    argv[k++] = (char *)thaw;
    argv[k++] = "serve";
    argv[k++] = "-m";
    argv[k++] = (char *)model;
    argv[k++] = "--port";
    argv[k++] = port_s;
    argv[k++] = lazy ? "--lazy" : "--no-lazy";
    if (threads) {
        argv[k++] = "--threads";
        argv[k++] = (char *)threads;
    }
    argv[k] = NULL;
    double t0 = now_s();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execv(thaw, argv);
        _exit(127);
    }
    static char buf[1 << 20];
    int fd;
    while ((fd = dial(port)) < 0) {
        if (waitpid(pid, NULL, WNOHANG) == pid || now_s() - t0 > 60)
            return -1;
        nap();
    }
    close(fd);
    double t_listen = now_s();
    while (http(port, "GET", "/health", NULL, buf, sizeof buf, NULL, NULL) != 200) {
        if (now_s() - t0 > 60)
            return -1;
        nap();
    }
    double t_ready = now_s(), t_first = 0;
    int st = http(port, "POST", "/v1/chat/completions",
                  "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"What is the capital of France?\"}],"
                  "\"max_tokens\":4,\"temperature\":0,\"stream\":true}",
                  buf, sizeof buf, "\"delta\":{\"content\":\"", &t_first);
    if (st != 200 || !t_first) {
        fprintf(stderr, "coldstart: the streaming request failed (%d)\n", st);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    http(port, "GET", "/metrics", NULL, buf, sizeof buf, NULL, NULL);
    kill(pid, SIGTERM);
    int wst = 0;
    waitpid(pid, &wst, 0);
    res->listen = t_listen - t0;
    res->ready = t_ready - t0;
    res->first = t_first - t0;
    res->exit_status = WIFEXITED(wst) ? WEXITSTATUS(wst) : 128 + WTERMSIG(wst);
    if (verbose) {
        static const char *phases[] = {"listen", "ready", "model_open", "snapshot_open", "backend", "tokenizer",
                                       "load_total", "load_read", "load_decompress", "load_checksum", "load_copy",
                                       "engine_create"};
        printf("coldstart run=%d lazy=%d listen_ms=%.2f ready_ms=%.2f first_token_ms=%.2f", idx, lazy,
               res->listen * 1e3, res->ready * 1e3, res->first * 1e3);
        for (size_t i = 0; i < sizeof phases / sizeof phases[0]; i++)
            printf(" server_%s_ms=%.2f", phases[i], metric(buf, phases[i]) * 1e3);
        printf(" exit=%d\n", res->exit_status);
        fflush(stdout);
    }
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const char *thaw = "./thaw", *model = "models/smollm2-135m-instruct.thaw", *threads = NULL;
    int runs = 10, lazy = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--lazy")) {
            lazy = 1;
        } else if (v && (!strcmp(a, "-m") || !strcmp(a, "--model"))) {
            model = v, i++;
        } else if (v && !strcmp(a, "--runs")) {
            runs = atoi(v), i++;
        } else if (v && !strcmp(a, "--thaw")) {
            thaw = v, i++;
        } else if (v && !strcmp(a, "--threads")) {
            threads = v, i++;
        } else {
            fprintf(stderr, "usage: coldstart [-m MODEL] [--runs N] [--thaw PATH] [--lazy] [--threads N]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > 1000) {
        fprintf(stderr, "coldstart: --runs must be 1..1000\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    run_result warm, *r = calloc((size_t)runs, sizeof *r);
    if (!r || one_run(thaw, model, lazy, threads, 0, 0, &warm)) {
        fprintf(stderr, "coldstart: cannot start %s serve -m %s\n", thaw, model);
        return 1;
    }
    int bad_exit = 0;
    for (int i = 0; i < runs; i++) {
        if (one_run(thaw, model, lazy, threads, 1, i + 1, &r[i])) {
            fprintf(stderr, "coldstart: run %d failed\n", i + 1);
            return 1;
        }
        bad_exit |= r[i].exit_status != 0;
    }
    double ready[1000], first[1000], listen_sum = 0, ready_sum = 0, first_sum = 0;
    for (int i = 0; i < runs; i++) {
        ready[i] = r[i].ready * 1e3, first[i] = r[i].first * 1e3;
        listen_sum += r[i].listen * 1e3, ready_sum += ready[i], first_sum += first[i];
    }
    qsort(ready, (size_t)runs, sizeof *ready, cmp_double);
    qsort(first, (size_t)runs, sizeof *first, cmp_double);
    printf("coldstart summary runs=%d lazy=%d listen_ms_mean=%.2f ready_ms_mean=%.2f ready_ms_min=%.2f "
           "ready_ms_p50=%.2f ready_ms_max=%.2f first_token_ms_mean=%.2f first_token_ms_p50=%.2f target_ready_ms=100 "
           "ratio=%.2f exits_clean=%d\n",
           runs, lazy, listen_sum / runs, ready_sum / runs, ready[0], ready[(runs - 1) / 2], ready[runs - 1],
           first_sum / runs, first[(runs - 1) / 2], ready_sum / runs / 100.0, !bad_exit);
    free(r);
    return bad_exit;
}
