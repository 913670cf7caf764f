/* bench/peers/loadgen.c: the client side of `make bench-peers`, one epoll loop in C.
 *
 *   loadgen bulk  HOST:PORT --conns N --bytes B
 *       N connections each send B bytes (from a 4 MiB buffer), shut their write side and
 *       wait for the sink's 8-byte count, which must equal B. The clock runs from the
 *       first byte (every connection already open) to the last count.
 *   loadgen echo  HOST:PORT --conns N --size S --warmup W --duration D [--max M]
 *                 [--interval I]
 *       N kept connections, each a strict ping-pong of S bytes (send S, read S back,
 *       compare). W seconds unrecorded, then D seconds (or M round trips) recorded: round
 *       trips/s and the latency of each (p50, p99, max). With I > 0 each connection starts
 *       a round trip every I seconds (a device that talks now and then) instead of at once.
 *   loadgen churn HOST:PORT --conc C --size S --warmup W --duration D [--max M]
 *       C slots, each: socket, connect, one S-byte echo, close, again. Connections/s and the
 *       latency of each (socket() to the echo back; the close is not on it).
 *   loadgen idle  HOST:PORT --conns N --conc C --size S [--hold-timeout H]
 *       opens N connections, at most C in progress, each does one S-byte echo and is then
 *       held. Prints "phase held" once all N are; then waits for a line or EOF on stdin (at
 *       most H seconds), counts the held connections that died meanwhile, closes all.
 *       The line "ping [K]" instead sweeps: every held connection does one more S-byte echo
 *       (at most K in flight, default C) and is held again; one line "sweep {json}" gives the latency
 *       of those echoes (p50, p99, max) and the connections that failed, and the wait for
 *       the next line goes on (bench/peers/scale.py: idle connections still answer).
 *   common: --tls CA [--sni NAME]: speak TLS 1.2/1.3 to HOST:PORT, verified against CA and
 *       NAME (default localhost), resuming sessions (a few kept, TLS 1.3 tickets used once):
 *       the direct TLS reference. --timeout T: the run fails after T seconds (default 120).
 *
 * Output on stdout: "phase measure" when the recorded window opens, "phase done" when it
 * closes (bench/peers/run.py reads the relay's CPU time at those lines), then one line
 * "result {json}". Exit status 0, or 1 on a usage or set-up error, 3 on a timeout; errors
 * on connections are counted in the result ("errors"), not fatal. RLIMIT_NOFILE is raised to
 * its hard limit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SEND_BUF (4 << 20)
#define MAX_EVENTS 512
#define MAX_SAMPLES (16u << 20)
#define SESSIONS 8
#define MAX_SIZE 65536
#define DRAIN_S 5.0

enum { M_BULK, M_ECHO, M_CHURN, M_IDLE };
enum { C_FREE, C_CONNECT, C_HANDSHAKE, C_READY, C_SEND, C_SHUT, C_COUNT, C_PING, C_HELD,
       C_WAIT }; /* C_WAIT: echo --interval, t0 is when the next round trip starts */

struct conn {
    int fd;
    SSL *ssl;
    int state;
    uint64_t sent, got;    /* bulk: bytes sent; count bytes read */
    size_t wpos, rpos;     /* echo: request bytes written, reply bytes read */
    uint64_t t0;           /* start of the current round trip or connection */
    unsigned char count[8];
};

static struct {
    int mode;
    struct sockaddr_in addr;
    int conns, conc, size;
    uint64_t bytes;
    double warmup, duration, timeout, hold_timeout, interval;
    uint64_t max;
    const char *ca, *sni;
} cfg = {.conns = 1, .conc = 16, .size = 64, .bytes = 1 << 30, .warmup = 0.5, .duration = 3,
         .timeout = 120, .hold_timeout = 120, .max = UINT64_MAX, .sni = "localhost"};

static int ep;
static SSL_CTX *ctx;
static SSL_SESSION *sessions[SESSIONS];
static int nsessions;
static char *sendbuf;
static char request[MAX_SIZE], reply[MAX_SIZE];
static struct conn *conns;
static int nconns;

/* What the run measured. */
static uint64_t *samples;
static size_t nsamples, samples_cap;
static int recording, stopping;
static uint64_t units, errors, handshakes, resumed, lost, started, finished, held;
static uint64_t t_begin, t_end;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec
           + ru.ru_stime.tv_usec / 1e6;
}

static void phase(const char *name)
{
    printf("phase %s\n", name);
    fflush(stdout);
}

static void record(uint64_t ns)
{
    units++;
    if (nsamples == samples_cap) {
        if (samples_cap >= MAX_SAMPLES)
            return;
        size_t cap = samples_cap ? samples_cap * 2 : 65536;
        uint64_t *p = realloc(samples, cap * sizeof *p);
        if (p == NULL)
            return;
        samples = p;
        samples_cap = cap;
    }
    samples[nsamples++] = ns;
}

static int new_session(SSL *ssl, SSL_SESSION *s)
{
    (void)ssl;
    if (!SSL_SESSION_is_resumable(s))
        return 0;
    if (nsessions == SESSIONS) {
        SSL_SESSION_free(sessions[0]);
        memmove(&sessions[0], &sessions[1], (SESSIONS - 1) * sizeof sessions[0]);
        nsessions--;
    }
    sessions[nsessions++] = s;
    return 1;
}

static void conn_close(struct conn *c, int failed)
{
    if (c->state == C_FREE)
        return;
    if (failed)
        errors++;
    if (c->ssl != NULL) {
        /* A clean close sends close_notify first: SSL_free without it marks the session
         * the connection holds (the newest ticket) as not resumable. */
        if (!failed) {
            ERR_clear_error();
            SSL_shutdown(c->ssl);
            ERR_clear_error();
        }
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    c->state = C_FREE;
    finished++;
}

/* >0 written, 0 would block, -1 failed */
static ssize_t io_write(struct conn *c, const char *p, size_t n)
{
    if (c->ssl != NULL) {
        size_t w = 0;
        ERR_clear_error();
        if (SSL_write_ex(c->ssl, p, n, &w) > 0)
            return (ssize_t)w;
        int e = SSL_get_error(c->ssl, 0);
        return (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) ? 0 : -1;
    }
    for (;;) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w >= 0)
            return w;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN ? 0 : -1;
    }
}

/* >0 read, 0 EOF, -1 would block, -2 failed */
static ssize_t io_read(struct conn *c, char *p, size_t n)
{
    if (c->ssl != NULL) {
        size_t r = 0;
        ERR_clear_error();
        if (SSL_read_ex(c->ssl, p, n, &r) > 0)
            return (ssize_t)r;
        int e = SSL_get_error(c->ssl, 0);
        if (e == SSL_ERROR_ZERO_RETURN)
            return 0;
        return (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) ? -1 : -2;
    }
    for (;;) {
        ssize_t r = recv(c->fd, p, n, 0);
        if (r >= 0)
            return r;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN ? -1 : -2;
    }
}

static int conn_open(struct conn *c)
{
    memset(c, 0, sizeof *c);
    c->t0 = now_ns();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        errors++;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = C_CONNECT;
    started++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        conn_close(c, 1);
        return -1;
    }
    if (connect(c->fd, (struct sockaddr *)&cfg.addr, sizeof cfg.addr) < 0
        && errno != EINPROGRESS) {
        conn_close(c, 1);
        return -1;
    }
    return 0;
}

static void conn_step(struct conn *c);

/* The connection is up (TCP, and TLS when asked): what it does next depends on the mode. */
static void conn_ready(struct conn *c)
{
    if (cfg.mode == M_CHURN || cfg.mode == M_IDLE) {
        c->state = C_PING;
        c->wpos = c->rpos = 0;
    } else {
        c->state = C_READY; /* bulk and echo start when the phase begins */
    }
}

static void ping_done(struct conn *c)
{
    uint64_t t = now_ns();
    if (cfg.mode == M_ECHO) {
        if (recording)
            record(t - c->t0);
        if (stopping) {
            c->state = C_READY;
            return;
        }
        if (cfg.interval > 0) {
            c->state = C_WAIT;
            c->t0 += (uint64_t)(cfg.interval * 1e9);
            return;
        }
        c->t0 = t;
        c->wpos = c->rpos = 0;
        return;
    }
    if (cfg.mode == M_CHURN) {
        if (recording)
            record(t - c->t0);
        conn_close(c, 0);
        return;
    }
    if (recording)
        record(t - c->t0); /* idle: a sweep's echo */
    c->state = C_HELD;
    held++;
}

static void conn_step(struct conn *c)
{
    for (;;) {
        switch (c->state) {
        case C_FREE:
        case C_READY:
        case C_WAIT:
            return;
        case C_HELD: {
            char b[64];
            ssize_t r = io_read(c, b, sizeof b);
            if (r == -1)
                return;
            lost++; /* a held connection must stay silent and open */
            held--;
            conn_close(c, 1);
            return;
        }
        case C_CONNECT: {
            int err = 0;
            socklen_t len = sizeof err;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
                conn_close(c, 1);
                return;
            }
            struct sockaddr_in peer;
            len = sizeof peer;
            if (getpeername(c->fd, (struct sockaddr *)&peer, &len) < 0)
                return; /* not connected yet */
            if (ctx == NULL) {
                conn_ready(c);
                break;
            }
            c->ssl = SSL_new(ctx);
            if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
                conn_close(c, 1);
                return;
            }
            SSL_set_connect_state(c->ssl);
            SSL_set_tlsext_host_name(c->ssl, cfg.sni);
            SSL_set1_host(c->ssl, cfg.sni);
            if (nsessions > 0) {
                SSL_SESSION *s = sessions[--nsessions];
                SSL_set_session(c->ssl, s);
                SSL_SESSION_free(s);
            }
            c->state = C_HANDSHAKE;
            break;
        }
        case C_HANDSHAKE: {
            ERR_clear_error();
            int r = SSL_do_handshake(c->ssl);
            if (r != 1) {
                int e = SSL_get_error(c->ssl, r);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                    conn_close(c, 1);
                return;
            }
            handshakes++;
            if (SSL_session_reused(c->ssl))
                resumed++;
            conn_ready(c);
            break;
        }
        case C_SEND: {
            while (c->sent < cfg.bytes) {
                uint64_t left = cfg.bytes - c->sent;
                size_t off = (size_t)(c->sent % SEND_BUF);
                size_t n = SEND_BUF - off;
                if (n > left)
                    n = (size_t)left;
                ssize_t w = io_write(c, sendbuf + off, n);
                if (w < 0) {
                    conn_close(c, 1);
                    return;
                }
                if (w == 0)
                    return;
                c->sent += (uint64_t)w;
            }
            c->state = C_SHUT;
            break;
        }
        case C_SHUT:
            if (c->ssl != NULL) {
                ERR_clear_error();
                int r = SSL_shutdown(c->ssl); /* close_notify: 0 sent, 1 both, <0 see why */
                if (r < 0) {
                    int e = SSL_get_error(c->ssl, r);
                    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                        return;
                    conn_close(c, 1);
                    return;
                }
            }
            shutdown(c->fd, SHUT_WR);
            c->state = C_COUNT;
            break;
        case C_COUNT: {
            char b[64];
            ssize_t r = io_read(c, b, sizeof b);
            if (r == -1)
                return;
            if (r == -2) {
                conn_close(c, 1);
                return;
            }
            if (r > 0) {
                for (ssize_t k = 0; k < r; k++)
                    if (c->got < 8)
                        c->count[c->got++] = (unsigned char)b[k];
                    else
                        c->got++;
                break;
            }
            uint64_t total = 0; /* EOF: the count is complete */
            for (int k = 0; k < 8; k++)
                total |= (uint64_t)c->count[k] << (8 * k);
            conn_close(c, c->got != 8 || total != cfg.bytes);
            return;
        }
        case C_PING: {
            if (c->wpos < (size_t)cfg.size) {
                ssize_t w = io_write(c, request + c->wpos, (size_t)cfg.size - c->wpos);
                if (w < 0) {
                    conn_close(c, 1);
                    return;
                }
                if (w == 0)
                    return;
                c->wpos += (size_t)w;
                continue;
            }
            ssize_t r = io_read(c, reply + c->rpos, (size_t)cfg.size - c->rpos);
            if (r == -1)
                return;
            if (r <= 0) {
                conn_close(c, 1);
                return;
            }
            c->rpos += (size_t)r;
            if (c->rpos < (size_t)cfg.size)
                continue;
            if (memcmp(reply, request, (size_t)cfg.size) != 0) {
                conn_close(c, 1);
                return;
            }
            ping_done(c);
            if (c->state == C_FREE || c->state == C_READY || c->state == C_HELD)
                return;
            break;
        }
        }
    }
}

/* One turn of the loop: wait up to timeout_ms, step the connections with events. */
static void turn(int timeout_ms, int *stdin_ready)
{
    struct epoll_event events[MAX_EVENTS];
    int n = epoll_wait(ep, events, MAX_EVENTS, timeout_ms);
    for (int k = 0; k < n; k++) {
        if (events[k].data.ptr == NULL) {
            if (stdin_ready != NULL)
                *stdin_ready = 1;
            continue;
        }
        conn_step(events[k].data.ptr);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_us(double p)
{
    if (nsamples == 0)
        return 0;
    size_t k = (size_t)(p * (double)(nsamples - 1) + 0.5);
    return (double)samples[k] / 1000.0;
}

static void fail_timeout(const char *what)
{
    printf("result {\"error\": \"timeout: %s\", \"errors\": %llu, \"started\": %llu,"
           " \"finished\": %llu, \"held\": %llu}\n",
           what, (unsigned long long)errors, (unsigned long long)started,
           (unsigned long long)finished, (unsigned long long)held);
    fflush(stdout);
    exit(3);
}

/* Open every connection of bulk/echo and wait until all are up (or failed). */
static void open_all(uint64_t deadline)
{
    nconns = cfg.conns;
    conns = calloc((size_t)nconns, sizeof *conns);
    for (int i = 0; i < nconns; i++)
        if (conn_open(&conns[i]) == 0)
            conn_step(&conns[i]);
    for (;;) {
        int up = 0;
        for (int i = 0; i < nconns; i++)
            up += conns[i].state == C_READY || conns[i].state == C_FREE;
        if (up == nconns)
            return;
        if (now_ns() > deadline)
            fail_timeout("connecting");
        turn(10, NULL);
    }
}

static int run_bulk(uint64_t deadline, double *elapsed)
{
    open_all(deadline);
    int live = 0;
    for (int i = 0; i < nconns; i++)
        live += conns[i].state == C_READY;
    if (live != nconns)
        return -1;
    phase("measure");
    uint64_t t0 = now_ns();
    for (int i = 0; i < nconns; i++) {
        conns[i].state = C_SEND;
        conn_step(&conns[i]);
    }
    for (;;) {
        int done = 0;
        for (int i = 0; i < nconns; i++)
            done += conns[i].state == C_FREE;
        if (done == nconns)
            break;
        if (now_ns() > deadline)
            fail_timeout("bulk transfer");
        turn(10, NULL);
    }
    *elapsed = (double)(now_ns() - t0) / 1e9;
    phase("done");
    units = (uint64_t)nconns * cfg.bytes;
    return 0;
}

/* echo --interval: start the round trips whose time has come. */
static void wake_due(void)
{
    uint64_t t = now_ns();
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if (c->state != C_WAIT || c->t0 > t)
            continue;
        c->state = C_PING;
        c->t0 = t;
        c->wpos = c->rpos = 0;
        conn_step(c);
    }
}

static int run_echo(uint64_t deadline, double *elapsed)
{
    open_all(deadline);
    for (int i = 0; i < nconns; i++) {
        if (conns[i].state != C_READY)
            return -1;
        conns[i].state = C_PING;
        conns[i].t0 = now_ns();
        conn_step(&conns[i]);
    }
    uint64_t t_warm = now_ns() + (uint64_t)(cfg.warmup * 1e9);
    while (now_ns() < t_warm) {
        turn(5, NULL);
        wake_due();
        if (now_ns() > deadline)
            fail_timeout("warm-up");
    }
    phase("measure");
    recording = 1;
    t_begin = now_ns();
    uint64_t t_stop = t_begin + (uint64_t)(cfg.duration * 1e9);
    while (now_ns() < t_stop && units < cfg.max) {
        turn(cfg.interval > 0 ? 1 : 5, NULL);
        wake_due();
        if (now_ns() > deadline)
            fail_timeout("echo");
    }
    t_end = now_ns();
    recording = 0;
    stopping = 1;
    phase("done");
    *elapsed = (double)(t_end - t_begin) / 1e9;
    uint64_t t_drain = now_ns() + (uint64_t)(DRAIN_S * 1e9);
    for (;;) { /* let the round trips in flight come back, then close */
        int busy = 0;
        for (int i = 0; i < nconns; i++)
            busy += conns[i].state == C_PING;
        if (busy == 0 || now_ns() > t_drain)
            break;
        turn(5, NULL);
    }
    for (int i = 0; i < nconns; i++)
        conn_close(&conns[i], conns[i].state == C_PING);
    return 0;
}

static int run_churn(uint64_t deadline, double *elapsed)
{
    nconns = cfg.conc;
    conns = calloc((size_t)nconns, sizeof *conns);
    uint64_t t_measure = now_ns() + (uint64_t)(cfg.warmup * 1e9);
    uint64_t t_stop = UINT64_MAX;
    for (;;) {
        uint64_t t = now_ns();
        if (!recording && !stopping && t >= t_measure) {
            phase("measure");
            recording = 1;
            t_begin = t;
            t_stop = t + (uint64_t)(cfg.duration * 1e9);
        }
        if (recording && (t >= t_stop || units >= cfg.max)) {
            t_end = t;
            recording = 0;
            stopping = 1;
            phase("done");
        }
        int busy = 0;
        for (int i = 0; i < nconns; i++) {
            if (conns[i].state == C_FREE && !stopping) {
                if (conn_open(&conns[i]) == 0)
                    conn_step(&conns[i]);
            }
            busy += conns[i].state != C_FREE;
        }
        if (stopping && (busy == 0 || t > t_end + (uint64_t)(DRAIN_S * 1e9)))
            break;
        if (t > deadline)
            fail_timeout("churn");
        turn(5, NULL);
    }
    for (int i = 0; i < nconns; i++)
        conn_close(&conns[i], 1);
    *elapsed = (double)(t_end - t_begin) / 1e9;
    return 0;
}

/* idle, on "ping [K]": every held connection echoes once more, at most K at a time. */
static void sweep(int conc)
{
    uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)(cfg.timeout * 1e9);
    uint64_t errors0 = errors, lost0 = lost;
    nsamples = 0;
    units = 0;
    recording = 1;
    int next = 0;
    for (;;) {
        int in_flight = 0;
        for (int i = 0; i < next; i++)
            in_flight += conns[i].state == C_PING;
        while (next < nconns && in_flight < conc) {
            struct conn *c = &conns[next++];
            if (c->state != C_HELD)
                continue;
            held--;
            c->state = C_PING;
            c->wpos = c->rpos = 0;
            c->t0 = now_ns();
            in_flight++;
            conn_step(c);
        }
        if (next == nconns && in_flight == 0)
            break;
        if (now_ns() > deadline) { /* an echo that never came back is a failure */
            for (int i = 0; i < next; i++)
                if (conns[i].state == C_PING)
                    conn_close(&conns[i], 1);
            break;
        }
        turn(5, NULL);
    }
    recording = 0;
    double elapsed = (double)(now_ns() - t0) / 1e9;
    qsort(samples, nsamples, sizeof *samples, cmp_u64);
    printf("sweep {\"pinged\": %llu, \"elapsed_s\": %.6f, \"p50_us\": %.2f, \"p99_us\": %.2f,"
           " \"max_us\": %.2f, \"errors\": %llu, \"lost\": %llu, \"held\": %llu}\n",
           (unsigned long long)units, elapsed, pct_us(0.5), pct_us(0.99),
           nsamples ? (double)samples[nsamples - 1] / 1000.0 : 0.0,
           (unsigned long long)(errors - errors0), (unsigned long long)(lost - lost0),
           (unsigned long long)held);
    fflush(stdout);
}

static int run_idle(uint64_t deadline, double *elapsed)
{
    nconns = cfg.conns;
    conns = calloc((size_t)nconns, sizeof *conns);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    int next = 0;
    uint64_t t0 = now_ns();
    while ((int)held < nconns) {
        int in_progress = 0;
        for (int i = 0; i < next; i++)
            in_progress += conns[i].state != C_FREE && conns[i].state != C_HELD;
        while (next < nconns && in_progress < cfg.conc) {
            if (conn_open(&conns[next]) == 0)
                conn_step(&conns[next]);
            next++;
            in_progress++;
        }
        if (next == nconns && in_progress == 0)
            break; /* every connection is held or failed */
        if (now_ns() > deadline)
            fail_timeout("opening idle connections");
        turn(5, NULL);
    }
    *elapsed = (double)(now_ns() - t0) / 1e9;
    units = held;
    phase("held");
    /* stdin not pollable (a file, /dev/null): nothing will come, do not wait for it */
    int stdin_ready = epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) < 0;
    uint64_t t_hold = now_ns() + (uint64_t)(cfg.hold_timeout * 1e9);
    for (;;) {
        while (!stdin_ready && now_ns() < t_hold)
            turn(100, &stdin_ready);
        char line[64];
        ssize_t n = stdin_ready ? read(0, line, sizeof line - 1) : 0;
        if (n < 4 || strncmp(line, "ping", 4) != 0)
            break; /* EOF, the hold timeout, "close" or anything else */
        line[n] = '\0';
        int conc = atoi(line + 4);
        sweep(conc > 0 ? conc : cfg.conc);
        stdin_ready = 0;
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
    uint64_t still = held;
    for (int i = 0; i < nconns; i++)
        conn_close(&conns[i], 0);
    held = still;
    return 0;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: loadgen bulk|echo|churn|idle HOST:PORT [--conns N] [--conc C] [--size S]\n"
            "       [--bytes B] [--warmup W] [--duration D] [--max M] [--timeout T]\n"
            "       [--hold-timeout H] [--interval I] [--tls CA] [--sni NAME]\n");
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    const char *modes[] = {"bulk", "echo", "churn", "idle"};
    cfg.mode = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(argv[1], modes[i]) == 0)
            cfg.mode = i;
    if (cfg.mode < 0)
        return usage();
    char host[64];
    const char *colon = strrchr(argv[2], ':');
    if (colon == NULL || (size_t)(colon - argv[2]) >= sizeof host)
        return usage();
    memcpy(host, argv[2], (size_t)(colon - argv[2]));
    host[colon - argv[2]] = '\0';
    cfg.addr.sin_family = AF_INET;
    cfg.addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &cfg.addr.sin_addr) != 1)
        return usage();
    for (int i = 3; i < argc; i++) {
        const char *o = argv[i];
        if (i + 1 >= argc)
            return usage();
        const char *v = argv[++i];
        if (strcmp(o, "--conns") == 0)
            cfg.conns = atoi(v);
        else if (strcmp(o, "--conc") == 0)
            cfg.conc = atoi(v);
        else if (strcmp(o, "--size") == 0)
            cfg.size = atoi(v);
        else if (strcmp(o, "--bytes") == 0)
            cfg.bytes = strtoull(v, NULL, 10);
        else if (strcmp(o, "--warmup") == 0)
            cfg.warmup = atof(v);
        else if (strcmp(o, "--duration") == 0)
            cfg.duration = atof(v);
        else if (strcmp(o, "--max") == 0)
            cfg.max = strtoull(v, NULL, 10);
        else if (strcmp(o, "--timeout") == 0)
            cfg.timeout = atof(v);
        else if (strcmp(o, "--hold-timeout") == 0)
            cfg.hold_timeout = atof(v);
        else if (strcmp(o, "--interval") == 0)
            cfg.interval = atof(v);
        else if (strcmp(o, "--tls") == 0)
            cfg.ca = v;
        else if (strcmp(o, "--sni") == 0)
            cfg.sni = v;
        else
            return usage();
    }
    if (cfg.conns < 1 || cfg.conc < 1 || cfg.size < 1 || cfg.size > MAX_SIZE)
        return usage();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    if (cfg.ca != NULL) {
        ctx = SSL_CTX_new(TLS_client_method());
        if (ctx == NULL || SSL_CTX_load_verify_locations(ctx, cfg.ca, NULL) != 1) {
            ERR_print_errors_fp(stderr);
            return 1;
        }
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                                  | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                                  | SSL_MODE_RELEASE_BUFFERS);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT
                                                | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, new_session);
    }
    sendbuf = malloc(SEND_BUF);
    if (sendbuf == NULL)
        return 1;
    for (size_t k = 0; k < SEND_BUF; k++)
        sendbuf[k] = (char)(k * 7 + 1);
    for (int k = 0; k < cfg.size; k++)
        request[k] = (char)k;
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return 1;

    uint64_t deadline = now_ns() + (uint64_t)(cfg.timeout * 1e9);
    double elapsed = 0, cpu0 = cpu_s();
    int rc;
    switch (cfg.mode) {
    case M_BULK:
        rc = run_bulk(deadline, &elapsed);
        break;
    case M_ECHO:
        rc = run_echo(deadline, &elapsed);
        break;
    case M_CHURN:
        rc = run_churn(deadline, &elapsed);
        break;
    default:
        rc = run_idle(deadline, &elapsed);
        break;
    }
    double cpu = cpu_s() - cpu0;
    if (rc < 0) {
        printf("result {\"error\": \"set-up failed\", \"errors\": %llu}\n",
               (unsigned long long)errors);
        return 1;
    }
    qsort(samples, nsamples, sizeof *samples, cmp_u64);
    printf("result {\"mode\": \"%s\", \"elapsed_s\": %.6f, \"units\": %llu, \"rate\": %.3f,"
           " \"p50_us\": %.2f, \"p99_us\": %.2f, \"max_us\": %.2f, \"errors\": %llu,"
           " \"started\": %llu, \"held\": %llu, \"lost\": %llu, \"tls_handshakes\": %llu,"
           " \"tls_resumed\": %llu, \"loadgen_cpu_s\": %.3f}\n",
           modes[cfg.mode], elapsed, (unsigned long long)units,
           elapsed > 0 ? (double)units / elapsed : 0.0, pct_us(0.5), pct_us(0.99),
           nsamples ? (double)samples[nsamples - 1] / 1000.0 : 0.0,
           (unsigned long long)errors, (unsigned long long)started, (unsigned long long)held,
           (unsigned long long)lost, (unsigned long long)handshakes,
           (unsigned long long)resumed, cpu);
    fflush(stdout);
    return 0;
}
