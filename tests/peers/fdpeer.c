/* A C peer for the fd-passing tests: the kernel's own API, no Python in between.
 *
 * usage: fdpeer SOCKET_PATH EXPECTED_SERVER_PID
 * Connects, checks the server's credentials with the OS's own call (SO_PEERCRED
 * on Linux: pid and uid; getpeerucred on illumos: pid and uid; getpeereid on
 * macOS and the BSDs: uid), receives one message with two descriptors (writes
 * "from C" into the first), then sends back the write end of a new pipe after
 * writing "C pipe" into it.  Exit status 0 on success; a message on stderr otherwise.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/un.h>
#if defined(__sun)
#include <ucred.h>
#endif
#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0 /* macOS and some BSDs lack it; close-on-exec is not checked here */
#endif

/* The server's pid (-1 where the OS does not report it) and effective uid. */
static int peer_ids(int s, long *pid, uid_t *uid) {
#if defined(__linux__)
    struct ucred cred; socklen_t len = sizeof cred;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return -1;
    *pid = cred.pid; *uid = cred.uid;
#elif defined(__sun)
    ucred_t *cred = NULL;
    if (getpeerucred(s, &cred) < 0) return -1;
    *pid = ucred_getpid(cred); *uid = ucred_geteuid(cred);
    ucred_free(cred);
#else
    gid_t gid;
    if (getpeereid(s, uid, &gid) < 0) return -1;
    *pid = -1;
#endif
    return 0;
}

static int fail(const char *what) { perror(what); return 1; }

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: fdpeer PATH PID\n"); return 2; }
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0) return fail("socket");
    struct sockaddr_un addr; /* not "sun": illumos predefines that name */
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("connect");

    long pid; uid_t uid;
    if (peer_ids(s, &pid, &uid) < 0) return fail("peer credentials");
    if ((pid != -1 && pid != atol(argv[2])) || uid != geteuid()) {
        fprintf(stderr, "peer creds pid=%ld uid=%ld\n", pid, (long)uid);
        return 1;
    }

    char data[64];
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int) * 2)]; } ctl;
    struct iovec iov = { data, sizeof data };
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov; msg.msg_iovlen = 1;
    msg.msg_control = ctl.buf; msg.msg_controllen = sizeof ctl.buf;
    ssize_t n = recvmsg(s, &msg, MSG_CMSG_CLOEXEC);
    if (n <= 0) return fail("recvmsg");
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int) * 2)
        || (msg.msg_flags & MSG_CTRUNC)) {
        fprintf(stderr, "expected two fds\n"); return 1;
    }
    int fds[2];
    memcpy(fds, CMSG_DATA(c), sizeof fds);
    if (write(fds[0], "from C", 6) != 6) return fail("write");
    close(fds[0]); close(fds[1]);

    int p[2];
    if (pipe(p) < 0) return fail("pipe");
    if (write(p[1], "C pipe", 6) != 6) return fail("write pipe");
    memset(&ctl, 0, sizeof ctl);
    msg.msg_controllen = CMSG_SPACE(sizeof(int));
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_RIGHTS; c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &p[0], sizeof(int));
    iov.iov_base = "back"; iov.iov_len = 4;
    if (sendmsg(s, &msg, 0) != 4) return fail("sendmsg");
    close(p[0]); close(p[1]);
    close(s);
    return 0;
}
