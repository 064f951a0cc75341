/* A C peer for the fd-passing tests: the kernel's own API, no Python in between.
 *
 * usage: fdpeer SOCKET_PATH EXPECTED_SERVER_PID
 * Connects, checks the server's credentials with SO_PEERCRED, receives one
 * message with two descriptors (writes "from C" into the first), then sends
 * back the write end of a new pipe after writing "C pipe" into it.
 * Exit status 0 on success; a message on stderr otherwise.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

static int fail(const char *what) { perror(what); return 1; }

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: fdpeer PATH PID\n"); return 2; }
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0) return fail("socket");
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    strncpy(sun.sun_path, argv[1], sizeof sun.sun_path - 1);
    if (connect(s, (struct sockaddr *)&sun, sizeof sun) < 0) return fail("connect");

    struct ucred cred; socklen_t len = sizeof cred;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return fail("SO_PEERCRED");
    if (cred.pid != atoi(argv[2]) || cred.uid != geteuid()) {
        fprintf(stderr, "peer creds pid=%d uid=%d\n", (int)cred.pid, (int)cred.uid);
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
