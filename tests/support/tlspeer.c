/* tlspeer: a TLS peer on the same OpenSSL as relaycore._core (3.5), for the tests.
 *
 * What Python's ssl module cannot be: a server or client that negotiates the hybrid group
 * X25519MLKEM768, and that sends TLS 1.3 KeyUpdates (SSL_key_update) mid-stream.
 * tests/support/tlspeer.py builds it with ext/openssl/locate.py's flags and drives it.
 *
 *   tlspeer server CERT KEY [EVERY]
 *       Listen on 127.0.0.1 (port chosen by the kernel), accept one connection, echo every
 *       byte until the client's close_notify, answer it. With EVERY > 0, after each EVERY
 *       bytes echoed send a KeyUpdate, alternately without and with update_requested.
 *   tlspeer client PORT CERT KEY BYTES EVERY
 *       Connect to 127.0.0.1:PORT with CERT/KEY as client certificate (the server is not
 *       verified: the exit under test pins us, not the other way round), send BYTES of a
 *       fixed pseudo-random stream in 16 KiB chunks, reading each chunk's echo back before
 *       the next; KeyUpdates as above, after each EVERY bytes sent; then close_notify.
 *
 * stdout, one line each: "PORT n" (server, once listening), "KEYSHARES hex,hex" (server,
 * each ClientHello's key share groups by codepoint: a HelloRetryRequest makes two lines),
 * "GROUP name version cipher"
 * (after the handshake), "DONE in=n out=n in_sha256=hex out_sha256=hex keyupdates=n"
 * (at the end). Errors go to stderr with exit status 1. Blocking sockets, one connection,
 * a 60 s SO_RCVTIMEO/SO_SNDTIMEO so a stuck peer cannot hang a test.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define CHUNK 16384

static void die(const char *what)
{
    fprintf(stderr, "tlspeer: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void timeouts(int fd)
{
    struct timeval tv = {60, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

struct counts {
    unsigned long long in, out, keyupdates, next_update;
    unsigned long long every;
    EVP_MD_CTX *in_sha, *out_sha;
};

static void counts_init(struct counts *c, unsigned long long every)
{
    memset(c, 0, sizeof(*c));
    c->every = every;
    c->next_update = every;
    c->in_sha = EVP_MD_CTX_new();
    c->out_sha = EVP_MD_CTX_new();
    if (!c->in_sha || !c->out_sha || !EVP_DigestInit(c->in_sha, EVP_sha256())
        || !EVP_DigestInit(c->out_sha, EVP_sha256()))
        die("sha256");
}

static void hex(EVP_MD_CTX *ctx, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;
    EVP_DigestFinal(ctx, md, &n);
    for (unsigned int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
}

/* After `done` bytes, a KeyUpdate if one is due: even ones plain, odd ones requested. */
static void maybe_key_update(SSL *ssl, struct counts *c, unsigned long long done)
{
    if (!c->every || done < c->next_update)
        return;
    c->next_update += c->every;
    int type = c->keyupdates % 2 ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED;
    if (!SSL_key_update(ssl, type))
        die("SSL_key_update");
    c->keyupdates++;
    /* Sent with the next write; a handshake call sends it now, between data records. */
    if (SSL_do_handshake(ssl) <= 0)
        die("SSL_do_handshake after SSL_key_update");
}

static void write_all(SSL *ssl, const unsigned char *p, size_t n)
{
    while (n) {
        int k = SSL_write(ssl, p, (int)n);
        if (k <= 0)
            die("SSL_write");
        p += k;
        n -= (size_t)k;
    }
}

static void report(SSL *ssl)
{
    const char *group = SSL_get0_group_name(ssl);
    printf("GROUP %s %s %s\n", group ? group : "none", SSL_get_version(ssl),
           SSL_get_cipher_name(ssl));
    fflush(stdout);
}

static void done(struct counts *c)
{
    char in[65], out[65];
    hex(c->in_sha, in);
    hex(c->out_sha, out);
    printf("DONE in=%llu out=%llu in_sha256=%s out_sha256=%s keyupdates=%llu\n", c->in, c->out,
           in, out, c->keyupdates);
    fflush(stdout);
}

/* The handshake on fd, as the server or the client; reported on stdout. */
static SSL *handshake(SSL_CTX *ctx, int fd, int server)
{
    timeouts(fd);
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1
        || (server ? SSL_accept(ssl) : SSL_connect(ssl)) != 1)
        die("handshake");
    report(ssl);
    return ssl;
}

/* The server's ClientHello callback: which groups the client sent key shares for. */
static int on_client_hello(SSL *ssl, int *alert, void *arg)
{
    const unsigned char *p;
    size_t len;
    (void)alert;
    (void)arg;
    printf("KEYSHARES ");
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_key_share, &p, &len) == 1 && len >= 2) {
        size_t end = 2 + ((size_t)p[0] << 8 | p[1]);
        for (size_t at = 2; at + 4 <= end && end <= len;) {
            printf("%s%02x%02x", at > 2 ? "," : "", p[at], p[at + 1]);
            at += 4 + ((size_t)p[at + 2] << 8 | p[at + 3]);
        }
    }
    printf("\n");
    return SSL_CLIENT_HELLO_SUCCESS;
}

static SSL_CTX *context(const SSL_METHOD *method, const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(method);
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1
        || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        die("certificate or key");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    return ctx;
}

static int serve(const char *cert, const char *key, unsigned long long every)
{
    SSL_CTX *ctx = context(TLS_server_method(), cert, key);
    SSL_CTX_set_client_hello_cb(ctx, on_client_hello, NULL);
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t alen = sizeof(a);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 1) < 0
        || getsockname(lfd, (struct sockaddr *)&a, &alen) < 0)
        die("listen");
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        die("accept");
    close(lfd);
    SSL *ssl = handshake(ctx, fd, 1);
    struct counts c;
    counts_init(&c, every);
    unsigned char buf[CHUNK];
    for (;;) {
        int n = SSL_read(ssl, buf, sizeof(buf));
        if (n <= 0) {
            if (SSL_get_error(ssl, n) == SSL_ERROR_ZERO_RETURN)
                break;
            die("SSL_read");
        }
        c.in += (unsigned)n;
        EVP_DigestUpdate(c.in_sha, buf, (size_t)n);
        write_all(ssl, buf, (size_t)n);
        c.out += (unsigned)n;
        EVP_DigestUpdate(c.out_sha, buf, (size_t)n);
        maybe_key_update(ssl, &c, c.out);
    }
    SSL_shutdown(ssl);
    done(&c);
    return 0;
}

static int client(int port, const char *cert, const char *key, unsigned long long bytes,
                  unsigned long long every)
{
    SSL_CTX *ctx = context(TLS_client_method(), cert, key);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        die("connect");
    SSL *ssl = handshake(ctx, fd, 0);
    struct counts c;
    counts_init(&c, every);
    unsigned char out[CHUNK], in[CHUNK];
    unsigned int x = 12345;
    while (c.out < bytes) {
        size_t n = bytes - c.out < CHUNK ? (size_t)(bytes - c.out) : CHUNK;
        for (size_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u; /* any fixed stream will do */
            out[i] = (unsigned char)(x >> 16);
        }
        write_all(ssl, out, n);
        c.out += n;
        EVP_DigestUpdate(c.out_sha, out, n);
        for (size_t got = 0; got < n;) {
            int k = SSL_read(ssl, in, (int)(n - got));
            if (k <= 0)
                die("SSL_read: the echo ended early");
            EVP_DigestUpdate(c.in_sha, in, (size_t)k);
            got += (size_t)k;
            c.in += (unsigned)k;
        }
        maybe_key_update(ssl, &c, c.out);
    }
    if (SSL_shutdown(ssl) == 0) {
        /* Wait for the peer's close_notify: the exit answers ours once it is done. */
        unsigned char rest[64];
        while (SSL_read(ssl, rest, sizeof(rest)) > 0)
            ;
    }
    done(&c);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 4 && strcmp(argv[1], "server") == 0)
        return serve(argv[2], argv[3], argc > 4 ? strtoull(argv[4], NULL, 10) : 0);
    if (argc == 7 && strcmp(argv[1], "client") == 0)
        return client(atoi(argv[2]), argv[3], argv[4], strtoull(argv[5], NULL, 10),
                      strtoull(argv[6], NULL, 10));
    fprintf(stderr, "usage: tlspeer server CERT KEY [EVERY] | client PORT CERT KEY BYTES EVERY\n");
    return 2;
}
