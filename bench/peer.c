/* bench/peer.c: the upstream end of the benchmarks, in C so that it is never what is measured.
 *
 *   peer sink   per connection: read into a 1 MiB buffer until EOF, then write the byte count
 *               (8 bytes, little-endian) and close. The sender's clock stops when that count
 *               arrives, so a round covers every byte reaching the sink, relayed or not.
 *   peer echo   per connection: write back every byte read, until EOF.
 *
 * Listens on 127.0.0.1, on an ephemeral port printed as one line on stdout. One forked child
 * per connection. Exits, children included, when stdin reaches EOF: its parent (pytest) is
 * gone or done. bench/conftest.py builds it with `cc -O2`; it needs nothing but libc.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (1 << 20)

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

static int serve(int fd, int echo)
{
    static char buf[BUF_SIZE];
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
        for (int i = 0; i < 8; i++)
            count[i] = (unsigned char)(total >> (8 * i));
        if (write_all(fd, (const char *)count, sizeof count) < 0)
            return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2 || (strcmp(argv[1], "sink") != 0 && strcmp(argv[1], "echo") != 0)) {
        fprintf(stderr, "usage: peer sink|echo\n");
        return 2;
    }
    int echo = strcmp(argv[1], "echo") == 0;
    signal(SIGCHLD, SIG_IGN); /* children reap themselves */

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (ls < 0 || bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 128) < 0
        || getsockname(ls, (struct sockaddr *)&addr, &len) < 0) {
        perror("peer: listen");
        return 1;
    }
    printf("%u\n", ntohs(addr.sin_port));
    fflush(stdout);

    struct pollfd fds[2] = {{.fd = ls, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("peer: poll");
            return 1;
        }
        if (fds[1].revents) {
            char c;
            if (read(0, &c, 1) <= 0)
                return 0;
        }
        if (!(fds[0].revents & POLLIN))
            continue;
        int fd = accept(ls, NULL, NULL);
        if (fd < 0)
            continue;
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() == 1)
                _exit(0);
            close(ls);
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            _exit(serve(fd, echo));
        }
        close(fd);
    }
}
