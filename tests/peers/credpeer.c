/* A C peer for the ancillary-credential tests: Linux's own API, no Python in between.
 *
 * usage: credpeer SOCKET_PATH EXPECTED_PID EXPECTED_UID EXPECTED_GID
 * Connects (SOCK_STREAM), turns SO_PASSCRED on, and receives one message that
 * must carry SCM_CREDENTIALS naming the expected ids and one descriptor in
 * SCM_RIGHTS (it writes "from C" into it).  Then it sends "C creds" with its
 * own SCM_CREDENTIALS and, in the same sendmsg, the read end of a new pipe
 * holding "C pipe".  Exit status 0 on success; a message on stderr otherwise.
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
    if (argc != 5) { fprintf(stderr, "usage: credpeer PATH PID UID GID\n"); return 2; }
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0) return fail("socket");
    int on = 1;
    if (setsockopt(s, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) < 0) return fail("SO_PASSCRED");
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    strncpy(sun.sun_path, argv[1], sizeof sun.sun_path - 1);
    if (connect(s, (struct sockaddr *)&sun, sizeof sun) < 0) return fail("connect");

    char data[64];
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * 4)];
    } ctl;
    struct iovec iov = { data, sizeof data };
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov; msg.msg_iovlen = 1;
    msg.msg_control = ctl.buf; msg.msg_controllen = sizeof ctl.buf;
    ssize_t n = recvmsg(s, &msg, MSG_CMSG_CLOEXEC);
    if (n <= 0) return fail("recvmsg");
    if (msg.msg_flags & MSG_CTRUNC) { fprintf(stderr, "MSG_CTRUNC\n"); return 1; }
    struct ucred got = { 0, (uid_t)-1, (gid_t)-1 };
    int fd = -1, seen_creds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET) continue;
        if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len == CMSG_LEN(sizeof got)) {
            memcpy(&got, CMSG_DATA(c), sizeof got);
            seen_creds = 1;
        } else if (c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof fd)) {
            memcpy(&fd, CMSG_DATA(c), sizeof fd);
        }
    }
    if (!seen_creds || got.pid != atoi(argv[2]) || got.uid != (uid_t)atoi(argv[3])
        || got.gid != (gid_t)atoi(argv[4])) {
        fprintf(stderr, "creds seen=%d pid=%d uid=%d gid=%d\n", seen_creds, (int)got.pid,
                (int)got.uid, (int)got.gid);
        return 1;
    }
    if (fd < 0) { fprintf(stderr, "no descriptor\n"); return 1; }
    if (write(fd, "from C", 6) != 6) return fail("write");
    close(fd);

    int p[2];
    if (pipe(p) < 0) return fail("pipe");
    if (write(p[1], "C pipe", 6) != 6) return fail("write pipe");
    struct ucred mine = { getpid(), getuid(), getgid() };
    memset(&ctl, 0, sizeof ctl);
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof mine) + CMSG_SPACE(sizeof(int));
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_CREDENTIALS; c->cmsg_len = CMSG_LEN(sizeof mine);
    memcpy(CMSG_DATA(c), &mine, sizeof mine);
    c = CMSG_NXTHDR(&msg, c);
    c->cmsg_level = SOL_SOCKET; c->cmsg_type = SCM_RIGHTS; c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &p[0], sizeof(int));
    iov.iov_base = "C creds"; iov.iov_len = 7;
    if (sendmsg(s, &msg, 0) != 7) return fail("sendmsg");
    close(p[0]); close(p[1]);
    close(s);
    return 0;
}
