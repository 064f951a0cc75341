"""UnixSocketAddr: constructors, validation, formatting, sockaddr round trips."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import udscompat
from tests.conftest import needs_abstract
from udscompat import UnixSocketAddr, UnsupportedError
from udscompat._address import as_address
from udscompat._bind import connect_unix
from udscompat._platform import backend

LIMIT = backend.MAX_PATH_BYTES


def test_path_constructors_agree() -> None:
    a = UnixSocketAddr.from_path("/run/x.sock")
    assert a.kind == "path"
    assert a.path == "/run/x.sock"
    assert a.name is None
    assert (
        a
        == UnixSocketAddr.from_path(b"/run/x.sock")
        == UnixSocketAddr.from_path(Path("/run/x.sock"))
    )
    assert a.to_sockaddr() == "/run/x.sock"
    assert str(a) == "/run/x.sock"
    assert hash(a) == hash(UnixSocketAddr.parse("/run/x.sock"))


@needs_abstract
def test_abstract_and_unnamed() -> None:
    a = UnixSocketAddr.from_abstract(b"my\x00name")
    assert a.kind == "abstract"
    assert a.name == b"my\x00name"
    assert a.path is None
    assert a.to_sockaddr() == b"\0my\x00name"
    assert str(a) == "@my\\x00name"
    assert UnixSocketAddr.from_abstract("svc") == UnixSocketAddr.parse("@svc")
    u = UnixSocketAddr.unnamed()
    assert u.kind == "unnamed"
    assert str(u) == "(unnamed)"
    assert u.to_sockaddr() == ""
    assert UnixSocketAddr.parse("") == u
    assert a != u != UnixSocketAddr.from_path("x")


@needs_abstract
def test_backslash_escaped_in_abstract_names() -> None:
    a = UnixSocketAddr.from_abstract(b"a\\b\xff")
    assert str(a) == "@a\\\\b\\xff"
    assert UnixSocketAddr.parse(str(a)) == a


def test_immutable_and_not_directly_constructible() -> None:
    a = UnixSocketAddr.from_path("x")
    with pytest.raises(AttributeError):
        a._kind = "abstract"  # type: ignore[misc]
    with pytest.raises(TypeError):
        UnixSocketAddr("path", b"x")


@needs_abstract
def test_pickles() -> None:
    for a in (
        UnixSocketAddr.from_path("/x"),
        UnixSocketAddr.from_abstract(b"n"),
        UnixSocketAddr.unnamed(),
    ):
        assert pickle.loads(pickle.dumps(a)) == a


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "may not be empty"),
        ("a\0b", "NUL byte at offset 1"),
        (
            "/" + "x" * LIMIT,
            f"is {LIMIT + 1} bytes; sun_path on {backend.OS_NAME} holds at most {LIMIT}",
        ),
    ],
)
def test_path_rejections_name_the_problem(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        UnixSocketAddr.from_path(path)


def test_longest_path_accepted_and_binds(short_tmp: Path) -> None:
    base = str(short_tmp) + "/"
    path = base + "p" * (LIMIT - len(base))
    addr = UnixSocketAddr.from_path(path)
    assert len(os.fsencode(addr.path or "")) == LIMIT
    with socket.socket(socket.AF_UNIX) as sock:
        file = udscompat.bind(sock, addr, backlog=1)
        assert file is not None and file.address == addr
        with socket.socket(socket.AF_UNIX) as client:
            connect_unix(client, addr)
            conn, _ = sock.accept()
            conn.close()
    with pytest.raises(ValueError, match=f"{LIMIT + 1} bytes"):
        UnixSocketAddr.from_path(path + "q")


@pytest.mark.skipif(backend.FD_PATH is None, reason="no /proc/self/fd path on this kernel")
def test_full_sun_path_binds_connects_and_sends_through_the_directory(short_tmp: Path) -> None:
    """Linux takes 108 path bytes with no NUL; CPython refuses them ("AF_UNIX path too long")."""
    base = str(short_tmp) + "/"
    server = base + "s" * (backend.SUN_PATH_SIZE - len(base))
    client = base + "c" * (backend.SUN_PATH_SIZE - len(base))
    assert len(server) == len(client) == 108
    with udscompat.SeqpacketListener(server) as listener:
        assert listener.local_addr == UnixSocketAddr.from_path(server)  # not /proc/self/fd/N
        with udscompat.SeqpacketConn.connect(server) as conn:
            peer, _ = listener.accept()
            with peer:
                conn.send(b"through the directory")
                assert peer.recv_message().data == b"through the directory"
    assert not os.path.exists(server)  # removed on close, through the directory too
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender,
    ):
        assert udscompat.bind(receiver, server) is not None
        assert udscompat.bind(sender, client) is not None
        udscompat.send_fds(sender, b"dgram", [], address=server)
        data, source = receiver.recvfrom(16)
        assert data == b"dgram"
        # The kernel reports the sender by the name it bound: its descriptor path.
        assert UnixSocketAddr.from_sockaddr(source).path_bytes is not None


@pytest.mark.skipif(backend.FD_PATH is None, reason="no /proc/self/fd path on this kernel")
def test_full_length_path_that_no_descriptor_path_reaches_names_the_limit() -> None:
    name = "n" * (backend.SUN_PATH_SIZE - len("/tmp/"))
    addr = UnixSocketAddr.from_path("/tmp/" + name)
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(ValueError) as info:
        connect_unix(sock, addr)
    message = str(info.value)
    assert f"last component ({len(name)} bytes)" in message
    assert "/proc/self/fd/" in message and "sun_path holds 107 bytes" in message
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(ValueError, match="last component"):
        udscompat.bind(sock, addr)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with dgram, pytest.raises(ValueError, match="last component"):
        udscompat.send_fds(dgram, b"x", [], address=addr)
    assert not os.path.exists("/tmp/" + name)


@needs_abstract
def test_abstract_too_long() -> None:
    UnixSocketAddr.from_abstract(b"n" * (backend.SUN_PATH_SIZE - 1))
    with pytest.raises(ValueError, match=f"abstract name is {backend.SUN_PATH_SIZE} bytes"):
        UnixSocketAddr.from_abstract(b"n" * backend.SUN_PATH_SIZE)


def test_abstract_unsupported_raises_with_os(monkeypatch: pytest.MonkeyPatch) -> None:
    from udscompat import _probes

    monkeypatch.setattr(_probes, "abstract_addresses", lambda: (False, "stand-in kernel says no"))
    with pytest.raises(UnsupportedError) as info:
        UnixSocketAddr.from_abstract(b"x")
    assert info.value.os_name == backend.OS_NAME
    assert info.value.feature == "abstract addresses"
    assert "stand-in kernel says no" in str(info.value)
    assert isinstance(info.value, OSError)
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.feature, again.os_name, again.reason) == (
        "abstract addresses",
        backend.OS_NAME,
        "stand-in kernel says no",
    )


def test_from_sockaddr_of_real_sockets(short_tmp: Path) -> None:
    path = str(short_tmp / "s")
    with socket.socket(socket.AF_UNIX) as listener, socket.socket(socket.AF_UNIX) as client:
        listener.bind(path)
        listener.listen()
        client.connect(path)
        conn, peer = listener.accept()
        with conn:
            assert UnixSocketAddr.from_sockaddr(peer) == UnixSocketAddr.unnamed()
            assert UnixSocketAddr.from_sockaddr(client.getpeername()) == UnixSocketAddr.from_path(
                path
            )
            assert UnixSocketAddr.from_sockaddr(conn.getsockname()) == UnixSocketAddr.from_path(
                path
            )
    if backend.OS_NAME == "Linux":
        with socket.socket(socket.AF_UNIX) as auto:
            auto.bind("")  # Linux autobind: b"\0" + five hex digits
            got = UnixSocketAddr.from_sockaddr(auto.getsockname())
            assert got.kind == "abstract"
            assert len(got.name or b"") == 5
    assert UnixSocketAddr.from_sockaddr(None) == UnixSocketAddr.unnamed()
    assert UnixSocketAddr.from_sockaddr(b"") == UnixSocketAddr.unnamed()
    with pytest.raises(TypeError):
        UnixSocketAddr.from_sockaddr(3)  # type: ignore[arg-type]


def test_parse_rejects_bad_escapes() -> None:
    with pytest.raises(ValueError, match="bad escape"):
        UnixSocketAddr.parse("@a\\q")
    with pytest.raises(ValueError, match="bad escape"):
        UnixSocketAddr.parse("@a\\xZZ")


names = st.binary(max_size=backend.SUN_PATH_SIZE - 1)
paths = st.binary(min_size=1, max_size=LIMIT).filter(lambda b: b"\0" not in b)


@needs_abstract
@given(names)
def test_abstract_round_trips(name: bytes) -> None:
    a = UnixSocketAddr.from_abstract(name)
    assert UnixSocketAddr.parse(str(a)) == a
    assert UnixSocketAddr.from_sockaddr(a.to_sockaddr()) == a
    assert a.name == name


@given(paths)
def test_path_round_trips(raw: bytes) -> None:
    a = UnixSocketAddr.from_path(raw)
    assert UnixSocketAddr.from_sockaddr(a.to_sockaddr()) == a
    assert a.path_bytes == raw
    if not raw.startswith(b"@"):
        assert UnixSocketAddr.parse(str(a)) == a


@given(st.binary(min_size=LIMIT + 1, max_size=LIMIT + 64).filter(lambda b: b"\0" not in b))
def test_too_long_paths_always_rejected(raw: bytes) -> None:
    with pytest.raises(ValueError, match=f"at most {LIMIT}"):
        UnixSocketAddr.from_path(raw)


# Built with a NUL rather than filtered for one: most random bytes have none.
with_nul = st.tuples(st.binary(max_size=LIMIT // 2), st.binary(max_size=LIMIT // 2 - 1)).map(
    lambda parts: parts[0] + b"\0" + parts[1]
)


@given(with_nul)
def test_paths_with_nul_always_rejected(raw: bytes) -> None:
    with pytest.raises(ValueError, match="NUL byte"):
        UnixSocketAddr.from_path(raw)


# -- the one string rule (the uds crate's UnixSocketAddr::new) ---------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "raw"),
    [
        ("@svc", "abstract", b"svc"),
        ("\0svc", "abstract", b"svc"),
        ("@", "abstract", b""),
        ("@a\\x00", "abstract", b"a\\x00"),  # no escapes: the bytes as written
        ("", "unnamed", b""),
        ("./@svc", "path", b"./@svc"),
        ("/run/x.sock", "path", b"/run/x.sock"),
        ("rel/x", "path", b"rel/x"),
    ],
)
def test_new_follows_the_uds_rule(text: str, kind: str, raw: bytes) -> None:
    if kind == "abstract" and backend.OS_NAME != "Linux":
        pytest.skip("abstract names are Linux's")
    addr = UnixSocketAddr.new(text)
    assert addr.kind == kind
    assert (addr.name if kind == "abstract" else addr.path_bytes or b"") == raw
    assert as_address(text) == addr


def test_new_takes_only_str() -> None:
    with pytest.raises(TypeError, match="takes str, not bytes"):
        UnixSocketAddr.new(b"@x")  # type: ignore[arg-type]


def test_bytes_and_pathlike_stay_paths_unless_nul_led() -> None:
    class BytesPath:
        def __init__(self, raw: bytes) -> None:
            self.raw = raw

        def __fspath__(self) -> bytes:
            return self.raw

    assert as_address(b"@x") == UnixSocketAddr.from_path("@x")
    assert as_address(bytearray(b"@x")) == UnixSocketAddr.from_path("@x")
    assert as_address(Path("@x")) == UnixSocketAddr.from_path("@x")
    assert as_address(BytesPath(b"@x")) == UnixSocketAddr.from_path("@x")
    assert as_address(b"") == UnixSocketAddr.unnamed()
    if backend.OS_NAME == "Linux":
        assert as_address(b"\0x") == UnixSocketAddr.from_abstract(b"x")
        assert as_address(BytesPath(b"\0x")) == UnixSocketAddr.from_abstract(b"x")
    addr = UnixSocketAddr.from_path("/x")
    assert as_address(addr) is addr


def test_as_address_names_the_parameter_for_other_types() -> None:
    with pytest.raises(TypeError, match="address must be a UnixSocketAddr, str, bytes or "):
        as_address(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^where must be"):
        as_address(None, "where")  # type: ignore[arg-type]


def test_parse_is_new_plus_the_escapes_str_writes() -> None:
    for text in ("", "./@x", "/a/b", "x"):
        assert UnixSocketAddr.parse(text) == UnixSocketAddr.new(text)
    assert UnixSocketAddr.parse("(unnamed)") == UnixSocketAddr.unnamed()
    # A path that starts with "@" is shown as "./@..." so its text never reads as abstract.
    at_path = UnixSocketAddr.from_path("@x")
    assert str(at_path) == "./@x"
    assert UnixSocketAddr.parse(str(at_path)).kind == "path"
