"""A native connection's compiled ``send`` and ``recv_message`` against their Python code.

Where the accelerator runs, ``_NativeConn.send`` and ``recv_message`` are C method
descriptors (``udscompat/_speedups.c``, ``configure_native``) that do the common case
and hand every other call, whole and before any system call, to the Python methods
they stand in for (``_seqpacket.PYTHON_NATIVE_SEND`` / ``PYTHON_NATIVE_RECV_MESSAGE``).
Hypothesis drives both with the same random calls -- valid and not, keywords,
descriptors, credentials, every kind of buffer, closed and ended connections,
non-blocking and timed waits, the FreeBSD partial-record rule forced on -- over real
socketpairs and compares results, exceptions and what the peer got.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import udscompat
from udscompat import _accel, _io, _probes, _seqpacket, send_credentials

from .conftest import open_fds, same_file

needs_compiled = pytest.mark.skipif(
    _accel.speedups is None, reason="the compiled accelerator is not in use here"
)
needs_seqpacket = pytest.mark.skipif(
    not _probes.seqpacket().available, reason="no native SOCK_SEQPACKET here"
)
PY_SEND = _seqpacket.PYTHON_NATIVE_SEND
PY_RECV = _seqpacket.PYTHON_NATIVE_RECV_MESSAGE
Conn = Any  # a _NativeConn


def test_the_methods_are_compiled_exactly_where_the_accelerator_runs() -> None:
    compiled = _accel.speedups is not None
    assert (_seqpacket._NativeConn.send is not PY_SEND) is compiled
    assert (_seqpacket._NativeConn.recv_message is not PY_RECV) is compiled


def _pair() -> Tuple[Conn, Conn]:
    return udscompat.seqpacket_pair(implementation="native")


def _outcome(call: Callable[[], Any]) -> Dict[str, Any]:
    try:
        result = call()
    except Exception as exc:  # the point is to compare any exception
        return {"error": type(exc), "text": str(exc)}
    return {"result": result}


def _drain(conn: Conn, received: List[int]) -> List[Tuple[bytes, int, bool]]:
    """Every message queued for ``conn`` (data, descriptor count, truncated), through the
    Python receive so the side under test is only the sender."""
    out = []
    conn.settimeout(0)
    while True:
        try:
            message = PY_RECV(conn, 1 << 17, 300)
        except BlockingIOError:
            return out
        if message is None:
            return out
        received.extend(message.fds)
        out.append((message.data, len(message.fds), message.truncated))


PAYLOAD = bytes(range(256)) * 300  # 75 KiB, no run of equal bytes


def _data(form: str, size: int) -> Any:
    payload = PAYLOAD[:size]
    return {
        "bytes": lambda: payload,
        "bytearray": lambda: bytearray(payload),
        "memoryview": lambda: memoryview(payload),
        "memoryview_int": lambda: memoryview(bytearray(payload[: size - size % 4])).cast("i"),
        "strided": lambda: memoryview(payload)[::2],
        "readonly_slice": lambda: memoryview(payload)[1:],
        "list": lambda: [payload[:3], payload[3:]],
        "tuple": lambda: (payload,),
        "str": lambda: "text",
        "int": lambda: 7,
        "none": lambda: None,
    }[form]()


send_call = st.fixed_dictionaries(
    {
        "form": st.sampled_from(
            ["bytes"] * 4
            + ["bytearray", "memoryview", "memoryview_int", "strided", "readonly_slice"]
            + ["list", "tuple", "str", "int", "none"]
        ),
        "size": st.one_of(st.integers(0, 70), st.sampled_from([4096, 65536, 70000])),
        "fds": st.sampled_from(["absent", "()", "[]", "one", "two", "bad", "generator_empty"]),
        "credentials": st.sampled_from(["absent", "none", "own"]),
        "keywords": st.booleans(),
        "extra": st.booleans(),  # one positional argument too many (without keywords)
        "state": st.sampled_from(["open"] * 4 + ["closed", "peer_closed", "full", "full_timed"]),
    }
)


def _send_case(**changes: Any) -> Dict[str, Any]:
    case = {
        "form": "bytes",
        "size": 5,
        "fds": "absent",
        "credentials": "absent",
        "keywords": False,
        "extra": False,
        "state": "open",
    }
    case.update(changes)
    return case


def _fill(conn: Conn) -> None:
    """Fill ``conn``'s send buffer: its next send would block."""
    conn.settimeout(0)
    while True:
        try:
            PY_SEND(conn, b"f" * 4096)
        except BlockingIOError:
            return


def _send_arguments(case: Dict[str, Any], r: int, w: int) -> Tuple[List[Any], Dict[str, Any]]:
    """The positional and keyword arguments of ``send`` that ``case`` describes."""
    fds: Any = {
        "()": (),
        "[]": [],
        "one": [r],
        "two": [r, w],
        "bad": [-1],
        "generator_empty": (n for n in ()),
    }.get(case["fds"])
    credentials: Any = {"none": None, "own": send_credentials()}.get(case["credentials"])
    data = _data(case["form"], case["size"])
    given_fds, given_credentials = case["fds"] != "absent", case["credentials"] != "absent"
    if case["keywords"]:
        kwargs: Dict[str, Any] = {}
        if given_fds:
            kwargs["fds"] = fds
        if given_credentials:
            kwargs["credentials"] = credentials
        return [data], kwargs
    args = [data]
    if given_fds or given_credentials or case["extra"]:
        args.append(fds if given_fds else ())
    if given_credentials or case["extra"]:
        args.append(credentials)
    if case["extra"]:
        args.append("extra")
    return args, {}


@needs_compiled
@needs_seqpacket
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=send_call)
@example(case=_send_case())
@example(case=_send_case(form="strided"))
@example(case=_send_case(state="full"))
@example(case=_send_case(state="full_timed"))
@example(case=_send_case(state="closed"))
@example(case=_send_case(state="peer_closed"))
@example(case=_send_case(fds="one", keywords=True))
@example(case=_send_case(credentials="own"))
@example(case=_send_case(size=70000))
def test_compiled_send_agrees_with_its_python_code(case: Dict[str, Any]) -> None:
    """Same call, compiled method and Python method: the same result or exception and
    words, the same messages at the peer, nothing left open."""
    before = open_fds()
    r, w = os.pipe()
    outcomes: Dict[str, Any] = {}
    received: List[int] = []
    try:
        for impl in ("compiled", "python"):
            x, y = _pair()
            with x, y:
                if case["state"] in ("full", "full_timed"):
                    _fill(x)
                    x.settimeout(0.05 if case["state"] == "full_timed" else 0)
                elif case["state"] == "closed":
                    x.close()
                elif case["state"] == "peer_closed":
                    y.close()
                args, kwargs = _send_arguments(case, r, w)
                method = x.send if impl == "compiled" else functools.partial(PY_SEND, x)
                sent = _outcome(functools.partial(method, *args, **kwargs))
                delivered = [] if case["state"] == "peer_closed" else _drain(y, received)
                outcomes[impl] = (sent, delivered)
        assert outcomes["compiled"] == outcomes["python"]
        for fd in received:
            assert same_file(fd, r) or same_file(fd, w)
    finally:
        _io.close_fds(received)
        _io.close_fds([r, w])
    assert open_fds() == before


recv_call = st.fixed_dictionaries(
    {
        "sizes": st.lists(
            st.one_of(st.integers(0, 100), st.sampled_from([4096, 65536, 70000])),
            min_size=1,
            max_size=3,
        ),
        "nfds": st.lists(st.integers(0, 3), min_size=3, max_size=3),
        "bufsize": st.sampled_from(
            ["default", "exact", "short", "long", "zero", "huge", "bool", "float", "negative"]
        ),
        "maxfds": st.sampled_from(["default", 0, 1, 3, True, -1, 2**70]),
        "keywords": st.booleans(),
        "partial_records": st.booleans(),
        "credentials": st.booleans(),
        "end": st.sampled_from(["open", "open_timed", "peer_closed", "closed"]),
    }
)


def _bufsize(case: Dict[str, Any], size: int) -> Any:
    return {
        "default": None,
        "exact": size,
        "short": max(0, size - 3),
        "long": size + 10,
        "zero": 0,
        "huge": 300000,  # past the inline receive's largest
        "bool": True,
        "float": 64.0,
        "negative": -1,
    }[case["bufsize"]]


def _recv_case(**changes: Any) -> Dict[str, Any]:
    case = {
        "sizes": [5],
        "nfds": [0, 0, 0],
        "bufsize": "default",
        "maxfds": "default",
        "keywords": False,
        "partial_records": False,
        "credentials": False,
        "end": "open",
    }
    case.update(changes)
    return case


@needs_compiled
@needs_seqpacket
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=recv_call)
@example(case=_recv_case())
@example(case=_recv_case(sizes=[0], end="peer_closed"))
@example(case=_recv_case(sizes=[8], bufsize="exact", partial_records=True))
@example(case=_recv_case(sizes=[8], bufsize="short", partial_records=True))
@example(case=_recv_case(sizes=[65536], bufsize="exact"))
@example(case=_recv_case(nfds=[2, 0, 0], maxfds=1))
@example(case=_recv_case(credentials=True))
@example(case=_recv_case(end="open_timed"))
@example(case=_recv_case(end="closed"))
@example(case=_recv_case(bufsize="huge", keywords=True))
def test_compiled_recv_message_agrees_with_its_python_code(case: Dict[str, Any]) -> None:
    """Same messages and calls through the compiled method, the Python method (which
    takes the compiled receive inside) and the Python method with that off: the same
    Messages (type, payload, descriptor count, truncation, credentials) or errors."""
    before = open_fds()
    r, w = os.pipe()
    results: Dict[str, List[Any]] = {}
    received: List[int] = []
    try:
        for impl in ("method", "python", "python_pure"):
            x, y = _pair()
            with x, y:
                y._partial_records = case["partial_records"]
                if case["credentials"]:
                    y.pass_credentials()
                if impl == "python_pure":
                    y._compiled_recv = None
                for size, nfds in zip(case["sizes"], case["nfds"]):
                    x.send(PAYLOAD[:size], [r] * nfds)
                if case["end"] == "peer_closed":
                    x.close()
                y.settimeout(0.02 if case["end"] == "open_timed" else 0)
                if case["end"] == "closed":
                    y.close()
                steps: List[Any] = []
                for size in case["sizes"] + [0]:
                    args: List[Any] = []
                    kwargs: Dict[str, Any] = {}
                    bufsize = _bufsize(case, size)
                    if bufsize is not None and case["keywords"]:
                        kwargs["bufsize"] = bufsize
                    elif bufsize is not None:
                        args.append(bufsize)
                    if case["maxfds"] != "default":
                        if case["keywords"]:
                            kwargs["maxfds"] = case["maxfds"]
                        else:
                            if not args:
                                args.append(65536)
                            args.append(case["maxfds"])
                    receive = y.recv_message if impl == "method" else functools.partial(PY_RECV, y)
                    got = _outcome(functools.partial(receive, *args, **kwargs))
                    message = got.get("result")
                    if message is not None:
                        received.extend(message.fds)
                        got["result"] = (
                            type(message),
                            message.data,
                            len(message.fds),
                            message.truncated,
                            message.credentials,
                        )
                    steps.append(got)
            results[impl] = steps
        assert results["method"] == results["python"] == results["python_pure"]
    finally:
        _io.close_fds(received)
        _io.close_fds([r, w])
    assert open_fds() == before


@needs_compiled
@needs_seqpacket
def test_a_timed_receive_waits_within_its_deadline_and_then_gets_the_message() -> None:
    """The compiled method hands a would-block under a timeout to the Python method, which
    waits: the message sent meanwhile arrives, and an empty queue times out on time."""
    x, y = _pair()
    with x, y:
        y.settimeout(0.3)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            y.recv_message()
        assert 0.29 <= time.monotonic() - start < 1.5
        timer = threading.Timer(0.1, lambda: x.send(b"late"))
        timer.start()
        try:
            message = y.recv_message()
        finally:
            timer.join()
        assert message is not None and message.data == b"late"


@needs_compiled
@needs_seqpacket
def test_a_raising_handler_interrupts_a_blocking_compiled_receive_and_loses_nothing() -> None:
    """A blocking receive through the compiled method: a signal handler that raises ends
    the call, and the message sent afterwards is still there for the next one."""

    class Interrupted(Exception):
        pass

    def raise_interrupted(signum: int, frame: Any) -> None:
        raise Interrupted()

    x, y = _pair()
    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    main = threading.get_ident()
    try:
        with x, y:
            killer = threading.Timer(0.1, lambda: signal.pthread_kill(main, signal.SIGUSR1))
            killer.start()
            try:
                with pytest.raises(Interrupted):
                    y.recv_message()
            finally:
                killer.join()
            x.send(b"after", [0])
            message = y.recv_message(maxfds=1)
            assert message is not None and message.data == b"after" and len(message.fds) == 1
            os.close(message.fds[0])
    finally:
        signal.signal(signal.SIGUSR1, previous)


@needs_compiled
@needs_seqpacket
def test_the_descriptors_check_the_connection_type() -> None:
    """The C methods run only on native connections (the descriptor refuses others), and
    report the Python signature."""
    import inspect

    x, y = _pair()
    with x, y:
        with pytest.raises(TypeError):
            type(x).send(object(), b"x")  # type: ignore[arg-type]
        assert str(inspect.signature(x.send)) == "(data, fds=(), credentials=None)"
        assert str(inspect.signature(y.recv_message)) == "(bufsize=65536, maxfds=0)"
        assert inspect.signature(PY_RECV).parameters["bufsize"].default == 65536


@needs_compiled
def test_configure_native_refuses_what_it_cannot_use() -> None:
    speedups: Any = _accel.speedups
    with pytest.raises(TypeError, match="Python functions"):
        speedups.configure_native(_seqpacket._NativeConn, print, PY_RECV, 1024)
    with pytest.raises(ValueError, match="defaults"):
        speedups.configure_native(_seqpacket._NativeConn, PY_SEND, lambda self: None, 1024)
    with pytest.raises(ValueError, match="fast_bufsize"):
        speedups.configure_native(_seqpacket._NativeConn, PY_SEND, PY_RECV, -1)


@needs_compiled
def test_configure_native_wants_the_fields_it_reads_in_slots() -> None:
    """The C reads ``_inline_args`` and ``_fast`` at their slot's offset: a class that keeps
    them anywhere else is refused, naming the field, before anything is configured."""
    speedups: Any = _accel.speedups

    class Unslotted(_seqpacket.SeqpacketConn):
        pass

    class HalfSlotted(_seqpacket.SeqpacketConn):
        __slots__ = ("_inline_args",)  # _fast is not

    largest = _seqpacket._LARGE_BUFSIZE
    with pytest.raises(TypeError, match=r"Unslotted\._inline_args must be a writable slot"):
        speedups.configure_native(Unslotted, PY_SEND, PY_RECV, largest)
    with pytest.raises(TypeError, match=r"HalfSlotted\._fast must be a writable slot"):
        speedups.configure_native(HalfSlotted, PY_SEND, PY_RECV, largest)
    x, y = _pair()  # the configured class still works
    with x, y:
        x.send(b"still")
        assert y.recv_message() == udscompat.Message(b"still")


@needs_compiled
@needs_seqpacket
def test_unset_slots_take_the_python_methods() -> None:
    """A slot emptied under the C (``del``) is not read as a value: the call is the Python
    method's, with its outcome (here: the send works without ``_inline_args``, and the
    receive without ``_fast`` raises the Python method's AttributeError)."""
    x, y = _pair()
    with x, y:
        del x._inline_args
        assert x.send(b"sent by Python") == len(b"sent by Python")
        del y._fast
        with pytest.raises(AttributeError, match="_fast"):
            y.recv_message()
        with pytest.raises(AttributeError, match="_fast"):
            PY_RECV(y)


@needs_compiled
@needs_seqpacket
def test_a_subclass_is_read_through_its_type() -> None:
    """The slot is read at its offset only for objects of exactly the configured class; a
    subclass may redefine the name, and what it says holds (here a property naming another
    socket: the compiled send uses that one, as an attribute read would)."""
    other_x, other_y = _pair()

    class Redirected(_seqpacket._NativeConn):
        @property  # type: ignore[override]
        def _inline_args(self) -> Any:
            return other_x._inline_args

        @_inline_args.setter
        def _inline_args(self, value: Any) -> None:
            pass  # the slot stays empty

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    x, y = Redirected(a), udscompat.SeqpacketConn.from_socket(b)
    with x, y, other_x, other_y:
        x.send(b"through the property")
        other_y.settimeout(5)
        assert other_y.recv_message() == udscompat.Message(b"through the property")


@needs_compiled
@needs_seqpacket
@pytest.mark.parametrize("free", [0, 1, 2])
def test_a_full_descriptor_table_is_reported_alike_and_leaks_nothing(free: int) -> None:
    """RLIMIT_NOFILE lowered so that only ``free`` of a message's 3 descriptors fit: the
    compiled method and the Python method (compiled receive off) raise the same
    ControlTruncatedError with the payload, close what arrived, and the next message comes
    whole once the table has room."""
    from udscompat import ControlTruncatedError

    from .test_speedups import _free_slots

    before = open_fds()
    r, w = os.pipe()
    outcomes: Dict[str, Any] = {}
    try:
        for impl in ("compiled", "python"):
            x, y = _pair()
            with x, y:
                y.settimeout(0)
                if impl == "python":
                    y._compiled_recv = None
                receive = y.recv_message if impl == "compiled" else functools.partial(PY_RECV, y)
                x.send(b"three", [r, r, w])
                x.send(b"after")
                held = open_fds()
                with _free_slots(free):
                    try:
                        got: Any = receive(64, 3)
                    except ControlTruncatedError as exc:
                        got = (type(exc), exc.data, exc.closed_fds)
                    else:
                        _io.close_fds(list(got.fds))  # outside the lowered limit: closing is safe
                        got = ("message", got.data, len(got.fds))
                    during = open_fds() - held
                after = receive(64, 3)
                assert after is not None and after.data == b"after" and after.fds == ()
                outcomes[impl] = (got, sorted(during))
        assert outcomes["compiled"] == outcomes["python"]
        assert outcomes["compiled"][0][0] is ControlTruncatedError
        assert outcomes["compiled"][0][1] == b"three"
        assert outcomes["compiled"][1] == []  # nothing left open while the table was full
    finally:
        _io.close_fds([r, w])
    assert open_fds() == before
