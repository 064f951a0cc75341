/*
 * udscompat._speedups: the innermost system-call wrappers, compiled.
 *
 * Optional: udscompat works without it (udscompat/_accel.py chooses).  Each
 * call makes exactly one sendmsg(2) or recvmsg(2), plus what the contract
 * needs around it: one SCM_RIGHTS message built with the OS's own CMSG_*
 * macros on send; on receive a control buffer sized with CMSG_SPACE for the
 * kernel's per-message descriptor cap plus the seqpacket marker, every
 * SCM_RIGHTS descriptor collected and made close-on-exec (by the kernel where
 * the caller passes MSG_CMSG_CLOEXEC, else with fcntl before returning), and
 * truncation handled by closing what arrived.
 *
 * Above those, three calls for the public hot paths: send_fds() and
 * recv_fds() do udscompat.send_fds/recv_fds whole for the common case (every
 * check the Python code makes, in C; NotImplemented before any system call for
 * anything else, so the Python code does the rare cases and says what is
 * wrong), and recv_message() builds a native seqpacket connection's Message.
 * tests/test_speedups.py drives each against the Python code with the same
 * random arguments.
 *
 * Signals (PEP 475): EINTR runs the Python signal handlers and retries.  A
 * handler runs only while no descriptor has been received (the system call
 * failed with EINTR), and no Python code runs between a successful recvmsg
 * and the return of its result, except the error factory, called after every
 * received descriptor is closed.  So a raising signal handler can never lose
 * a descriptor inside this call: it returns them all, or closes them all.
 *
 * Only the CPython C API and the OS headers; no third-party header.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h> /* T_OBJECT_EX (Py_T_OBJECT_EX from 3.12) */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Python 3.9 lacks these two (added in 3.10). */
#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
compat_new_ref(PyObject *obj)
{
    Py_INCREF(obj);
    return obj;
}
#define Py_NewRef(obj) compat_new_ref((PyObject *)(obj))
#endif
#if PY_VERSION_HEX < 0x030A0000
static inline int
PyModule_AddObjectRef(PyObject *module, const char *name, PyObject *value)
{
    Py_INCREF(value);
    if (PyModule_AddObject(module, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#endif

/* The most descriptors a receive makes room for (Linux takes 253, the BSDs
 * and macOS 254, OpenBSD 127; illumos and NetBSD state none, so udscompat
 * uses 256 there).  configure() refuses more. */
#define MAX_FD_ROOM 1024
/* The seqpacket marker is a struct timeval; 16 bytes also covers Linux's
 * SO_TIMESTAMP_NEW layout on 32-bit machines. */
#define MARKER_PAYLOAD (sizeof(struct timeval) > 16 ? sizeof(struct timeval) : 16)
/* Room for the credentials a socket may carry with every message (SO_PASSCRED and
 * the like can be on without udscompat's knowing: a dup's other object, a listener
 * that passed it to every accepted socket); illumos' ucred_t is the largest. */
#define MAX_EXTRA_ROOM 8192
#define CONTROL_MAX \
    (CMSG_SPACE(sizeof(int) * MAX_FD_ROOM) + CMSG_SPACE(MARKER_PAYLOAD) + MAX_EXTRA_ROOM)
/* A send of up to this many descriptors builds its control data on the stack. */
#define SEND_STACK_FDS 256
#define IOV_STACK 8

/* Set once by configure() from udscompat's platform facts, before any call. */
static int fd_room = 256;
static int extra_room = 0;             /* bytes for credentials next to the descriptors */
static int marker_type = -1;           /* cmsg type of the seqpacket marker, -1: none */
static int fd_cmsg_types[8];           /* other SOL_SOCKET cmsg types that carry fds */
static int fd_cmsg_type_count = 0;
static PyObject *truncated_factory = NULL; /* (reason, data, closed) -> exception */

static size_t
control_size(void)
{
    return CMSG_SPACE(sizeof(int) * (size_t)fd_room) + CMSG_SPACE(MARKER_PAYLOAD) +
           (size_t)extra_room;
}

static void
close_all(const int *fds, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        (void)close(fds[i]);
    }
}

/* Raise the exception the factory builds for a truncated or refused receive.
 * Every descriptor is already closed when this runs. */
static void
raise_truncated(const char *reason, PyObject *data, Py_ssize_t closed, Py_ssize_t maxfds,
                PyObject *cause)
{
    PyObject *exc;
    if (truncated_factory == NULL) {
        exc = PyObject_CallFunction(PyExc_OSError, "is", EMSGSIZE, reason);
    }
    else {
        exc = PyObject_CallFunction(truncated_factory, "sOnn", reason, data, closed, maxfds);
    }
    if (exc == NULL) {
        Py_XDECREF(cause);
        return;
    }
    if (cause != NULL) {
        PyException_SetCause(exc, cause); /* steals cause */
        PyException_SetContext(exc, Py_NewRef(cause));
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
}

static int
as_int(PyObject *obj, const char *name, int *out)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value < INT_MIN || value > INT_MAX) {
        PyErr_Format(PyExc_OverflowError, "%s out of range: %ld", name, value);
        return -1;
    }
    *out = (int)value;
    return 0;
}

/* CPython's socket object begins, after the object header, with its descriptor
 * (PySocketSockObject.sock_fd in Modules/socketmodule.h, unchanged since the
 * module's first version; a C int on POSIX).  Reading it directly saves the
 * fileno() method call, a third of this module's per-call cost.  Module init
 * checks the layout on two real sockets and keeps the method call otherwise. */
typedef struct {
    PyObject_HEAD
    int sock_fd;
    int sock_family; /* PySocketSockObject.sock_family and .sock_type follow sock_fd */
    int sock_type;
} socket_prefix;

static PyTypeObject *socket_type = NULL; /* _socket.socket, when its layout checked out */
static PyObject *fileno_name = NULL;

/* A descriptor from an int or an object with fileno().  Unlike
 * PyObject_AsFileDescriptor, -1 (a closed socket) is let through, so the system
 * call fails with EBADF exactly as the socket's own method does. */
static int
as_fd(PyObject *obj, int *out)
{
    if (socket_type != NULL && PyObject_TypeCheck(obj, socket_type)) {
        *out = ((socket_prefix *)obj)->sock_fd;
        return 0;
    }
    if (PyLong_Check(obj)) {
        return as_int(obj, "file descriptor", out);
    }
    PyObject *number = PyObject_CallMethodObjArgs(obj, fileno_name, NULL);
    if (number == NULL) {
        return -1;
    }
    if (!PyLong_Check(number)) {
        PyErr_Format(PyExc_TypeError, "fileno() returned a non-integer (%.100s)",
                     Py_TYPE(number)->tp_name);
        Py_DECREF(number);
        return -1;
    }
    int result = as_int(number, "file descriptor", out);
    Py_DECREF(number);
    return result;
}

/* Where a system call reads its descriptor once the GIL is let go: a socket's own field
 * (the caller holds the socket), else ``fd``.  CPython's socket methods read it there
 * too.  Read before, the number was kept while another thread's close() freed it and the
 * next socket opened took it: the call then sent to, or took a message from, that socket
 * (most such closes did, a few in a thousand read here; tests/test_native_attacks.py). */
static const int *
fd_slot(PyObject *obj, const int *fd)
{
    if (socket_type != NULL && PyObject_TypeCheck(obj, socket_type)) {
        return &((socket_prefix *)obj)->sock_fd;
    }
    return fd;
}

#define LIVE_FD(slot) (*(volatile const int *)(slot)) /* read it now, not earlier */

/* Whether attribute ``name`` of ``sock`` (a plain _socket.socket, whose getters give
 * plain ints) equals ``field``. */
static int
field_matches(PyObject *sock, const char *name, int field)
{
    PyObject *value = PyObject_GetAttrString(sock, name);
    long expected = value != NULL ? PyLong_AsLong(value) : -2;
    Py_XDECREF(value);
    int ok = expected != -2 && !PyErr_Occurred() && field == (int)expected;
    PyErr_Clear();
    return ok;
}

/* Check the socket_prefix layout on real sockets (a stream and a datagram socket,
 * so that the type field differs): descriptor, family and type, open, then the
 * descriptor closed (-1). */
static int
check_socket_layout(void)
{
    PyObject *module = PyImport_ImportModule("_socket");
    if (module == NULL) {
        return -1;
    }
    PyObject *type = PyObject_GetAttrString(module, "socket");
    Py_DECREF(module);
    if (type == NULL) {
        return -1;
    }
    int ok = PyType_Check(type);
    for (int round = 0; ok && round < 2; round++) {
        PyObject *sock =
            PyObject_CallFunction(type, "ii", AF_UNIX, round == 0 ? SOCK_STREAM : SOCK_DGRAM);
        if (sock == NULL) {
            PyErr_Clear(); /* no socket to check with: keep the method call */
            ok = 0;
            break;
        }
        for (int closed = 0; ok && closed < 2; closed++) {
            if (closed) {
                PyObject *done = PyObject_CallMethod(sock, "close", NULL);
                Py_XDECREF(done);
            }
            PyObject *number = PyObject_CallMethodObjArgs(sock, fileno_name, NULL);
            long expected = number != NULL ? PyLong_AsLong(number) : -2;
            Py_XDECREF(number);
            ok = expected != -2 && !PyErr_Occurred() &&
                 ((socket_prefix *)sock)->sock_fd == (int)expected;
            PyErr_Clear();
            ok = ok && field_matches(sock, "family", ((socket_prefix *)sock)->sock_family) &&
                 field_matches(sock, "type", ((socket_prefix *)sock)->sock_type);
        }
        Py_DECREF(sock);
    }
    if (ok) {
        socket_type = (PyTypeObject *)type; /* keeps the reference */
    }
    else {
        Py_DECREF(type);
    }
    return 0;
}

/* -- send ------------------------------------------------------------------ */

/* Copy the descriptor numbers into the cmsg payload.  ``fds`` is a buffer of
 * C ints (an array('i') or array('I')) or a list or tuple of ints. */
static Py_ssize_t
count_fds(PyObject *fds, Py_buffer *view)
{
    if (fds == Py_None) {
        return 0;
    }
    if (PyList_CheckExact(fds) || PyTuple_CheckExact(fds)) {
        return PySequence_Fast_GET_SIZE(fds);
    }
    if (PyObject_GetBuffer(fds, view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Format(PyExc_TypeError,
                     "fds must be None, a list or tuple of ints, or an array of C ints, not %.100s",
                     Py_TYPE(fds)->tp_name);
        return -1;
    }
    if (view->itemsize != (Py_ssize_t)sizeof(int) || view->format == NULL ||
        (strcmp(view->format, "i") != 0 && strcmp(view->format, "I") != 0)) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "fds array must hold C ints ('i' or 'I')");
        return -1;
    }
    return view->len / (Py_ssize_t)sizeof(int);
}

static int
fill_fds(PyObject *fds, Py_buffer *view, int *out, Py_ssize_t count)
{
    if (view->obj != NULL) {
        const int *numbers = (const int *)view->buf;
        for (Py_ssize_t i = 0; i < count; i++) {
            if (numbers[i] < 0) {
                PyErr_Format(PyExc_ValueError, "invalid file descriptor %u",
                             (unsigned int)numbers[i]);
                return -1;
            }
            out[i] = numbers[i];
        }
        return 0;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fds, i);
        if (!PyLong_Check(item) || PyBool_Check(item)) {
            PyErr_Format(PyExc_TypeError, "expected a file descriptor, got %R", item);
            return -1;
        }
        long value = PyLong_AsLong(item);
        if (value == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            value = -1;
        }
        if (value < 0 || value > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "invalid file descriptor %R", item);
            return -1;
        }
        out[i] = (int)value;
    }
    return 0;
}

PyDoc_STRVAR(sendmsg_doc,
"sendmsg(fd, data, fds, flags) -> int\n\n"
"One sendmsg(2) of data (a bytes-like object, or a list or tuple of them)\n"
"with fds (None, an array of C ints, or a list or tuple of ints) in exactly\n"
"one SCM_RIGHTS control message.  EINTR is retried after the signal handlers.");

static PyObject *
speedups_sendmsg(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "sendmsg() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    int fd;
    if (as_fd(args[0], &fd) < 0) {
        return NULL;
    }
    const int *fd_at = fd_slot(args[0], &fd);
    int flags;
    if (as_int(args[3], "flags", &flags) < 0) {
        return NULL;
    }

    PyObject *result = NULL;
    PyObject *seq = NULL;
    Py_buffer fd_view = {0};
    Py_buffer stack_views[IOV_STACK];
    struct iovec stack_iov[IOV_STACK];
    Py_buffer *views = stack_views;
    struct iovec *iov = stack_iov;
    Py_ssize_t nbuf = 0, acquired = 0;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * SEND_STACK_FDS)];
    } stack_control;
    char *control = NULL;

    PyObject *data = args[1];
    if (PyBytes_CheckExact(data)) {
        /* The common case: bytes are immutable, no buffer to acquire. */
        iov[0].iov_base = PyBytes_AS_STRING(data);
        iov[0].iov_len = (size_t)PyBytes_GET_SIZE(data);
        nbuf = 1;
    }
    else if (PyObject_CheckBuffer(data)) {
        if (PyObject_GetBuffer(data, &views[0], PyBUF_SIMPLE) < 0) {
            goto done;
        }
        acquired = 1;
        iov[0].iov_base = views[0].buf;
        iov[0].iov_len = (size_t)views[0].len;
        nbuf = 1;
    }
    else {
        seq = PySequence_Fast(data, "sendmsg() data must be a bytes-like object or an iterable of them");
        if (seq == NULL) {
            goto done;
        }
        nbuf = PySequence_Fast_GET_SIZE(seq);
        if (nbuf > IOV_STACK) {
            views = PyMem_New(Py_buffer, (size_t)nbuf);
            iov = PyMem_New(struct iovec, (size_t)nbuf);
            if (views == NULL || iov == NULL) {
                PyErr_NoMemory();
                goto done;
            }
        }
        for (; acquired < nbuf; acquired++) {
            PyObject *item = PySequence_Fast_GET_ITEM(seq, acquired);
            if (PyObject_GetBuffer(item, &views[acquired], PyBUF_SIMPLE) < 0) {
                goto done;
            }
            iov[acquired].iov_base = views[acquired].buf;
            iov[acquired].iov_len = (size_t)views[acquired].len;
        }
    }

    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = (int)nbuf;

    Py_ssize_t nfds = count_fds(args[2], &fd_view);
    if (nfds < 0) {
        goto done;
    }
    if (nfds > 0) {
        if (nfds > INT_MAX / (Py_ssize_t)sizeof(int) - 64) {
            PyErr_SetString(PyExc_ValueError, "too many file descriptors");
            goto done;
        }
        size_t space = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        if (nfds <= SEND_STACK_FDS) {
            control = stack_control.buf;
        }
        else if ((control = PyMem_Malloc(space)) == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        memset(control, 0, space);
        msg.msg_control = control;
        msg.msg_controllen = space;
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        if (fill_fds(args[2], &fd_view, (int *)CMSG_DATA(cmsg), nfds) < 0) {
            goto done;
        }
    }

    ssize_t sent;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        sent = sendmsg(LIVE_FD(fd_at), &msg, flags);
        Py_END_ALLOW_THREADS
        if (sent >= 0) {
            break;
        }
        if (errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
        /* Nothing was sent: a raising handler loses nothing. */
        if (PyErr_CheckSignals() < 0) {
            goto done;
        }
    }
    result = PyLong_FromSsize_t(sent);

done:
    if (control != NULL && control != stack_control.buf) {
        PyMem_Free(control);
    }
    if (fd_view.obj != NULL) {
        PyBuffer_Release(&fd_view);
    }
    for (Py_ssize_t i = 0; i < acquired; i++) {
        PyBuffer_Release(&views[i]);
    }
    if (views != stack_views) {
        PyMem_Free(views);
    }
    if (iov != stack_iov) {
        PyMem_Free(iov);
    }
    Py_XDECREF(seq);
    return result;
}

/* -- receive --------------------------------------------------------------- */

static int
carries_fds(int type)
{
    for (int i = 0; i < fd_cmsg_type_count; i++) {
        if (fd_cmsg_types[i] == type) {
            return 1;
        }
    }
    return 0;
}

/* The sender's address as CPython's socket module returns it (makesockaddr). */
static PyObject *
unix_address(const struct sockaddr_storage *storage, socklen_t namelen)
{
    if (namelen == 0) {
        Py_RETURN_NONE;
    }
    const struct sockaddr_un *addr = (const struct sockaddr_un *)storage;
    size_t offset = offsetof(struct sockaddr_un, sun_path);
    size_t room = sizeof(*storage) - offset;
    size_t length = (size_t)namelen > offset ? (size_t)namelen - offset : 0;
    if (length > room) {
        length = room;
    }
#ifdef __linux__
    if (length > 0 && addr->sun_path[0] == 0) { /* the abstract namespace */
        return PyBytes_FromStringAndSize(addr->sun_path, (Py_ssize_t)length);
    }
#endif
    /* A NUL-terminated path, as CPython decodes it (the buffer was zeroed). */
    size_t end = 0;
    const char *path = addr->sun_path;
    while (end < room && path[end] != 0) {
        end++;
    }
    return PyUnicode_DecodeFSDefaultAndSize(path, (Py_ssize_t)end);
}

/* What one receive got: the payload, the descriptors (open, close-on-exec, owned
 * by whoever holds this until they are in a Python object or closed), the flags,
 * the marker and, when asked for, the source address. */
struct received {
    PyObject *data;
    PyObject *address;
    Py_ssize_t nfds;
    int msg_flags;
    int marked;
    int fds[CONTROL_MAX / sizeof(int)];
};

#define RECEIVE_WOULD_BLOCK (-2)

/* One receive buffer kept between calls.  A receive must offer the kernel
 * bufsize bytes (a seqpacket message longer than that is cut), so it allocates
 * bufsize bytes and shrinks them to what came: for a small message with the
 * usual 64 KiB bufsize that allocation and shrink cost more than the rest of
 * the call.  Instead a small message is copied out of the kept buffer.  It is
 * taken and given back with the GIL held, so one receive at a time uses it (a
 * concurrent one allocates its own); it is a bytes object nobody else holds, at
 * most SPARE_MAX bytes: the only memory udscompat keeps between receives. */
#define SPARE_MAX (256 * 1024)
#define COPY_MAX 4096
static PyObject *spare = NULL;

static PyObject *
take_buffer(Py_ssize_t bufsize)
{
    if (bufsize > 0 && spare != NULL && PyBytes_GET_SIZE(spare) >= bufsize) {
        PyObject *buffer = spare;
        spare = NULL;
        return buffer;
    }
    return PyBytes_FromStringAndSize(NULL, bufsize);
}

static void
give_back(PyObject *buffer)
{
    Py_ssize_t size = PyBytes_GET_SIZE(buffer);
    if (Py_REFCNT(buffer) == 1 && size > 0 && size <= SPARE_MAX &&
        (spare == NULL || PyBytes_GET_SIZE(spare) < size)) {
        /* The larger one is kept: a smaller spare left by another kind of receive
         * (recv_fds with bufsize 1, a 64 KiB seqpacket read) would otherwise make every
         * emulated chunk read allocate and free 128 KiB -- an mmap and its page faults. */
        Py_XSETREF(spare, buffer);
    }
    else {
        Py_DECREF(buffer);
    }
}

/* The payload, ``length`` bytes at the start of ``buffer``, as its own bytes
 * object: copied out where small (the buffer kept), else the buffer shrunk.
 * NULL with an exception set if memory ran out (the buffer is released). */
static PyObject *
payload_of(PyObject *buffer, Py_ssize_t length)
{
    Py_ssize_t room = PyBytes_GET_SIZE(buffer);
    if (length == room) {
        return buffer;
    }
    if (length <= COPY_MAX && room <= SPARE_MAX) {
        PyObject *copy = PyBytes_FromStringAndSize(PyBytes_AS_STRING(buffer), length);
        give_back(buffer);
        return copy;
    }
    if (_PyBytes_Resize(&buffer, length) < 0) { /* frees the buffer */
        return NULL;
    }
    return buffer;
}

/* One recvmsg(2) into ``out``.  Returns 0 (out->data owned, out->fds open),
 * -1 with an exception set and nothing open, or, where ``soft_eagain``,
 * RECEIVE_WOULD_BLOCK with no exception set and nothing received.
 *
 * From the successful recvmsg until the return, no Python code runs while a
 * descriptor is open and not yet handed over, except the error factory, called
 * after they are all closed. */
static int
receive(const int *fd_at, Py_ssize_t bufsize, Py_ssize_t maxfds, int flags, int want_address,
        int soft_eagain, struct received *out)
{
    PyObject *data = take_buffer(bufsize);
    if (data == NULL) {
        return -1;
    }
    union {
        struct cmsghdr align;
        char buf[CONTROL_MAX];
    } control;
    struct sockaddr_storage address;
    struct iovec iov;
    struct msghdr msg;
    iov.iov_base = PyBytes_AS_STRING(data);
    iov.iov_len = (size_t)bufsize;
    if (want_address) {
        memset(&address, 0, sizeof(address));
    }

    ssize_t received;
    for (;;) {
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = control_size();
        if (want_address) {
            msg.msg_name = &address;
            msg.msg_namelen = sizeof(address);
        }
        Py_BEGIN_ALLOW_THREADS
        received = recvmsg(LIVE_FD(fd_at), &msg, flags);
        Py_END_ALLOW_THREADS
        if (received >= 0) {
            break;
        }
        int saved = errno;
        if (saved != EINTR) {
            give_back(data);
            if (soft_eagain && (saved == EAGAIN || saved == EWOULDBLOCK)) {
                return RECEIVE_WOULD_BLOCK;
            }
            errno = saved;
            if (saved == EMSGSIZE) {
                /* OpenBSD, DragonFly: the control data did not fit and the kernel
                 * discarded the descriptors; nothing was received. */
                PyObject *cause = PyObject_CallFunction(PyExc_OSError, "is", saved,
                                                        strerror(saved));
                if (cause == NULL) {
                    return -1;
                }
                raise_truncated("emsgsize", Py_None, 0, maxfds, cause);
                return -1;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        /* No descriptor has arrived yet: a raising handler loses nothing. */
        if (PyErr_CheckSignals() < 0) {
            give_back(data);
            return -1;
        }
    }

    int *fds = out->fds;
    Py_ssize_t nfds = 0;
    int marked = 0;
    int empty_rights = 0; /* an SCM_RIGHTS without descriptors: see _io.collect_fds */
    const char *control_end = control.buf + msg.msg_controllen;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_len < CMSG_LEN(0) || c->cmsg_level != SOL_SOCKET) {
            if (c->cmsg_len < CMSG_LEN(0)) {
                break;
            }
            continue;
        }
        const char *payload = (const char *)CMSG_DATA(c);
        size_t length = c->cmsg_len - CMSG_LEN(0);
        if (payload + length > control_end) {
            length = payload > control_end ? 0 : (size_t)(control_end - payload);
        }
        size_t count = length / sizeof(int);
        if (c->cmsg_type == SCM_RIGHTS) {
            memcpy(&fds[nfds], payload, count * sizeof(int));
            nfds += (Py_ssize_t)count;
            empty_rights |= length == 0;
        }
        else if (c->cmsg_type == marker_type) {
            marked = 1;
        }
        else if (carries_fds(c->cmsg_type)) {
            int other[CONTROL_MAX / sizeof(int)];
            memcpy(other, payload, count * sizeof(int));
            close_all(other, (Py_ssize_t)count);
        }
    }

    data = payload_of(data, received < bufsize ? (Py_ssize_t)received : bufsize);
    if (data == NULL) {
        close_all(fds, nfds);
        return -1;
    }
    if ((msg.msg_flags & MSG_CTRUNC) || empty_rights) {
        close_all(fds, nfds);
        raise_truncated((msg.msg_flags & MSG_CTRUNC) ? "ctrunc" : "empty", data, nfds, maxfds,
                        NULL);
        Py_DECREF(data);
        return -1;
    }
    if (nfds > maxfds) {
        close_all(fds, nfds);
        raise_truncated("excess", data, nfds, maxfds, NULL);
        Py_DECREF(data);
        return -1;
    }
#ifdef MSG_CMSG_CLOEXEC
    int kernel_cloexec = (flags & MSG_CMSG_CLOEXEC) != 0;
#else
    int kernel_cloexec = 0;
#endif
    if (!kernel_cloexec) {
        for (Py_ssize_t i = 0; i < nfds; i++) {
            if (fcntl(fds[i], F_SETFD, FD_CLOEXEC) < 0) {
                int saved = errno;
                close_all(fds, nfds);
                Py_DECREF(data);
                errno = saved;
                PyErr_SetFromErrno(PyExc_OSError);
                return -1;
            }
        }
    }
    out->address = NULL;
    if (want_address && (out->address = unix_address(&address, msg.msg_namelen)) == NULL) {
        close_all(fds, nfds);
        Py_DECREF(data);
        return -1;
    }
    out->data = data;
    out->nfds = nfds;
    out->msg_flags = msg.msg_flags;
    out->marked = marked;
    return 0;
}

/* The received descriptors as a new list; on failure every one is closed. */
static PyObject *
fd_list(const struct received *got)
{
    PyObject *list = PyList_New(got->nfds);
    for (Py_ssize_t i = 0; list != NULL && i < got->nfds; i++) {
        PyObject *number = PyLong_FromLong(got->fds[i]);
        if (number == NULL) {
            Py_CLEAR(list); /* holds ints only: closes nothing */
            break;
        }
        PyList_SET_ITEM(list, i, number);
    }
    if (list == NULL) {
        close_all(got->fds, got->nfds);
    }
    return list;
}

/* ``(data, fds, msg_flags, address[, marked])`` from ``got``, which it consumes:
 * on failure every descriptor is closed. */
static PyObject *
received_tuple(struct received *got, int with_marker)
{
    PyObject *result = PyTuple_New(with_marker ? 5 : 4);
    if (result == NULL) {
        close_all(got->fds, got->nfds);
        Py_DECREF(got->data);
        Py_XDECREF(got->address);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, got->data);
    PyTuple_SET_ITEM(result, 3, got->address != NULL ? got->address : Py_NewRef(Py_None));
    if (with_marker) {
        PyTuple_SET_ITEM(result, 4, PyBool_FromLong(got->marked));
    }
    PyObject *flags = PyLong_FromLong(got->msg_flags);
    if (flags == NULL) {
        close_all(got->fds, got->nfds);
        Py_DECREF(result);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 2, flags);
    PyObject *list = fd_list(got);
    if (list == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 1, list);
    return result;
}

static int
as_size(PyObject *obj, const char *name, Py_ssize_t *out)
{
    *out = PyLong_AsSsize_t(obj);
    if (*out == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (*out < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be >= 0, got %zd", name, *out);
        return -1;
    }
    return 0;
}

/* A descriptor count: as as_size, but an int past any size means no limit (as the
 * Python path reads maxfds) rather than an OverflowError. */
static int
as_count(PyObject *obj, const char *name, Py_ssize_t *out)
{
    if (PyLong_Check(obj)) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (overflow > 0 || (overflow == 0 && value > PY_SSIZE_T_MAX)) {
            *out = PY_SSIZE_T_MAX;
            return 0;
        }
    }
    return as_size(obj, name, out);
}

PyDoc_STRVAR(recvmsg_doc,
"recvmsg(fd, bufsize, maxfds, flags, want_address=False)\n"
"    -> (data, fds, msg_flags, address, marked)\n\n"
"One recvmsg(2), with control room for the kernel's per-message descriptor\n"
"cap plus the seqpacket marker.  Every SCM_RIGHTS descriptor is returned,\n"
"close-on-exec, or, on MSG_CTRUNC, EMSGSIZE or more than maxfds, all are\n"
"closed and the configured ControlTruncatedError is raised.  Descriptors\n"
"from other fd-carrying cmsgs are closed.  address is None unless asked for.");

static PyObject *
speedups_recvmsg(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs < 4 || nargs > 5) {
        PyErr_Format(PyExc_TypeError, "recvmsg() takes 4 or 5 arguments (%zd given)", nargs);
        return NULL;
    }
    int fd, flags;
    Py_ssize_t bufsize, maxfds;
    if (as_fd(args[0], &fd) < 0 || as_size(args[1], "bufsize", &bufsize) < 0 ||
        as_count(args[2], "maxfds", &maxfds) < 0 || as_int(args[3], "flags", &flags) < 0) {
        return NULL;
    }
    int want_address = 0;
    if (nargs == 5 && (want_address = PyObject_IsTrue(args[4])) < 0) {
        return NULL;
    }
    struct received got;
    if (receive(fd_slot(args[0], &fd), bufsize, maxfds, flags, want_address, 0, &got) < 0) {
        return NULL;
    }
    return received_tuple(&got, 1);
}

/* -- the public calls' fast paths ------------------------------------------ */

/* Set by configure_fast(); until then every fast path answers NotImplemented. */
static PyObject *plain_socket_types = NULL; /* tuple: types whose methods nobody overrides */
static PyObject *facts_source = NULL;  /* () -> (receive flags, stream padding) or None */
static PyObject *hold_policy = NULL;   /* () -> bool: are sent descriptors held? */
static PyObject *sent_registry = NULL; /* has .originals, a set: received fds to guard */
static PyObject *originals_name = NULL;
static long max_fds_per_message = -1;  /* -1: the OS states none */
static int facts_known = 0;
static int receive_flags = 0; /* MSG_CMSG_CLOEXEC where the kernel honours it, else 0 */
static int stream_padding = 0; /* _probes.fd_control_padding() */
static PyTypeObject *message_type = NULL; /* udscompat.Message: a tuple of four */

/* ``sock`` as a plain AF_UNIX socket whose fields this module may read, or NULL. */
static socket_prefix *
plain_unix_socket(PyObject *sock)
{
    if (socket_type == NULL || plain_socket_types == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(plain_socket_types);
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((PyObject *)Py_TYPE(sock) == PyTuple_GET_ITEM(plain_socket_types, i)) {
            socket_prefix *s = (socket_prefix *)sock;
            return s->sock_family == AF_UNIX ? s : NULL;
        }
    }
    return NULL;
}

/* The probes' answers, asked for once; 0 while they cannot be had (the Python
 * path then runs the probes itself and says why). */
static int
know_facts(void)
{
    if (facts_known) {
        return 1;
    }
    if (facts_source == NULL) {
        return 0;
    }
    PyObject *facts = PyObject_CallObject(facts_source, NULL);
    int flags = 0, padding = 0;
    if (facts != NULL && facts != Py_None &&
        PyArg_ParseTuple(facts, "ip:facts", &flags, &padding)) {
        receive_flags = flags;
        stream_padding = padding;
        facts_known = 1;
    }
    Py_XDECREF(facts);
    PyErr_Clear();
    return facts_known;
}

/* A C int from an int (``exact``: not a subclass, so no bool), 0 with no exception for
 * anything else.  An int subclass (socket.MSG_PEEK is an IntFlag) is read as its value,
 * which is what the Python code passes on, without running any of its Python code. */
static int
int_value(PyObject *obj, int exact, int *out)
{
    if (exact ? !PyLong_CheckExact(obj) : !PyLong_Check(obj)) {
        return 0;
    }
    int overflow;
    long value = PyLong_AsLongAndOverflow(obj, &overflow);
    if (overflow || value < INT_MIN || value > INT_MAX) {
        return 0;
    }
    *out = (int)value;
    return 1;
}

/* Whether no sent descriptor is held (registry.originals is empty), so received ones
 * need no guard_reused: asked before a receive, as no Python code may run after it. */
static int
nothing_guarded(void)
{
    if (sent_registry == NULL) {
        return 0;
    }
    PyObject *originals = PyObject_GetAttr(sent_registry, originals_name);
    Py_ssize_t guarded = originals != NULL ? PyObject_Length(originals) : -1;
    Py_XDECREF(originals);
    if (guarded != 0) {
        PyErr_Clear();
    }
    return guarded == 0;
}

/* A size from a non-negative int (or int subclass); 0 (no exception) for anything else. */
static int
size_value(PyObject *obj, Py_ssize_t *out)
{
    if (!PyLong_Check(obj)) {
        return 0;
    }
    Py_ssize_t value = PyLong_AsSsize_t(obj);
    if (value < 0) {
        PyErr_Clear(); /* -1 with OverflowError, or negative */
        return 0;
    }
    *out = value;
    return 1;
}

PyDoc_STRVAR(send_fds_doc,
"send_fds(sock, data, fds, flags) -> int or NotImplemented\n\n"
"udscompat.send_fds without an address, all in C for the common case: a plain\n"
"AF_UNIX socket, data bytes or a list of bytes, fds a list or tuple of exact ints\n"
"(0..INT_MAX, at most the OS's per-message cap), flags an int, sent\n"
"descriptors not held.  Anything else, and EAGAIN, answers NotImplemented\n"
"before anything was sent: the Python code then does the whole call.");

static PyObject *
speedups_send_fds(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "send_fds() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    socket_prefix *sock = plain_unix_socket(args[0]);
    int flags;
    if (sock == NULL || !int_value(args[3], 0, &flags)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    struct iovec iov[IOV_STACK];
    Py_ssize_t nbuf;
    size_t payload = 0;
    PyObject *data = args[1];
    if (PyBytes_CheckExact(data)) {
        iov[0].iov_base = PyBytes_AS_STRING(data);
        iov[0].iov_len = (size_t)PyBytes_GET_SIZE(data);
        payload = iov[0].iov_len;
        nbuf = 1;
    }
    else if (PyList_CheckExact(data) && PyList_GET_SIZE(data) <= IOV_STACK) {
        nbuf = PyList_GET_SIZE(data);
        for (Py_ssize_t i = 0; i < nbuf; i++) {
            PyObject *item = PyList_GET_ITEM(data, i);
            if (!PyBytes_CheckExact(item)) {
                Py_RETURN_NOTIMPLEMENTED;
            }
            iov[i].iov_base = PyBytes_AS_STRING(item);
            iov[i].iov_len = (size_t)PyBytes_GET_SIZE(item);
            payload += iov[i].iov_len;
        }
    }
    else {
        Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *fds = args[2];
    if (!PyList_CheckExact(fds) && !PyTuple_CheckExact(fds)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_ssize_t nfds = PySequence_Fast_GET_SIZE(fds);
    if (nfds > SEND_STACK_FDS || (max_fds_per_message >= 0 && nfds > max_fds_per_message)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * SEND_STACK_FDS)];
    } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = (int)nbuf;
    if (nfds > 0) {
        int stream = (sock->sock_type & 0xF) == SOCK_STREAM;
        if ((stream && payload == 0) || !know_facts() || (stream && stream_padding)) {
            Py_RETURN_NOTIMPLEMENTED;
        }
        size_t space = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        memset(control.buf, 0, space);
        msg.msg_control = control.buf;
        msg.msg_controllen = space;
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        int *numbers = (int *)CMSG_DATA(cmsg);
        for (Py_ssize_t i = 0; i < nfds; i++) {
            if (!int_value(PySequence_Fast_GET_ITEM(fds, i), 1, &numbers[i]) || numbers[i] < 0) {
                Py_RETURN_NOTIMPLEMENTED;
            }
        }
        /* Asked last (a cached Python call): where descriptors are held, Python holds them. */
        PyObject *hold = PyObject_CallObject(hold_policy, NULL);
        int held = hold != NULL ? PyObject_IsTrue(hold) : -1;
        Py_XDECREF(hold);
        if (held != 0) {
            PyErr_Clear(); /* a bad setting: the Python path raises it */
            Py_RETURN_NOTIMPLEMENTED;
        }
    }
    ssize_t sent;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        sent = sendmsg(LIVE_FD(&sock->sock_fd), &msg, flags);
        Py_END_ALLOW_THREADS
        if (sent >= 0) {
            return PyLong_FromSsize_t(sent);
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            /* Nothing was sent: the Python path retries and waits as the socket's
             * timeout says (or raises BlockingIOError on a non-blocking socket). */
            Py_RETURN_NOTIMPLEMENTED;
        }
        if (errno != EINTR) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (PyErr_CheckSignals() < 0) { /* nothing was sent: a raising handler loses nothing */
            return NULL;
        }
    }
}

PyDoc_STRVAR(recv_fds_doc,
"recv_fds(sock, bufsize, maxfds, flags) -> (data, fds, msg_flags, address) or NotImplemented\n\n"
"udscompat.recv_fds all in C for the common case: a plain AF_UNIX socket,\n"
"non-negative int sizes, an int flags without MSG_PEEK, no received\n"
"descriptor to guard.  Anything else, and EAGAIN, answers NotImplemented\n"
"before anything was received: the Python code then does the whole call.");

static PyObject *
speedups_recv_fds(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "recv_fds() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    socket_prefix *sock = plain_unix_socket(args[0]);
    Py_ssize_t bufsize, maxfds;
    int flags;
    if (sock == NULL || !size_value(args[1], &bufsize) || !size_value(args[2], &maxfds) ||
        !int_value(args[3], 0, &flags) || (flags & MSG_PEEK) || !know_facts()) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (!nothing_guarded()) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    struct received got;
    int status = receive(&sock->sock_fd, bufsize, maxfds, flags | receive_flags, 1, 1, &got);
    if (status == RECEIVE_WOULD_BLOCK) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (status < 0) {
        return NULL;
    }
    return received_tuple(&got, 0);
}

/* A whole message with a payload or descriptors (these only ``with_fds``) as a Message
 * built here, as tuple.__new__(Message, (data, fds, False, None)) builds it, so that no
 * Python code runs while its descriptors are nowhere else; anything else as recvmsg()'s
 * tuple (with the marker).  Consumes got: on failure every descriptor is closed. */
static PyObject *
message_or_tuple(struct received *got, Py_ssize_t bufsize, int partial_records, int with_fds)
{
    Py_ssize_t length = PyBytes_GET_SIZE(got->data);
    if (message_type == NULL || (got->nfds != 0 ? !with_fds : length == 0) ||
        (got->msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || (length == bufsize && partial_records)) {
        return received_tuple(got, 1);
    }
    PyObject *message = message_type->tp_alloc(message_type, 4);
    PyObject *fds = message != NULL ? PyTuple_New(got->nfds) : NULL;
    for (Py_ssize_t i = 0; fds != NULL && i < got->nfds; i++) {
        PyObject *number = PyLong_FromLong(got->fds[i]);
        if (number == NULL) {
            Py_CLEAR(fds); /* holds ints only: closes nothing */
            break;
        }
        PyTuple_SET_ITEM(fds, i, number);
    }
    if (fds == NULL) {
        close_all(got->fds, got->nfds);
        Py_XDECREF(message);
        Py_DECREF(got->data);
        return NULL;
    }
    PyTuple_SET_ITEM(message, 0, got->data);
    PyTuple_SET_ITEM(message, 1, fds);
    PyTuple_SET_ITEM(message, 2, Py_NewRef(Py_False));
    PyTuple_SET_ITEM(message, 3, Py_NewRef(Py_None));
    return message;
}

PyDoc_STRVAR(recv_message_doc,
"recv_message(sock, bufsize, maxfds, flags, partial_records) -> Message or tuple\n\n"
"A native seqpacket receive: one recvmsg as recvmsg() makes it.  A whole\n"
"message with a payload or descriptors comes back as a Message built here (with\n"
"descriptors only while no sent descriptor is held: see guard_reused);\n"
"anything else as recvmsg()'s tuple, for the connection to finish.  A record\n"
"that filled bufsize is 'anything else' where the kernel keeps the rest of a\n"
"record queued (partial_records true: FreeBSD).");

static PyObject *
speedups_recv_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "recv_message() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    int fd, flags;
    Py_ssize_t bufsize, maxfds;
    if (as_fd(args[0], &fd) < 0 || as_size(args[1], "bufsize", &bufsize) < 0 ||
        as_count(args[2], "maxfds", &maxfds) < 0 || as_int(args[3], "flags", &flags) < 0) {
        return NULL;
    }
    int partial_records = PyObject_IsTrue(args[4]);
    if (partial_records < 0) {
        return NULL;
    }
    int with_fds = maxfds > 0 && nothing_guarded();
    struct received got;
    if (receive(fd_slot(args[0], &fd), bufsize, maxfds, flags, 0, 0, &got) < 0) {
        return NULL;
    }
    return message_or_tuple(&got, bufsize, partial_records, with_fds);
}

/* -- native seqpacket connections: send and recv_message as methods -------- */

/* A Python method call costs as much as the system call of a small message, so
 * the common cases of _NativeConn.send and recv_message are these functions,
 * installed as the class's methods (bound like Python functions, through
 * PyInstanceMethod).  Each does what the Python method's common case does and
 * hands every other call, whole and before any system call, to that Python
 * method (the reference, kept): keywords, descriptors, credentials, several
 * buffers, a closed or end-of-stream connection, a socket that is not a plain
 * AF_UNIX socket, a receive the inline case does not take.  A would-block
 * under a timeout also goes to the reference: nothing was sent or received,
 * and it waits within the connection's deadline. */
static PyObject *native_send_reference = NULL; /* _NativeConn.send, as written in Python */
static PyObject *native_recv_reference = NULL; /* _NativeConn.recv_message, likewise */
static Py_ssize_t native_default_bufsize = 0;  /* recv_message's defaults, from the reference */
static Py_ssize_t native_default_maxfds = 0;
static Py_ssize_t native_fast_bufsize = 0; /* _LARGE_BUFSIZE: larger sizes take the reference */
static PyObject *timeout_name, *partial_name, *message_name;
static struct slot native_inline_args, native_fast; /* _NativeConn's _inline_args and _fast */

/* reference(conn, *args, **kwargs), from a vectorcall's arguments without the connection. */
static PyObject *
call_reference(PyObject *reference, PyObject *conn, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    if (reference == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "udscompat._speedups: configure_native() or configure_emulated() was "
                        "not called");
        return NULL;
    }
    Py_ssize_t total = nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8];
    PyObject **call = total < 8 ? small : PyMem_New(PyObject *, (size_t)total + 1);
    if (call == NULL) {
        return PyErr_NoMemory();
    }
    call[0] = conn;
    if (total > 0) { /* args may be NULL then */
        memcpy(call + 1, args, sizeof(PyObject *) * (size_t)total);
    }
    PyObject *result = PyObject_Vectorcall(reference, call, (size_t)nargs + 1, kwnames);
    if (call != small) {
        PyMem_Free(call);
    }
    return result;
}

/* An attribute of the connection, or NULL with no exception (the reference then
 * meets whatever is wrong and says so). */
static PyObject *
conn_attribute(PyObject *conn, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(conn, name);
    if (value == NULL) {
        PyErr_Clear();
    }
    return value;
}

/* An attribute the connection's class keeps in a slot (``__slots__``), read at its
 * offset where the object is of exactly that class: through the type (PyObject_GetAttr)
 * a read cost 100-150 instructions, and each call makes two, against ~3,600 for the whole
 * round trip of a small message.  Any other object (a subclass, which may redefine the
 * name) is asked through the type.  Configured from the class's own member descriptor, so
 * the offset is the one CPython computed (one of another class, put in its dict under the
 * name, carries that class's offset: another slot, or memory past the object). */
struct slot {
    PyTypeObject *type; /* NULL: not configured, every read goes through the type */
    Py_ssize_t offset;
    PyObject *name;
};

/* 0, or -1 with an exception set: the class does not keep ``name`` in a slot of objects. */
static int
slot_configure(struct slot *slot, PyTypeObject *cls, PyObject *name)
{
    PyObject *descriptor = PyDict_GetItemWithError(cls->tp_dict, name); /* borrowed */
    if (descriptor == NULL || !Py_IS_TYPE(descriptor, &PyMemberDescr_Type) ||
        PyDescr_TYPE(descriptor) != cls ||
        ((PyMemberDescrObject *)descriptor)->d_member->type != T_OBJECT_EX ||
        (((PyMemberDescrObject *)descriptor)->d_member->flags & READONLY)) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "%s.%U must be a writable slot (__slots__)",
                         cls->tp_name, name);
        }
        return -1;
    }
    Py_XSETREF(slot->type, (PyTypeObject *)Py_NewRef(cls));
    slot->offset = ((PyMemberDescrObject *)descriptor)->d_member->offset;
    Py_XSETREF(slot->name, Py_NewRef(name));
    return 0;
}

static void
slot_clear(struct slot *slot)
{
    Py_CLEAR(slot->type);
    Py_CLEAR(slot->name);
}

/* Slot ``slot`` of ``obj``, an object of exactly slot->type: borrowed, NULL if unset. */
#define SLOT_AT(obj, slot) (*(PyObject **)((char *)(obj) + (slot)->offset))

/* One slot a configure_* call finds: into ``*into``, ``owner``'s slot ``name``. */
struct slot_spec {
    struct slot *into;
    PyTypeObject *owner;
    const char *name;
};

/* Every slot of ``specs`` configured into ``found`` (``count`` of each): 0, or -1 with an
 * exception set and nothing kept.  Nothing is installed yet: see slots_install. */
static int
slots_find(const struct slot_spec *specs, struct slot *found, size_t count)
{
    memset(found, 0, sizeof(*found) * count);
    for (size_t i = 0; i < count; i++) {
        PyObject *name = PyUnicode_InternFromString(specs[i].name);
        int configured = name != NULL && slot_configure(&found[i], specs[i].owner, name) == 0;
        Py_XDECREF(name);
        if (!configured) {
            for (size_t j = 0; j <= i; j++) {
                slot_clear(&found[j]);
            }
            return -1;
        }
    }
    return 0;
}

/* ``found`` (from slots_find) in place of the slots ``specs`` name, all at once, where
 * ``install``; else dropped (a later step of the configuration failed): all or nothing. */
static void
slots_install(const struct slot_spec *specs, struct slot *found, size_t count, int install)
{
    for (size_t i = 0; i < count; i++) {
        if (install) {
            slot_clear(specs[i].into);
            *specs[i].into = found[i];
        }
        else {
            slot_clear(&found[i]);
        }
    }
}

/* A new reference to the slot's value, or NULL with no exception (unset, or the type's
 * lookup failed): the reference then meets whatever is wrong and says so. */
static PyObject *
slot_value(const struct slot *slot, PyObject *obj)
{
    if (Py_TYPE(obj) == slot->type) {
        PyObject *value = SLOT_AT(obj, slot);
        return value != NULL ? Py_NewRef(value) : NULL;
    }
    return slot->name != NULL ? conn_attribute(obj, slot->name) : NULL;
}

/* 1 if the connection is non-blocking (its _timeout is 0.0), else 0. */
static int
conn_nonblocking(PyObject *conn)
{
    PyObject *timeout = conn_attribute(conn, timeout_name);
    int nonblocking =
        timeout != NULL && PyFloat_Check(timeout) && PyFloat_AS_DOUBLE(timeout) == 0.0;
    Py_XDECREF(timeout);
    return nonblocking;
}

/* An empty tuple or list: what a send without descriptors passes as ``fds``. */
static int
no_items(PyObject *obj)
{
    return (PyTuple_CheckExact(obj) && PyTuple_GET_SIZE(obj) == 0) ||
           (PyList_CheckExact(obj) && PyList_GET_SIZE(obj) == 0);
}

/* The payload of a send the compiled methods take: positional (data[, fds[, credentials]])
 * with fds empty and credentials None, data bytes, bytearray or a contiguous memoryview.
 * 1 with ``view`` filled (view->obj NULL for bytes: nothing to release), else 0 with no
 * exception: the Python method takes the call and names what is wrong. */
static int
send_payload(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, Py_buffer *view)
{
    if (kwnames != NULL || nargs < 1 || nargs > 3 || (nargs >= 2 && !no_items(args[1])) ||
        (nargs == 3 && args[2] != Py_None)) {
        return 0;
    }
    PyObject *data = args[0];
    if (PyBytes_CheckExact(data)) {
        view->obj = NULL; /* bytes never move or change */
        view->buf = PyBytes_AS_STRING(data);
        view->len = PyBytes_GET_SIZE(data);
        return 1;
    }
    if (!PyByteArray_CheckExact(data) && !PyMemoryView_Check(data)) {
        return 0;
    }
    if (PyObject_GetBuffer(data, view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* strided or released */
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(native_send_doc,
"send($self, data, fds=(), credentials=None)\n--\n\n"
"SeqpacketConn.send of a native connection, compiled: one send(2) of one\n"
"message (bytes, bytearray or a contiguous memoryview), handing every other\n"
"call to the Python method before anything was sent.");

static PyObject *
native_send(PyObject *conn, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_buffer view;
    if (!send_payload(args, nargs, kwnames, &view)) {
        return call_reference(native_send_reference, conn, args, nargs, kwnames);
    }
    PyObject *result = NULL;
    PyObject *inline_args = slot_value(&native_inline_args, conn);
    socket_prefix *plain = NULL;
    int flags;
    if (inline_args == NULL || !PyTuple_CheckExact(inline_args) ||
        PyTuple_GET_SIZE(inline_args) != 3 ||
        (plain = plain_unix_socket(PyTuple_GET_ITEM(inline_args, 0))) == NULL ||
        plain->sock_fd < 0 || !int_value(PyTuple_GET_ITEM(inline_args, 1), 0, &flags)) {
        goto reference; /* closed (-1), not a plain socket, or not a connection at all */
    }
    ssize_t sent;
    int saved;
    Py_BEGIN_ALLOW_THREADS
    sent = send(LIVE_FD(&plain->sock_fd), view.buf, (size_t)view.len, flags);
    saved = errno;
    Py_END_ALLOW_THREADS
    if (sent >= 0) {
        result = PyLong_FromSsize_t(sent);
        goto done;
    }
    if (saved == EINTR) {
        /* Nothing was sent: the handlers run, and a raising one loses nothing. */
        if (PyErr_CheckSignals() < 0) {
            goto done;
        }
        goto reference;
    }
    if ((saved == EAGAIN || saved == EWOULDBLOCK) && !conn_nonblocking(conn)) {
        goto reference; /* it waits within the connection's timeout */
    }
    errno = saved;
    PyErr_SetFromErrno(PyExc_OSError); /* as socket.send raises it (BlockingIOError on EAGAIN) */
    goto done;
reference:
    if (view.obj != NULL) {
        PyBuffer_Release(&view);
    }
    Py_XDECREF(inline_args);
    return call_reference(native_send_reference, conn, args, nargs, kwnames);
done:
    if (view.obj != NULL) {
        PyBuffer_Release(&view);
    }
    Py_XDECREF(inline_args);
    return result;
}

/* A size argument the inline receive takes: an exact int in 0..limit. */
static int
fast_size(PyObject *obj, Py_ssize_t limit, Py_ssize_t *out)
{
    if (!PyLong_CheckExact(obj)) {
        return 0;
    }
    Py_ssize_t value = PyLong_AsSsize_t(obj);
    if (value < 0 || value > limit) {
        PyErr_Clear(); /* an OverflowError, or out of range */
        return 0;
    }
    *out = value;
    return 1;
}

/* recv_message's arguments, by position or keyword, where the inline receive takes them
 * (1); else 0, with no exception: the Python method says what is wrong. */
static int
native_recv_arguments(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      Py_ssize_t *bufsize, Py_ssize_t *maxfds)
{
    PyObject *given[2] = {NULL, NULL};
    Py_ssize_t keywords = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 2) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        given[i] = args[i];
    }
    for (Py_ssize_t i = 0; i < keywords; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int at = PyUnicode_CompareWithASCIIString(name, "bufsize") == 0  ? 0
                 : PyUnicode_CompareWithASCIIString(name, "maxfds") == 0 ? 1
                                                                         : -1;
        if (at < 0 || given[at] != NULL) {
            return 0;
        }
        given[at] = args[nargs + i];
    }
    if ((given[0] != NULL && !fast_size(given[0], native_fast_bufsize, bufsize)) ||
        (given[1] != NULL &&
         (!PyLong_CheckExact(given[1]) || as_count(given[1], "maxfds", maxfds) < 0))) {
        PyErr_Clear(); /* a negative maxfds */
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(native_recv_message_doc,
"recv_message($self, bufsize=65536, maxfds=0)\n--\n\n"
"SeqpacketConn.recv_message of a native connection, compiled: the inline\n"
"receive of the Python method (one recvmsg; the Message built here where it\n"
"is a whole message), handing every other call to the Python\n"
"method before anything was received.");

static PyObject *
native_recv_message(PyObject *conn, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t bufsize = native_default_bufsize, maxfds = native_default_maxfds;
    if (!native_recv_arguments(args, nargs, kwnames, &bufsize, &maxfds)) {
        return call_reference(native_recv_reference, conn, args, nargs, kwnames);
    }
    /* _fast is off after the end of the stream and wherever the inline case does not
     * apply; what the receive reads besides never changes (_NativeConn._inline_args). */
    PyObject *fast = slot_value(&native_fast, conn);
    PyObject *inline_args = fast == Py_True ? slot_value(&native_inline_args, conn) : NULL;
    Py_XDECREF(fast);
    socket_prefix *plain = NULL;
    int flags;
    if (inline_args == NULL || !PyTuple_CheckExact(inline_args) ||
        PyTuple_GET_SIZE(inline_args) != 3 ||
        (plain = plain_unix_socket(PyTuple_GET_ITEM(inline_args, 0))) == NULL ||
        plain->sock_fd < 0 || !int_value(PyTuple_GET_ITEM(inline_args, 2), 0, &flags)) {
        Py_XDECREF(inline_args);
        return call_reference(native_recv_reference, conn, args, nargs, kwnames);
    }
    int with_fds = maxfds > 0 && nothing_guarded();
    struct received got;
    int status = receive(&plain->sock_fd, bufsize, maxfds, flags, 0, 1, &got);
    Py_DECREF(inline_args);
    if (status == RECEIVE_WOULD_BLOCK) {
        if (!conn_nonblocking(conn)) {
            return call_reference(native_recv_reference, conn, args, nargs, kwnames);
        }
        errno = EAGAIN;
        return PyErr_SetFromErrno(PyExc_OSError); /* as socket.recvmsg raises it */
    }
    if (status < 0) {
        return NULL;
    }
    /* Whether the kernel cuts records (FreeBSD 15) matters only for a message that
     * filled bufsize; anything but a plain False lets the connection decide. */
    int partial_records = 0;
    if (PyBytes_GET_SIZE(got.data) == bufsize) {
        PyObject *partial = conn_attribute(conn, partial_name);
        partial_records = partial != Py_False;
        Py_XDECREF(partial);
    }
    PyObject *message = message_or_tuple(&got, bufsize, partial_records, with_fds);
    if (message == NULL || Py_TYPE(message) == message_type) {
        return message;
    }
    /* recvmsg's tuple (data, fds, flags, address, marked): the connection makes it a
     * Message (or None at the end), exactly where the Python method does. */
    PyObject *size = PyLong_FromSsize_t(bufsize);
    if (size == NULL) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        PyObject *fds = PyTuple_GET_ITEM(message, 1);
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fds); i++) {
            close((int)PyLong_AsLong(PyList_GET_ITEM(fds, i)));
        }
        PyErr_Restore(type, value, traceback);
        Py_DECREF(message);
        return NULL;
    }
    PyObject *call[6] = {conn, PyTuple_GET_ITEM(message, 0), PyTuple_GET_ITEM(message, 1),
                         PyTuple_GET_ITEM(message, 2), PyTuple_GET_ITEM(message, 4), size};
    PyObject *result = PyObject_VectorcallMethod(message_name, call, 6, NULL);
    Py_DECREF(size);
    Py_DECREF(message);
    return result;
}

/* -- configuration --------------------------------------------------------- */

PyDoc_STRVAR(configure_doc,
"configure(fd_room, marker_type, fd_cmsg_types, truncated, extra_room=0)\n\n"
"Set the platform facts the receive needs: room for fd_room descriptors\n"
"(and extra_room bytes for credential messages),\n"
"the marker's cmsg type (None: no marker), other SOL_SOCKET cmsg types that\n"
"install descriptors (closed on receipt), and truncated(reason, data, closed,\n"
"maxfds), which builds the exception for reason 'ctrunc', 'empty', 'excess' or\n"
"'emsgsize' (data None), called only once every descriptor is closed.");

static PyObject *
speedups_configure(PyObject *module, PyObject *args)
{
    (void)module;
    int room;
    int extra = 0;
    PyObject *marker, *types, *factory;
    if (!PyArg_ParseTuple(args, "iOOO|i:configure", &room, &marker, &types, &factory, &extra)) {
        return NULL;
    }
    if (room < 1 || room > MAX_FD_ROOM) {
        PyErr_Format(PyExc_ValueError, "fd_room must be 1..%d, got %d", MAX_FD_ROOM, room);
        return NULL;
    }
    if (extra < 0 || extra > MAX_EXTRA_ROOM) {
        PyErr_Format(PyExc_ValueError, "extra_room must be 0..%d, got %d", MAX_EXTRA_ROOM, extra);
        return NULL;
    }
    int marker_value = -1;
    if (marker != Py_None && as_int(marker, "marker_type", &marker_value) < 0) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(types, "fd_cmsg_types must be a sequence of ints");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    int values[8];
    if (count > 8) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "at most 8 fd_cmsg_types");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (as_int(PySequence_Fast_GET_ITEM(seq, i), "fd_cmsg_types item", &values[i]) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    if (factory != Py_None && !PyCallable_Check(factory)) {
        PyErr_SetString(PyExc_TypeError, "truncated must be callable or None");
        return NULL;
    }
    fd_room = room;
    extra_room = extra;
    marker_type = marker_value;
    memcpy(fd_cmsg_types, values, sizeof(int) * (size_t)count);
    fd_cmsg_type_count = (int)count;
    Py_XSETREF(truncated_factory, factory == Py_None ? NULL : Py_NewRef(factory));
    Py_RETURN_NONE;
}

PyDoc_STRVAR(configure_fast_doc,
"configure_fast(socket_types, max_fds, facts, hold, registry)\n\n"
"Turn on send_fds() and recv_fds(): socket_types, a tuple of the socket types\n"
"whose methods they may stand in for; max_fds, the OS's per-message cap or\n"
"None; facts() -> (receive flags, stream padding), or None while the probes\n"
"cannot run (asked until it answers, then kept: kernel facts); hold() -> bool,\n"
"asked at every send with descriptors; registry.originals, a set of sent\n"
"descriptor numbers a receive must guard (none: the fast receive runs).");

static PyObject *
speedups_configure_fast(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *types, *max_fds, *facts, *hold, *registry;
    if (!PyArg_ParseTuple(args, "O!OOOO:configure_fast", &PyTuple_Type, &types, &max_fds, &facts,
                          &hold, &registry)) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(types);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(types, i);
        if (!PyType_Check(item) || socket_type == NULL ||
            !PyType_IsSubtype((PyTypeObject *)item, socket_type)) {
            PyErr_SetString(PyExc_TypeError,
                            "socket_types must be subtypes of _socket.socket (whose layout "
                            "this module checked at import)");
            return NULL;
        }
    }
    long cap = -1;
    if (max_fds != Py_None && ((cap = PyLong_AsLong(max_fds)) == -1 && PyErr_Occurred())) {
        return NULL;
    }
    if (!PyCallable_Check(facts) || !PyCallable_Check(hold)) {
        PyErr_SetString(PyExc_TypeError, "facts and hold must be callable");
        return NULL;
    }
    if (originals_name == NULL &&
        (originals_name = PyUnicode_InternFromString("originals")) == NULL) {
        return NULL;
    }
    Py_XSETREF(plain_socket_types, Py_NewRef(types));
    Py_XSETREF(facts_source, Py_NewRef(facts));
    Py_XSETREF(hold_policy, Py_NewRef(hold));
    Py_XSETREF(sent_registry, Py_NewRef(registry));
    max_fds_per_message = cap;
    facts_known = 0;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(configure_message_doc,
"configure_message(type)\n\n"
"The Message type recv_message() builds: a tuple subclass without slots of its own.");

static PyObject *
speedups_configure_message(PyObject *module, PyObject *type)
{
    (void)module;
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type) ||
        ((PyTypeObject *)type)->tp_basicsize != PyTuple_Type.tp_basicsize ||
        ((PyTypeObject *)type)->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError, "expected a tuple subclass with no fields of its own");
        return NULL;
    }
    Py_XSETREF(message_type, (PyTypeObject *)Py_NewRef(type));
    Py_RETURN_NONE;
}

/* The method definitions behind configure_native()'s descriptors: called with the
 * connection as self (the descriptor checks its type), the arguments after it. */
static PyMethodDef native_send_def = {"send", (PyCFunction)(void (*)(void))native_send,
                                      METH_FASTCALL | METH_KEYWORDS, native_send_doc};
static PyMethodDef native_recv_def = {"recv_message",
                                      (PyCFunction)(void (*)(void))native_recv_message,
                                      METH_FASTCALL | METH_KEYWORDS, native_recv_message_doc};

PyDoc_STRVAR(configure_native_doc,
"configure_native(cls, send, recv_message, fast_bufsize) -> (send, recv_message)\n\n"
"The compiled send and recv_message of cls, the native connection class, as its\n"
"method descriptors: send and recv_message are its Python methods, which they\n"
"stand in for and hand every other call to (recv_message's defaults are read\n"
"from it); fast_bufsize is the largest bufsize the inline receive takes.");

static PyObject *
speedups_configure_native(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *cls, *send_method, *recv_method;
    Py_ssize_t largest;
    if (!PyArg_ParseTuple(args, "O!OOn:configure_native", &PyType_Type, &cls, &send_method,
                          &recv_method, &largest)) {
        return NULL;
    }
    if (!PyFunction_Check(send_method) || !PyFunction_Check(recv_method)) {
        PyErr_SetString(PyExc_TypeError, "send and recv_message must be Python functions");
        return NULL;
    }
    if (largest < 0) {
        PyErr_SetString(PyExc_ValueError, "fast_bufsize must not be negative");
        return NULL;
    }
    PyObject *defaults = PyFunction_GetDefaults(recv_method);
    Py_ssize_t bufsize, maxfds;
    if (defaults == NULL || !PyTuple_Check(defaults) || PyTuple_GET_SIZE(defaults) != 2 ||
        !fast_size(PyTuple_GET_ITEM(defaults, 0), largest, &bufsize) ||
        !fast_size(PyTuple_GET_ITEM(defaults, 1), PY_SSIZE_T_MAX, &maxfds)) {
        PyErr_SetString(PyExc_ValueError,
                        "recv_message's defaults must be (bufsize, maxfds), ints the inline "
                        "receive takes");
        return NULL;
    }
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {{&timeout_name, "_timeout"},
                 {&partial_name, "_partial_records"},
                 {&message_name, "_message"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*names[i].slot == NULL &&
            (*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL) {
            return NULL;
        }
    }
    const struct slot_spec slots[] = {
        {&native_inline_args, (PyTypeObject *)cls, "_inline_args"},
        {&native_fast, (PyTypeObject *)cls, "_fast"},
    };
    struct slot found[sizeof(slots) / sizeof(slots[0])];
    if (slots_find(slots, found, sizeof(slots) / sizeof(slots[0])) < 0) {
        return NULL;
    }
    PyObject *send_descriptor = PyDescr_NewMethod((PyTypeObject *)cls, &native_send_def);
    PyObject *recv_descriptor =
        send_descriptor != NULL ? PyDescr_NewMethod((PyTypeObject *)cls, &native_recv_def) : NULL;
    slots_install(slots, found, sizeof(slots) / sizeof(slots[0]), recv_descriptor != NULL);
    if (recv_descriptor == NULL) {
        Py_XDECREF(send_descriptor);
        return NULL;
    }
    Py_XSETREF(native_send_reference, Py_NewRef(send_method));
    Py_XSETREF(native_recv_reference, Py_NewRef(recv_method));
    native_default_bufsize = bufsize;
    native_default_maxfds = maxfds;
    native_fast_bufsize = largest;
    PyObject *pair = PyTuple_Pack(2, send_descriptor, recv_descriptor);
    Py_DECREF(send_descriptor);
    Py_DECREF(recv_descriptor);
    return pair;
}

PyDoc_STRVAR(control_size_doc,
"control_size() -> int\n\nThe control buffer size a receive uses now (CMSG_SPACE based).");

static PyObject *
speedups_control_size(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromSize_t(control_size());
}

/* -- Lock: the emulated connections' send and receive locks ----------------- */

/* threading.Lock, as _thread.lock is, for _EmulatedConn's _send_lock and _recv_lock
 * where the accelerator runs (the pure path keeps threading.Lock).  The compiled
 * emulated methods take and release it in C (lock_try, lock_untake: a few dozen
 * instructions); taking a threading.Lock from C means calling its acquire, whose
 * arguments are parsed from a tuple, about 1,000 instructions per call -- an eighth
 * of a small message's round trip.  For Python it is the whole lock:
 * acquire(blocking=True, timeout=-1), release, locked, ``with``, _at_fork_reinit.
 *
 * A blocking acquire lets go of the GIL, keeps its timeout as a deadline, and is
 * interruptible as _thread.lock's is: the pending calls (signal handlers) run; a
 * raising one propagates with the lock not taken, a quiet one lets the wait go
 * on with what is left of the timeout.  Releasing a lock that is not held raises
 * RuntimeError.  Fork: as threading.Lock, a lock some thread held at fork stays
 * held in the child (nothing re-initialises it; _at_fork_reinit does, on request).
 * Freed while held, it is released first (the semaphore is never freed taken). */

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    char locked; /* taken (set once taken, cleared before the release) */
    PyObject *weakreflist;
} LockObject;

static PyTypeObject LockType;

#define LOCK_UNSET_TIMEOUT (-1.0)

/* Take ``self`` if it is free, without waiting or letting go of the GIL: 1 taken, 0 not. */
static int
lock_try(LockObject *self)
{
    if (PyThread_acquire_lock_timed(self->lock, 0, 0) != PY_LOCK_ACQUIRED) {
        return 0;
    }
    self->locked = 1;
    return 1;
}

/* release(): 0, or -1 with RuntimeError set (not held). */
static int
lock_untake(LockObject *self)
{
    if (!self->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return -1;
    }
    self->locked = 0;
    PyThread_release_lock(self->lock);
    return 0;
}

static double
lock_clock(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* Wait for the lock up to ``timeout`` seconds (negative: for ever), as _thread.lock's
 * acquire_timed: 1 taken, 0 timed out, -1 a signal handler raised (not taken). */
static int
lock_wait(LockObject *self, double timeout)
{
    if (lock_try(self)) {
        return 1;
    }
    if (timeout == 0.0) {
        return 0;
    }
    double deadline = timeout > 0.0 ? lock_clock() + timeout : 0.0;
    for (;;) {
        PY_TIMEOUT_T microseconds = -1;
        if (timeout > 0.0) {
            double left = ceil(timeout * 1e6);
            microseconds = left < (double)PY_TIMEOUT_MAX ? (PY_TIMEOUT_T)left : PY_TIMEOUT_MAX;
        }
        PyLockStatus status;
        Py_BEGIN_ALLOW_THREADS
        status = PyThread_acquire_lock_timed(self->lock, microseconds, 1);
        Py_END_ALLOW_THREADS
        if (status == PY_LOCK_ACQUIRED) {
            self->locked = 1;
            return 1;
        }
        if (status == PY_LOCK_FAILURE) {
            return 0;
        }
        /* PY_LOCK_INTR: run the handlers; a raising one ends the wait, lock not taken. */
        if (Py_MakePendingCalls() < 0) {
            return -1;
        }
        if (timeout > 0.0) {
            timeout = deadline - lock_clock();
            if (timeout <= 0.0) {
                return lock_try(self);
            }
        }
    }
}

/* acquire's (blocking, timeout) from a vectorcall, checked as _thread.lock checks them,
 * each error naming its parameter: 0 with *timeout set (0: don't wait, negative: for
 * ever), -1 with an exception. */
static int
lock_arguments(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, double *timeout)
{
    PyObject *blocking_obj = NULL, *timeout_obj = NULL;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "acquire() takes at most 2 arguments (%zd given)",
                     nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0));
        return -1;
    }
    if (nargs >= 1) {
        blocking_obj = args[0];
    }
    if (nargs == 2) {
        timeout_obj = args[1];
    }
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        PyObject **slot = NULL;
        int position = 0;
        if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "blocking") == 0) {
            slot = &blocking_obj;
            position = 1;
        }
        else if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "timeout") == 0) {
            slot = &timeout_obj;
            position = 2;
        }
        else {
            PyErr_Format(PyExc_TypeError, "acquire() got an unexpected keyword argument '%S'",
                         key);
            return -1;
        }
        if (*slot != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "argument for acquire() given by name ('%S') and position (%d)", key,
                         position);
            return -1;
        }
        *slot = args[nargs + i];
    }
    int blocking = 1;
    if (blocking_obj != NULL) { /* an int, as _thread.lock's "i" takes it (bool is one) */
        if (!PyIndex_Check(blocking_obj)) {
            PyErr_Format(PyExc_TypeError, "blocking must be a bool or an int, not %.200s",
                         Py_TYPE(blocking_obj)->tp_name);
            return -1;
        }
        PyObject *number = PyNumber_Index(blocking_obj);
        int overflow = 0;
        long value = number != NULL ? PyLong_AsLongAndOverflow(number, &overflow) : -1;
        Py_XDECREF(number);
        if (value == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow || value > INT_MAX || value < INT_MIN) {
            PyErr_SetString(PyExc_OverflowError, "blocking does not fit in a C int");
            return -1;
        }
        blocking = value != 0;
    }
    double seconds = LOCK_UNSET_TIMEOUT;
    if (timeout_obj != NULL) {
        if (PyFloat_Check(timeout_obj)) {
            seconds = PyFloat_AS_DOUBLE(timeout_obj);
        }
        else if (PyLong_Check(timeout_obj) || PyIndex_Check(timeout_obj)) {
            PyObject *number = PyNumber_Index(timeout_obj);
            seconds = number != NULL ? PyLong_AsDouble(number) : -1.0;
            Py_XDECREF(number);
            if (seconds == -1.0 && PyErr_Occurred()) {
                if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                    PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
                }
                return -1;
            }
        }
        else {
            PyErr_Format(PyExc_TypeError, "timeout must be a number (seconds), not %.200s",
                         Py_TYPE(timeout_obj)->tp_name);
            return -1;
        }
        if (isnan(seconds)) {
            PyErr_SetString(PyExc_ValueError, "timeout must be a number of seconds, not NaN");
            return -1;
        }
        /* _thread.lock converts it to nanoseconds first: beyond _PyTime_t (about 9.2e9 s
         * either way) it is OverflowError, whatever blocking or the sign say. */
        if (!(fabs(seconds) * 1e9 < 9223372036854775808.0)) {
            PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
            return -1;
        }
    }
    if (!blocking && seconds != LOCK_UNSET_TIMEOUT) {
        PyErr_SetString(PyExc_ValueError,
                        "can't specify a timeout for a non-blocking call (blocking=False)");
        return -1;
    }
    if (seconds < 0.0 && seconds != LOCK_UNSET_TIMEOUT) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be positive (or -1: no limit)");
        return -1;
    }
    if (seconds > 0.0 && !(seconds * 1e6 <= (double)PY_TIMEOUT_MAX)) {
        PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
        return -1;
    }
    *timeout = !blocking ? 0.0 : seconds;
    return 0;
}

PyDoc_STRVAR(lock_acquire_doc,
"acquire($self, /, blocking=True, timeout=-1)\n--\n\n"
"Take the lock, as threading.Lock.acquire: without blocking, return False at\n"
"once if it is held; else wait, at most timeout seconds if timeout is not -1.\n"
"Returns whether it was taken.  Signal handlers run during the wait; one that\n"
"raises ends it with the lock not taken.");

static PyObject *
lock_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    double timeout = LOCK_UNSET_TIMEOUT;
    if ((nargs > 0 || kwnames != NULL) && lock_arguments(args, nargs, kwnames, &timeout) < 0) {
        return NULL;
    }
    int taken = lock_wait((LockObject *)self, timeout);
    if (taken < 0) {
        return NULL;
    }
    return PyBool_FromLong(taken);
}

static PyObject *
lock_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    int taken = lock_wait((LockObject *)self, LOCK_UNSET_TIMEOUT);
    if (taken < 0) {
        return NULL;
    }
    return PyBool_FromLong(taken);
}

PyDoc_STRVAR(lock_release_doc,
"release($self, /)\n--\n\n"
"Release the lock (any thread may); RuntimeError if it is not held.");

static PyObject *
lock_release(PyObject *self, PyObject *unused)
{
    (void)unused;
    if (lock_untake((LockObject *)self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
lock_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    return lock_release(self, NULL);
}

PyDoc_STRVAR(lock_locked_doc, "locked($self, /)\n--\n\nWhether the lock is held.");

static PyObject *
lock_locked(PyObject *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(((LockObject *)self)->locked);
}

PyDoc_STRVAR(lock_at_fork_reinit_doc,
"_at_fork_reinit($self, /)\n--\n\n"
"A new, free lock in place of this one (for a child after fork, as threading's).");

static PyObject *
lock_at_fork_reinit(PyObject *self, PyObject *unused)
{
    (void)unused;
    LockObject *lock = (LockObject *)self;
    PyThread_type_lock fresh = PyThread_allocate_lock();
    if (fresh == NULL) {
        PyErr_SetString(PyExc_MemoryError, "cannot allocate lock");
        return NULL;
    }
    /* The old one may be held by a thread that does not exist in this process: it is
     * left, not freed (as threading's _at_fork_reinit does). */
    lock->lock = fresh;
    lock->locked = 0;
    Py_RETURN_NONE;
}

static PyObject *
lock_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Lock() takes no arguments");
        return NULL;
    }
    LockObject *self = (LockObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->lock = PyThread_allocate_lock();
    self->locked = 0;
    self->weakreflist = NULL;
    if (self->lock == NULL) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_MemoryError, "cannot allocate lock");
        return NULL;
    }
    return (PyObject *)self;
}

static void
lock_dealloc(PyObject *obj)
{
    LockObject *self = (LockObject *)obj;
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs(obj);
    }
    if (self->lock != NULL) {
        if (self->locked) { /* a semaphore is not freed taken */
            PyThread_release_lock(self->lock);
        }
        PyThread_free_lock(self->lock);
    }
    Py_TYPE(obj)->tp_free(obj);
}

static PyObject *
lock_repr(PyObject *obj)
{
    return PyUnicode_FromFormat("<%s %s object at %p>",
                                ((LockObject *)obj)->locked ? "locked" : "unlocked",
                                Py_TYPE(obj)->tp_name, obj);
}

static PyMethodDef lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))lock_acquire, METH_FASTCALL | METH_KEYWORDS,
     lock_acquire_doc},
    {"release", lock_release, METH_NOARGS, lock_release_doc},
    {"locked", lock_locked, METH_NOARGS, lock_locked_doc},
    {"__enter__", lock_enter, METH_NOARGS, lock_acquire_doc},
    {"__exit__", (PyCFunction)(void (*)(void))lock_exit, METH_FASTCALL, lock_release_doc},
    {"_at_fork_reinit", lock_at_fork_reinit, METH_NOARGS, lock_at_fork_reinit_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(lock_doc,
"Lock()\n--\n\n"
"A lock as threading.Lock, whose try-acquire the compiled emulated seqpacket\n"
"methods make without a Python call (_EmulatedConn's send and receive locks).");

static PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "udscompat._speedups.Lock",
    .tp_basicsize = sizeof(LockObject),
    .tp_dealloc = lock_dealloc,
    .tp_repr = lock_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = lock_doc,
    .tp_weaklistoffset = offsetof(LockObject, weakreflist),
    .tp_methods = lock_methods,
    .tp_new = lock_new,
};

/* -- emulated seqpacket connections: send and recv_message as methods ------ */

/* The emulation (_seqpacket._EmulatedConn: frames over SOCK_STREAM) pays for two
 * Python method calls per message, each with the state checks around its one
 * system call, which cost more than the system calls of a small message.  These
 * two functions are its send and recv_message for the common case, installed as
 * the class's method descriptors (configure_emulated):
 *
 *   send: a bytes, bytearray or contiguous memoryview payload without
 *   descriptors or credentials, within max_message_size, on an idle
 *   connection (nothing unsent, no send running or cut short, not broken or
 *   closed, no acknowledgement owed): the frame header and the payload go out
 *   in one sendmsg (two iovecs: no joined copy).
 *
 *   recv_message: an idle decoder on a connection with _fast set and not
 *   broken: one recvmsg of a stream chunk (the 8-byte header into its own slot,
 *   the rest into the kept receive buffer, so a payload lands where its bytes
 *   object starts); a chunk that is exactly one plain DATA frame becomes the
 *   Message here.
 *
 * Every other call goes, whole and before any system call, to the Python method
 * (the reference, kept: it is what UDSCOMPAT_SPEEDUPS=0 runs).  After a system
 * call the rare outcomes go to the same Python continuations the Python method
 * uses: a chunk that is not one plain frame to _ingest(data, ancdata, flags)
 * (ancdata as socket.recvmsg gives it) and _receive(); a would-block under a
 * timeout to _receive() or _start_frame(); a partly sent frame to _flush().
 *
 * The connection's state is the Python method's, attribute for attribute:
 * _sending/_receiving are set before the system call and cleared once its
 * result is recorded; the send and receive locks are taken without waiting (a
 * lock another thread holds hands the call to the reference, which waits for it
 * within the call's deadline and raises as the call would: _seqpacket._lock_wait).
 * Signals: on EINTR nothing was sent or read, so the flag is cleared, the
 * handlers run, and a raising handler leaves the connection usable (the Python
 * method, inside socket.send/recvmsg, cannot tell that case from an interrupt
 * after the system call, and aborts the connection at the next call).  Between a
 * successful system call and the recording of its result no Python code runs. */

static PyObject *emu_send_reference = NULL; /* _EmulatedConn.send, as written in Python */
static PyObject *emu_recv_reference = NULL; /* _EmulatedConn.recv_message, likewise */
static PyObject *emu_default_bufsize = NULL; /* recv_message's defaults, from the reference */
static PyObject *emu_default_maxfds = NULL;
static PyObject *emu_monotonic = NULL;       /* the deadlines' clock (time.monotonic) */
static PyObject *emu_committed_kw = NULL;    /* ("committed",) */
static Py_ssize_t emu_chunk = 0;             /* _STREAM_CHUNK: one read's size */
static Py_ssize_t emu_control = 0;           /* _ANCBUF: one read's control room */
static int emu_send_flags = 0;               /* MSG_NOSIGNAL where there is one */

#define EMU_HEADER 8        /* u32 length | u16 nfds | u8 kind | u8 flags, big-endian */
#define EMU_SMALL_FRAME 4096 /* the Python method joins smaller frames into one buffer */

static PyObject *emu_start_frame_name, *emu_flush_name, *emu_ingest_name, *emu_receive_name,
    *emu_acknowledge_name, *emu_raise_read_error_name;

/* The state every call reads and writes is in __slots__ (_EmulatedConn's, FrameDecoder's):
 * found at the offsets their member descriptors give (configure_emulated), each read is
 * a load instead of an attribute lookup (~190 instructions, ~20 per round trip).  Python
 * sees the same attributes; an unset slot (NULL) hands the call to the reference. */
static struct slot emu_unsent_slot, emu_sending_slot, emu_receiving_slot, emu_broken_slot,
    emu_closed_slot, emu_acks_sent_slot, emu_timeout_slot, emu_cmsgs_slot, emu_fast_slot,
    emu_inline_args_slot;                         /* _EmulatedConn's */
static struct slot emu_idle_slot, emu_ack_requests_slot; /* _framing.FrameDecoder's */

/* Take the connection's lock if it is free: 1 taken, 0 held elsewhere or not a
 * _speedups.Lock (the reference then waits for it, or takes whatever it is). */
static int
emu_try_lock(PyObject *lock)
{
    return lock != NULL && Py_TYPE(lock) == &LockType && lock_try((LockObject *)lock);
}

/* Release a lock emu_try_lock took, keeping an exception already set (the caller's to
 * raise; the first one wins): -1 if it was no longer held (another thread released it). */
static int
emu_unlock(PyObject *lock)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    int done = lock_untake((LockObject *)lock);
    if (done < 0 && type != NULL) {
        PyErr_Clear();
    }
    if (done == 0 || type != NULL) {
        PyErr_Restore(type, value, traceback);
    }
    return done;
}

/* Whether slot ``at`` of ``obj`` is ``expected`` (identity: True, False, None). */
static int
emu_is(PyObject *obj, const struct slot *at, PyObject *expected)
{
    return SLOT_AT(obj, at) == expected;
}

/* An exact int in 0..PY_SSIZE_T_MAX; -1 otherwise (NULL included). */
static Py_ssize_t
emu_count_of(PyObject *value)
{
    Py_ssize_t count = -1;
    if (value != NULL && PyLong_CheckExact(value)) {
        count = PyLong_AsSsize_t(value);
        if (count < 0) {
            PyErr_Clear();
            count = -1;
        }
    }
    return count;
}

/* Slot ``at`` of ``obj``, an exact int in 0..PY_SSIZE_T_MAX; -1 otherwise. */
static Py_ssize_t
emu_count(PyObject *obj, const struct slot *at)
{
    return emu_count_of(SLOT_AT(obj, at));
}

/* No acknowledgement owed: decoder.ack_requests == conn._acks_sent (-1: can't tell). */
static int
emu_nothing_owed(PyObject *conn, PyObject *decoder)
{
    Py_ssize_t requests = emu_count(decoder, &emu_ack_requests_slot);
    Py_ssize_t sent = emu_count(conn, &emu_acks_sent_slot);
    if (requests < 0 || sent < 0) {
        return -1;
    }
    return requests == sent;
}

/* obj.<slot at> = value, as the member descriptor sets it (never fails: returns 0). */
static int
emu_set(PyObject *obj, const struct slot *at, PyObject *value)
{
    PyObject *old = SLOT_AT(obj, at);
    SLOT_AT(obj, at) = Py_NewRef(value);
    Py_XDECREF(old);
    return 0;
}

/* Slot ``at`` of ``obj`` as a new reference, NULL (no exception) if unset. */
static PyObject *
emu_get(PyObject *obj, const struct slot *at)
{
    PyObject *value = SLOT_AT(obj, at);
    Py_XINCREF(value);
    return value;
}

#define EMU_INLINE_ARGS 9
/* The connection's ``_inline_args``: (sock, send_lock, recv_lock, decoder, encoder,
 * recv_flags, encoder.max_message_size, decoder.max_message_size, decoder.max_fds), what
 * never changes after __init__; NULL (no exception) if it is not that, or the connection
 * or its decoder is not exactly of the configured classes (whose slots are read). */
static PyObject *
emu_inline_args(PyObject *conn)
{
    if (Py_TYPE(conn) != emu_inline_args_slot.type) {
        return NULL; /* a subclass may have made any of them a property */
    }
    PyObject *args = SLOT_AT(conn, &emu_inline_args_slot);
    if (args == NULL || !PyTuple_CheckExact(args) ||
        PyTuple_GET_SIZE(args) != EMU_INLINE_ARGS ||
        Py_TYPE(PyTuple_GET_ITEM(args, 3)) != emu_idle_slot.type) {
        return NULL;
    }
    return Py_NewRef(args);
}

/* The plain AF_UNIX socket of the connection, or NULL (no exception): the
 * reference then runs (a stand-in socket type, a closed socket). */
static socket_prefix *
emu_socket(PyObject *inline_args, PyObject **sock_out)
{
    PyObject *sock = PyTuple_GET_ITEM(inline_args, 0);
    socket_prefix *plain = plain_unix_socket(sock);
    if (plain == NULL || plain->sock_fd < 0) {
        return NULL;
    }
    *sock_out = Py_NewRef(sock);
    return plain;
}

static void
emu_put_header(unsigned char *header, Py_ssize_t length)
{
    uint32_t value = (uint32_t)length;
    header[0] = (unsigned char)(value >> 24);
    header[1] = (unsigned char)(value >> 16);
    header[2] = (unsigned char)(value >> 8);
    header[3] = (unsigned char)value;
    memset(header + 4, 0, 4);
}

/* ``_timeout and _monotonic() + _timeout``, the Python method's deadline, computed
 * as it does at the start of the call; NULL (no exception) for a timeout of an
 * unexpected type (the reference then runs). */
static PyObject *
emu_deadline(PyObject *conn, int *nonblocking)
{
    PyObject *timeout = emu_get(conn, &emu_timeout_slot);
    *nonblocking = 0;
    if (timeout == NULL || timeout == Py_None) {
        return timeout;
    }
    if (!PyFloat_CheckExact(timeout)) {
        Py_DECREF(timeout);
        return NULL;
    }
    double seconds = PyFloat_AS_DOUBLE(timeout);
    if (seconds == 0.0) {
        *nonblocking = 1;
        return timeout;
    }
    Py_DECREF(timeout);
    PyObject *now = PyObject_CallNoArgs(emu_monotonic);
    if (now == NULL || !PyFloat_CheckExact(now)) {
        Py_XDECREF(now);
        PyErr_Clear();
        return NULL;
    }
    PyObject *deadline = PyFloat_FromDouble(PyFloat_AS_DOUBLE(now) + seconds);
    Py_DECREF(now);
    if (deadline == NULL) {
        PyErr_Clear();
    }
    return deadline;
}

/* The payload as the Python method's _start_frame takes it: bytes as they are, other
 * bytes-like objects as memoryview(data).cast("B"). */
static PyObject *
emu_payload_object(PyObject *data)
{
    if (PyBytes_CheckExact(data)) {
        return Py_NewRef(data);
    }
    PyObject *view = PyMemoryView_FromObject(data);
    if (view == NULL) {
        return NULL;
    }
    PyObject *cast = PyObject_CallMethod(view, "cast", "s", "B");
    Py_DECREF(view);
    return cast;
}

PyDoc_STRVAR(emulated_send_doc,
"send($self, data, fds=(), credentials=None)\n--\n\n"
"SeqpacketConn.send of an emulated connection, compiled: one sendmsg of a\n"
"frame (header and payload) on an idle connection, handing every other call\n"
"to the Python method before anything was sent.");

static PyObject *
emulated_send(PyObject *conn, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_buffer view;
    if (!send_payload(args, nargs, kwnames, &view)) {
        return call_reference(emu_send_reference, conn, args, nargs, kwnames);
    }
    PyObject *data = args[0];
    const char *payload = (const char *)view.buf;
    Py_ssize_t size = view.len;

    PyObject *result = NULL, *deadline = NULL, *lock = NULL, *decoder = NULL,
             *sock = NULL, *unsent = NULL, *cmsgs = NULL;
    int nonblocking = 0, locked = 0, to_reference = 1;
    PyObject *inline_args = emu_inline_args(conn);
    if (inline_args == NULL) {
        goto out;
    }
    /* The header as the Python method builds it: a payload over the limit goes to the
     * reference, whose encoder raises the ValueError. */
    Py_ssize_t limit = emu_count_of(PyTuple_GET_ITEM(inline_args, 6));
    if (limit < 0 || size > limit || size > (Py_ssize_t)UINT32_MAX) {
        goto out;
    }
    deadline = emu_deadline(conn, &nonblocking);
    if (deadline == NULL) {
        goto out;
    }
    lock = Py_NewRef(PyTuple_GET_ITEM(inline_args, 1));
    if (!(locked = emu_try_lock(lock))) {
        goto out;
    }
    /* The Python method's idle test; anything owed or wrong is its _before_send's. */
    unsent = emu_get(conn, &emu_unsent_slot);
    decoder = Py_NewRef(PyTuple_GET_ITEM(inline_args, 3));
    int unsent_empty = unsent != NULL && (PyBytes_CheckExact(unsent) || PyMemoryView_Check(unsent))
                           ? PyObject_Length(unsent) == 0
                           : 0;
    if (!unsent_empty || !emu_is(conn, &emu_sending_slot, Py_False) ||
        !emu_is(conn, &emu_broken_slot, Py_None) || !emu_is(conn, &emu_closed_slot, Py_False) ||
        decoder == NULL || emu_nothing_owed(conn, decoder) != 1) {
        PyErr_Clear();
        goto out;
    }
    socket_prefix *plain = emu_socket(inline_args, &sock);
    if (plain == NULL) {
        goto out;
    }
    to_reference = 0; /* from here on the call is this function's */
    cmsgs = emu_get(conn, &emu_cmsgs_slot);
    if (cmsgs != Py_None && emu_set(conn, &emu_cmsgs_slot, Py_None) < 0) {
        goto out;
    }

    unsigned char header[EMU_HEADER];
    emu_put_header(header, size);
    struct iovec iov[2];
    iov[0].iov_base = header;
    iov[0].iov_len = EMU_HEADER;
    iov[1].iov_base = (void *)payload;
    iov[1].iov_len = (size_t)size;
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = size > 0 ? 2 : 1;
    ssize_t sent;
    if (emu_set(conn, &emu_sending_slot, Py_True) < 0) {
        goto out;
    }
    for (;;) {
        int saved;
        Py_BEGIN_ALLOW_THREADS
        sent = sendmsg(LIVE_FD(&plain->sock_fd), &msg, emu_send_flags);
        saved = errno;
        Py_END_ALLOW_THREADS
        if (sent >= 0) {
            break;
        }
        /* Nothing went out. */
        if (emu_set(conn, &emu_sending_slot, Py_False) < 0) {
            goto out;
        }
        if (saved == EINTR) {
            if (PyErr_CheckSignals() < 0 || emu_set(conn, &emu_sending_slot, Py_True) < 0) {
                goto out; /* a raising handler: nothing sent, nothing recorded */
            }
            continue;
        }
        if ((saved != EAGAIN && saved != EWOULDBLOCK) || nonblocking) {
            errno = saved;
            PyErr_SetFromErrno(PyExc_OSError); /* as socket.send raises it */
            goto out;
        }
        /* Would block under a timeout: _start_frame waits within the deadline, as the
         * Python method's own BlockingIOError branch does. */
        PyObject *header_obj = PyBytes_FromStringAndSize((const char *)header, EMU_HEADER);
        PyObject *payload_obj = header_obj != NULL ? emu_payload_object(data) : NULL;
        PyObject *frame = NULL;
        if (payload_obj != NULL) {
            frame = size < EMU_SMALL_FRAME ? PyBytes_FromStringAndSize(NULL, EMU_HEADER + size)
                                           : Py_NewRef(Py_None);
            if (frame != NULL && frame != Py_None) {
                memcpy(PyBytes_AS_STRING(frame), header, EMU_HEADER);
                memcpy(PyBytes_AS_STRING(frame) + EMU_HEADER, payload, (size_t)size);
            }
        }
        PyObject *got = NULL;
        if (frame != NULL) {
            PyObject *call[7] = {conn, header_obj, payload_obj, frame, Py_None, Py_None, deadline};
            got = PyObject_VectorcallMethod(emu_start_frame_name, call,
                                            7, NULL);
        }
        Py_XDECREF(header_obj);
        Py_XDECREF(payload_obj);
        Py_XDECREF(frame);
        if (got == NULL) {
            goto out;
        }
        sent = PyLong_AsSsize_t(got);
        Py_DECREF(got);
        if (sent == -1 && PyErr_Occurred()) {
            goto out;
        }
        break;
    }
    int partly = sent < EMU_HEADER + size;
    if (partly) {
        /* self._unsent = memoryview(header + payload)[sent:]; an error here leaves
         * _sending set (the stream position is unknown), as in the Python method. */
        PyObject *whole = PyBytes_FromStringAndSize(NULL, EMU_HEADER + size);
        PyObject *whole_view = NULL, *start = NULL, *cut = NULL, *rest = NULL;
        if (whole != NULL) {
            memcpy(PyBytes_AS_STRING(whole), header, EMU_HEADER);
            memcpy(PyBytes_AS_STRING(whole) + EMU_HEADER, payload, (size_t)size);
            whole_view = PyMemoryView_FromObject(whole);
        }
        start = whole_view != NULL ? PyLong_FromSsize_t(sent) : NULL;
        cut = start != NULL ? PySlice_New(start, NULL, NULL) : NULL;
        rest = cut != NULL ? PyObject_GetItem(whole_view, cut) : NULL;
        int recorded = rest != NULL ? emu_set(conn, &emu_unsent_slot, rest) : -1;
        Py_XDECREF(whole);
        Py_XDECREF(whole_view);
        Py_XDECREF(start);
        Py_XDECREF(cut);
        Py_XDECREF(rest);
        if (recorded < 0) {
            goto out;
        }
    }
    if (emu_set(conn, &emu_sending_slot, Py_False) < 0) {
        goto out;
    }
    if (partly && !nonblocking) {
        PyObject *call[3] = {conn, deadline, Py_True};
        PyObject *flushed = PyObject_VectorcallMethod(
            emu_flush_name, call, 2, emu_committed_kw);
        if (flushed == NULL) {
            goto out;
        }
        Py_DECREF(flushed);
    }
    result = PyLong_FromSsize_t(size);

out:
    if (locked && emu_unlock(lock) < 0 && result != NULL) {
        Py_CLEAR(result);
    }
    Py_XDECREF(inline_args);
    Py_XDECREF(lock);
    Py_XDECREF(deadline);
    Py_XDECREF(decoder);
    Py_XDECREF(sock);
    Py_XDECREF(unsent);
    Py_XDECREF(cmsgs);
    if (view.obj != NULL) {
        PyBuffer_Release(&view);
    }
    if (to_reference && result == NULL && !PyErr_Occurred()) {
        return call_reference(emu_send_reference, conn, args, nargs, kwnames);
    }
    return result;
}

/* The data length of cmsg ``c`` within the control buffer as CPython's
 * get_cmsg_data_len finds it: -1 where its header does not fit (the walk stops),
 * else the length, cut to what the buffer holds (*cut set then). */
static Py_ssize_t
emu_cmsg_length(const struct msghdr *msg, const struct cmsghdr *c, int *cut)
{
    const char *base = (const char *)msg->msg_control;
    size_t room = (size_t)msg->msg_controllen;
    size_t offset = (size_t)((const char *)c - base);
    if (room < CMSG_LEN(0) || offset > room - CMSG_LEN(0) || c->cmsg_len < CMSG_LEN(0)) {
        return -1;
    }
    size_t data_offset = (size_t)((const char *)CMSG_DATA(c) - base);
    if (data_offset > room) {
        return -1;
    }
    size_t length = c->cmsg_len - CMSG_LEN(0);
    *cut = room - data_offset < length;
    if (*cut) {
        length = room - data_offset;
    }
    return (Py_ssize_t)length;
}

/* Close every SCM_RIGHTS descriptor of a received control buffer. */
static void
emu_close_rights(struct msghdr *msg)
{
    struct cmsghdr *c;
    for (c = msg->msg_controllen > 0 ? CMSG_FIRSTHDR(msg) : NULL; c != NULL;
         c = CMSG_NXTHDR(msg, c)) {
        int cut = 0;
        Py_ssize_t length = emu_cmsg_length(msg, c, &cut);
        if (length < 0) {
            break;
        }
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int numbers[CONTROL_MAX / sizeof(int)];
            size_t count = (size_t)length / sizeof(int);
            memcpy(numbers, CMSG_DATA(c), count * sizeof(int));
            close_all(numbers, (Py_ssize_t)count);
        }
        if (cut) {
            break;
        }
    }
}

/* socket.recvmsg's ancillary data: a list of (level, type, data), as CPython's
 * sock_recvmsg_guts builds it (a cmsg cut by the buffer's end gives what is there,
 * with its RuntimeWarning).  On failure every SCM_RIGHTS descriptor is closed. */
static PyObject *
emu_ancillary(struct msghdr *msg)
{
    PyObject *list = PyList_New(0);
    struct cmsghdr *c;
    int failed = list == NULL;
    for (c = (!failed && msg->msg_controllen > 0) ? CMSG_FIRSTHDR(msg) : NULL; c != NULL;
         c = CMSG_NXTHDR(msg, c)) {
        int cut = 0;
        Py_ssize_t length = emu_cmsg_length(msg, c, &cut);
        if (length < 0) {
            break;
        }
        if (cut && PyErr_WarnEx(PyExc_RuntimeWarning,
                                "received malformed or improperly-truncated ancillary data",
                                1) < 0) {
            failed = 1;
            break;
        }
        PyObject *item = Py_BuildValue("iiy#", (int)c->cmsg_level, (int)c->cmsg_type,
                                       (const char *)CMSG_DATA(c), length);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            failed = 1;
            break;
        }
        Py_DECREF(item);
        if (cut) {
            break;
        }
    }
    if (!failed) {
        return list;
    }
    Py_XDECREF(list);
    emu_close_rights(msg);
    return NULL;
}

/* Whether the control data is exactly one whole SCM_RIGHTS of ``nfds`` (1..max_fds)
 * descriptors; *numbers then points at them. */
static int
emu_only_rights(struct msghdr *msg, Py_ssize_t nfds, Py_ssize_t max_fds, const int **numbers)
{
    struct cmsghdr *c = msg->msg_controllen > 0 ? CMSG_FIRSTHDR(msg) : NULL;
    int cut = 0;
    if (c == NULL || nfds > max_fds || c->cmsg_level != SOL_SOCKET ||
        c->cmsg_type != SCM_RIGHTS ||
        emu_cmsg_length(msg, c, &cut) != (Py_ssize_t)(sizeof(int) * (size_t)nfds) || cut ||
        CMSG_NXTHDR(msg, c) != NULL) {
        return 0;
    }
    *numbers = (const int *)CMSG_DATA(c);
    return 1;
}

/* Whether received descriptors must be guarded against sent ones held (a receive then
 * takes the Python path: _fit's guard_reused); also while configure_fast() was not called. */
static int
emu_guarded(void)
{
    if (sent_registry == NULL || originals_name == NULL) {
        return 1;
    }
    PyObject *originals = PyObject_GetAttr(sent_registry, originals_name);
    Py_ssize_t held = originals != NULL ? PyObject_Length(originals) : -1;
    Py_XDECREF(originals);
    if (held < 0) {
        PyErr_Clear();
    }
    return held != 0;
}

/* conn.name(*args) with ``cause`` as the exception being handled meanwhile (what an
 * ``except OSError as exc:`` clause around the call gives the Python method). */
static PyObject *
emu_call_method(PyObject *conn, PyObject *name, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *call[4] = {conn, NULL, NULL, NULL};
    for (Py_ssize_t i = 0; i < nargs && i < 3; i++) {
        call[i + 1] = args[i];
    }
    return PyObject_VectorcallMethod(name, call, (size_t)(nargs + 1), NULL);
}

PyDoc_STRVAR(emulated_recv_message_doc,
"recv_message($self, bufsize=65536, maxfds=0)\n--\n\n"
"SeqpacketConn.recv_message of an emulated connection, compiled: one recvmsg\n"
"of a stream chunk; a chunk that is one plain frame becomes the Message here,\n"
"any other goes to the Python continuation (_ingest, _receive).  Every call the\n"
"inline receive does not take goes to the Python method before anything is read.");

static PyObject *
emulated_recv_message(PyObject *conn, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames != NULL || nargs > 2 || emu_default_bufsize == NULL) {
        return call_reference(emu_recv_reference, conn, args, nargs, kwnames);
    }
    PyObject *bufsize_obj = nargs >= 1 ? args[0] : emu_default_bufsize;
    PyObject *maxfds_obj = nargs == 2 ? args[1] : emu_default_maxfds;
    Py_ssize_t bufsize, maxfds;
    if (!fast_size(bufsize_obj, PY_SSIZE_T_MAX, &bufsize) ||
        !fast_size(maxfds_obj, PY_SSIZE_T_MAX, &maxfds)) {
        return call_reference(emu_recv_reference, conn, args, nargs, kwnames);
    }

    PyObject *result = NULL, *lock = NULL, *decoder = NULL, *sock = NULL, *flags_obj = NULL,
             *buffer = NULL;
    int locked = 0, to_reference = 1, flags = 0;
    PyObject *inline_args = emu_inline_args(conn);
    if (inline_args == NULL) {
        goto out;
    }
    /* The Python method reads _timeout first (whether to bound its wait for the lock): unset,
     * it is the reference's AttributeError. */
    if (SLOT_AT(conn, &emu_timeout_slot) == NULL) {
        goto out;
    }
    lock = Py_NewRef(PyTuple_GET_ITEM(inline_args, 2));
    if (!(locked = emu_try_lock(lock))) {
        goto out;
    }
    /* The Python method's inline test: a receive cut short (_receiving still set) is
     * its abort, a decoder holding anything its _receive. */
    decoder = Py_NewRef(PyTuple_GET_ITEM(inline_args, 3));
    if (!emu_is(conn, &emu_receiving_slot, Py_False) ||
        !emu_is(decoder, &emu_idle_slot, Py_True) || !emu_is(conn, &emu_fast_slot, Py_True) ||
        !emu_is(conn, &emu_broken_slot, Py_None)) {
        goto out;
    }
    Py_ssize_t limit = emu_count_of(PyTuple_GET_ITEM(inline_args, 7));
    Py_ssize_t max_fds = emu_count_of(PyTuple_GET_ITEM(inline_args, 8));
    flags_obj = Py_NewRef(PyTuple_GET_ITEM(inline_args, 5));
    socket_prefix *plain = emu_socket(inline_args, &sock);
    if (plain == NULL || limit < 0 || max_fds < 0 || flags_obj == NULL ||
        !int_value(flags_obj, 1, &flags) ||
        emu_chunk <= EMU_HEADER) {
        goto out;
    }
    if ((buffer = take_buffer(emu_chunk)) == NULL) {
        to_reference = 0;
        goto out;
    }
    to_reference = 0; /* from here on the call is this function's */
    if (emu_set(conn, &emu_receiving_slot, Py_True) < 0) {
        goto out;
    }
    unsigned char header[EMU_HEADER];
    union {
        struct cmsghdr align;
        char buf[CONTROL_MAX];
    } control;
    struct iovec iov[2];
    iov[0].iov_base = header;
    iov[0].iov_len = EMU_HEADER;
    /* The payload of a plain frame lands at the start of the buffer; room for the
     * header stays at its end, so a chunk that is not one plain frame is made whole
     * (header first) in place. */
    iov[1].iov_base = PyBytes_AS_STRING(buffer);
    iov[1].iov_len = (size_t)(emu_chunk - EMU_HEADER);
    struct msghdr msg;
    ssize_t got;
    for (;;) {
        int saved;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = iov;
        msg.msg_iovlen = 2;
        msg.msg_control = control.buf;
        msg.msg_controllen = (size_t)emu_control;
        Py_BEGIN_ALLOW_THREADS
        got = recvmsg(LIVE_FD(&plain->sock_fd), &msg, flags);
        saved = errno;
        Py_END_ALLOW_THREADS
        if (got >= 0) {
            break;
        }
        /* Nothing was read. */
        if (saved == EINTR) {
            if (emu_set(conn, &emu_receiving_slot, Py_False) < 0 || PyErr_CheckSignals() < 0 ||
                emu_set(conn, &emu_receiving_slot, Py_True) < 0) {
                goto out; /* a raising handler: nothing read, nothing recorded */
            }
            continue;
        }
        give_back(buffer);
        buffer = NULL;
        if (saved == EAGAIN || saved == EWOULDBLOCK) {
            PyObject *timeout = emu_get(conn, &emu_timeout_slot);
            int nonblocking = timeout != NULL && PyFloat_Check(timeout) &&
                              PyFloat_AS_DOUBLE(timeout) == 0.0; /* self._timeout == 0.0 */
            Py_XDECREF(timeout);
            if (nonblocking) {
                if (emu_set(conn, &emu_receiving_slot, Py_False) == 0) {
                    errno = saved;
                    PyErr_SetFromErrno(PyExc_OSError); /* BlockingIOError, as recvmsg's */
                }
                goto out;
            }
            PyObject *call[3] = {bufsize_obj, maxfds_obj, Py_None};
            result = emu_call_method(conn, emu_receive_name, call, 3);
            goto out;
        }
        if (emu_set(conn, &emu_receiving_slot, Py_False) < 0) {
            goto out;
        }
        errno = saved;
        PyErr_SetFromErrno(PyExc_OSError);
        /* _raise_read_error(exc) inside ``except OSError as exc``: it always raises. */
        PyObject *type, *exc, *traceback;
        PyErr_Fetch(&type, &exc, &traceback);
        PyErr_NormalizeException(&type, &exc, &traceback);
        if (traceback != NULL && exc != NULL) {
            PyException_SetTraceback(exc, traceback);
        }
        PyObject *old_type, *old_value, *old_traceback;
        PyErr_GetExcInfo(&old_type, &old_value, &old_traceback);
        Py_XINCREF(exc);
        PyErr_SetExcInfo(type, exc, traceback);
        PyObject *raised = emu_call_method(conn, emu_raise_read_error_name, &exc, 1);
        PyErr_SetExcInfo(old_type, old_value, old_traceback);
        Py_XDECREF(exc);
        if (raised != NULL) { /* it did not raise: say so rather than return garbage */
            Py_DECREF(raised);
            PyErr_SetString(PyExc_SystemError, "_raise_read_error returned");
        }
        goto out;
    }

    /* A chunk that is exactly one DATA frame (within the decoder's limits, flags none or
     * ACK_REQUESTED) whose control data is exactly the descriptors its header declares,
     * in one SCM_RIGHTS: plain (none) as FrameDecoder.receive_and_next takes it, or with
     * descriptors as next_event and _fit make the Message.  Built here, the descriptors
     * are never where only this call holds them while Python code (a signal handler) can
     * run: no sent descriptor is held (REGISTRY.originals, read as _fit reads it), else
     * they go to the Python continuation, which guards them. */
    Py_ssize_t length = -1, nfds = ((Py_ssize_t)header[4] << 8) | header[5];
    int ack_requested = header[7] == 1;
    const int *numbers = NULL;
    if (got >= EMU_HEADER && header[6] == 0 && (header[7] == 0 || ack_requested) &&
        !(msg.msg_flags & MSG_CTRUNC)) {
        length = (Py_ssize_t)(((uint32_t)header[0] << 24) | ((uint32_t)header[1] << 16) |
                              ((uint32_t)header[2] << 8) | (uint32_t)header[3]);
        if (length != got - EMU_HEADER || length > limit || (nfds == 0 && ack_requested)) {
            length = -1;
        }
        else if (nfds == 0 ? msg.msg_controllen != 0
                           : !emu_only_rights(&msg, nfds, max_fds, &numbers) || emu_guarded()) {
            length = -1;
        }
    }
    if (length < 0) {
        /* Anything else: the chunk whole, for the Python continuation. */
        PyObject *data;
        if (got <= EMU_HEADER) {
            data = PyBytes_FromStringAndSize((const char *)header, (Py_ssize_t)got);
            give_back(buffer);
        }
        else {
            char *start = PyBytes_AS_STRING(buffer);
            memmove(start + EMU_HEADER, start, (size_t)got - EMU_HEADER);
            memcpy(start, header, EMU_HEADER);
            data = payload_of(buffer, (Py_ssize_t)got);
        }
        buffer = NULL;
        PyObject *ancdata = data != NULL ? emu_ancillary(&msg) : NULL;
        PyObject *flags_out = ancdata != NULL ? PyLong_FromLong(msg.msg_flags) : NULL;
        if (flags_out == NULL) {
            if (data == NULL) {
                emu_close_rights(&msg); /* emu_ancillary closed them if it ran */
            }
            Py_XDECREF(data);
            Py_XDECREF(ancdata);
            goto out; /* _receiving stays set: the chunk is lost, the next call aborts */
        }
        PyObject *ingest_args[3] = {data, ancdata, flags_out};
        PyObject *ingested = emu_call_method(conn, emu_ingest_name, ingest_args, 3);
        Py_DECREF(data);
        Py_DECREF(ancdata);
        Py_DECREF(flags_out);
        if (ingested == NULL) {
            goto out;
        }
        Py_DECREF(ingested);
        PyObject *receive_args[3] = {bufsize_obj, maxfds_obj, Py_None};
        result = emu_call_method(conn, emu_receive_name, receive_args, 3);
        goto out;
    }
    int fds_open = 0;
    int fd_list[CONTROL_MAX / sizeof(int)];
    if (nfds > 0) {
        memcpy(fd_list, numbers, sizeof(int) * (size_t)nfds);
        fds_open = 1;
#ifdef MSG_CMSG_CLOEXEC
        int kernel_cloexec = (flags & MSG_CMSG_CLOEXEC) != 0;
#else
        int kernel_cloexec = 0;
#endif
        for (Py_ssize_t i = 0; !kernel_cloexec && i < nfds; i++) {
            if (fcntl(fd_list[i], F_SETFD, FD_CLOEXEC) < 0) {
                PyErr_SetFromErrno(PyExc_OSError); /* _receiving stays set, as in _ingest */
                goto fail_fds;
            }
        }
    }
    int truncated = length > bufsize;
    PyObject *payload = payload_of(buffer, truncated ? bufsize : length);
    buffer = NULL;
    if (payload == NULL) {
        goto fail_fds; /* out of memory: the frame is lost, _receiving stays set */
    }
    PyObject *fd_tuple = PyTuple_New(nfds);
    for (Py_ssize_t i = 0; fd_tuple != NULL && i < nfds; i++) {
        PyObject *number = PyLong_FromLong(fd_list[i]);
        if (number == NULL) {
            Py_CLEAR(fd_tuple);
            break;
        }
        PyTuple_SET_ITEM(fd_tuple, i, number);
    }
    PyObject *message = fd_tuple != NULL && message_type != NULL
                            ? message_type->tp_alloc(message_type, 4)
                            : NULL;
    if (message == NULL) {
        if (fd_tuple != NULL && !PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "configure_message() was not called");
        }
        Py_XDECREF(fd_tuple);
        Py_DECREF(payload);
        goto fail_fds;
    }
    PyTuple_SET_ITEM(message, 0, Py_NewRef(payload));
    PyTuple_SET_ITEM(message, 1, fd_tuple);
    PyTuple_SET_ITEM(message, 2, Py_NewRef(truncated ? Py_True : Py_False));
    PyTuple_SET_ITEM(message, 3, Py_NewRef(Py_None));
    if (ack_requested) { /* next_event counts the request (the connection counts ACKs sent) */
        Py_ssize_t requests = emu_count(decoder, &emu_ack_requests_slot);
        PyObject *more = requests >= 0 ? PyLong_FromSsize_t(requests + 1) : NULL;
        int counted = more != NULL ? emu_set(decoder, &emu_ack_requests_slot, more) : -1;
        Py_XDECREF(more);
        if (counted < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_RuntimeError, "the decoder's ack_requests is not a count");
            }
            goto fail_message;
        }
    }
    if (emu_set(conn, &emu_receiving_slot, Py_False) < 0) {
        goto fail_message;
    }
    if (emu_nothing_owed(conn, decoder) != 1) {
        PyErr_Clear();
        PyObject *acked = emu_call_method(conn, emu_acknowledge_name, NULL, 0);
        if (acked == NULL) {
            goto fail_message; /* a raising handler: the descriptors are closed, not lost */
        }
        Py_DECREF(acked);
    }
    if (nfds > maxfds) { /* _fit: more than the caller takes are closed, then refused */
        close_all(fd_list, nfds);
        raise_truncated("excess", payload, nfds, maxfds, NULL);
        Py_DECREF(payload);
        Py_DECREF(message);
        goto out;
    }
    Py_DECREF(payload);
    result = message;
    goto out;

fail_message:
    Py_DECREF(message);
    Py_DECREF(payload);
fail_fds:
    if (fds_open) {
        close_all(fd_list, nfds);
    }

out:
    if (buffer != NULL) {
        give_back(buffer);
    }
    if (locked && emu_unlock(lock) < 0 && result != NULL) {
        Py_CLEAR(result);
    }
    Py_XDECREF(inline_args);
    Py_XDECREF(lock);
    Py_XDECREF(decoder);
    Py_XDECREF(sock);
    Py_XDECREF(flags_obj);
    if (to_reference && result == NULL && !PyErr_Occurred()) {
        return call_reference(emu_recv_reference, conn, args, nargs, kwnames);
    }
    return result;
}

static PyMethodDef emulated_send_def = {"send", (PyCFunction)(void (*)(void))emulated_send,
                                        METH_FASTCALL | METH_KEYWORDS, emulated_send_doc};
static PyMethodDef emulated_recv_def = {"recv_message",
                                        (PyCFunction)(void (*)(void))emulated_recv_message,
                                        METH_FASTCALL | METH_KEYWORDS, emulated_recv_message_doc};

PyDoc_STRVAR(configure_emulated_doc,
"configure_emulated(cls, decoder_cls, send, recv_message, chunk, control, send_flags,\n"
"                   monotonic) -> (send, recv_message)\n\n"
"The compiled send and recv_message of cls, the emulated connection class, as\n"
"its method descriptors (decoder_cls: its decoder's class; the state both read\n"
"is their __slots__); send and recv_message are its Python methods, which\n"
"they stand in for and hand every other call to (recv_message's defaults are\n"
"read from it); chunk and control, one stream read's sizes (_STREAM_CHUNK,\n"
"_ANCBUF); send_flags, a send's flags (MSG_NOSIGNAL); monotonic, the deadlines'\n"
"clock.  The connection's _send_lock and _recv_lock must be _speedups.Lock\n"
"objects for these methods to take them (others hand every call to the\n"
"Python methods).");

static PyObject *
speedups_configure_emulated(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *cls, *decoder_cls, *send_method, *recv_method, *monotonic;
    Py_ssize_t chunk, control, bufsize, maxfds; /* the last two: the defaults, checked */
    int send_flags;
    if (!PyArg_ParseTuple(args, "O!O!OOnniO:configure_emulated", &PyType_Type, &cls,
                          &PyType_Type, &decoder_cls, &send_method, &recv_method, &chunk,
                          &control, &send_flags, &monotonic)) {
        return NULL;
    }
    if (!PyFunction_Check(send_method) || !PyFunction_Check(recv_method)) {
        PyErr_SetString(PyExc_TypeError, "send and recv_message must be Python functions");
        return NULL;
    }
    if (chunk <= EMU_HEADER || chunk > SPARE_MAX) {
        PyErr_Format(PyExc_ValueError, "chunk must be %d..%d", EMU_HEADER + 1, SPARE_MAX);
        return NULL;
    }
    if (control < 0 || (size_t)control > CONTROL_MAX) {
        PyErr_Format(PyExc_ValueError, "control must be 0..%zu", (size_t)CONTROL_MAX);
        return NULL;
    }
    if (!PyCallable_Check(monotonic)) {
        PyErr_SetString(PyExc_TypeError, "monotonic must be callable");
        return NULL;
    }
    PyObject *defaults = PyFunction_GetDefaults(recv_method);
    if (defaults == NULL || !PyTuple_Check(defaults) || PyTuple_GET_SIZE(defaults) != 2 ||
        !fast_size(PyTuple_GET_ITEM(defaults, 0), PY_SSIZE_T_MAX, &bufsize) ||
        !fast_size(PyTuple_GET_ITEM(defaults, 1), PY_SSIZE_T_MAX, &maxfds)) {
        PyErr_SetString(PyExc_ValueError,
                        "recv_message's defaults must be (bufsize, maxfds), non-negative ints");
        return NULL;
    }
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&emu_start_frame_name, "_start_frame"},
        {&emu_flush_name, "_flush"},
        {&emu_ingest_name, "_ingest"},
        {&emu_receive_name, "_receive"},
        {&emu_acknowledge_name, "_acknowledge"},
        {&emu_raise_read_error_name, "_raise_read_error"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*names[i].slot == NULL &&
            (*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL) {
            return NULL;
        }
    }
    if (emu_committed_kw == NULL && (emu_committed_kw = Py_BuildValue("(s)", "committed")) == NULL) {
        return NULL;
    }
    PyTypeObject *conn_type = (PyTypeObject *)cls, *decoder_type = (PyTypeObject *)decoder_cls;
    const struct slot_spec slots[] = {
        {&emu_unsent_slot, conn_type, "_unsent"},
        {&emu_sending_slot, conn_type, "_sending"},
        {&emu_receiving_slot, conn_type, "_receiving"},
        {&emu_broken_slot, conn_type, "_broken"},
        {&emu_closed_slot, conn_type, "_closed"},
        {&emu_acks_sent_slot, conn_type, "_acks_sent"},
        {&emu_timeout_slot, conn_type, "_timeout"},
        {&emu_cmsgs_slot, conn_type, "_cmsgs"},
        {&emu_fast_slot, conn_type, "_fast"},
        {&emu_inline_args_slot, conn_type, "_inline_args"},
        {&emu_idle_slot, decoder_type, "idle"},
        {&emu_ack_requests_slot, decoder_type, "ack_requests"},
    };
#define EMU_SLOTS (sizeof(slots) / sizeof(slots[0]))
    struct slot found[EMU_SLOTS];
    if (slots_find(slots, found, EMU_SLOTS) < 0) {
        return NULL;
    }
    PyObject *send_descriptor = PyDescr_NewMethod((PyTypeObject *)cls, &emulated_send_def);
    PyObject *recv_descriptor =
        send_descriptor != NULL ? PyDescr_NewMethod((PyTypeObject *)cls, &emulated_recv_def)
                                : NULL;
    PyObject *pair = recv_descriptor != NULL
                         ? PyTuple_Pack(2, send_descriptor, recv_descriptor)
                         : NULL;
    Py_XDECREF(send_descriptor);
    Py_XDECREF(recv_descriptor);
    slots_install(slots, found, EMU_SLOTS, pair != NULL);
#undef EMU_SLOTS
    if (pair == NULL) {
        return NULL;
    }
    Py_XSETREF(emu_send_reference, Py_NewRef(send_method));
    Py_XSETREF(emu_recv_reference, Py_NewRef(recv_method));
    Py_XSETREF(emu_default_bufsize, Py_NewRef(PyTuple_GET_ITEM(defaults, 0)));
    Py_XSETREF(emu_default_maxfds, Py_NewRef(PyTuple_GET_ITEM(defaults, 1)));
    Py_XSETREF(emu_monotonic, Py_NewRef(monotonic));
    emu_chunk = chunk;
    emu_control = control;
    emu_send_flags = send_flags;
    return pair;
}

static PyMethodDef speedups_methods[] = {
    {"sendmsg", (PyCFunction)(void (*)(void))speedups_sendmsg, METH_FASTCALL, sendmsg_doc},
    {"recvmsg", (PyCFunction)(void (*)(void))speedups_recvmsg, METH_FASTCALL, recvmsg_doc},
    {"send_fds", (PyCFunction)(void (*)(void))speedups_send_fds, METH_FASTCALL, send_fds_doc},
    {"recv_fds", (PyCFunction)(void (*)(void))speedups_recv_fds, METH_FASTCALL, recv_fds_doc},
    {"recv_message", (PyCFunction)(void (*)(void))speedups_recv_message, METH_FASTCALL,
     recv_message_doc},
    {"configure", speedups_configure, METH_VARARGS, configure_doc},
    {"configure_fast", speedups_configure_fast, METH_VARARGS, configure_fast_doc},
    {"configure_message", speedups_configure_message, METH_O, configure_message_doc},
    {"configure_native", speedups_configure_native, METH_VARARGS, configure_native_doc},
    {"control_size", speedups_control_size, METH_NOARGS, control_size_doc},
    {"configure_emulated", speedups_configure_emulated, METH_VARARGS, configure_emulated_doc},
    {NULL, NULL, 0, NULL},
};

/* The configuration (configure_*: the classes whose slots the compiled methods read, the
 * Python methods they hand calls to) is in C globals, one set per process: the main
 * interpreter's.  A subinterpreter's ``import udscompat`` configured it again with its own
 * objects, which the main interpreter's connections then called (once it was destroyed,
 * without builtins: NameError on every emulated send).  In a subinterpreter the import
 * fails, and _accel takes the pure-Python path there. */
static int
speedups_exec(PyObject *m)
{
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_ImportError,
                        "udscompat._speedups loads in the main interpreter only (its "
                        "configuration is the process's)");
        return -1;
    }
    if (fileno_name == NULL && (fileno_name = PyUnicode_InternFromString("fileno")) == NULL) {
        return -1;
    }
    if (socket_type == NULL && check_socket_layout() < 0) {
        return -1;
    }
    if (PyType_Ready(&LockType) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(m, "Lock", (PyObject *)&LockType) < 0) {
        return -1;
    }
    /* The header values this module was compiled with, so tests can pin the
     * Python backend's hand-written constants against the OS's own headers. */
    if (PyModule_AddIntConstant(m, "SOL_SOCKET", SOL_SOCKET) < 0 ||
        PyModule_AddIntConstant(m, "SCM_RIGHTS", SCM_RIGHTS) < 0 ||
        PyModule_AddIntConstant(m, "MSG_CTRUNC", MSG_CTRUNC) < 0 ||
        PyModule_AddIntConstant(m, "MSG_TRUNC", MSG_TRUNC) < 0 ||
        PyModule_AddIntConstant(m, "CMSG_SPACE_INT", (long)CMSG_SPACE(sizeof(int))) < 0 ||
        PyModule_AddIntConstant(m, "CMSG_LEN_0", (long)CMSG_LEN(0)) < 0 ||
        PyModule_AddIntConstant(m, "MAX_FD_ROOM", MAX_FD_ROOM) < 0 ||
        PyModule_AddIntConstant(m, "READS_SOCKET_FD", socket_type != NULL) < 0) {
        return -1;
    }
#ifdef MSG_CMSG_CLOEXEC
    if (PyModule_AddIntConstant(m, "MSG_CMSG_CLOEXEC", MSG_CMSG_CLOEXEC) < 0) {
#else
    if (PyModule_AddObjectRef(m, "MSG_CMSG_CLOEXEC", Py_None) < 0) {
#endif
        return -1;
    }
#ifdef SCM_TIMESTAMP
    if (PyModule_AddIntConstant(m, "SCM_TIMESTAMP", SCM_TIMESTAMP) < 0) {
#else
    if (PyModule_AddObjectRef(m, "SCM_TIMESTAMP", Py_None) < 0) {
#endif
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "udscompat._speedups",
    "The innermost system-call wrappers of udscompat, compiled (optional; see _accel).",
    0,
    speedups_methods,
    speedups_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
