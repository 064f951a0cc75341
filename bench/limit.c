/*
 * The physical limit: bench/run.py's round trips done in C, without Python.
 *
 *     cc -O2 -o limit bench/limit.c && ./limit N REPEATS
 *
 * Prints "case seconds_per_round_trip" per line (best of REPEATS runs of N),
 * doing per round trip what udscompat's contract needs and nothing more:
 *   fdpass1, fdpass16    sendmsg of 1 byte with 1 or 16 fds in one SCM_RIGHTS;
 *                        recvmsg with room for the kernel's cap plus the marker,
 *                        MSG_CMSG_CLOEXEC (else FD_CLOEXEC by hand), fds closed
 *   seq64, seq65536      native SOCK_SEQPACKET: send; recvmsg with the marker on
 *                        (Linux SO_TIMESTAMP) and the same control room
 *   raw64, raw65536      the baseline's round trip: send; recv(2), no marker, no
 *                        control room (what a raw stdlib recv asks of the kernel):
 *                        seqN / rawN is the kernel's own price of the contract
 *   emu64, emu65536      the emulation: an 8-byte frame header plus payload in one
 *                        send over SOCK_STREAM; recvmsg of 128 KiB chunks until
 *                        the frame is whole
 *   aio64, aio65536      an echo over a non-blocking seqpacket pair, each read
 *                        after poll(2) says readable, as an event loop does
 * A case the OS cannot run (no SOCK_SEQPACKET) is left out.  bench/run.py
 * compiles and runs this and prints each case's distance to it.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif
#ifdef MSG_CMSG_CLOEXEC
#define RECV_FLAGS MSG_CMSG_CLOEXEC
#else
#define RECV_FLAGS 0
#endif

#define FD_ROOM 256
#define CHUNK 131072
#define HEADER 8

static union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * FD_ROOM) + CMSG_SPACE(16)];
} control;
static char payload[65536 + HEADER];
static char chunk[CHUNK];

static void
die(const char *what)
{
    perror(what);
    exit(1);
}

static double
now(void)
{
    struct timespec ts;
    /* CPU time of the process, as bench/run.py measures (the machine may be shared). */
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One recvmsg as udscompat's receive does it; returns the payload length. */
static ssize_t
receive(int fd, char *buf, size_t size, int *nfds)
{
    struct iovec iov = {buf, size};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    ssize_t n = recvmsg(fd, &msg, RECV_FLAGS);
    if (n < 0) {
        die("recvmsg");
    }
    *nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *fds = (int *)CMSG_DATA(c);
            for (int i = 0; i < count; i++) {
#if RECV_FLAGS == 0
                fcntl(fds[i], F_SETFD, FD_CLOEXEC);
#endif
                close(fds[i]);
            }
            *nfds += count;
        }
    }
    return n;
}

static void
send_fds(int fd, const int *fds, int count)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 16)];
    } out;
    struct iovec iov = {"x", 1};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    memset(&out, 0, sizeof(out));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = out.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)count);
    if (sendmsg(fd, &msg, MSG_NOSIGNAL) != 1) {
        die("sendmsg");
    }
}

struct pair {
    int a, b;
};

static int
seqpacket_pair(struct pair *p, int marker)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0) {
        return -1;
    }
#ifdef SO_TIMESTAMP
#ifdef __linux__
    int on = 1;
    if (marker) {
        setsockopt(sv[0], SOL_SOCKET, SO_TIMESTAMP, &on, sizeof(on));
        setsockopt(sv[1], SOL_SOCKET, SO_TIMESTAMP, &on, sizeof(on));
    }
#endif
#endif
    (void)marker;
    p->a = sv[0];
    p->b = sv[1];
    return 0;
}

static void
fdpass(struct pair *p, int count, long n)
{
    int fds[16];
    int pipefds[2];
    if (pipe(pipefds) < 0) {
        die("pipe");
    }
    for (int i = 0; i < count; i++) {
        fds[i] = pipefds[0];
    }
    char one;
    for (long i = 0; i < n; i++) {
        int got;
        send_fds(p->a, fds, count);
        receive(p->b, &one, 1, &got);
    }
    close(pipefds[0]);
    close(pipefds[1]);
}

static void
seqpacket(struct pair *p, size_t size, long n)
{
    for (long i = 0; i < n; i++) {
        int got;
        if (send(p->a, payload, size, MSG_NOSIGNAL) != (ssize_t)size) {
            die("send");
        }
        receive(p->b, chunk, 65536, &got);
    }
}

static void
raw(struct pair *p, size_t size, long n)
{
    for (long i = 0; i < n; i++) {
        if (send(p->a, payload, size, MSG_NOSIGNAL) != (ssize_t)size) {
            die("send");
        }
        if (recv(p->b, chunk, 65536, 0) < 0) {
            die("recv");
        }
    }
}

static void
emulated(struct pair *p, size_t size, long n)
{
    uint32_t length = htonl((uint32_t)size);
    memcpy(payload, &length, 4);
    memset(payload + 4, 0, 4);
    for (long i = 0; i < n; i++) {
        size_t want = size + HEADER, have = 0;
        if (send(p->a, payload, want, MSG_NOSIGNAL) != (ssize_t)want) {
            die("send");
        }
        while (have < want) {
            int got;
            have += (size_t)receive(p->b, chunk, CHUNK, &got);
        }
    }
}

static void
wait_readable(int fd)
{
    struct pollfd pfd = {fd, POLLIN, 0};
    while (poll(&pfd, 1, -1) < 0) {
        if (errno != EINTR) {
            die("poll");
        }
    }
}

static void
echo(struct pair *p, size_t size, long n)
{
    for (long i = 0; i < n; i++) {
        int got;
        if (send(p->a, payload, size, MSG_NOSIGNAL) != (ssize_t)size) {
            die("send");
        }
        wait_readable(p->b);
        ssize_t len = receive(p->b, chunk, size, &got);
        if (send(p->b, chunk, (size_t)len, MSG_NOSIGNAL) != len) {
            die("send");
        }
        wait_readable(p->a);
        receive(p->a, chunk, size, &got);
    }
}

enum kind { FDPASS, SEQPACKET, RAW, EMULATED, ECHO };

static void
run(const char *name, enum kind kind, size_t size, long n, int repeats)
{
    struct pair p;
    if (kind == FDPASS || kind == EMULATED) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
            die("socketpair");
        }
        p.a = sv[0];
        p.b = sv[1];
    }
    else if (seqpacket_pair(&p, kind != RAW) < 0) {
        return; /* no SOCK_SEQPACKET here */
    }
    if (kind == ECHO) {
        fcntl(p.a, F_SETFL, O_NONBLOCK);
        fcntl(p.b, F_SETFL, O_NONBLOCK);
    }
    double best = 1e30;
    for (int r = -1; r < repeats; r++) { /* r == -1 warms up */
        long count = r < 0 ? n / 10 + 1 : n;
        double start = now();
        switch (kind) {
        case FDPASS: fdpass(&p, (int)size, count); break;
        case SEQPACKET: seqpacket(&p, size, count); break;
        case RAW: raw(&p, size, count); break;
        case EMULATED: emulated(&p, size, count); break;
        case ECHO: echo(&p, size, count); break;
        }
        double per = (now() - start) / (double)count;
        if (r >= 0 && per < best) {
            best = per;
        }
    }
    close(p.a);
    close(p.b);
    printf("%s %.9f\n", name, best);
}

int
main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 20000;
    int repeats = argc > 2 ? atoi(argv[2]) : 7;
    if (n < 1 || repeats < 1) {
        fprintf(stderr, "usage: %s [N [REPEATS]]\n", argv[0]);
        return 2;
    }
    long big = n / 10 > 100 ? n / 10 : 100;
    run("fdpass1", FDPASS, 1, n, repeats);
    run("fdpass16", FDPASS, 16, n, repeats);
    run("seq64", SEQPACKET, 64, n, repeats);
    run("seq65536", SEQPACKET, 65536, big, repeats);
    run("raw64", RAW, 64, n, repeats);
    run("raw65536", RAW, 65536, big, repeats);
    run("emu64", EMULATED, 64, n, repeats);
    run("emu65536", EMULATED, 65536, big, repeats);
    run("aio64", ECHO, 64, big, repeats);
    run("aio65536", ECHO, 65536, big, repeats);
    return 0;
}
