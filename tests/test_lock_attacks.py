"""Attacks on the compiled core's emulated-connection lock and its slot reads.

``udscompat._speedups.Lock`` (the emulated connections' send and receive locks where the
accelerator runs) and ``struct slot`` (the compiled methods read a connection's
``__slots__`` at their member offsets) tried as a hostile local user and a careless one
would: classes built to hand the C a wrong offset, a subinterpreter importing udscompat
beside the main interpreter, threads closing a connection whose lock a compiled call
holds, raising signal handlers around compiled calls, fork with the lock held.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from udscompat import SeqpacketConn, _accel, _framing, _seqpacket

ROOT = Path(__file__).resolve().parent.parent
_Native = _seqpacket._NativeConn
_Emulated = _seqpacket._EmulatedConn
COMPILED = _Emulated.send is not _seqpacket.PYTHON_EMULATED_SEND
needs_compiled = pytest.mark.skipif(
    not COMPILED,
    reason="the compiled accelerator is not in use (not built, or UDSCOMPAT_SPEEDUPS=0)",
)


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``code`` in a new interpreter process with this tree's udscompat (and environment)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- struct slot: the offset read must be one of the configured class's own slots -----------


class _Donor(SeqpacketConn):
    """A class whose slots sit elsewhere: its member descriptors carry its offsets."""

    __slots__ = ("_a", "_fast", "_inline_args", "_z", *(f"_pad{i:03d}" for i in range(64)))


class _Borrower(SeqpacketConn):
    """Its own ``_fast`` slot, and ``_Donor``'s descriptor as ``_inline_args``: for Python
    its objects have no such attribute (the descriptor refuses them), but the descriptor's
    offset is the donor's, here that of the ``payload`` slot (configured, the C sent on a
    socket put in ``payload``)."""

    __slots__ = ("_acks_sent", "_fast", "payload")
    _inline_args = _Donor.__dict__["_inline_args"]


@needs_compiled
def test_configure_native_refuses_a_slot_descriptor_of_another_class() -> None:
    """A member descriptor of another class in the configured class's dict gives that
    class's offset: read in the configured class's objects it is another slot or memory
    past the object.  Refused, naming the field, and the configuration stays."""
    speedups: Any = _accel.speedups
    send, recv = _seqpacket.PYTHON_NATIVE_SEND, _seqpacket.PYTHON_NATIVE_RECV_MESSAGE
    try:
        with pytest.raises(TypeError, match=r"_Borrower\._inline_args must be a writable slot"):
            speedups.configure_native(_Borrower, send, recv, _seqpacket._LARGE_BUFSIZE)
    finally:  # a configuration that went through is undone (for the rest of the session)
        speedups.configure_native(_Native, send, recv, _seqpacket._LARGE_BUFSIZE)
    x, y = _seqpacket.seqpacket_pair(implementation="native")
    with x, y:
        assert x.send(b"still") == 5
        assert y.recv_message().data == b"still"


@needs_compiled
def test_configure_emulated_refuses_a_slot_descriptor_of_another_class() -> None:
    speedups: Any = _accel.speedups
    arguments = (
        _seqpacket.PYTHON_EMULATED_SEND,
        _seqpacket.PYTHON_EMULATED_RECV_MESSAGE,
        _seqpacket._STREAM_CHUNK,
        _seqpacket._ANCBUF,
        _seqpacket._STREAM_SEND,
        _seqpacket._monotonic,
    )

    class Borrower(SeqpacketConn):  # the emulated connection's slots, but _unsent: the donor's
        __slots__ = tuple(name for name in _Emulated.__slots__ if name != "_unsent")
        _unsent = _Donor.__dict__["_z"]  # 68 slots in: past the end of these objects

    try:
        with pytest.raises(TypeError, match=r"Borrower\._unsent must be a writable slot"):
            speedups.configure_emulated(Borrower, _framing.FrameDecoder, *arguments)
    finally:
        speedups.configure_emulated(_Emulated, _framing.FrameDecoder, *arguments)
    a, b = _seqpacket.seqpacket_pair(implementation="emulated")
    with a, b:
        assert a.send(b"still") == 5
        assert b.recv_message().data == b"still"


# -- subinterpreters: the configuration is the process's ---------------------------------------

_SUBINTERPRETER = """
    try:
        import _xxsubinterpreters as interpreters
    except ImportError:
        import _interpreters as interpreters
    from udscompat import _accel, _seqpacket

    emulated = _seqpacket.seqpacket_pair(implementation="emulated")
    native = _seqpacket.seqpacket_pair(implementation="native")
    sub = interpreters.create()
    interpreters.run_string(sub, '''if 1:
        from udscompat import _accel, _seqpacket
        x, y = _seqpacket.seqpacket_pair(implementation="emulated")
        x.send(b"in the subinterpreter")
        assert y.recv_message().data == b"in the subinterpreter"
        x.close()
        y.close()
        print("subinterpreter:", _accel.IMPLEMENTATION)
    ''')
    interpreters.destroy(sub)
    for x, y in (emulated, native):
        x.settimeout(5)
        y.settimeout(5)
        x.send(b"compiled")  # the C methods' own case
        assert y.recv_message().data == b"compiled", x.implementation
        x.send(b"handed to Python", fds=())  # keywords: the C hands these to the Python methods
        assert y.recv_message(bufsize=100).data == b"handed to Python", x.implementation
        x.close()
        y.close()
    print("main interpreter: fine")
"""


def test_a_subinterpreter_importing_udscompat_leaves_the_main_interpreters_connections_alone() -> (
    None
):
    """udscompat._speedups keeps its configuration (the Python methods the C hands calls
    to, the classes it reads) in C globals, one set per process.  A subinterpreter's
    ``import udscompat`` configured them again with its own objects: the main
    interpreter's connections then ran the subinterpreter's Python methods, and once it
    was destroyed every call that reached them failed (NameError: its builtins were
    gone).  The compiled module now refuses to load in a subinterpreter, which takes the
    pure-Python path."""
    try:
        import _xxsubinterpreters  # noqa: F401
    except ImportError:
        pytest.importorskip("_interpreters", reason="no low-level subinterpreter module")
    result = _python(_SUBINTERPRETER)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "main interpreter: fine" in result.stdout
    assert "subinterpreter: pure-python" in result.stdout
