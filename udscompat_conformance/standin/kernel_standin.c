/*
 * A stand-in for kernels that cannot run here: an LD_PRELOAD interposer that makes
 * Linux answer like a kernel without some AF_UNIX feature, so that udscompat's probes
 * take their other branches for real.  Not a kernel: only the answers below change.
 *
 * UDSCOMPAT_STANDIN is a comma-separated list of:
 *   noseqpacket  socket()/socketpair() of AF_UNIX SOCK_SEQPACKET fail with EPROTONOSUPPORT
 *                (macOS: xnu's domain has no seqpacket protosw).
 *   noabstract   a NUL-led sun_path is an empty path, so bind/connect/sendto/sendmsg
 *                fail with ENOENT, and bind with a bare family (Python's bind(""))
 *                fails with EINVAL (the BSDs and macOS: no abstract namespace, no autobind;
 *                os-facts 2.2).
 *   nocloexec    recvmsg ignores MSG_CMSG_CLOEXEC, like a kernel that does not know it:
 *                received descriptors arrive without FD_CLOEXEC.
 *
 * and of gVisor's answers (runsc release 20221219, read in its sources and seen under runsc):
 *   peercredself getsockopt(SO_PEERCRED) on any AF_UNIX socket, connected or not, gives the
 *                caller's own pid, euid and egid (getSockOptSocket returns the task's
 *                credentials, not the peer's).
 *   dgramrefused connect() of an AF_UNIX SOCK_DGRAM socket to a live stream or seqpacket
 *                socket fails with ECONNREFUSED, as for a stale file, instead of EPROTOTYPE
 *                (connectionedEndpoint.UnidirectionalConnect always refuses).
 *   nosockdiag   socket(AF_NETLINK, ..., NETLINK_SOCK_DIAG) fails with EPROTONOSUPPORT: no
 *                socket table to ask (gVisor has no sock_diag).
 *   emptyrights  a receiver out of descriptors is not told so: no MSG_CTRUNC (rightsFDs
 *                stops at the first EMFILE and does not report it), and where none fitted,
 *                an SCM_RIGHTS message with no descriptors (Linux sends none).
 *
 * and of NetBSD 7.99.34 through compat_linux, as the Linux-ABI rump column runs it:
 *   linuxoptsunknown  SO_PASSCRED, SO_PEERSEC, SO_PEERGROUPS, SO_PROTOCOL and SO_DOMAIN
 *                fail with EINVAL (linux_to_bsd_so_sockopt() in linux_socket.c rev 1.131
 *                knows none of them; SO_PEERCRED is the project's patch 02).
 *   pathbindfails every bind() of an AF_UNIX socket to a path fails with ENOENT, as
 *                udscompat's do in that harness (its openat() walk from / reaches the host's
 *                /tmp, not the rump kernel's).
 *
 *   partialstream a send() on an AF_UNIX SOCK_STREAM socket goes out in two halves, so a
 *                non-blocking one near a full buffer is accepted in part (gVisor's stream
 *                queue takes partial writes where Linux takes a small send whole or not).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/netlink.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int standin_has(const char *feature)
{
    const char *list = getenv("UDSCOMPAT_STANDIN");
    size_t n = strlen(feature);
    while (list != NULL && *list != '\0') {
        const char *end = strchr(list, ',');
        size_t len = end ? (size_t)(end - list) : strlen(list);
        if (len == n && strncmp(list, feature, n) == 0)
            return 1;
        list = end ? end + 1 : NULL;
    }
    return 0;
}

static int is_unix_seqpacket(int domain, int type)
{
    return domain == AF_UNIX && (type & 0xf) == SOCK_SEQPACKET && standin_has("noseqpacket");
}

/* 0: pass through; otherwise the errno a kernel without abstract names gives. */
static int abstract_refusal(const struct sockaddr *addr, socklen_t len, int binding)
{
    if (addr == NULL || addr->sa_family != AF_UNIX || !standin_has("noabstract"))
        return 0;
    if (len <= offsetof(struct sockaddr_un, sun_path))
        return binding ? EINVAL : 0;  /* autobind does not exist there */
    if (((const struct sockaddr_un *)addr)->sun_path[0] == '\0')
        return ENOENT;  /* the empty path */
    return 0;
}

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

int socket(int domain, int type, int protocol)
{
    if (is_unix_seqpacket(domain, type) ||
        (domain == AF_NETLINK && protocol == NETLINK_SOCK_DIAG && standin_has("nosockdiag"))) {
        errno = EPROTONOSUPPORT;
        return -1;
    }
    return NEXT(socket)(domain, type, protocol);
}

int socketpair(int domain, int type, int protocol, int sv[2])
{
    if (is_unix_seqpacket(domain, type)) {
        errno = EPROTONOSUPPORT;
        return -1;
    }
    return NEXT(socketpair)(domain, type, protocol, sv);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    int refusal = abstract_refusal(addr, len, 1);
    if (refusal) {
        errno = refusal;
        return -1;
    }
    if (addr != NULL && addr->sa_family == AF_UNIX && len > offsetof(struct sockaddr_un, sun_path) &&
        ((const struct sockaddr_un *)addr)->sun_path[0] != '\0' && standin_has("pathbindfails")) {
        errno = ENOENT;
        return -1;
    }
    return NEXT(bind)(fd, addr, len);
}

static int unknown_to_compat_linux(int level, int name)
{
    return level == SOL_SOCKET &&
           (name == SO_PASSCRED || name == SO_PEERSEC || name == SO_PEERGROUPS ||
            name == SO_PROTOCOL || name == SO_DOMAIN) &&
           standin_has("linuxoptsunknown");
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t size)
{
    if (unknown_to_compat_linux(level, name)) {
        errno = EINVAL;
        return -1;
    }
    return NEXT(setsockopt)(fd, level, name, value, size);
}

static int unix_socket_of_type(int fd, int type)
{
    int value = 0;
    socklen_t size = sizeof(value);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &value, &size) != 0 || value != AF_UNIX)
        return 0;
    size = sizeof(value);
    return getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &size) == 0 && value == type;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    int refusal = abstract_refusal(addr, len, 0);
    if (refusal) {
        errno = refusal;
        return -1;
    }
    int result = NEXT(connect)(fd, addr, len);
    if (result != 0 && errno == EPROTOTYPE && standin_has("dgramrefused") &&
        unix_socket_of_type(fd, SOCK_DGRAM))
        errno = ECONNREFUSED;
    return result;
}

int getsockopt(int fd, int level, int name, void *value, socklen_t *size)
{
    if (unknown_to_compat_linux(level, name)) {
        errno = EINVAL;
        return -1;
    }
    int result = NEXT(getsockopt)(fd, level, name, value, size);
    if (level == SOL_SOCKET && name == SO_PEERCRED && standin_has("peercredself") &&
        value != NULL && size != NULL && *size >= sizeof(struct ucred)) {
        int domain = 0;
        socklen_t domain_size = sizeof(domain);
        if (NEXT(getsockopt)(fd, SOL_SOCKET, SO_DOMAIN, &domain, &domain_size) == 0 &&
            domain == AF_UNIX) {
            struct ucred own = {getpid(), geteuid(), getegid()};
            memcpy(value, &own, sizeof(own));
            *size = sizeof(own);
            return 0;
        }
    }
    return result;
}

ssize_t send(int fd, const void *buf, size_t n, int flags)
{
    if (n < 2 || !standin_has("partialstream") || !unix_socket_of_type(fd, SOCK_STREAM))
        return NEXT(send)(fd, buf, n, flags);
    size_t half = n / 2;
    ssize_t first = NEXT(send)(fd, buf, half, flags);
    if (first < (ssize_t)half)
        return first;
    ssize_t rest = NEXT(send)(fd, (const char *)buf + half, n - half, flags);
    if (rest < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? first : rest;
    return first + rest;
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr,
               socklen_t len)
{
    int refusal = abstract_refusal(addr, len, 0);
    if (refusal) {
        errno = refusal;
        return -1;
    }
    return NEXT(sendto)(fd, buf, n, flags, addr, len);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    int refusal = msg ? abstract_refusal(msg->msg_name, msg->msg_namelen, 0) : 0;
    if (refusal) {
        errno = refusal;
        return -1;
    }
    return NEXT(sendmsg)(fd, msg, flags);
}

/* Is this process's descriptor table full? */
static int out_of_descriptors(void)
{
    int probe = dup(0);
    if (probe >= 0) {
        close(probe);
        return 0;
    }
    return errno == EMFILE;
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    if (standin_has("nocloexec"))
        flags &= ~MSG_CMSG_CLOEXEC;
    size_t room = msg != NULL ? msg->msg_controllen : 0;
    ssize_t result = NEXT(recvmsg)(fd, msg, flags);
    if (result < 0 || !standin_has("emptyrights") || !(msg->msg_flags & MSG_CTRUNC) ||
        !out_of_descriptors())
        return result;
    msg->msg_flags &= ~MSG_CTRUNC;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            return result; /* some descriptors arrived: the rest vanish unreported */
    if (msg->msg_controllen + CMSG_SPACE(0) > room)
        return result;
    struct cmsghdr *empty = (struct cmsghdr *)((char *)msg->msg_control + msg->msg_controllen);
    empty->cmsg_len = CMSG_LEN(0);
    empty->cmsg_level = SOL_SOCKET;
    empty->cmsg_type = SCM_RIGHTS;
    msg->msg_controllen += CMSG_SPACE(0);
    return result;
}
