/* bench/peer.c: the upstream end of the benchmarks, in C so that it is never what is measured.
 *
 *   peer sink   per connection: read into a 1 MiB buffer until EOF, then write the byte count
 *               (8 bytes, little-endian) and close. The sender's clock stops when that count
 *               arrives, so a round covers every byte reaching the sink, relayed or not.
 *   peer echo   per connection: write back every byte read, until EOF.
 *
 *   peer sink|echo --tls CERT KEY [--ciphersuites S] [--no-tickets]
 *               the same over TLS, as a server: CERT (PEM chain) and KEY, TLS 1.2 or 1.3,
 *               TLS 1.3 suites S (default TLS_AES_128_GCM_SHA256). Session tickets are on
 *               (OpenSSL's default: two after each handshake), and the ticket keys are made
 *               once before the workers fork, so any worker resumes a session another one
 *               issued. --no-tickets: no tickets and no session cache, so that every
 *               handshake is a full one. EOF is the client's close_notify (or a bare FIN);
 *               the peer answers with its own close_notify before it closes.
 *
 * Listens on 127.0.0.1, on an ephemeral port printed as one line on stdout. WORKERS processes,
 * forked at start, each accept() and serve one connection at a time, so that no fork (nor
 * exec of a handler) is counted in a benchmark that opens connections. Reads commands, one
 * per line, on stdin:
 *   stats       one line on stdout: "handshakes N resumed M protocol P cipher C" (TLS
 *               handshakes completed by all workers since start, and how many resumed a
 *               session: SSL_session_reused; P and C are those of the latest handshake)
 * and exits, workers included, when stdin reaches EOF: its parent (pytest) is gone or done.
 * bench/conftest.py builds it with `cc -O2 ... -lssl -lcrypto` (libssl-dev).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (1 << 20)
#define WORKERS 8

/* Shared by all workers (MAP_SHARED), read by the parent for `stats`. */
struct stats {
    uint64_t handshakes;
    uint64_t resumed;
    char protocol[32];
    char cipher[64];
};

static struct stats *stats;
static char buf[BUF_SIZE];

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void count_bytes(unsigned char out[8], uint64_t total)
{
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(total >> (8 * i));
}

static int serve_plain(int fd, int echo)
{
    uint64_t total = 0;
    for (;;) {
        ssize_t r = read(fd, buf, echo ? 65536 : BUF_SIZE);
        if (r == 0)
            break;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        total += (uint64_t)r;
        if (echo && write_all(fd, buf, (size_t)r) < 0)
            return 1;
    }
    if (!echo) {
        unsigned char count[8];
        count_bytes(count, total);
        if (write_all(fd, (const char *)count, sizeof count) < 0)
            return 1;
    }
    return 0;
}

static int ssl_write_all(SSL *ssl, const char *p, size_t n)
{
    while (n > 0) {
        size_t w = 0;
        if (SSL_write_ex(ssl, p, n, &w) <= 0)
            return -1;
        p += w;
        n -= w;
    }
    return 0;
}

static int serve_tls(SSL_CTX *ctx, int fd, int echo)
{
    SSL *ssl = SSL_new(ctx);
    int rc = 1;
    uint64_t total = 0;
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1)
        goto out;
    if (SSL_accept(ssl) != 1)
        goto out;
    __atomic_fetch_add(&stats->handshakes, 1, __ATOMIC_RELAXED);
    if (SSL_session_reused(ssl))
        __atomic_fetch_add(&stats->resumed, 1, __ATOMIC_RELAXED);
    snprintf(stats->protocol, sizeof stats->protocol, "%s", SSL_get_version(ssl));
    snprintf(stats->cipher, sizeof stats->cipher, "%s", SSL_get_cipher_name(ssl));
    for (;;) {
        size_t r = 0;
        if (SSL_read_ex(ssl, buf, echo ? 65536 : BUF_SIZE, &r) <= 0) {
            /* close_notify, or (SSL_OP_IGNORE_UNEXPECTED_EOF) a bare FIN: the end of the
             * stream. Anything else ends the connection as a failure. */
            if (SSL_get_error(ssl, 0) != SSL_ERROR_ZERO_RETURN)
                goto out;
            break;
        }
        total += r;
        if (echo && ssl_write_all(ssl, buf, r) < 0)
            goto out;
    }
    if (!echo) {
        unsigned char count[8];
        count_bytes(count, total);
        if (ssl_write_all(ssl, (const char *)count, sizeof count) < 0)
            goto out;
    }
    SSL_shutdown(ssl); /* our close_notify; the client's came first */
    rc = 0;
out:
    if (rc)
        ERR_clear_error();
    SSL_free(ssl);
    return rc;
}

static SSL_CTX *tls_context(const char *cert, const char *key, const char *suites, int tickets)
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
    if (!tickets) {
        /* No ticket, no server-side session cache: every handshake is a full one. */
        SSL_CTX_set_num_tickets(ctx, 0);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    SSL_CTX_set_read_ahead(ctx, 1); /* fewer read() calls for the sink */
    return ctx;
}

static void worker(int ls, SSL_CTX *ctx, int echo)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(0);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (ctx != NULL)
            serve_tls(ctx, fd, echo);
        else
            serve_plain(fd, echo);
        close(fd);
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: peer sink|echo [--tls CERT KEY [--ciphersuites S] [--no-tickets]]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "sink") != 0 && strcmp(argv[1], "echo") != 0))
        return usage();
    int echo = strcmp(argv[1], "echo") == 0;
    const char *cert = NULL, *key = NULL, *suites = "TLS_AES_128_GCM_SHA256";
    int tickets = 1;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--tls") == 0 && i + 2 < argc) {
            cert = argv[++i];
            key = argv[++i];
        } else if (strcmp(argv[i], "--ciphersuites") == 0 && i + 1 < argc) {
            suites = argv[++i];
        } else if (strcmp(argv[i], "--no-tickets") == 0) {
            tickets = 0;
        } else {
            return usage();
        }
    }
    SSL_CTX *ctx = NULL;
    if (cert != NULL) {
        ctx = tls_context(cert, key, suites, tickets);
        if (ctx == NULL)
            return 1;
    } else if (tickets == 0 || strcmp(suites, "TLS_AES_128_GCM_SHA256") != 0) {
        return usage();
    }
    stats = mmap(NULL, sizeof *stats, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (stats == MAP_FAILED) {
        perror("peer: mmap");
        return 1;
    }
    snprintf(stats->protocol, sizeof stats->protocol, "-");
    snprintf(stats->cipher, sizeof stats->cipher, "-");
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (ls < 0 || bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 1024) < 0
        || getsockname(ls, (struct sockaddr *)&addr, &len) < 0) {
        perror("peer: listen");
        return 1;
    }
    for (int i = 0; i < WORKERS; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("peer: fork");
            return 1;
        }
        if (pid == 0)
            worker(ls, ctx, echo);
    }
    close(ls);
    printf("%u\n", ntohs(addr.sin_port));
    fflush(stdout);

    /* Commands on stdin, one per line; EOF ends the peer (the workers die with it). */
    char line[64];
    size_t have = 0;
    for (;;) {
        ssize_t r = read(0, line + have, sizeof line - 1 - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        have += (size_t)r;
        char *nl;
        while ((nl = memchr(line, '\n', have)) != NULL) {
            *nl = '\0';
            if (strcmp(line, "stats") == 0) {
                printf("handshakes %llu resumed %llu protocol %s cipher %s\n",
                       (unsigned long long)__atomic_load_n(&stats->handshakes, __ATOMIC_RELAXED),
                       (unsigned long long)__atomic_load_n(&stats->resumed, __ATOMIC_RELAXED),
                       stats->protocol, stats->cipher);
            } else {
                printf("error unknown command\n");
            }
            fflush(stdout);
            have -= (size_t)(nl + 1 - line);
            memmove(line, nl + 1, have);
        }
        if (have == sizeof line - 1)
            have = 0; /* an overlong line: drop it */
    }
}
