"""The asyncio layer attacked as a hostile peer and a careless user would (real sockets)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable, List

import pytest

from tests.conftest import SEQPACKET_IMPLEMENTATIONS
from udscompat import _seqpacket, aio


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
