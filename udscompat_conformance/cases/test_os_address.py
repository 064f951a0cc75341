"""OS cases: pathname, abstract and unnamed addresses, observed through the standard library."""

from __future__ import annotations

import os
import re
import socket

import pytest

from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import (
    abstract_name,
    attempt,
    errno_name,
    largest,
    require_abstract,
    unavailable,
)

case = pytest.mark.case


def _bind_path_of_length(directory: str, length: int) -> bool:
    """Can a stream socket bind (and read back) an absolute path of ``length`` bytes?"""
    prefix = directory.encode() + b"/"
    path = prefix + b"p" * (length - len(prefix))
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.bind(path)
        except (OSError, ValueError):
            return False
        try:
            return bool(s.getsockname() in (path, path.decode()))
        finally:
            os.unlink(path)


@case(
    "os.address.path_roundtrip",
    "bind() to a path creates a socket file; getsockname() returns the path",
    rows=["ADDR-01"],
)
def test_path_roundtrip(observe: Observer, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "s")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        observe({"getsockname": s.getsockname() == path, "file_is_socket": os.path.exists(path)})


@case(
    "os.address.longest_path",
    "Longest pathname (bytes, no NUL) that binds and reads back",
    rows=["ADDR-03", "ADDR-06"],
)
def test_longest_path(observe: Observer, short_tmp: str) -> None:
    observe(largest(lambda n: _bind_path_of_length(short_tmp, n), len(short_tmp) + 2, 300))


@case(
    "os.address.full_sun_path",
    "A path that fills all of sun_path with no NUL: bound, and read back intact?",
    rows=["ADDR-04"],
)
def test_full_sun_path(observe: Observer, short_tmp: str) -> None:
    longest = largest(lambda n: _bind_path_of_length(short_tmp, n), len(short_tmp) + 2, 300)
    # sun_path is 108 bytes on Linux and illumos, 104 elsewhere; the longest NUL-terminated
    # path is one less.  Try the full size.
    prefix = short_tmp.encode() + b"/"
    path = prefix + b"f" * (longest + 1 - len(prefix))
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.bind(path)
        except (OSError, ValueError) as exc:
            observe({"longest_with_nul": longest, "full_size": len(path), "bind": repr(exc)})
            return
        try:
            name = s.getsockname()
            observe(
                {
                    "longest_with_nul": longest,
                    "full_size": len(path),
                    "bind": "ok",
                    "readback_intact": name in (path, path.decode()),
                }
            )
        finally:
            os.unlink(path)


@case("os.address.bind_in_use", "Binding a path that is already bound", rows=["ADDR-22"])
def test_bind_in_use(observe: Observer, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "s")
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        a.bind(path)
        observe(attempt(lambda: b.bind(path)))


@case(
    "os.address.bind_missing_directory",
    "bind() into a directory that does not exist",
    rows=["ADDR-23"],
)
def test_bind_missing_directory(observe: Observer, short_tmp: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        observe(attempt(lambda: s.bind(os.path.join(short_tmp, "missing", "s"))))


@case(
    "os.address.unbound_name",
    "getsockname() of a socketpair end, as Python returns it",
    rows=["ADDR-24"],
)
def test_unbound_name(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        observe(repr(a.getsockname()))


@case(
    "os.address.peer_names",
    "accept() and getpeername() for an unbound and a bound client, and after the client closes",
    rows=["ADDR-25", "ADDR-26", "ADDR-28"],
)
def test_peer_names(observe: Observer, short_tmp: str) -> None:
    server_path = os.path.join(short_tmp, "srv")
    client_path = os.path.join(short_tmp, "cli")
    seen = {}
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(server_path)
        listener.listen()
        with socket.socket(socket.AF_UNIX) as unbound:
            unbound.connect(server_path)
            conn, address = listener.accept()
            with conn:
                seen["unbound_accept"] = repr(address)
                seen["unbound_getpeername"] = repr(conn.getpeername())
        with socket.socket(socket.AF_UNIX) as bound:
            bound.bind(client_path)
            bound.connect(server_path)
            conn, address = listener.accept()
            with conn:
                seen["bound_accept_is_path"] = address == client_path
                bound.close()
                seen["getpeername_after_close_is_path"] = (
                    attempt(conn.getpeername) == "ok" and conn.getpeername() == client_path
                )
    observe(seen)


@case("os.address.open_socket_file", "open() on a socket's file", rows=["ADDR-29"])
def test_open_socket_file(observe: Observer, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "s")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)

        def open_it() -> None:
            os.close(os.open(path, os.O_RDONLY))

        observe(attempt(open_it))


@case(
    "os.address.non_ascii_path",
    "A non-ASCII (UTF-8) pathname round-trips through bind and getsockname",
    rows=["ADDR-31"],
)
def test_non_ascii_path(observe: Observer, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "sock-\u00e9\u4e2d")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        observe(s.getsockname() == path)


@case("os.address.abstract_supported", "bind() to a NUL-led (abstract) name", rows=["ADDR-17"])
def test_abstract_supported(observe: Observer) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        observe(attempt(lambda: s.bind(abstract_name("supported"))))


@case(
    "os.address.abstract_no_file",
    "An abstract name that looks like a path creates no file",
    rows=["ADDR-10", "ADDR-20"],
)
def test_abstract_no_file(observe: Observer, short_tmp: str) -> None:
    require_abstract()
    path = os.path.join(short_tmp, "looks-like-a-path/")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(b"\0" + path.encode())
        observe(
            {
                "file_created": os.path.exists(path),
                "path_bind_too": attempt(lambda: _bind_and_close(path.rstrip("/"))),
            }
        )


def _bind_and_close(path: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
    os.unlink(path)


@case(
    "os.address.abstract_exact_bytes",
    "Abstract names: every byte counts (trailing NUL), read back exactly",
    rows=["ADDR-09", "ADDR-11"],
)
def test_abstract_exact_bytes(observe: Observer) -> None:
    require_abstract()
    name = abstract_name("exact") + b"\0"
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        a.bind(name)
        observe(
            {
                "readback_exact": a.getsockname() == name,
                "without_trailing_nul": attempt(lambda: b.bind(name[:-1])),
            }
        )


@case(
    "os.address.longest_abstract",
    "Longest abstract name (bytes after the leading NUL)",
    rows=["ADDR-12"],
)
def test_longest_abstract(observe: Observer) -> None:
    require_abstract()
    tag = abstract_name("long")

    def works(n: int) -> bool:
        name = (tag + b"x" * n)[: n + 1]
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.bind(name)
            except (OSError, ValueError):
                return False
            return bool(s.getsockname() == name)

    observe(largest(works, len(tag), 300))


@case(
    "os.address.empty_abstract",
    "bind() to a lone NUL (a zero-length abstract name)",
    rows=["ADDR-13"],
)
def test_empty_abstract(observe: Observer) -> None:
    require_abstract()
    with socket.socket(socket.AF_UNIX) as s:
        failure = attempt(lambda: s.bind(b"\0"))
        if failure != "ok":
            observe(failure)
            return
        name = s.getsockname()
        observe("empty name" if name == b"\0" else f"autobind ({len(name) - 1} bytes)")


@case(
    "os.address.autobind",
    "bind('') (addrlen = sizeof(sa_family_t)): autobind name format, and a second bind to it",
    rows=["ADDR-14", "ADDR-15", "ADDR-16"],
)
def test_autobind(observe: Observer) -> None:
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        failure = attempt(lambda: a.bind(""))
        if failure != "ok":
            observe({"bind": failure})
            return
        name = a.getsockname()
        text = name.decode("latin-1") if isinstance(name, bytes) else name
        fmt = "NUL + 5 hex digits" if re.fullmatch(r"\0[0-9a-f]{5}", text) else repr(name)
        observe({"bind": "ok", "format": fmt, "second_bind": attempt(lambda: b.bind(name))})


@case(
    "os.address.abstract_released_on_close",
    "An abstract name can be bound again at once after its socket closes",
    rows=["ADDR-19"],
)
def test_abstract_released_on_close(observe: Observer) -> None:
    require_abstract()
    name = abstract_name("release")
    with socket.socket(socket.AF_UNIX) as a:
        a.bind(name)
    with socket.socket(socket.AF_UNIX) as b:
        observe(attempt(lambda: b.bind(name)))


@case(
    "os.address.abstract_per_type",
    "Abstract names per socket type: stream and dgram share a name? two streams?",
    rows=["ADDR-21"],
)
def test_abstract_per_type(observe: Observer) -> None:
    require_abstract()
    name = abstract_name("types")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as a,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as b,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c,
    ):
        a.bind(name)
        observe(
            {
                "dgram_same_name": attempt(lambda: b.bind(name)),
                "stream_same_name": attempt(lambda: c.bind(name)),
            }
        )


@case("os.address.abstract_str_name", "Abstract names given as str and bytearray", rows=["ADDR-32"])
def test_abstract_str_name(observe: Observer) -> None:
    require_abstract()
    name = abstract_name("str")
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        observe(
            {
                "str": attempt(lambda: a.bind(name.decode())),
                "bytearray": attempt(lambda: b.bind(bytearray(name + b"2"))),
            }
        )


@case("os.address.proc_net_unix", "/proc/net/unix lists a bound socket's path", rows=["ADDR-33"])
def test_proc_net_unix(observe: Observer, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "listed")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        try:
            with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
                observe(any(line.rstrip().endswith(path) for line in table))
        except OSError as exc:
            observe(f"no /proc/net/unix ({errno_name(exc)})")


@case(
    "os.address.abstract_per_netns",
    "Abstract names belong to a network namespace; path names do not",
    rows=["ADDR-18"],
)
def test_abstract_per_netns(observe: Observer, short_tmp: str) -> None:
    import ctypes
    import sys

    require_abstract()
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        unavailable("needs Linux network namespaces and root to create one")
    libc = ctypes.CDLL(None, use_errno=True)
    clone_newnet = 0x40000000  # <linux/sched.h>
    name = abstract_name("netns")
    path = os.path.join(short_tmp, "l")
    with socket.socket(socket.AF_UNIX) as abstract, socket.socket(socket.AF_UNIX) as by_path:
        abstract.bind(name)
        abstract.listen(1)
        by_path.bind(path)
        by_path.listen(1)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child moves to a new network namespace and reports what it can reach
            report = "unshare failed"
            try:
                if libc.unshare(clone_newnet) == 0:
                    with (
                        socket.socket(socket.AF_UNIX) as a,
                        socket.socket(socket.AF_UNIX) as b,
                        socket.socket(socket.AF_UNIX) as c,
                    ):
                        report = " ".join(
                            [
                                attempt(lambda: a.connect(name)),
                                attempt(lambda: b.connect(path)),
                                attempt(lambda: c.bind(name)),
                            ]
                        )
            finally:
                os.write(write_end, report.encode())
                os._exit(0)
        os.close(write_end)
        try:
            report = os.read(read_end, 200).decode()
        finally:
            os.close(read_end)
            os.waitpid(pid, 0)
    parts = report.split()
    if len(parts) != 3:
        raise AssertionError(f"the child in a new namespace could not report: {report}")
    observe({"abstract_connect": parts[0], "path_connect": parts[1], "abstract_rebind": parts[2]})


@case(
    "os.address.bytes_after_nul",
    "A path with a trailing NUL, or bytes after a NUL, names the same socket as the plain path",
    rows=["ADDR-07", "ADDR-08"],
)
def test_bytes_after_nul(observe: Observer, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "p").encode()
    with socket.socket(socket.AF_UNIX) as plain:
        plain.bind(path)
        plain.listen(1)
        seen = {}
        for label, variant in (("trailing_nul", path + b"\0"), ("after_nul", path + b"\0junk")):
            with socket.socket(socket.AF_UNIX) as other:
                seen[f"bind_{label}"] = attempt(
                    lambda other=other, variant=variant: other.bind(variant)
                )
            with socket.socket(socket.AF_UNIX) as client:
                seen[f"connect_{label}"] = attempt(
                    lambda client=client, variant=variant: client.connect(variant)
                )
        observe(seen)
