"""udscompat.aio: the seqpacket contract and fd passing on asyncio (and uvloop where it installs).

Real sockets throughout; the fd-leak check of conftest.py runs around every test.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, List, Optional, Tuple

import pytest

import udscompat
from tests.conftest import SEQPACKET_IMPLEMENTATIONS, needs_kernel_seqpacket, same_file
from udscompat import _seqpacket, aio

ROOT = Path(__file__).resolve().parent.parent
IMPLEMENTATIONS = SEQPACKET_IMPLEMENTATIONS

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra where it installs
    uvloop = None
else:
    # uvloop opens a process-wide pipe with its first loop and keeps it: open it now, before
    # any test counts descriptors.
    uvloop.new_event_loop().close()

LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(uvloop is None, reason="uvloop is not installed here")
    ),
]


def run(main: Callable[[], Awaitable[Any]], loop_kind: str = "asyncio") -> Any:
    """Run ``main()`` to completion on a fresh loop of ``loop_kind``."""
    loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def close_all(fds: List[int]) -> None:
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_contract(impl: str, loop_kind: str, pipe: Tuple[int, int]) -> None:
    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        assert a.implementation == impl
        async with a, b:
            await a.send(b"one")
            await a.send(b"", [pipe[0]])  # zero-length, with an fd
            await a.send(b"x" * 100)
            await a.send(b"last", [pipe[0], pipe[1]])
            first = await b.recv_message()
            empty = await b.recv_message(maxfds=1)
            cut = await b.recv_message(10)
            assert first is not None and first.data == b"one"
            assert empty is not None and empty.data == b"" and len(empty.fds) == 1
            assert cut is not None and cut.data == b"x" * 10 and cut.truncated
            last = await b.recv_message(maxfds=2)
            assert last is not None and [same_file(f, p) for f, p in zip(last.fds, pipe)] == [
                True,
                True,
            ]
            assert all(not os.get_inheritable(fd) for fd in empty.fds + last.fds)
            close_all(empty.fds + last.fds)
            creds = b.peer_credentials()
            assert (creds.euid, creds.egid) == (os.geteuid(), os.getegid())
            await a.send(b"queued")
            a.close()
            await a.wait_closed()
            got = [m.data async for m in b]
            assert got == [b"queued"]
            assert await b.recv_message() is None  # and None again

    run(main, loop_kind)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_server_and_client_over_a_path(impl: str, short_tmp: str, pipe: Tuple[int, int]) -> None:
    path = os.path.join(short_tmp, "srv")

    async def handler(conn: aio.AsyncSeqpacketConn) -> None:
        async for message in conn.messages(maxfds=1):
            await conn.send(message.data.upper(), message.fds)
            close_all(message.fds)

    async def main() -> None:
        async with await aio.start_seqpacket_server(handler, path, implementation=impl) as server:
            assert server.local_addr == udscompat.UnixSocketAddr.from_path(path)
            async with await aio.open_seqpacket_connection(path, implementation=impl) as client:
                await client.send(b"hi", [pipe[0]])
                reply = await client.recv_message(maxfds=1)
                assert (
                    reply is not None and reply.data == b"HI" and same_file(reply.fds[0], pipe[0])
                )
                close_all(reply.fds)
        assert not os.path.exists(path)

    run(main)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_thousand_concurrent_connections(
    impl: str, loop_kind: str, short_tmp: str, pipe: Tuple[int, int]
) -> None:
    path = os.path.join(short_tmp, "srv")
    clients = 1000

    async def handler(conn: aio.AsyncSeqpacketConn) -> None:
        async for message in conn.messages(maxfds=1):
            await conn.send(message.data[::-1], message.fds)
            close_all(message.fds)

    async def client(n: int) -> int:
        async with await aio.open_seqpacket_connection(path, implementation=impl) as conn:
            for i in range(3):
                await conn.send(f"{n}:{i}".encode(), [pipe[0]])
                reply = await conn.recv_message(maxfds=1)
                assert reply is not None and reply.data == f"{n}:{i}".encode()[::-1]
                assert len(reply.fds) == 1 and same_file(reply.fds[0], pipe[0])
                close_all(reply.fds)
        return n

    async def main() -> None:
        async with await aio.start_seqpacket_server(handler, path, implementation=impl):
            done = await asyncio.gather(*(client(n) for n in range(clients)))
        assert sorted(done) == list(range(clients))

    run(main, loop_kind)


def _payload(i: int, size: int) -> bytes:
    body = bytes([i % 251]) * size
    return i.to_bytes(4, "big") + len(body).to_bytes(4, "big") + body


def _check(data: bytes) -> int:
    i = int.from_bytes(data[:4], "big")
    size = int.from_bytes(data[4:8], "big")
    assert data[8:] == bytes([i % 251]) * size, f"message {i} arrived damaged"
    return i


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_cancelled_receives_lose_nothing(impl: str, seed: int, pipe: Tuple[int, int]) -> None:
    rng = random.Random(seed)
    count = 150
    sizes = [rng.choice([0, 10, 5000, 60000, 150000]) for _ in range(count)]

    async def sender(a: aio.AsyncSeqpacketConn) -> None:
        for i, size in enumerate(sizes):
            await a.send(_payload(i, size), [pipe[0]] if i % 3 == 0 else ())
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        a.close()
        await a.wait_closed()

    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        sending = asyncio.ensure_future(sender(a))
        got: List[int] = []
        cancelled = 0
        while True:
            task = asyncio.ensure_future(b.recv_message(1 << 20, 1))
            for _ in range(rng.choice([0, 0, 1, 3])):
                await asyncio.sleep(0)
            if not task.done():
                task.cancel()
            try:
                message = await task
            except asyncio.CancelledError:
                cancelled += 1
                continue
            if message is None:
                break
            got.append(_check(message.data))
            assert len(message.fds) == (1 if got[-1] % 3 == 0 else 0)
            close_all(message.fds)
        await sending
        b.close()
        assert got == list(range(count))
        assert cancelled > 10, "the test must actually cancel receives"

    run(main)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_cancelled_sends_are_whole_or_nothing(impl: str, seed: int, pipe: Tuple[int, int]) -> None:
    rng = random.Random(seed)
    count = 120
    limit = 150000 if impl == "native" else 400000

    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        completed: List[int] = []
        cancelled: List[int] = []

        async def sender() -> None:
            for i in range(count):
                size = rng.choice([0, 100, 40000, limit])
                try:
                    await asyncio.wait_for(
                        a.send(_payload(i, size), [pipe[0]]), rng.choice([0.0005, 0.002, 1])
                    )
                except asyncio.TimeoutError:
                    cancelled.append(i)
                else:
                    completed.append(i)
            a.close()
            await a.wait_closed()

        async def reader() -> List[int]:
            seen: List[int] = []
            while True:
                if rng.random() < 0.5:
                    await asyncio.sleep(0.001)
                message = await b.recv_message(1 << 20, 1)
                if message is None:
                    return seen
                seen.append(_check(message.data))
                assert len(message.fds) == 1
                close_all(message.fds)

        sending = asyncio.ensure_future(sender())
        seen = await reader()
        await sending
        b.close()
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        assert set(completed) <= set(seen), "a send that returned was lost"
        assert set(seen) <= set(completed) | set(cancelled)
        assert cancelled, "the test must actually cancel sends"

    run(main)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_slow_reader_applies_backpressure(impl: str) -> None:
    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        sent = 0

        async def sender() -> None:
            nonlocal sent
            for i in range(200):
                await a.send(_payload(i, 65536))
                sent += 1
            a.close()
            await a.wait_closed()

        sending = asyncio.ensure_future(sender())
        await asyncio.sleep(0.3)  # the reader does not read
        stalled_at = sent
        assert 0 < stalled_at < 60, f"the sender ran ahead by {stalled_at} messages"
        if impl == "native":
            a.conn.flush()  # a native message is whole in the kernel: nothing is ever left over
        got = [_check(m.data) async for m in b.messages(1 << 17)]
        await sending
        b.close()
        assert got == list(range(200))

    run(main)


PEER = textwrap.dedent(
    """
    import os, sys
    import udscompat
    conn = udscompat.SeqpacketConn.connect(sys.argv[1], implementation=sys.argv[2])
    r, w = os.pipe()
    for i in range(3):
        conn.send(b"whole %d" % i, [r])
    os.write(1, b"sending\\n")
    while True:
        conn.send(b"y" * int(sys.argv[3]))  # blocks soon: the server does not read yet
    """
)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_peer_killed_mid_message(impl: str, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "srv")
    big = 200000 if impl == "native" else 900000
    outcome: List[Any] = []
    killed = asyncio.Event

    async def main() -> None:
        gate = killed()

        async def handler(conn: aio.AsyncSeqpacketConn) -> None:
            await gate.wait()
            while True:
                try:
                    message = await conn.recv_message(1 << 20, 1)
                except OSError as exc:
                    outcome.append(type(exc).__name__)
                    return
                if message is None:
                    outcome.append(None)
                    return
                outcome.append(message.data)
                close_all(message.fds)

        async with await aio.start_seqpacket_server(handler, path, implementation=impl):
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            peer = await asyncio.create_subprocess_exec(
                sys.executable, "-c", PEER, path, impl, str(big), stdout=subprocess.PIPE, env=env
            )
            assert peer.stdout is not None
            assert await peer.stdout.readline() == b"sending\n"
            await asyncio.sleep(0.2)  # let it fill the socket and block mid-message
            peer.send_signal(signal.SIGKILL)
            assert await peer.wait() == -signal.SIGKILL
            gate.set()

    run(main)
    assert outcome[:3] == [b"whole 0", b"whole 1", b"whole 2"]
    if impl == "native":
        # The kernel queues a seqpacket message whole or not at all.
        whole = [m for m in outcome[3:-1] if m == b"y" * big]
        assert outcome[3:] == [*whole, None] or outcome[3:] == [*whole, "ConnectionResetError"]
    else:
        assert outcome[3:] == ["FramingError"], outcome[3:]


def test_stream_helpers_on_a_socketpair(pipe: Tuple[int, int]) -> None:
    async def main() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            data = os.urandom(3_000_000)  # far more than the socket buffer: partial sends
            sending = asyncio.ensure_future(aio.send_fds(a, data, [pipe[0]]))
            first, fds, _, _ = await aio.recv_fds(b, 65536, 1)
            assert len(fds) == 1 and same_file(fds[0], pipe[0])
            close_all(fds)
            received = bytearray(first)
            while len(received) < len(data):
                chunk, more, _, _ = await aio.recv_fds(b, 65536, 0)
                assert not more
                received += chunk
            assert await sending == len(data)
            assert bytes(received) == data

    run(main)


def test_stream_helpers_on_asyncio_transports(short_tmp: str, pipe: Tuple[int, int]) -> None:
    path = os.path.join(short_tmp, "streams")

    async def main() -> None:
        paused = asyncio.Event()
        result: List[Any] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.transport.pause_reading()  # type: ignore[attr-defined]
            paused.set()
            data, fds, _, _ = await aio.recv_fds(writer.get_extra_info("socket"), 100, 1)
            result.append((data, [same_file(fd, pipe[0]) for fd in fds]))
            close_all(fds)
            writer.transport.resume_reading()  # type: ignore[attr-defined]
            result.append(await reader.readexactly(5))
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_unix_server(handler, path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(path)
            await paused.wait()
            await aio.send_fds(writer.get_extra_info("socket"), b"with-fd", [pipe[0]])
            writer.write(b"after")
            await writer.drain()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
        assert result == [(b"with-fd", [True]), b"after"]

    run(main)


def test_connect_refused_names_the_address(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "nobody")

    async def main() -> Optional[OSError]:
        try:
            await aio.open_seqpacket_connection(path)
        except OSError as exc:
            return exc
        return None

    error = run(main)
    assert isinstance(error, OSError) and path in str(error)


# -- concurrent callers on one connection ------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_concurrent_receivers_take_turns_in_order(impl: str) -> None:
    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        async with a, b:
            receivers = [asyncio.ensure_future(b.recv_message()) for _ in range(6)]
            await asyncio.sleep(0)
            # One receive waits for data; five wait for their turn.  A queued receive that is
            # cancelled gives up its place and takes nothing.
            assert len(b._recv_turn._waiters) == 5
            receivers[2].cancel()
            for i in range(5):
                await a.send(b"%d" % i)
            got = [await r for i, r in enumerate(receivers) if i != 2]
            assert [m.data for m in got if m is not None] == [b"0", b"1", b"2", b"3", b"4"]
            assert receivers[2].cancelled()

    run(main)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_concurrent_senders_take_turns_in_order(impl: str) -> None:
    size = 150000  # two or three such messages fill the socket buffers: the rest queue
    count, cancelled = 12, 10

    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        async with a, b:
            senders = [asyncio.ensure_future(a.send(_payload(i, size))) for i in range(count)]
            await asyncio.sleep(0)
            assert len(a._send_turn._waiters) >= 5, "the senders must actually queue"
            senders[cancelled].cancel()  # queued: it gives up its place and sends nothing
            got = []
            for _ in range(count - 1):
                message = await b.recv_message(1 << 20)
                assert message is not None
                got.append(_check(message.data))
            assert got == [i for i in range(count) if i != cancelled]
            assert senders[cancelled].cancelled()
            results = [s.result() for i, s in enumerate(senders) if i != cancelled]
            assert results == [size + 8] * (count - 1)

    run(main)


def test_a_turn_granted_to_a_cancelled_waiter_is_passed_on() -> None:
    async def main() -> None:
        turn = aio._Turn(aio._Readiness(-1, write=False))
        held = turn.take()  # held by someone
        first = asyncio.ensure_future(turn.wait_for_turn())
        second = asyncio.ensure_future(turn.wait_for_turn())
        await asyncio.sleep(0)
        turn.release(held)  # granted to the first waiter ...
        first.cancel()  # ... which is cancelled before it could run
        held = await asyncio.wait_for(second, 5)  # the turn went on, not lost
        assert first.cancelled() and turn.busy
        turn.release(held)
        assert not turn.busy

    run(main)


# -- closing, errors and the server's edges -----------------------------------------------


def test_close_finishes_a_partly_sent_frame_first() -> None:
    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation="emulated")
        big = _payload(7, 600000)
        sending = asyncio.ensure_future(a.send(big))
        await asyncio.sleep(0.05)  # part of the frame is out; the peer does not read yet
        with pytest.raises(BlockingIOError):
            a.conn.flush()  # part of the frame is still unsent
        assert not sending.done()
        sending.cancel()  # too late to send nothing: the rest still goes
        a.close()
        assert not a.closed
        message = await b.recv_message(1 << 20)
        assert message is not None and message.data == big
        assert await b.recv_message() is None
        await asyncio.wait_for(a.wait_closed(), 5)
        assert a.closed
        b.close()

    run(main)


def test_close_gives_up_on_a_peer_that_never_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio, "CLOSE_DRAIN_TIMEOUT", 0.2)

    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation="emulated")
        sending = asyncio.ensure_future(a.send(_payload(1, 600000)))
        await asyncio.sleep(0.05)
        sending.cancel()
        a.close()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(a.wait_closed(), 5)
        assert a.closed and 0.15 <= loop.time() - start < 2
        with pytest.raises(udscompat.FramingError, match="mid-frame"):
            while await b.recv_message(1 << 20) is not None:
                pass
        b.close()

    run(main)


def test_a_framing_error_reaches_the_waiting_receiver() -> None:
    async def main() -> None:
        raw, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        conn = aio.AsyncSeqpacketConn(_seqpacket._EmulatedConn(other))
        with raw:
            receiving = asyncio.ensure_future(conn.recv_message())
            await asyncio.sleep(0.01)
            assert not receiving.done()
            raw.sendall(b"\x00\x00\x00\x01\x00\x00\x09\x00x")  # frame kind 9 does not exist
            with pytest.raises(udscompat.FramingError, match="unknown frame kind 9"):
                await asyncio.wait_for(receiving, 5)
        assert conn.closed

    run(main)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_server_reports_a_failing_handler_and_goes_on(impl: str, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "srv")
    reported: List[BaseException] = []

    async def handler(conn: aio.AsyncSeqpacketConn) -> None:
        message = await conn.recv_message()
        if message is not None and message.data == b"fail":
            raise ValueError("handler failed on purpose")
        await conn.send(b"served")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reported.append(context["exception"]))
        async with await aio.start_seqpacket_server(handler, path, implementation=impl):
            async with await aio.open_seqpacket_connection(path, implementation=impl) as c:
                await c.send(b"fail")
                assert await c.recv_message() is None  # the connection was closed
            async with await aio.open_seqpacket_connection(path, implementation=impl) as c:
                await c.send(b"ok")
                reply = await c.recv_message()
                assert reply is not None and reply.data == b"served"

    run(main)
    assert [str(e) for e in reported] == ["handler failed on purpose"]


def test_serve_forever_until_cancelled(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "srv")

    async def main() -> None:
        server = await aio.start_seqpacket_server(lambda conn: conn.recv_message(), path)
        serving = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.01)
        assert server.is_serving() and os.path.exists(path)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving() and not os.path.exists(path)
        await asyncio.wait_for(server.wait_closed(), 5)

    run(main)


@needs_kernel_seqpacket
def test_server_pauses_accepting_while_out_of_descriptors(short_tmp: str) -> None:
    import resource

    path = os.path.join(short_tmp, "srv")
    served = asyncio.Event

    reported: List[Any] = []

    async def main() -> None:
        done = served()
        asyncio.get_running_loop().set_exception_handler(lambda _, c: reported.append(c))

        async def handler(conn: aio.AsyncSeqpacketConn) -> None:
            done.set()

        async with await aio.start_seqpacket_server(handler, path, implementation="native"):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            lowest_free = os.dup(0)
            os.close(lowest_free)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
            try:
                client.connect(path)  # queued in the backlog; accept() now fails with EMFILE
                await asyncio.sleep(0.05)
                assert not done.is_set()
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            await asyncio.wait_for(done.wait(), 5)  # accepting resumed by itself
            client.close()

    run(main)
    assert reported == [], "EMFILE must pause accepting, not surface as an error"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_connect_waits_while_the_backlog_is_full(impl: str, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "srv")
    listener = udscompat.SeqpacketListener(path, backlog=0, implementation=impl)

    async def main() -> None:
        first = await aio.open_seqpacket_connection(path, implementation=impl)  # fills it
        second = asyncio.ensure_future(aio.open_seqpacket_connection(path, implementation=impl))
        await asyncio.sleep(0.1)
        assert not second.done(), "the connect must wait, not fail, while the backlog is full"
        accepted = [listener.accept()[0]]
        conn = await asyncio.wait_for(second, 5)
        accepted.append(listener.accept()[0])
        await conn.send(b"through")
        message = accepted[1].recv_message()
        assert message is not None and message.data == b"through"
        for c in accepted:
            c.close()
        first.close()
        conn.close()

    with listener:
        run(main)


def test_stream_helpers_refuse_what_is_not_a_socket() -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="expected a socket, got object"):
            await aio.send_fds(object(), b"x", [])
        with pytest.raises(TypeError, match="expected a socket, got str"):
            await aio.recv_fds("not a socket", 1, 0)

    run(main)


def test_recv_fds_on_a_socket_a_transport_owns(pipe: Tuple[int, int]) -> None:
    """The loop refuses to watch a transport's descriptor; the helper waits on a duplicate."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        transport, _ = await loop.create_unix_connection(asyncio.Protocol, sock=b)
        transport.pause_reading()
        with a:
            receiving = asyncio.ensure_future(aio.recv_fds(b, 100, 1))
            await asyncio.sleep(0.01)
            assert not receiving.done()
            udscompat.send_fds(a, b"x", [pipe[0]])
            data, fds, _, _ = await asyncio.wait_for(receiving, 5)
            assert data == b"x" and len(fds) == 1 and same_file(fds[0], pipe[0])
            close_all(fds)
        transport.close()
        await asyncio.sleep(0)

    run(main)


# -- fairness and the public seams ---------------------------------------------------------------


def test_one_flooding_client_does_not_starve_the_others(short_tmp: str) -> None:
    """A client floods tiny messages the handler only consumes; another still gets answers."""
    path = os.path.join(short_tmp, "srv")
    from udscompat._framing import FrameEncoder

    flood = FrameEncoder().encode(b"x") * 2000

    async def handler(conn: aio.AsyncSeqpacketConn) -> None:
        async for message in conn:
            if message.data == b"ping":
                await conn.send(b"pong")

    async def main() -> List[float]:
        async with await aio.start_seqpacket_server(handler, path, implementation="emulated"):
            hostile = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            hostile.connect(path)
            stop = threading.Event()

            def keep_flooding() -> None:
                while not stop.is_set():
                    try:
                        hostile.sendall(flood)
                    except OSError:
                        return

            flooder = threading.Thread(target=keep_flooding)
            flooder.start()
            waits: List[float] = []
            try:
                await asyncio.sleep(0.1)  # the flood is going
                async with await aio.open_seqpacket_connection(
                    path, implementation="emulated"
                ) as client:
                    loop = asyncio.get_running_loop()
                    for _ in range(5):
                        start = loop.time()
                        await client.send(b"ping")
                        reply = await asyncio.wait_for(client.recv_message(), 10)
                        assert reply is not None and reply.data == b"pong"
                        waits.append(loop.time() - start)
            finally:
                stop.set()
                hostile.shutdown(socket.SHUT_RDWR)
                flooder.join(5)
                hostile.close()
            return waits

    waits = run(main)
    assert max(waits) < 1.0, f"answers took {waits} s while another client flooded"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_closing_wakes_a_task_waiting_to_receive(impl: str) -> None:
    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        receiving = asyncio.ensure_future(a.recv_message())
        await asyncio.sleep(0.01)
        a.close()
        with pytest.raises(OSError) as info:
            await asyncio.wait_for(receiving, 5)
        assert info.value.errno == errno.EBADF
        b.close()

    run(main)


# -- one readiness, several waiters: a send, a cancelled send's rest, a close ---------------------


def test_a_send_after_a_cancelled_one_never_waits_on_its_rest() -> None:
    """A cancelled emulated send leaves its frame's rest going out in the background; the
    next send waited on the same write readiness and took over its slot, so the rest's flush
    was never woken and the next send, awaiting it, stalled (for ever without a timeout; the
    cancelled-sends test took 6 s of 1 s timeouts instead of 0.1 s)."""

    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation="emulated")
        big = b"x" * 1_000_000  # more than the socket buffers hold: the send must wait
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(a.send(big), 0.05)  # cancelled mid-frame: its rest remains
        second = asyncio.ensure_future(a.send(big))
        await asyncio.sleep(0.05)  # the second send waits for writability too

        async def read_all() -> List[int]:
            sizes = []
            for _ in range(2):
                message = await b.recv_message(2_000_000)
                assert message is not None
                sizes.append(len(message.data))
            return sizes

        try:
            sizes = await asyncio.wait_for(read_all(), 10)
            await asyncio.wait_for(second, 5)
        finally:
            second.cancel()
            a.close()
            b.close()
        assert sizes == [len(big), len(big)]

    run(main)


@pytest.mark.parametrize("reads", [True, False], ids=["peer-reads", "peer-stalls"])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_close_while_a_send_waits(impl: str, reads: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() while a task waits to send.  Native: the task raises EBADF.  Emulated: the
    frame in flight is finished first (``CLOSE_DRAIN_TIMEOUT``): the send returns once the
    peer reads it, or raises OSError when the drain gives up -- never hangs, never a
    CancelledError in a task nobody cancelled."""
    monkeypatch.setattr(aio, "CLOSE_DRAIN_TIMEOUT", 0.5)

    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        big = b"x" * (1_000_000 if impl == "emulated" else 100_000)
        sent = 0
        sending = asyncio.ensure_future(a.send(big))
        try:
            while True:  # fill the buffers until a send waits on the loop
                await asyncio.sleep(0.02)
                if not sending.done():
                    break
                sending.result()
                sent += 1
                sending = asyncio.ensure_future(a.send(big))
            a.close()
            if reads:
                for _ in range(sent + 1):
                    message = await asyncio.wait_for(b.recv_message(len(big)), 5)
                    if message is None:
                        break
            if impl == "emulated" and reads:
                assert await asyncio.wait_for(sending, 5) == len(big)
            else:
                with pytest.raises(OSError) as info:
                    await asyncio.wait_for(sending, 5)
                if impl == "native":
                    assert info.value.errno == errno.EBADF
        finally:
            sending.cancel()
            a.close()
            b.close()

    run(main)
