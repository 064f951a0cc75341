"""The asyncio side of the connection methods (issue 14): several buffers, credentials,
peek, recv_message_into, local_addr, and cancellation that loses nothing and leaks nothing."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Awaitable, Callable, List, Optional, Tuple

import pytest

import udscompat
from tests.conftest import SEQPACKET_IMPLEMENTATIONS, only_on, same_file
from udscompat import Message, ReceivedCredentials, ReceivedInto, aio


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


def close_all(fds: Tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_async_buffers_peek_and_into(impl: str, pipe: Tuple[int, int]) -> None:
    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        async with a, b:
            assert await a.send([b"peek ", b"me"], [pipe[0]]) == 7
            peeked = await b.peek(4, maxfds=1)
            assert (peeked.data, peeked.truncated) == (b"peek", True)
            buffer = bytearray(16)
            got = await b.recv_message_into(buffer, maxfds=1)
            assert got.nbytes == 7 and buffer[:7] == b"peek me"
            assert set(peeked.fds).isdisjoint(got.fds)
            assert all(same_file(fd, pipe[0]) for fd in peeked.fds + got.fds)
            close_all(peeked.fds + got.fds)
            assert b.take_error() is None
            a.close()
            await a.wait_closed()
            assert await b.peek() is None
            assert await b.recv_message_into(buffer) is None

    run(main)


@only_on("Linux", "SCM_CREDENTIALS: every message once SO_PASSCRED is on")
@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_async_credentials(impl: str) -> None:
    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        async with a, b:
            b.pass_credentials()
            await a.send(b"who", credentials=udscompat.send_credentials())
            message = await b.recv_message()
            expected = ReceivedCredentials(os.getpid(), os.getuid(), os.getgid(), None, None, None)
            assert message == Message(b"who", (), False, expected)
            assert b.peer_security_label() is None or isinstance(b.peer_security_label(), bytes)

    run(main)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_cancelled_peeks_and_receives_into_lose_and_leak_nothing(
    impl: str, seed: int, pipe: Tuple[int, int]
) -> None:
    """Peeks, receives into buffers and plain receives, cancelled at random points: every
    message arrives once and in order, and the copies cancelled peeks made are closed
    (the autouse leak check)."""
    rng = random.Random(seed)
    count = 120

    async def sender(a: aio.AsyncSeqpacketConn) -> None:
        for i in range(count):
            await a.send(b"%06d" % i + b"." * rng.choice([0, 10, 3000]), [pipe[0]] if i % 3 else ())
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        a.close()
        await a.wait_closed()

    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        sending = asyncio.ensure_future(sender(a))
        got: List[int] = []
        cancelled = 0
        buffer = bytearray(4096)
        while True:
            kind = rng.choice(["peek", "into", "recv"])
            if kind == "peek":
                task: asyncio.Future[object] = asyncio.ensure_future(b.peek(4096, 1))
            elif kind == "into":
                task = asyncio.ensure_future(b.recv_message_into(buffer, 1))
            else:
                task = asyncio.ensure_future(b.recv_message(4096, 1))
            for _ in range(rng.choice([0, 0, 1, 3])):
                await asyncio.sleep(0)
            if not task.done():
                task.cancel()
            try:
                result = await task
            except asyncio.CancelledError:
                cancelled += 1
                continue
            if result is None:
                break
            if kind == "peek":
                assert isinstance(result, Message)
                close_all(result.fds)
                continue
            if isinstance(result, ReceivedInto):
                data: bytes = bytes(buffer[: result.nbytes])
                fds = result.fds
            else:
                assert isinstance(result, Message)
                data, fds = result.data, result.fds
            got.append(int(data[:6]))
            assert len(fds) == (1 if got[-1] % 3 else 0)
            close_all(fds)
        await sending
        b.close()
        assert got == list(range(count))
        assert cancelled > 10, "the test must actually cancel"

    run(main)


async def _cancel_after_it_completed(task: asyncio.Future[object]) -> None:
    """Cancel ``task`` after its readiness callback completed the operation but before the
    task resumed: the window where a result would be lost without ``keep``."""
    await asyncio.sleep(0)  # the loop runs the callback (I/O comes after ready handles) ...
    await asyncio.sleep(0)  # ... and this resumes before the task does
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_the_cancellation_window_after_the_operation_loses_nothing(
    impl: str, pipe: Tuple[int, int]
) -> None:
    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        async with a, b:
            buffer = bytearray(8)
            into = asyncio.ensure_future(b.recv_message_into(buffer, 1))
            await asyncio.sleep(0)  # it waits: nothing to read yet
            a.conn.send(b"kept", [pipe[0]])
            await _cancel_after_it_completed(into)
            message = await b.recv_message(maxfds=1)  # the message went to the buffer: kept
            assert message.data == b"kept" and len(message.fds) == 1
            close_all(message.fds)
            peek = asyncio.ensure_future(b.peek(8, 1))
            await asyncio.sleep(0)
            a.conn.send(b"peeked", [pipe[0]])
            await _cancel_after_it_completed(peek)  # its copy is closed (leak check)
            message = await b.recv_message(maxfds=1)
            assert message.data == b"peeked" and len(message.fds) == 1
            close_all(message.fds)
            a.conn.send(b"after")
            await asyncio.sleep(0.01)
            into = asyncio.ensure_future(b.recv_message(8))
            kept = await into
            assert kept == Message(b"after")

    run(main)


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_peek_sees_a_message_kept_for_the_next_receive(impl: str) -> None:
    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        async with a, b:
            received = asyncio.ensure_future(b.recv_message())
            await asyncio.sleep(0)
            a.conn.send(b"kept")
            await _cancel_after_it_completed(received)
            assert await b.peek() == Message(b"kept")  # the kept message, not the socket's
            a.conn.send(b"second")
            assert await b.recv_message() == Message(b"kept")
            assert await b.recv_message() == Message(b"second")

    run(main)


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_open_from_a_bound_local_path(short_tmp: Path, impl: str) -> None:
    server, client = str(short_tmp / "server"), str(short_tmp / "client")
    peers: List[Optional[str]] = []

    async def handler(conn: aio.AsyncSeqpacketConn) -> None:
        peers.append(conn.peer_addr.path)
        await conn.send(b"hi")

    async def main() -> None:
        async with await aio.start_seqpacket_server(handler, server, implementation=impl):
            conn = await aio.open_seqpacket_connection(
                server, implementation=impl, local_addr=client
            )
            async with conn:
                assert await conn.recv_message() == Message(b"hi")
                assert conn.local_addr.path == client and conn.peer_addr.path == server
        assert peers == [client] and not os.path.exists(client)

    run(main)
