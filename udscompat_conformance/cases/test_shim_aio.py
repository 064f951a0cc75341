"""Shim cases: udscompat.aio, the event-loop integration (the uds README's mio/tokio rows).

Both run on each seqpacket implementation (the ``seqpacket_implementation`` fixture).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, List

import pytest

from udscompat import aio
from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import (
    close_all,
    same_file,
)

case = pytest.mark.case


def _run(main: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main, 30))
    finally:
        loop.close()


@case(
    "shim.aio.echo",
    "asyncio server and 50 clients exchange messages with fds, without blocking the loop",
    rows=["STR-37"],
)
def test_echo(observe: Observer, short_tmp: str, seqpacket_implementation: str) -> None:
    path = os.path.join(short_tmp, "srv")
    r, w = os.pipe()

    async def handler(conn: aio.AsyncSeqpacketConn) -> None:
        async for message in conn.messages(maxfds=1):
            await conn.send(message.data[::-1], message.fds)
            close_all(message.fds)

    async def client(n: int) -> bool:
        async with await aio.open_seqpacket_connection(
            path, implementation=seqpacket_implementation
        ) as conn:
            await conn.send(b"abc%d" % n, [r])
            reply = await conn.recv_message(maxfds=1)
            assert reply is not None and reply.data == (b"abc%d" % n)[::-1]
            same = same_file(reply.fds[0], r)
            close_all(reply.fds)
            return same

    async def main() -> List[bool]:
        async with await aio.start_seqpacket_server(
            handler, path, implementation=seqpacket_implementation
        ):
            return list(await asyncio.gather(*(client(n) for n in range(50))))

    try:
        results = _run(main())
    finally:
        close_all([r, w])
    assert results == [True] * 50
    observe(True)


@case(
    "shim.aio.cancelled_receive",
    "A receive cancelled while waiting loses no message: the next receive gets it",
    rows=["STR-37"],
)
def test_cancelled_receive(observe: Observer, seqpacket_implementation: str) -> None:
    async def main() -> List[bytes]:
        a, b = aio.seqpacket_pair(implementation=seqpacket_implementation)
        async with a, b:
            for _ in range(5):
                waiting = asyncio.ensure_future(b.recv_message())
                await asyncio.sleep(0)
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
            await a.send(b"kept")
            message = await b.recv_message()
            assert message is not None
            return [message.data]

    assert _run(main()) == [b"kept"]
    observe(True)
