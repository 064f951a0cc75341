"""The asyncio layer attacked as a hostile peer and a careless user would (real sockets)."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Awaitable, Callable, List, Set, Tuple

import pytest

from tests.conftest import SEQPACKET_IMPLEMENTATIONS, same_file
from tests.test_aio import LOOPS, uvloop
from udscompat import _seqpacket, aio
from udscompat._platform import backend


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        loop.close()


def test_a_send_cancelled_after_its_frame_started_still_finishes_it() -> None:
    """An emulated send waiting for writability: the readiness callback sends part of its
    frame and the caller is cancelled before it resumes (a timeout in the same loop
    iteration).  The frame's rest stayed in the connection with no flush running: the peer
    waited for the rest of a message until the next send or close (for ever if none)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = aio.seqpacket_pair(implementation="emulated")
        try:
            small = 0
            while True:  # fill the socket with whole frames: the next send waits, nothing sent
                try:
                    a.conn.send(b"s" * 1000)
                except BlockingIOError:
                    break
                small += 1
            big = b"x" * 1_000_000  # more than the socket holds: it goes out in part
            sending = asyncio.ensure_future(a.send(big))
            await asyncio.sleep(0.05)
            assert not sending.done()

            def drain_then_cancel() -> None:
                # The peer reads all there is; the writability this makes and the cancel
                # (a timer due at once) are handled in the same loop iteration, the
                # readiness callback first.
                drained = 0
                while True:
                    try:
                        b.conn.recv_message(1000)
                    except BlockingIOError:
                        break
                    drained += 1
                assert drained == small
                loop.call_later(0, sending.cancel)

            loop.call_soon(drain_then_cancel)
            await asyncio.wait([sending])
            assert sending.cancelled()
            message = await asyncio.wait_for(b.recv_message(2_000_000), 5)
            assert message is not None and message.data == big
        finally:
            a.close()
            b.close()

    run(main)


def test_a_connection_flood_does_not_hold_the_loop_in_one_callback(tmp_path: Path) -> None:
    """Pending connections were all accepted in one readiness callback: a peer connecting
    as fast as the server accepts kept the loop there (740 accepts in one callback with
    backlog=16 and a connecting thread).  Now at most ``aio._STREAK`` per callback."""
    path = str(tmp_path / "s")
    clients: List[socket.socket] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started = 0
        per_iteration: List[int] = []

        async def handler(conn: aio.AsyncSeqpacketConn) -> None:
            nonlocal started
            started += 1
            await asyncio.sleep(30)

        server = await aio.start_seqpacket_server(handler, path, backlog=512)
        try:
            kind = server.implementation
            for _ in range(300):  # all queued before the loop sees the listener readable
                client = socket.socket(
                    socket.AF_UNIX,
                    socket.SOCK_SEQPACKET if kind == "native" else socket.SOCK_STREAM,
                )
                clients.append(client)
                client.connect(path)
            seen = 0

            def tick() -> None:  # once per loop iteration: handlers started since the last
                nonlocal seen
                per_iteration.append(started - seen)
                seen = started
                if started < len(clients) and len(per_iteration) < 1000:
                    loop.call_soon(tick)

            loop.call_soon(tick)
            while started < len(clients) and len(per_iteration) < 1000:
                await asyncio.sleep(0.01)
            assert started == len(clients)
            # Between two ticks, the handlers of at most two callbacks' accepts start.
            assert max(per_iteration) <= 2 * aio._STREAK
        finally:
            server.close()
            for task in list(server._tasks):
                task.cancel()
            await server.wait_closed()

    try:
        run(main)
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_close_after_a_loop_closed_with_a_receive_waiting(impl: str) -> None:
    """A careless user closes a loop with a receive still waiting (the task abandoned), then
    closes the connection: close() woke the dead loop's waiter, which raised RuntimeError
    ("Event loop is closed") before the socket was closed -- the descriptor stayed open."""
    raw_a, raw_b = _seqpacket.seqpacket_pair(implementation=impl)
    a, b = aio.AsyncSeqpacketConn(raw_a), aio.AsyncSeqpacketConn(raw_b)
    fd = b.fileno()
    loop = asyncio.new_event_loop()
    abandoned = loop.create_task(b.recv_message())
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    assert not abandoned.done()
    try:
        b.close()
        assert b.closed
        with pytest.raises(OSError):
            os.fstat(fd)  # the descriptor is closed (this process opens nothing meanwhile)
    finally:
        a.close()
        b.close()
        abandoned._log_destroy_pending = False  # abandoned on purpose


# --- a connection outliving the event loop its tasks were left pending in ----------------------


def new_loop(loop_kind: str) -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()


def abandon(loop: asyncio.AbstractEventLoop, coro: Awaitable[Any]) -> asyncio.Future[Any]:
    """Start ``coro`` as a task of ``loop`` and let it wait: a careless user closes the loop."""
    task = asyncio.ensure_future(coro, loop=loop)
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    assert not task.done()
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # abandoned on purpose
    return task


def in_new_loop(loop_kind: str, main: Callable[[], Awaitable[Any]]) -> Any:
    loop = new_loop(loop_kind)
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), 5))
    finally:
        loop.close()


def pair(impl: str) -> Tuple[aio.AsyncSeqpacketConn, aio.AsyncSeqpacketConn]:
    raw_a, raw_b = _seqpacket.seqpacket_pair(implementation=impl)
    return aio.AsyncSeqpacketConn(raw_a), aio.AsyncSeqpacketConn(raw_b)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_receive_abandoned_with_its_loop_gives_up_its_turn(impl: str, loop_kind: str) -> None:
    """A receive task left waiting in a loop the user closed kept the connection's receive
    turn: every later receive, in any loop, waited for ever.  Its operation never ran (the
    loop died first), so the turn is taken back and the message goes to the live receive."""
    a, b = pair(impl)
    try:
        first = new_loop(loop_kind)
        abandon(first, b.recv_message())
        first.close()

        async def main() -> Any:
            await a.send(b"for the live loop")
            return await b.recv_message()

        message = in_new_loop(loop_kind, main)
        assert message is not None and message.data == b"for the live loop"
        assert not select.select([b.fileno()], [], [], 0)[0]  # nothing else arrived
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("how", ["recv_message", "recv_message_into", "peek"])
@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_message_taken_for_a_task_abandoned_with_its_loop_is_not_lost(
    impl: str, how: str, pipe: Tuple[int, int]
) -> None:
    """The loop stops in the iteration whose readiness callback took a message for a waiting
    receive, and the user closes it: the task never resumes with the message.  Freeing the
    turn alone would lose it (and its descriptor); it goes to the next receive, in the next
    loop.  A peek's descriptor copies are closed (the fd-leak check counts them).  (The
    window is the selector loop's: uvloop resumes the task in the same run -- checked.)"""
    a, b = pair(impl)
    try:
        first = asyncio.new_event_loop()
        receive: Awaitable[Any]
        if how == "recv_message":
            receive = b.recv_message(maxfds=1)
        elif how == "recv_message_into":
            receive = b.recv_message_into(bytearray(100), maxfds=1)
        else:
            receive = b.peek(maxfds=1)
        abandoned = abandon(first, receive)

        async def send_and_stop() -> None:
            # Returning stops the loop after the next iteration, whose I/O callback (the
            # receive's) runs beside the stop: the task's wake-up comes one iteration later.
            a.conn.send(b"taken, never delivered", [pipe[0]])

        first.run_until_complete(send_and_stop())
        first.close()
        assert not abandoned.done()
        if how != "peek" or impl == "emulated":
            # The precondition: the message left the socket for the abandoned task (or,
            # for an emulated peek, for the connection's decoded frames).
            assert not select.select([b.fileno()], [], [], 0)[0]

        message = in_new_loop("asyncio", lambda: b.recv_message(maxfds=1))
        assert message is not None and message.data == b"taken, never delivered"
        assert len(message.fds) == 1 and same_file(message.fds[0], pipe[0])
        os.close(message.fds[0])
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_message_taken_for_a_task_collected_with_its_loop_is_not_lost(impl: str) -> None:
    """As above, but the collector destroys the abandoned task before the next receive: its
    coroutine is closed (GeneratorExit), which ran its ``finally`` and dropped the message."""
    a, b = pair(impl)
    try:
        first = asyncio.new_event_loop()
        abandoned = abandon(first, b.recv_message())

        async def send_and_stop() -> None:
            a.conn.send(b"taken, then collected")

        first.run_until_complete(send_and_stop())
        first.close()
        assert not abandoned.done()
        assert not select.select([b.fileno()], [], [], 0)[0]
        del abandoned, first
        gc.collect()

        message = in_new_loop("asyncio", b.recv_message)
        assert message is not None and message.data == b"taken, then collected"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_task_collected_after_its_turn_was_taken_back_releases_nothing(impl: str) -> None:
    """The collector closes a dead task's coroutine after a receive of the next loop took its
    turn back: the dead task's ``finally`` releases the turn it no longer holds.  It must not
    free the live holder's turn (a second receive would then run beside it)."""
    a, b = pair(impl)
    try:
        first = asyncio.new_event_loop()
        dead = abandon(first, b.recv_message())
        first.close()

        async def main() -> List[bytes]:
            holder = asyncio.ensure_future(b.recv_message())
            for _ in range(3):  # it takes the turn back and waits for a message
                await asyncio.sleep(0)
            assert b._recv_turn.busy and not holder.done()
            nonlocal dead
            del dead
            collect_abandoned()  # the dead task's coroutine is closed: its finally runs
            assert b._recv_turn.busy  # still the holder's
            queued = asyncio.ensure_future(b.recv_message())
            for _ in range(3):
                await asyncio.sleep(0)
            await a.send(b"one")
            await a.send(b"two")
            got = [await holder, await queued]
            return [m.data for m in got if m is not None]

        assert in_new_loop("asyncio", main) == [b"one", b"two"]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_send_abandoned_with_its_loop_gives_up_its_turn(impl: str, loop_kind: str) -> None:
    """A send waiting for room, left in a loop the user closed, kept the send turn: every
    later send waited for ever.  Its operation never ran: the peer gets the live send's
    message after the filler, and never the abandoned one's."""
    a, b = pair(impl)
    try:
        filler = 0
        while True:  # fill the socket: the next send waits
            try:
                a.conn.send(b"f" * 1000)
            except BlockingIOError:
                break
            filler += 1
        first = new_loop(loop_kind)
        abandon(first, a.send(b"abandoned"))
        first.close()

        async def main() -> List[bytes]:
            got = []
            for _ in range(filler):  # the peer reads while the live send waits
                message = await b.recv_message(1000)
                assert message is not None
                got.append(message.data)
            await a.send(b"live")
            message = await b.recv_message()
            assert message is not None
            got.append(message.data)
            return got

        assert in_new_loop(loop_kind, main) == [b"f" * 1000] * filler + [b"live"]
        assert not select.select([b.fileno()], [], [], 0)[0]  # and nothing after it
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_frame_half_sent_in_a_closed_loop_is_finished_by_the_next_send(loop_kind: str) -> None:
    """An emulated send whose frame went out in part waits for its background flush when the
    user closes the loop: the send turn stayed held and the dead flush awaited -- the next
    send waited for ever.  Now the next send (another loop) finishes that frame's rest
    first, then sends its own: the peer reads both whole, in order.  (A native send is
    atomic: the abandoned native send is the test above.)"""
    a, b = pair("emulated")
    try:
        big = bytes(range(256)) * 4000  # 1 MB: more than the socket holds
        first = new_loop(loop_kind)
        abandon(first, a.send(big))
        first.close()
        with pytest.raises(BlockingIOError):
            a.conn.flush()  # the frame's rest is still in the connection

        async def main() -> List[bytes]:
            reading = asyncio.ensure_future(b.recv_message(2_000_000))
            await a.send(b"next")
            got = [await reading, await b.recv_message()]
            return [m.data for m in got if m is not None]

        assert in_new_loop(loop_kind, main) == [big, b"next"]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_second_live_loop_is_refused_naming_the_cause(impl: str, loop_kind: str) -> None:
    """While a task of another loop (not closed: it may run again) waits to receive, a receive
    from a second loop would wait for ever (or race it from another thread): it is refused
    with an error naming the cause.  Once the first loop is closed, the second may go on."""
    a, b = pair(impl)
    first = new_loop(loop_kind)
    try:
        abandon(first, b.recv_message())

        async def refused() -> None:
            with pytest.raises(RuntimeError, match="another event loop"):
                await b.recv_message()

        in_new_loop(loop_kind, refused)
        first.close()

        async def main() -> Any:
            await a.send(b"after the first loop closed")
            return await b.recv_message()

        message = in_new_loop(loop_kind, main)
        assert message is not None and message.data == b"after the first loop closed"
    finally:
        first.close()
        a.close()
        b.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_receive_from_this_threads_loop_while_the_last_one_runs_in_another(
    impl: str, loop_kind: str
) -> None:
    """The connection last waited in a loop that now runs in another thread, idle (no call of
    the connection waits there); a receive from this thread's loop must wait in this loop.
    Asking which loop runs is a system call before Python 3.12, so the receive first trusts
    the loop it last waited in, where that loop says it runs in this thread: one that runs
    elsewhere must not be taken for it (the waiter would belong to the other thread's loop)."""
    a, b = pair(impl)
    elsewhere = new_loop(loop_kind)
    started = threading.Event()
    thread = threading.Thread(target=elsewhere.run_forever, daemon=True)
    try:

        async def first() -> Any:
            receiving = asyncio.ensure_future(b.recv_message())  # waits: the loop is recorded
            await asyncio.sleep(0.01)
            await a.send(b"in the first loop")
            return await receiving

        message = elsewhere.run_until_complete(asyncio.wait_for(first(), 60))
        assert message is not None and message.data == b"in the first loop"
        elsewhere.call_soon(started.set)
        thread.start()
        assert started.wait(10)  # the first loop runs in the other thread from now on

        async def main() -> Any:
            receiving = asyncio.ensure_future(b.recv_message())
            await asyncio.sleep(0.05)  # the receive waits: nothing was sent yet
            assert not receiving.done()
            await a.send(b"in this thread's loop")
            return await receiving

        message = in_new_loop(loop_kind, main)
        assert message is not None and message.data == b"in this thread's loop"
    finally:
        if thread.is_alive():
            elsewhere.call_soon_threadsafe(elsewhere.stop)
            thread.join(10)
        elsewhere.close()
        a.close()
        b.close()


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_close_drops_what_a_task_of_a_closed_loop_took(impl: str, pipe: Tuple[int, int]) -> None:
    """A message with a descriptor taken for a task abandoned with its loop, then the
    connection closed: the message is nobody's, its descriptor is closed (the fd-leak check
    around every test counts it)."""
    a, b = pair(impl)
    try:
        first = asyncio.new_event_loop()
        abandon(first, b.recv_message(maxfds=1))

        async def send_and_stop() -> None:
            a.conn.send(b"with a descriptor", [pipe[0]])

        first.run_until_complete(send_and_stop())
        first.close()
        assert not select.select([b.fileno()], [], [], 0)[0]  # taken for the abandoned task
    finally:
        a.close()
        b.close()


# --- close() not awaited, then the loop closed by hand ------------------------------------------

READER = """
import socket, sys
from udscompat import _seqpacket
conn = _seqpacket.SeqpacketConn.from_socket(socket.socket(fileno=int(sys.argv[1])))
sys.stdin.readline()  # read only once told: the sender's frame stays partly unsent till then
while True:
    try:
        message = conn.recv_message(1 << 23)
    except OSError as exc:
        print(type(exc).__name__, flush=True)
        break
    if message is None:
        print("end", flush=True)
        break
    print(len(message.data), sorted(set(message.data.decode())), flush=True)
"""


def reader_peer(impl: str) -> Tuple[aio.AsyncSeqpacketConn, subprocess.Popen[bytes]]:
    """A connection to a reader in another process, which reads once a line comes on stdin."""
    kind = socket.SOCK_SEQPACKET if impl == "native" else socket.SOCK_STREAM
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    try:
        peer = subprocess.Popen(
            [sys.executable, "-c", READER, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
    finally:
        theirs.close()
    return aio.AsyncSeqpacketConn(_seqpacket.SeqpacketConn.from_socket(ours)), peer


def close_without_waiting(conn: aio.AsyncSeqpacketConn, loop_kind: str) -> None:
    """In a loop closed by hand: a message, a frame too big for the socket (emulated), then
    close() -- not awaited -- and the loop's end."""

    async def main() -> None:
        await conn.send(b"m" * 10)
        if conn.implementation == "emulated":
            # Non-blocking: what fits goes out, the rest waits in the connection.
            conn.conn.send(b"x" * 1_000_000)
            with pytest.raises(BlockingIOError):
                conn.conn.flush()
        conn.close()

    loop = new_loop(loop_kind)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def collect_abandoned() -> None:
    """Collect the tasks a closed loop left, here: their coroutines, never started, warn
    (RuntimeWarning: never awaited) wherever the collector next runs -- in another test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gc.collect()


def finish(peer: subprocess.Popen[bytes]) -> List[str]:
    """Tell the reader to read; what it saw, line by line (it must end on its own)."""
    try:
        out, _ = peer.communicate(b"go\n", timeout=20)
    except subprocess.TimeoutExpired:
        peer.kill()
        peer.communicate()
        raise AssertionError("the reader still waits: the frame's socket is still open") from None
    return out.decode().splitlines()


@pytest.mark.parametrize("later", ["close", "closed", "wait_closed", "send", "recv_message"])
@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_close_left_in_a_loop_closed_by_hand_ends_at_the_next_call(
    impl: str, loop_kind: str, later: str
) -> None:
    """close() without awaiting wait_closed(), then the loop closed by hand (not asyncio.run)
    with an emulated frame partly unsent: the socket stayed open until the collector came,
    the reader waiting for the frame's rest (and a send went out after it).  The next call
    closes it -- a send or receive raising EBADF; the reader sees the frame cut by
    end-of-stream, never a frame joined to another."""
    conn, peer = reader_peer(impl)
    fd = conn.fileno()
    try:
        close_without_waiting(conn, loop_kind)
        if impl == "native":
            assert conn.closed  # nothing partly sent: closed at once
        else:
            os.fstat(fd)  # still open: close()'s task was left pending in the closed loop
        if later == "close":
            conn.close()
        elif later == "closed":
            assert conn.closed
        elif later == "wait_closed":
            in_new_loop(loop_kind, conn.wait_closed)
        else:
            call = (lambda: conn.send(b"late")) if later == "send" else conn.recv_message
            with pytest.raises(OSError) as raised:
                in_new_loop(loop_kind, call)
            assert raised.value.errno == errno.EBADF
        assert conn.closed
        with pytest.raises(OSError):
            os.fstat(fd)  # closed (this process opens nothing meanwhile)
        lines = finish(peer)
    finally:
        conn.close()
        collect_abandoned()
        if peer.poll() is None:
            peer.kill()
        peer.wait()
        if peer.stdout is not None:
            peer.stdout.close()
    expected_end = "end" if impl == "native" else "FramingError"
    assert lines == ["10 ['m']", expected_end]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_calls_after_close_are_refused_while_the_frame_drains(loop_kind: str) -> None:
    """close() returned, its task still finishing an emulated frame: a new send waited behind
    it and went out after it (a send after close!), a new receive still received.  Both raise
    EBADF at once, as after any close; the peer gets the whole frame, then end-of-stream."""
    a, b = pair("emulated")
    big = bytes(range(256)) * 4000

    async def main() -> List[Any]:
        a.conn.send(big)  # non-blocking: part goes out, the rest waits in the connection
        a.close()
        assert not a.closed  # finishing the frame
        said: List[Any] = []
        for call in (lambda: a.send(b"after close"), a.recv_message, a.peek):
            try:
                await call()
            except OSError as exc:
                said.append(errno.errorcode[exc.errno or 0])
        got = [message.data async for message in b.messages(2_000_000)]
        await a.wait_closed()
        return [said, got]

    try:
        assert in_new_loop(loop_kind, main) == [["EBADF"] * 3, [big]]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_close_left_in_a_loop_closed_by_hand_ends_with_the_collector(loop_kind: str) -> None:
    """As above, with no later call: the collector destroying close()'s task closes the socket
    and says so (ResourceWarning).  It raised RuntimeError in the task's ``finally`` instead
    ("Event loop is closed", cancelling the dead loop's flush), leaving the socket to its
    own finaliser."""
    conn, peer = reader_peer("emulated")
    fd = conn.fileno()
    unraisable: List[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        close_without_waiting(conn, loop_kind)
        os.fstat(fd)  # still open: close()'s task was left pending in the closed loop
        del conn
        with pytest.warns(ResourceWarning, match="closed before close"):
            collect_abandoned()
        with pytest.raises(OSError):
            os.fstat(fd)
        assert finish(peer) == ["10 ['m']", "FramingError"]
        assert not unraisable, [u.exc_value for u in unraisable]
    finally:
        sys.unraisablehook = hook
        if peer.poll() is None:
            peer.kill()
        peer.wait()
        if peer.stdout is not None:
            peer.stdout.close()


# --- a peer that died with messages unread ------------------------------------------------------

SLEEPER = """
import sys
print("ready", flush=True)
sys.stdin.readline()  # never reads its socket: killed first
"""


def dead_peer_conn(impl: str) -> _seqpacket.SeqpacketConn:
    """Our end of a connection whose peer, another process, was killed with three of our
    messages unread in its socket."""
    kind = socket.SOCK_SEQPACKET if impl == "native" else socket.SOCK_STREAM
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    conn = _seqpacket.SeqpacketConn.from_socket(ours)
    try:
        peer = subprocess.Popen(
            [sys.executable, "-c", SLEEPER],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
    finally:
        theirs.close()
    try:
        assert peer.stdout is not None and peer.stdout.readline() == b"ready\n"
        for i in range(3):
            conn.send(b"never read %d" % i)
    finally:
        peer.kill()
        peer.communicate()
    return conn


def outcome(call: Callable[[], Any]) -> str:
    try:
        result = call()
    except OSError as exc:
        return type(exc).__name__
    return "end" if result is None else "sent"


#: What each call gives after a peer died with messages unread: send, send, receive, receive.
DEAD_PEER = {
    # af_unix.c: the dying socket sets our sk_err to ECONNRESET (unread data in its queue),
    # reported once by the first call that checks it -- a seqpacket send does (it allocates
    # through sock_alloc_send_pskb), a stream send does not (EPIPE from the peer's shutdown),
    # a receive of either kind does, once its queue is empty.
    "Linux": {
        "native": ["ConnectionResetError", "BrokenPipeError", "end", "end"],
        "emulated": ["BrokenPipeError", "BrokenPipeError", "ConnectionResetError", "end"],
    },
}


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_peer_that_died_with_messages_unread(impl: str, loop_kind: str) -> None:
    """The documented errors after a peer (another process, killed) died with our messages
    unread: sends raise ConnectionError -- BrokenPipeError, or on Linux ConnectionResetError
    once from a native send -- and the blocking and asyncio paths say the same, call for
    call.  send() promised EPIPE alone: a caller catching BrokenPipeError missed Linux's
    ECONNRESET."""
    blocking = dead_peer_conn(impl)
    try:
        said = [
            outcome(lambda: blocking.send(b"after")),
            outcome(lambda: blocking.send(b"after")),
            outcome(blocking.recv_message),
            outcome(blocking.recv_message),
        ]
    finally:
        blocking.close()

    conn = aio.AsyncSeqpacketConn(dead_peer_conn(impl))

    async def main() -> List[str]:
        async def result(call: Callable[[], Awaitable[Any]]) -> str:
            try:
                got = await call()
            except OSError as exc:
                return type(exc).__name__
            return "end" if got is None else "sent"

        try:
            return [
                await result(lambda: conn.send(b"after")),
                await result(lambda: conn.send(b"after")),
                await result(conn.recv_message),
                await result(conn.recv_message),
            ]
        finally:
            conn.close()

    assert in_new_loop(loop_kind, main) == said
    errors = {"BrokenPipeError", "ConnectionResetError"}  # both ConnectionError, as documented
    assert said[0] in errors and said[1] in errors
    expected = DEAD_PEER.get(backend.OS_NAME)
    if expected is not None:
        assert said == expected[impl]
    for documented in (_seqpacket.SeqpacketConn.send, aio.AsyncSeqpacketConn.send):
        for name in {said[0], said[1]}:  # the documentation names what the kernel says
            assert name in (documented.__doc__ or ""), documented


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_send_waiting_when_its_peer_dies(impl: str, loop_kind: str) -> None:
    """A send waiting for room when the peer (another process, our messages unread) is
    killed: it ends at once with the error a send after the death gives (the table above)."""
    kind = socket.SOCK_SEQPACKET if impl == "native" else socket.SOCK_STREAM
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    conn = aio.AsyncSeqpacketConn(_seqpacket.SeqpacketConn.from_socket(ours))
    try:
        peer = subprocess.Popen(
            [sys.executable, "-c", SLEEPER],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
    finally:
        theirs.close()

    async def main() -> str:
        while True:  # fill the socket: the next send waits
            try:
                conn.conn.send(b"f" * 1000)
            except BlockingIOError:
                break
        sending = asyncio.ensure_future(conn.send(b"waits"))
        for _ in range(3):  # it starts and waits for room
            await asyncio.sleep(0)
        assert not sending.done()
        peer.kill()
        peer.communicate()  # dead (a moment's block of the loop; the send is woken after)
        try:
            await asyncio.wait_for(sending, 5)
        except OSError as exc:
            return type(exc).__name__
        return "sent"

    try:
        assert peer.stdout is not None and peer.stdout.readline() == b"ready\n"
        said = in_new_loop(loop_kind, main)
    finally:
        conn.close()
        if peer.poll() is None:
            peer.kill()
        peer.communicate()
    assert said in ("BrokenPipeError", "ConnectionResetError")
    expected = DEAD_PEER.get(backend.OS_NAME)
    if expected is not None:
        assert said == expected[impl][0]


# Tasks created in a loop closed before they started warn when collected, here at random.
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_loops_closed_at_random_under_a_sender_and_a_receiver(impl: str, loop_kind: str) -> None:
    """30 loops in turn, each closed by hand at a random moment under a sending task and a
    receiving task (their tasks abandoned, a third of the time collected at once): every
    completed send arrives once, in order, an abandoned one at most once, and nothing else.
    (The old turns hung at the second loop.)"""
    rnd = random.Random(f"{impl}-{loop_kind}")
    a, b = pair(impl)
    sizes = [8, 5000, 90000] if impl == "native" else [8, 5000, 300000]
    completed: List[int] = []
    abandoned: Set[int] = set()
    received: List[int] = []
    next_id = 0

    async def sender() -> None:
        nonlocal next_id
        while True:
            ident, next_id = next_id, next_id + 1
            sending.add(ident)
            await a.send(struct.pack("!I", ident) + b"p" * rnd.choice(sizes))
            sending.discard(ident)
            completed.append(ident)

    async def receiver() -> None:
        while True:
            if rnd.random() < 0.3:
                await asyncio.sleep(rnd.random() * 0.002)  # a slow reader now and then
            message = await b.recv_message(400_000)
            assert message is not None
            received.append(struct.unpack("!I", message.data[:4])[0])

    async def run_a_while() -> None:
        for _ in range(rnd.randrange(30)):
            await asyncio.sleep(0)
        if rnd.random() < 0.5:
            await asyncio.sleep(rnd.random() * 0.003)

    try:
        for _ in range(30):
            sending: Set[int] = set()
            loop = new_loop(loop_kind)
            tasks = [loop.create_task(sender()), loop.create_task(receiver())]
            loop.run_until_complete(run_a_while())
            loop.close()
            for task in tasks:
                task._log_destroy_pending = False  # type: ignore[attr-defined]
            abandoned |= sending
            if rnd.random() < 0.3:
                del tasks
                collect_abandoned()

        async def last() -> None:
            a.close()  # an emulated frame's rest goes out first; then end-of-stream
            async for message in b:
                received.append(struct.unpack("!I", message.data[:4])[0])

        in_new_loop(loop_kind, last)
    finally:
        a.close()
        b.close()
        collect_abandoned()
    assert received == sorted(set(received))  # in order, none twice
    assert set(completed) <= set(received)  # no completed send lost
    assert set(received) <= set(completed) | abandoned  # nothing else
