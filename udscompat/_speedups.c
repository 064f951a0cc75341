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

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
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
#define CONTROL_MAX (CMSG_SPACE(sizeof(int) * MAX_FD_ROOM) + CMSG_SPACE(MARKER_PAYLOAD))
/* A send of up to this many descriptors builds its control data on the stack. */
#define SEND_STACK_FDS 256
#define IOV_STACK 8

/* Set once by configure() from udscompat's platform facts, before any call. */
static int fd_room = 256;
static int marker_type = -1;           /* cmsg type of the seqpacket marker, -1: none */
static int fd_cmsg_types[8];           /* other SOL_SOCKET cmsg types that carry fds */
static int fd_cmsg_type_count = 0;
static PyObject *truncated_factory = NULL; /* (reason, data, closed) -> exception */

static size_t
control_size(void)
{
    return CMSG_SPACE(sizeof(int) * (size_t)fd_room) + CMSG_SPACE(MARKER_PAYLOAD);
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

/* Check the socket_prefix layout on real sockets: open, then closed (-1). */
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
        PyObject *sock = PyObject_CallFunction(type, "ii", AF_UNIX, SOCK_STREAM);
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
        sent = sendmsg(fd, &msg, flags);
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
    int fd;
    if (as_fd(args[0], &fd) < 0) {
        return NULL;
    }
    Py_ssize_t bufsize = PyLong_AsSsize_t(args[1]);
    if (bufsize == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t maxfds = PyLong_AsSsize_t(args[2]);
    if (maxfds == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int flags;
    if (as_int(args[3], "flags", &flags) < 0) {
        return NULL;
    }
    int want_address = 0;
    if (nargs == 5 && (want_address = PyObject_IsTrue(args[4])) < 0) {
        return NULL;
    }
    if (bufsize < 0 || maxfds < 0) {
        PyErr_Format(PyExc_ValueError, "bufsize and maxfds must be >= 0, got %zd and %zd",
                     bufsize, maxfds);
        return NULL;
    }

    PyObject *data = PyBytes_FromStringAndSize(NULL, bufsize);
    if (data == NULL) {
        return NULL;
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
        received = recvmsg(fd, &msg, flags);
        Py_END_ALLOW_THREADS
        if (received >= 0) {
            break;
        }
        int saved = errno;
        if (saved != EINTR) {
            Py_DECREF(data);
            errno = saved;
            if (saved == EMSGSIZE) {
                /* OpenBSD, DragonFly: the control data did not fit and the kernel
                 * discarded the descriptors; nothing was received. */
                PyObject *cause = PyObject_CallFunction(PyExc_OSError, "is", saved,
                                                        strerror(saved));
                if (cause == NULL) {
                    return NULL;
                }
                raise_truncated("emsgsize", Py_None, 0, maxfds, cause);
                return NULL;
            }
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        /* No descriptor has arrived yet: a raising handler loses nothing. */
        if (PyErr_CheckSignals() < 0) {
            Py_DECREF(data);
            return NULL;
        }
    }

    /* From here until the return, no Python code runs while a descriptor is open
     * and not yet in the result (the factory runs after they are closed). */
    int fds[CONTROL_MAX / sizeof(int)];
    fds[0] = -1; /* never read unless written; tells the compiler so */
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

    Py_ssize_t length = received < bufsize ? (Py_ssize_t)received : bufsize;
    if (length != bufsize && _PyBytes_Resize(&data, length) < 0) {
        close_all(fds, nfds);
        return NULL;
    }
    if ((msg.msg_flags & MSG_CTRUNC) || empty_rights) {
        close_all(fds, nfds);
        raise_truncated((msg.msg_flags & MSG_CTRUNC) ? "ctrunc" : "empty", data, nfds, maxfds,
                        NULL);
        Py_DECREF(data);
        return NULL;
    }
    if (nfds > maxfds) {
        close_all(fds, nfds);
        raise_truncated("excess", data, nfds, maxfds, NULL);
        Py_DECREF(data);
        return NULL;
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
                return PyErr_SetFromErrno(PyExc_OSError);
            }
        }
    }

    PyObject *fd_list = PyList_New(nfds);
    PyObject *addr = want_address ? unix_address(&address, msg.msg_namelen) : Py_NewRef(Py_None);
    PyObject *result = NULL;
    if (fd_list != NULL && addr != NULL) {
        Py_ssize_t i = 0;
        for (; i < nfds; i++) {
            PyObject *number = PyLong_FromLong(fds[i]);
            if (number == NULL) {
                break;
            }
            PyList_SET_ITEM(fd_list, i, number);
        }
        if (i == nfds) {
            result = PyTuple_New(5);
        }
        if (result != NULL) {
            PyTuple_SET_ITEM(result, 0, data);
            PyTuple_SET_ITEM(result, 1, fd_list);
            PyTuple_SET_ITEM(result, 2, PyLong_FromLong(msg.msg_flags));
            PyTuple_SET_ITEM(result, 3, addr);
            PyTuple_SET_ITEM(result, 4, PyBool_FromLong(marked));
            if (PyTuple_GET_ITEM(result, 2) != NULL) {
                return result;
            }
            /* The tuple owns data, the list and the address now. */
            close_all(fds, nfds);
            Py_DECREF(result);
            return NULL;
        }
    }
    close_all(fds, nfds);
    Py_DECREF(data);
    Py_XDECREF(fd_list);
    Py_XDECREF(addr);
    return NULL;
}

/* -- configuration --------------------------------------------------------- */

PyDoc_STRVAR(configure_doc,
"configure(fd_room, marker_type, fd_cmsg_types, truncated)\n\n"
"Set the platform facts the receive needs: room for fd_room descriptors,\n"
"the marker's cmsg type (None: no marker), other SOL_SOCKET cmsg types that\n"
"install descriptors (closed on receipt), and truncated(reason, data, closed,\n"
"maxfds), which builds the exception for reason 'ctrunc', 'empty', 'excess' or\n"
"'emsgsize' (data None), called only once every descriptor is closed.");

static PyObject *
speedups_configure(PyObject *module, PyObject *args)
{
    (void)module;
    int room;
    PyObject *marker, *types, *factory;
    if (!PyArg_ParseTuple(args, "iOOO:configure", &room, &marker, &types, &factory)) {
        return NULL;
    }
    if (room < 1 || room > MAX_FD_ROOM) {
        PyErr_Format(PyExc_ValueError, "fd_room must be 1..%d, got %d", MAX_FD_ROOM, room);
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
    marker_type = marker_value;
    memcpy(fd_cmsg_types, values, sizeof(int) * (size_t)count);
    fd_cmsg_type_count = (int)count;
    Py_XSETREF(truncated_factory, factory == Py_None ? NULL : Py_NewRef(factory));
    Py_RETURN_NONE;
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

static PyMethodDef speedups_methods[] = {
    {"sendmsg", (PyCFunction)(void (*)(void))speedups_sendmsg, METH_FASTCALL, sendmsg_doc},
    {"recvmsg", (PyCFunction)(void (*)(void))speedups_recvmsg, METH_FASTCALL, recvmsg_doc},
    {"configure", speedups_configure, METH_VARARGS, configure_doc},
    {"control_size", speedups_control_size, METH_NOARGS, control_size_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "udscompat._speedups",
    "The innermost system-call wrappers of udscompat, compiled (optional; see _accel).",
    -1,
    speedups_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (fileno_name == NULL && (fileno_name = PyUnicode_InternFromString("fileno")) == NULL) {
        return NULL;
    }
    if (socket_type == NULL && check_socket_layout() < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) {
        return NULL;
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
        Py_DECREF(m);
        return NULL;
    }
#ifdef MSG_CMSG_CLOEXEC
    if (PyModule_AddIntConstant(m, "MSG_CMSG_CLOEXEC", MSG_CMSG_CLOEXEC) < 0) {
#else
    if (PyModule_AddObjectRef(m, "MSG_CMSG_CLOEXEC", Py_None) < 0) {
#endif
        Py_DECREF(m);
        return NULL;
    }
#ifdef SCM_TIMESTAMP
    if (PyModule_AddIntConstant(m, "SCM_TIMESTAMP", SCM_TIMESTAMP) < 0) {
#else
    if (PyModule_AddObjectRef(m, "SCM_TIMESTAMP", Py_None) < 0) {
#endif
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
