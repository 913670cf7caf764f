/* bench/peers/tlsheap.c: heap held by an idle TLS 1.3 client connection in OpenSSL, before and
 * after SSL_free_buffers(). Run by `bench/peers/diagnose.py tls-heap`.
 *
 *   tlsheap PORT CA N [GROUPS]
 *                       N connections to the TLS echo peer on 127.0.0.1:PORT, each set up as
 *                       relaycore sets its TLS connections (SSL_MODE_RELEASE_BUFFERS and the
 *                       partial-write modes, verification of "localhost"): handshake, one
 *                       64-byte echo, then one non-blocking SSL_read that says WANT_READ, as
 *                       an event loop's last read on a connection that goes idle does.
 *                       GROUPS: the key exchange groups offered (OpenSSL's syntax; a "*"
 *                       sends a key share), e.g. to see what a key share holds.
 * Prints the heap in use per connection (mallinfo2) then, and after SSL_free_buffers() on each.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: tlsheap PORT CA N [GROUPS]\n");
        return 2;
    }
    int port = atoi(argv[1]), n = atoi(argv[3]);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL || SSL_CTX_load_verify_locations(ctx, argv[2], NULL) != 1 || n < 1)
        return 1;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (argc == 5 && SSL_CTX_set1_groups_list(ctx, argv[4]) != 1) {
        fprintf(stderr, "tlsheap: groups %s: not accepted\n", argv[4]);
        return 1;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                              | SSL_MODE_RELEASE_BUFFERS);
    SSL **ssl = calloc((size_t)n, sizeof *ssl);
    struct mallinfo2 m0 = mallinfo2();
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            perror("tlsheap: connect");
            return 1;
        }
        ssl[i] = SSL_new(ctx);
        SSL_set_fd(ssl[i], fd);
        SSL_set_tlsext_host_name(ssl[i], "localhost");
        SSL_set1_host(ssl[i], "localhost");
        if (SSL_connect(ssl[i]) != 1) {
            ERR_print_errors_fp(stderr);
            return 1;
        }
        char b[64] = {0};
        int got = 0;
        if (SSL_write(ssl[i], b, 64) != 64)
            return 1;
        while (got < 64) {
            int r = SSL_read(ssl[i], b, 64 - got);
            if (r <= 0)
                return 1;
            got += r;
        }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        int r = SSL_read(ssl[i], b, sizeof b);
        if (r > 0 || SSL_get_error(ssl[i], r) != SSL_ERROR_WANT_READ)
            fprintf(stderr, "tlsheap: expected WANT_READ\n");
    }
    struct mallinfo2 m1 = mallinfo2();
    int freed = 0;
    for (int i = 0; i < n; i++)
        freed += SSL_free_buffers(ssl[i]);
    struct mallinfo2 m2 = mallinfo2();
    printf("heap per idle TLS connection: %.0f bytes after the last SSL_read said WANT_READ;"
           " %.0f bytes after SSL_free_buffers (it freed buffers on %d of %d)\n",
           (double)(m1.uordblks - m0.uordblks) / n, (double)(m2.uordblks - m0.uordblks) / n,
           freed, n);
    return 0;
}
