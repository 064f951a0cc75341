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
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

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
    if (is_unix_seqpacket(domain, type)) {
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
    return NEXT(bind)(fd, addr, len);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    int refusal = abstract_refusal(addr, len, 0);
    if (refusal) {
        errno = refusal;
        return -1;
    }
    return NEXT(connect)(fd, addr, len);
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

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    if (standin_has("nocloexec"))
        flags &= ~MSG_CMSG_CLOEXEC;
    return NEXT(recvmsg)(fd, msg, flags);
}
