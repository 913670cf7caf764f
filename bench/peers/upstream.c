/* bench/peers/upstream.c: the upstream end of `make bench-peers`, an epoll sink/echo server.
 *
 *   upstream sink|echo [--tls CERT KEY] [--procs N] [--ciphersuites S] [--no-resume]
 *
 *   sink   per connection: read until EOF (TLS: close_notify or a bare FIN), then write the
 *          byte count (8 bytes, little-endian) and close (TLS: after our close_notify).
 *   echo   per connection: write back every byte read, until EOF.
 *
 * Unlike bench/peer.c (one connection at a time per process, for `make bench`), each of the
 * N processes (default 2) runs an edge-triggered epoll loop over any number of connections:
 * the 32-connection echo, the concurrent churn and the 10,000 idle TLS connections of
 * bench/peers/run.py need that. The N processes are forked at start, each with its own
 * SO_REUSEPORT listener on the same 127.0.0.1 port (printed as one line on stdout).
 *
 * TLS: TLS 1.2 or 1.3 as a server, TLS 1.3 suites S (default TLS_AES_128_GCM_SHA256), session
 * tickets on (OpenSSL's default: two after each full or resumed handshake). The SSL_CTX, and
 * so the ticket keys, is made before the fork: any process resumes a session another issued.
 * --no-resume: no tickets and no session cache, so that every handshake is a full one (the
 * cost of a key exchange). Key-exchange groups: the library's defaults; run.py builds this
 * against relaycore's own OpenSSL (3.5), so a client that offers X25519MLKEM768 gets it.
 *
 * stdin, one command per line:
 *   stats   prints "handshakes H resumed R other O open C accepted A pq Q protocol P cipher X
 *           group G": TLS handshakes completed by all processes since start, how many
 *           resumed a session (SSL_session_reused), how many negotiated something else
 *           than the first handshake's protocol and cipher (P and X), connections open now
 *           and accepted since start, handshakes whose key exchange was post-quantum (an
 *           ML-KEM group), and the latest handshake's group G (the relays take turns).
 * EOF on stdin ends every process. RLIMIT_NOFILE is raised to its hard limit.
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
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (256 * 1024)
#define READ_BUDGET (1 << 20) /* bytes one connection reads before others get a turn */
#define MAX_PROCS 16
#define MAX_EVENTS 256

struct stats {
    uint64_t handshakes, resumed, other, open, accepted, pq;
    int have_first;
    char protocol[32];
    char cipher[64];
    char group[64];
};

enum { ST_HANDSHAKE, ST_RUN, ST_CLOSING };

struct conn {
    int fd;
    SSL *ssl;
    int state;
    int queued;       /* on the ready list: its read budget ran out, bytes may be waiting */
    uint64_t total;   /* sink: bytes read */
    char *out;        /* bytes not yet written (echo: what the socket refused; sink: count) */
    size_t out_len, out_off;
    struct conn *next_ready;
};

static struct stats *stats;
static int echo_mode;
static char buf[BUF_SIZE];
static struct conn *ready_head;

static const char *group_name(SSL *ssl)
{
#if OPENSSL_VERSION_NUMBER >= 0x30200000L
    const char *g = SSL_get0_group_name(ssl);
    return g != NULL ? g : "none";
#else
    (void)ssl;
    return "?";
#endif
}

static void count_handshake(SSL *ssl)
{
    const char *proto = SSL_get_version(ssl), *cipher = SSL_get_cipher_name(ssl);
    const char *group = group_name(ssl);
    __atomic_fetch_add(&stats->handshakes, 1, __ATOMIC_RELAXED);
    if (SSL_session_reused(ssl))
        __atomic_fetch_add(&stats->resumed, 1, __ATOMIC_RELAXED);
    if (strstr(group, "MLKEM") != NULL)
        __atomic_fetch_add(&stats->pq, 1, __ATOMIC_RELAXED);
    /* The latest group, as text (a torn write between two processes shows a mix of two
     * names for a moment; only one relay runs at a time). */
    snprintf(stats->group, sizeof stats->group, "%s", group);
    /* The first handshake's protocol and cipher are the reference (a benign race between
     * processes on the very first handshakes only decides which one is shown). */
    if (!__atomic_load_n(&stats->have_first, __ATOMIC_ACQUIRE)) {
        snprintf(stats->protocol, sizeof stats->protocol, "%s", proto);
        snprintf(stats->cipher, sizeof stats->cipher, "%s", cipher);
        __atomic_store_n(&stats->have_first, 1, __ATOMIC_RELEASE);
    } else if (strcmp(proto, stats->protocol) != 0 || strcmp(cipher, stats->cipher) != 0) {
        __atomic_fetch_add(&stats->other, 1, __ATOMIC_RELAXED);
    }
}

static void conn_free(int ep, struct conn *c)
{
    if (c->ssl != NULL)
        SSL_free(c->ssl);
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    c->fd = -1; /* a queued conn is skipped, then freed, by the ready list walk */
    __atomic_fetch_sub(&stats->open, 1, __ATOMIC_RELAXED);
    if (!c->queued)
        free(c);
}

/* Write c->out. 1 all written, 0 must wait (EAGAIN / WANT_*), -1 fatal. */
static int flush_out(struct conn *c)
{
    while (c->out_off < c->out_len) {
        size_t n = c->out_len - c->out_off;
        if (c->ssl != NULL) {
            size_t w = 0;
            ERR_clear_error();
            if (SSL_write_ex(c->ssl, c->out + c->out_off, n, &w) <= 0) {
                int e = SSL_get_error(c->ssl, 0);
                return (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) ? 0 : -1;
            }
            c->out_off += w;
        } else {
            ssize_t w = send(c->fd, c->out + c->out_off, n, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                return errno == EAGAIN ? 0 : -1;
            c->out_off += (size_t)w;
        }
    }
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = 0;
    return 1;
}

/* Queue bytes to write (copied); then try to write them. */
static int write_or_keep(struct conn *c, const char *p, size_t n)
{
    c->out = malloc(n);
    if (c->out == NULL)
        return -1;
    memcpy(c->out, p, n);
    c->out_len = n;
    c->out_off = 0;
    return flush_out(c);
}

/* Read once: >0 bytes, 0 EOF, -1 wait, -2 fatal. */
static ssize_t read_some(struct conn *c, size_t want)
{
    if (c->ssl != NULL) {
        size_t r = 0;
        ERR_clear_error();
        if (SSL_read_ex(c->ssl, buf, want, &r) > 0)
            return (ssize_t)r;
        int e = SSL_get_error(c->ssl, 0);
        if (e == SSL_ERROR_ZERO_RETURN)
            return 0;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return -1;
        return -2;
    }
    ssize_t r = recv(c->fd, buf, want, 0);
    if (r >= 0)
        return r;
    return (errno == EAGAIN || errno == EINTR) ? -1 : -2;
}

static void finish(int ep, struct conn *c)
{
    if (c->ssl != NULL) {
        ERR_clear_error();
        SSL_shutdown(c->ssl); /* our close_notify; best effort */
    }
    conn_free(ep, c);
}

/* Move what can move now. */
static void conn_run(int ep, struct conn *c)
{
    if (c->state == ST_HANDSHAKE) {
        ERR_clear_error();
        int r = SSL_accept(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            conn_free(ep, c);
            return;
        }
        count_handshake(c->ssl);
        c->state = ST_RUN;
    }
    if (c->out != NULL) {
        int f = flush_out(c);
        if (f < 0) {
            conn_free(ep, c);
            return;
        }
        if (f == 0)
            return; /* wait for EPOLLOUT: never read while bytes wait to go out */
    }
    if (c->state == ST_CLOSING) {
        finish(ep, c);
        return;
    }
    size_t budget = READ_BUDGET;
    for (;;) {
        ssize_t r = read_some(c, echo_mode ? 65536 : BUF_SIZE);
        if (r == -1)
            return;
        if (r == -2) {
            conn_free(ep, c);
            return;
        }
        if (r == 0) {
            c->state = ST_CLOSING;
            if (!echo_mode) {
                unsigned char count[8];
                for (int i = 0; i < 8; i++)
                    count[i] = (unsigned char)(c->total >> (8 * i));
                int f = write_or_keep(c, (const char *)count, sizeof count);
                if (f < 0)
                    conn_free(ep, c);
                else if (f > 0)
                    finish(ep, c);
                return;
            }
            finish(ep, c);
            return;
        }
        c->total += (uint64_t)r;
        if (echo_mode) {
            int f = write_or_keep(c, buf, (size_t)r);
            if (f < 0) {
                conn_free(ep, c);
                return;
            }
            if (f == 0)
                return;
        }
        if ((size_t)r >= budget) {
            if (!c->queued) {
                c->queued = 1;
                c->next_ready = ready_head;
                ready_head = c;
            }
            return;
        }
        budget -= (size_t)r;
    }
}

static void accept_all(int ep, int ls, SSL_CTX *ctx)
{
    for (int k = 0; k < 64; k++) {
        int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->state = ST_RUN;
        if (ctx != NULL) {
            c->ssl = SSL_new(ctx);
            if (c->ssl == NULL || SSL_set_fd(c->ssl, fd) != 1) {
                if (c->ssl != NULL)
                    SSL_free(c->ssl);
                close(fd);
                free(c);
                continue;
            }
            SSL_set_accept_state(c->ssl);
            c->state = ST_HANDSHAKE;
        }
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                 .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            if (c->ssl != NULL)
                SSL_free(c->ssl);
            close(fd);
            free(c);
            continue;
        }
        __atomic_fetch_add(&stats->open, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&stats->accepted, 1, __ATOMIC_RELAXED);
        conn_run(ep, c);
    }
}

static void worker(int ls, SSL_CTX *ctx)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(0);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) < 0) {
        perror("upstream: epoll");
        _exit(1);
    }
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, ready_head != NULL ? 0 : 1000);
        for (int k = 0; k < n; k++) {
            struct conn *c = events[k].data.ptr;
            if (c == NULL)
                accept_all(ep, ls, ctx);
            else if (c->fd >= 0)
                conn_run(ep, c);
        }
        /* Connections whose budget ran out: run each once more (they requeue if needed). */
        struct conn *list = ready_head;
        ready_head = NULL;
        while (list != NULL) {
            struct conn *c = list;
            list = c->next_ready;
            c->queued = 0;
            if (c->fd < 0)
                free(c);
            else
                conn_run(ep, c);
        }
    }
}

static SSL_CTX *tls_context(const char *cert, const char *key, const char *suites,
                            int no_resume)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1
        || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1
        || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1
        || SSL_CTX_check_private_key(ctx) != 1 || SSL_CTX_set_ciphersuites(ctx, suites) != 1) {
        ERR_print_errors_fp(stderr);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                              | SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1); /* fewer read() calls; conn_run reads until WANT_READ */
    if (no_resume) {
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, 0);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    return ctx;
}

static int usage(void)
{
    fprintf(stderr, "usage: upstream sink|echo [--tls CERT KEY] [--procs N] [--ciphersuites S]"
                    " [--no-resume]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "sink") != 0 && strcmp(argv[1], "echo") != 0))
        return usage();
    echo_mode = strcmp(argv[1], "echo") == 0;
    const char *cert = NULL, *key = NULL, *suites = "TLS_AES_128_GCM_SHA256";
    int procs = 2, no_resume = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--tls") == 0 && i + 2 < argc) {
            cert = argv[++i];
            key = argv[++i];
        } else if (strcmp(argv[i], "--ciphersuites") == 0 && i + 1 < argc) {
            suites = argv[++i];
        } else if (strcmp(argv[i], "--no-resume") == 0) {
            no_resume = 1;
        } else if (strcmp(argv[i], "--procs") == 0 && i + 1 < argc) {
            procs = atoi(argv[++i]);
            if (procs < 1 || procs > MAX_PROCS)
                return usage();
        } else {
            return usage();
        }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    SSL_CTX *ctx = NULL;
    if (cert != NULL && (ctx = tls_context(cert, key, suites, no_resume)) == NULL)
        return 1;
    stats = mmap(NULL, sizeof *stats, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (stats == MAP_FAILED) {
        perror("upstream: mmap");
        return 1;
    }
    snprintf(stats->protocol, sizeof stats->protocol, "-");
    snprintf(stats->cipher, sizeof stats->cipher, "-");
    snprintf(stats->group, sizeof stats->group, "-");
    signal(SIGPIPE, SIG_IGN);

    int ls[MAX_PROCS];
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < procs; i++) {
        int one = 1;
        socklen_t len = sizeof addr;
        ls[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (ls[i] < 0 || setsockopt(ls[i], SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0
            || bind(ls[i], (struct sockaddr *)&addr, sizeof addr) < 0
            || listen(ls[i], 4096) < 0
            || getsockname(ls[i], (struct sockaddr *)&addr, &len) < 0) {
            perror("upstream: listen");
            return 1;
        }
    }
    for (int i = 0; i < procs; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("upstream: fork");
            return 1;
        }
        if (pid == 0) {
            for (int j = 0; j < procs; j++)
                if (j != i)
                    close(ls[j]);
            worker(ls[i], ctx);
        }
    }
    for (int i = 0; i < procs; i++)
        close(ls[i]);
    printf("%u\n", ntohs(addr.sin_port));
    fflush(stdout);

    char line[64];
    size_t have = 0;
    for (;;) {
        ssize_t r = read(0, line + have, sizeof line - 1 - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        have += (size_t)r;
        char *nl;
        while ((nl = memchr(line, '\n', have)) != NULL) {
            *nl = '\0';
            if (strcmp(line, "stats") == 0) {
                printf("handshakes %llu resumed %llu other %llu open %llu accepted %llu"
                       " pq %llu protocol %s cipher %s group %s\n",
                       (unsigned long long)__atomic_load_n(&stats->handshakes, __ATOMIC_RELAXED),
                       (unsigned long long)__atomic_load_n(&stats->resumed, __ATOMIC_RELAXED),
                       (unsigned long long)__atomic_load_n(&stats->other, __ATOMIC_RELAXED),
                       (unsigned long long)__atomic_load_n(&stats->open, __ATOMIC_RELAXED),
                       (unsigned long long)__atomic_load_n(&stats->accepted, __ATOMIC_RELAXED),
                       (unsigned long long)__atomic_load_n(&stats->pq, __ATOMIC_RELAXED),
                       stats->protocol, stats->cipher, stats->group);
            } else {
                printf("error unknown command\n");
            }
            fflush(stdout);
            have -= (size_t)(nl + 1 - line);
            memmove(line, nl + 1, have);
        }
        if (have == sizeof line - 1)
            have = 0;
    }
    return 0; /* the workers die with us (PR_SET_PDEATHSIG) */
}
