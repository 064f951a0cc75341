"""asyncio: seqpacket connections and fd passing without blocking the event loop.

The blocking types already keep their sockets non-blocking; this module puts
them in non-blocking mode and waits for readiness with the loop's
``add_reader``/``add_writer``, so it works on any loop that has them (the
default selector loop, uvloop).

Cancellation never loses anything:

* a receive takes a message from the socket and returns it in one step, with
  no ``await`` in between, so a cancelled receive consumed nothing and the
  next one gets the message;
* a send is whole or nothing: a native seqpacket send is atomic in the
  kernel; an emulated frame that went out in part is finished by a shielded
  task even if the caller is cancelled (its rest is queued in the
  connection, never dropped, and the next send waits for it).

Backpressure comes from the kernel: a send waits while the peer does not
read, and at most one partly sent frame is buffered per connection.

Fairness: a readiness callback runs one operation, whose own work is bounded
(a non-blocking emulated receive reads at most a few chunks), and a
connection whose operations keep completing at once yields to the loop every
``_STREAK`` of them, so one fast or hostile peer cannot starve the others.

One loop at a time: a connection may move to another event loop between
operations.  A task left pending in a loop closed by hand (``loop.close()``
without the cancelling ``asyncio.run`` does) never resumes, and the next
operation from another loop takes its turn back: its operation either never
ran, consuming nothing, or what it received goes to the next receive.
Tasks of a loop still open make another loop's operations raise
``RuntimeError``.

Only the connections' public surface is used (``send``, ``recv_message``,
``pending``, ``flush``, ``fileno``, ``close``), so anything this module does
a ``selectors`` user can do too.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import os
import socket
import warnings
from threading import get_ident as _thread_ident
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from udscompat import _fdpass, _io, _seqpacket
from udscompat._address import UnixSocketAddr
from udscompat._ancillary import Buffers
from udscompat._bind import (
    AddressArg,
    as_address,
    bind,
    close_listener,
    connect_error,
    connect_unix,
)
from udscompat._msgcreds import SendCredentials
from udscompat._platform import backend
from udscompat._records import (
    ConnCredentials,
    Message,
    ReceivedInto,
    WritableBuffers,
    new_message,
)
from udscompat._sockarg import socket_for

__all__ = [
    "AsyncSeqpacketConn",
    "SeqpacketServer",
    "open_seqpacket_connection",
    "recv_fds",
    "send_fds",
    "seqpacket_pair",
    "start_seqpacket_server",
]

T = TypeVar("T")
#: Where an operation's result goes when its caller cannot take it (see ``_Readiness.run``).
Keep = Callable[[Any], None]
Handler = Callable[["AsyncSeqpacketConn"], Awaitable[Any]]

_CONNECT_RETRY_MAX = 0.05  # seconds between connect attempts while the backlog is full
#: Operations completed without waiting, after which a connection yields to the loop once.
_STREAK = 32
#: How long ``close`` keeps trying to finish a partly sent (emulated) frame.
CLOSE_DRAIN_TIMEOUT = 10.0


def _close_copies(message: Optional[Message]) -> None:
    """A peek whose caller was cancelled: its descriptor copies are nobody's."""
    if message is not None:
        for fd in message.fds:
            os.close(fd)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _ready(fd: int, *, write: bool) -> None:
    """Wait once until ``fd`` is writable (or readable); the registration ends with the wait."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await waiter
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _closed(future: asyncio.Future[Any]) -> bool:
    """Whether ``future``'s loop was closed: the task awaiting it will never resume."""
    return future.get_loop().is_closed()


def _another_loop(what: str, loop: asyncio.AbstractEventLoop) -> RuntimeError:
    return RuntimeError(
        f"a task of another event loop ({loop!r}), not closed, is {what} on this connection: "
        "use a connection from one loop at a time (let that task finish, cancel it, or close "
        "its loop first)"
    )


class _Readiness:
    """Runs one direction's operations on one descriptor, as the loop reports it ready.

    Like asyncio's transports, the operation runs inside the loop's
    readiness callback, so the data is taken in the same loop iteration that
    saw it (trying in the woken task instead meets the next iteration's
    stale "readable" and fails).  The registration is kept between
    operations -- registering costs two ``epoll_ctl`` calls each time -- and
    dropped when the loop reports readiness with no operation waiting (the
    loop is level-triggered and would spin); ``ready`` then says to try at
    once next time.

    One loop at a time: operations of a loop that was closed under them
    (their tasks will never resume) are forgotten when another loop comes --
    those whose operation never ran consumed nothing, and a result taken for
    one goes to its ``keep`` -- while those of a loop still open make
    another loop's operations raise ``RuntimeError``.
    """

    __slots__ = ("_fd", "_loop", "_registered", "_unclaimed", "_waiting", "_write", "ready")

    def __init__(self, fd: int, *, write: bool) -> None:
        self._fd = fd
        self._write = write
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._registered = False
        #: The operations waiting, in order: a send and a cancelled send's rest (or a
        #: close's flush) may wait at once, and each must be woken (or failed by ``stop``).
        self._waiting: Deque[Tuple[asyncio.Future[Any], Callable[[], Any], Optional[Keep]]] = (
            collections.deque()
        )
        #: Results the callback set for waiters whose tasks have not resumed yet, with the
        #: ``keep`` each goes to if its task never takes it.
        self._unclaimed: Dict[asyncio.Future[Any], Keep] = {}
        #: Worth trying the operation before waiting for the loop.
        self.ready = True

    async def run(
        self,
        operation: Callable[[], T],
        keep: Optional[Callable[[T], None]] = None,
        turn: Optional[_Turn] = None,
    ) -> T:
        """``operation()``, retried as the loop reports readiness while it would block.

        If the caller is cancelled after the operation succeeded in the
        callback -- or its task is destroyed, its loop closed -- the result
        goes to ``keep`` (a receive must not lose it).  ``turn``: the one
        the caller holds, told the loop it waits in.
        """
        if self.ready and not self._waiting:
            try:
                return operation()
            except BlockingIOError:
                self.ready = False
        # The loop last waited in, where it says it runs in this thread (asyncio's own loops
        # set ``_thread_id`` for the duration of ``run_forever``; one thread runs one loop at a
        # time); any other is asked.  Before Python 3.12 ``asyncio.get_running_loop()`` is a
        # getpid(2) system call (0.24-0.29 us on 3.7-3.11, 0.04 us on 3.12), and every receive
        # that waits needs the loop: two per echo round trip.
        loop = self._loop
        if loop is None or getattr(loop, "_thread_id", None) != _thread_ident():
            loop = asyncio.get_running_loop()
        if turn is not None:
            turn.loop = loop
        if loop is not self._loop:
            self._move_to(loop)
        if not self._registered:
            if self._write:
                loop.add_writer(self._fd, self._wake)
            else:
                loop.add_reader(self._fd, self._wake)
            self._registered = True
        waiter: asyncio.Future[T] = loop.create_future()
        entry = (waiter, operation, keep)
        self._waiting.append(entry)
        try:
            return await waiter
        except BaseException:
            # Cancelled, or its task destroyed with its closed loop (GeneratorExit), maybe
            # after the callback had done the operation: that result is the next caller's.
            self._claim(waiter)
            raise
        finally:
            self._unclaimed.pop(waiter, None)
            if not waiter.done() or waiter.cancelled():  # _wake did not take it
                try:
                    self._waiting.remove(entry)
                except ValueError:
                    pass  # stop or _move_to took it already

    def _claim(self, waiter: asyncio.Future[Any]) -> None:
        keep = self._unclaimed.pop(waiter, None)
        if keep is not None:
            keep(waiter.result())

    def _wake(self) -> None:
        waiting = self._waiting
        if not waiting:
            self.stop()
            self.ready = True
            return
        while waiting:
            waiter, operation, keep = waiting[0]
            if not waiter.done():
                try:
                    result = operation()
                except BlockingIOError:
                    return  # not ready after all: keep waiting
                except BaseException as exc:
                    waiter.set_exception(exc)
                else:
                    waiter.set_result(result)
                    if keep is not None:
                        self._unclaimed[waiter] = keep
            waiting.popleft()

    def _move_to(self, loop: asyncio.AbstractEventLoop) -> None:
        """Leave the loop the registration belongs to, for ``loop``."""
        old = self._loop
        if old is not None and not old.is_closed():
            if self._waiting:
                raise _another_loop("sending" if self._write else "receiving", old)
            self.stop()
        else:
            self.forget_closed_loops()
        self._loop = loop

    def forget_closed_loops(self) -> None:
        """Forget the operations of tasks whose loop was closed under them.

        A waiter the callback never ran consumed nothing; a result taken
        for one goes to its ``keep``.
        """
        # Over copies: the collector may close a dead task's coroutine at any allocation
        # here, and its ``finally`` claims or removes its own entry (pop/remove tolerate it).
        for waiter in list(self._unclaimed):
            if _closed(waiter):
                self._claim(waiter)
        waiting = list(self._waiting)
        if any(_closed(waiter) for waiter, _, _ in waiting):
            self._waiting = collections.deque(e for e in waiting if not _closed(e[0]))
        if self._loop is not None and self._loop.is_closed():
            self._registered = False  # the registration went with the loop
            self._loop = None

    def stop(self, error: Optional[BaseException] = None) -> None:
        """Unregister from the loop (before the descriptor is closed).

        Every waiting operation gets ``error`` (the connection was closed)
        instead of waiting for ever.
        """
        if self._registered and self._loop is not None and not self._loop.is_closed():
            if self._write:
                self._loop.remove_writer(self._fd)
            else:
                self._loop.remove_reader(self._fd)
        self._registered = False
        if error is not None:
            waiting, self._waiting = self._waiting, collections.deque()
            for waiter, _, _ in waiting:
                # A waiter of a loop closed meanwhile (a task abandoned with its loop) can
                # no longer be woken: setting it would raise, and the socket stay open.
                if not waiter.done() and not _closed(waiter):
                    waiter.set_exception(error)


class _Turn:
    """A FIFO lock whose uncontended acquire needs no ``await`` (asyncio.Lock's does).

    ``take()`` returns a token, non-zero when the turn was free and is now
    held; otherwise the caller ``await wait_for_turn()`` for one.  The token
    goes to ``release``.  A cancelled waiter gives up its place, and a turn
    granted to a waiter that was cancelled meanwhile is passed on, never
    lost.

    A turn held by a task whose loop was closed under it is taken back by
    the next caller of another loop (the direction's readiness forgets that
    task's operation first), and that task's own ``release``, when the
    collector finally closes its coroutine, does nothing.  Held by a task of
    another loop still open, the turn is refused with ``RuntimeError``.
    The holder's loop is recorded where it waits (``_Readiness.run``,
    ``pause``, a grant), not in ``take``: only a waiting holder can be met
    by another caller, and asking for the running loop on every operation
    cost 0.2 us each.

    ``send`` and ``recv_message`` run per message and do ``take`` and
    ``release`` inline when nobody waits (a Python call each cost 700-800
    instructions, 3 % of an echo round trip): ``busy``, ``_held`` and
    ``_waiters`` are read there too.
    """

    __slots__ = ("_held", "_readiness", "_waiters", "busy", "loop")

    def __init__(self, readiness: _Readiness) -> None:
        self.busy = False
        #: The loop the holder waits in (or a holder last waited in).
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._held = 0  # the holder's token: a new one for every holder
        self._readiness = readiness
        self._waiters: Deque[asyncio.Future[int]] = collections.deque()

    def take(self) -> int:
        if self.busy:
            return 0
        self.busy = True
        self._held += 1
        return self._held

    async def pause(self) -> None:
        """Yield to the loop once, holding the turn."""
        self.loop = asyncio.get_running_loop()
        await asyncio.sleep(0)

    async def wait_for_turn(self) -> int:
        loop = asyncio.get_running_loop()
        holder = self.loop
        if holder is not loop and holder is not None:
            if not holder.is_closed():
                raise _another_loop("sending" if self._readiness._write else "receiving", holder)
            return self._take_back(loop)
        waiter: asyncio.Future[int] = loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:  # cancelled, or destroyed with its closed loop
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())  # the turn arrived meanwhile: pass it on
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass  # taken back with its closed loop
            raise

    def _take_back(self, loop: asyncio.AbstractEventLoop) -> int:
        """The holder's loop was closed under it: the turn is ``loop``'s now."""
        self._held += 1  # first: the dead holder's release, whenever it comes, is void
        held = self._held
        self.busy = True
        self.loop = loop
        self._waiters = collections.deque(w for w in list(self._waiters) if not _closed(w))
        self._readiness.forget_closed_loops()
        return held

    def release(self, held: int) -> None:
        if held != self._held:
            return  # taken back from a task whose loop was closed: not this task's any more
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done() and not _closed(waiter):
                self._held += 1
                self.loop = waiter.get_loop()
                waiter.set_result(self._held)  # the turn goes to the next waiter, still busy
                return
        self.busy = False


class AsyncSeqpacketConn:
    """A seqpacket connection for asyncio: ``await send(...)``, ``await recv_message(...)``.

    Wraps a ``SeqpacketConn`` (native or emulated: ``implementation`` tells
    which) with the same contract.  One receive and one send may run at a
    time; concurrent callers queue, in one event loop at a time (see the
    module's notes for a loop closed under a waiting task).  ``async for
    message in conn`` yields messages until end-of-stream.
    """

    def __init__(self, conn: _seqpacket.SeqpacketConn) -> None:
        conn.setblocking(False)
        self._conn = conn
        self._readable = _Readiness(conn.fileno(), write=False)
        self._writable = _Readiness(conn.fileno(), write=True)
        self._send_turn = _Turn(self._writable)
        self._recv_turn = _Turn(self._readable)
        #: Messages received for a caller that was cancelled at that moment, for the next one.
        self._kept: List[Optional[Message]] = []
        self._keep = self._kept.append
        # Only the emulation can have a frame partly unsent or frames decoded ahead; for
        # native connections those checks are skipped.
        self._framed = conn.implementation == "emulated"
        self._pending = conn.pending
        self._flush = conn.flush
        # The receive that readiness callbacks run: a partial (no Python frame of its own),
        # rebuilt only when the arguments change.
        self._recv_once = functools.partial(conn.recv_message, 65536, 0)
        self._streak = 0  # operations in a row that completed without waiting
        self._flushing: Optional[asyncio.Future[None]] = None
        self._closing: Optional[asyncio.Future[None]] = None
        self._closed_now = False
        #: Tasks in ``wait_closed``, of whatever loop (an ``asyncio.Event`` is bound to one).
        self._closed_waiters: List[asyncio.Future[None]] = []

    @property
    def implementation(self) -> str:
        """``"native"`` or ``"emulated"``."""
        return self._conn.implementation

    @property
    def conn(self) -> _seqpacket.SeqpacketConn:
        """The underlying (non-blocking) ``SeqpacketConn``."""
        return self._conn

    async def send(
        self, data: Buffers, fds: Sequence[Any] = (), credentials: Optional[SendCredentials] = None
    ) -> int:
        """Send ``data`` (one buffer or a list of them) as one message with ``fds``.

        Waits while the peer does not read.  Returns the message's length.
        The descriptors may be closed once this returns.  ``credentials``:
        as ``SeqpacketConn.send``.  If the caller is cancelled, the message
        was sent whole or not at all.

        Raises:
            ValueError: too many descriptors, or a message over the size limit.
            ConnectionError: the peer has gone: ``BrokenPipeError``, or on
                Linux ``ConnectionResetError`` once from a native send after
                the peer closed with messages unread (as ``SeqpacketConn.send``).
            OSError: other send errors.
            As ``SeqpacketConn.send`` otherwise.
        """
        if self._closing is not None:
            raise self._closed_error()
        turn = self._send_turn
        if turn.busy:
            held = await turn.wait_for_turn()
        else:
            turn.busy = True
            turn._held += 1
            held = turn._held
        conn = self._conn
        try:
            flushing = self._flushing
            if flushing is not None and not flushing.done() and self._flushing_here(flushing):
                # A cancelled send's rest (or an owed acknowledgement) is still going out in
                # the background, waiting on the same readiness: wait for it, never beside it.
                await self._await_flushing(flushing)
            if self._streak >= _STREAK:  # inline, not a coroutine: this runs per message
                self._streak = 0
                await self._send_turn.pause()  # yield once: other connections get their turn
            writable = self._writable
            if writable.ready:  # try at once, without a coroutine: the usual case
                try:
                    # An earlier frame's rest goes first: send() itself raises
                    # BlockingIOError while it cannot.
                    sent = conn.send(data, fds, credentials)
                except BlockingIOError:
                    writable.ready = False
                    self._streak = 0  # this one waits on the loop: a turn for the others
                    sent = await writable.run(
                        functools.partial(conn.send, data, fds, credentials),
                        self._keep_sent,
                        self._send_turn,
                    )
                else:
                    self._streak += 1
            else:
                self._streak = 0
                sent = await writable.run(
                    functools.partial(conn.send, data, fds, credentials),
                    self._keep_sent,
                    self._send_turn,
                )
            if self._framed:
                try:
                    self._flush()  # nothing left over: the usual case, without a coroutine
                except BlockingIOError:
                    await self._await_flushing(self._start_flushing())
            return sent
        finally:
            if turn._waiters or held != turn._held:
                turn.release(held)
            else:
                turn.busy = False

    def _keep_sent(self, sent: int) -> None:
        """A send cancelled after the readiness callback sent (part of) its frame.

        The frame's rest must still go out: in the background, as for a
        send cancelled while it flushed.
        """
        if self._framed:
            self._flush_in_background()

    def _flush_in_background(self) -> None:
        """Push out what the emulation still owes the peer; a flush task finishes the rest."""
        try:
            self._flush()
        except BlockingIOError:
            try:
                self._start_flushing()
            except RuntimeError:
                pass  # no running loop (a task destroyed with its loop): the next send or close
        except OSError:
            pass  # the peer is gone: the next send reports it

    def _flushing_here(self, flushing: asyncio.Future[None]) -> bool:
        """Whether to wait for ``flushing`` (not done): it runs in this loop.

        A flush of a loop closed under it is forgotten: the rest it was
        sending stays in the connection, and this send finishes it first.
        """
        loop = flushing.get_loop()
        if loop is asyncio.get_running_loop():
            return True
        if not loop.is_closed():
            raise _another_loop("sending", loop)
        self._flushing = None
        return False

    async def _await_flushing(self, flushing: asyncio.Future[None]) -> None:
        """Wait for the background flush; cancelling the caller does not stop it."""
        self._send_turn.loop = flushing.get_loop()  # the send holding the turn waits there
        try:
            await asyncio.shield(flushing)
        except asyncio.CancelledError:
            if flushing.cancelled() and (self._closing is not None or self._closed_now):
                # close() gave up on the frame (the peer did not read it in time): the
                # message was not delivered whole; this task itself was not cancelled.
                raise OSError(errno.EBADF, "the connection was closed mid-message") from None
            raise

    async def _drain(self) -> None:
        """Finish a partly sent frame in a task that cancelling the caller does not stop."""
        try:
            self._flush()
        except BlockingIOError:
            await asyncio.shield(self._start_flushing())

    def _start_flushing(self) -> asyncio.Future[None]:
        flushing = self._flushing
        if flushing is None or flushing.done() or _closed(flushing):
            # The running loop's (RuntimeError without one), never a loop the policy makes up.
            flushing = asyncio.get_running_loop().create_task(self._flush_unsent())
            # Seen by whoever awaits it; a background flush's error must not go unreported
            # as "never retrieved" (the next send meets the same error from the socket).
            flushing.add_done_callback(_retrieve)
            self._flushing = flushing
        return flushing

    async def _flush_unsent(self) -> None:
        await self._writable.run(self._flush)

    async def recv_message(self, bufsize: int = 65536, maxfds: int = 0) -> Optional[Message]:
        """Receive one message, or ``None`` at end-of-stream; see ``SeqpacketConn.recv_message``.

        A cancelled receive loses nothing: a message that arrived meanwhile
        is returned by the next receive.
        """
        if self._closing is not None:
            raise self._closed_error()
        turn = self._recv_turn
        if turn.busy:
            held = await turn.wait_for_turn()
        else:
            turn.busy = True
            turn._held += 1
            held = turn._held
        try:
            if self._kept:
                message = self._kept.pop(0)
                if message is not None:
                    # Received for a caller that was cancelled, under its limits: this
                    # caller's apply (more descriptors than maxfds are closed and raise).
                    bufsize, maxfds = _io.check_sizes(bufsize, maxfds)
                    message = _seqpacket._fit(message, bufsize, maxfds)
            else:
                if self._streak >= _STREAK:
                    self._streak = 0
                    await self._recv_turn.pause()  # yield once: other connections get their turn
                readable = self._readable
                if self._framed and not readable.ready and self._pending():
                    readable.ready = True  # decoded frames wait; the socket may be empty
                if self._recv_once.args != (bufsize, maxfds):
                    self._recv_once = functools.partial(self._conn.recv_message, bufsize, maxfds)
                message = await readable.run(self._recv_once, self._keep, self._recv_turn)
                # Still "ready": it completed without waiting on the loop.
                self._streak = self._streak + 1 if readable.ready else 0
        finally:
            if turn._waiters or held != turn._held:
                turn.release(held)
            else:
                turn.busy = False
        if message is not None and message.fds:
            self._push_acknowledgement()
        return message

    def _push_acknowledgement(self) -> None:
        """After a message with descriptors: push out the acknowledgement the receive owed."""
        if self._framed and not self._send_turn.busy:
            # An acknowledgement the receive could not push out at once (the socket was full);
            # only messages with descriptors ask for one.
            self._flush_in_background()

    async def peek(self, bufsize: int = 65536, maxfds: int = 0) -> Optional[Message]:
        """The next message, left for the next receive; see ``SeqpacketConn.peek``.

        Its descriptors are new copies the caller owns.  Cancelled, the
        copies a peek made meanwhile are closed; the message stays.
        """
        if self._closing is not None:
            raise self._closed_error()
        held = self._recv_turn.take() or await self._recv_turn.wait_for_turn()
        try:
            if self._kept:
                kept = self._kept[0]
                return None if kept is None else _seqpacket._peek_copy(kept, bufsize, maxfds)
            readable = self._readable
            if self._framed and not readable.ready and self._pending():
                readable.ready = True
            conn = self._conn
            message = await readable.run(
                lambda: conn.peek(bufsize, maxfds), _close_copies, self._recv_turn
            )
        finally:
            self._recv_turn.release(held)
        if message is not None and message.fds:
            self._push_acknowledgement()  # the emulation took the frame off the stream
        return message

    async def recv_message_into(
        self, buffers: WritableBuffers, maxfds: int = 0
    ) -> Optional[ReceivedInto]:
        """Receive one message into ``buffers``; see ``SeqpacketConn.recv_message_into``.

        A cancelled receive loses nothing: a message that already went into
        ``buffers`` is kept (copied out) for the next receive.
        """
        views, _ = _seqpacket._writable(buffers)
        try:
            if self._closing is not None:
                raise self._closed_error()
            held = self._recv_turn.take() or await self._recv_turn.wait_for_turn()
            try:
                if self._kept:
                    message = self._kept.pop(0)
                    if message is None:
                        return None
                    _, maxfds = _io.check_sizes(0, maxfds)
                    _io.refuse_excess_fds(message.fds, maxfds, message.data)  # as recv_message's
                    nbytes = _seqpacket._copy_into(views, message.data)
                    truncated = message.truncated or nbytes < len(message.data)
                    return ReceivedInto(nbytes, message.fds, truncated, message.credentials)
                readable = self._readable
                if self._framed and not readable.ready and self._pending():
                    readable.ready = True
                conn = self._conn

                def keep(got: Optional[ReceivedInto]) -> None:
                    if got is None:
                        self._keep(None)
                    else:  # the caller is gone with its buffers: the next receive gets a copy
                        data = b"".join(views)[: got.nbytes]
                        self._keep(new_message((data, got.fds, got.truncated, got.credentials)))

                got = await readable.run(
                    lambda: conn.recv_message_into(views, maxfds), keep, self._recv_turn
                )
            finally:
                self._recv_turn.release(held)
            if got is not None and got.fds:
                self._push_acknowledgement()
            return got
        finally:
            _seqpacket._release(views)  # the caller's buffers are resizable again

    def take_error(self) -> Optional[OSError]:
        """The socket's pending error (``SO_ERROR``); see ``SeqpacketConn.take_error``."""
        return self._conn.take_error()

    def pass_credentials(self, enable: bool = True, *, claimed: bool = False) -> None:
        """Report the sender's credentials with each message; see ``SeqpacketConn``."""
        self._conn.pass_credentials(enable, claimed=claimed)

    def peer_security_label(self) -> Optional[bytes]:
        """The peer's security label (``SO_PEERSEC``); ``None`` without an LSM."""
        return self._conn.peer_security_label()

    def peer_credentials(self) -> ConnCredentials:
        """The peer's credentials (``udscompat.peer_credentials``)."""
        return self._conn.peer_credentials()

    @property
    def local_addr(self) -> UnixSocketAddr:
        return self._conn.local_addr

    @property
    def peer_addr(self) -> UnixSocketAddr:
        return self._conn.peer_addr

    def fileno(self) -> int:
        return self._conn.fileno()

    def close(self) -> None:
        """Close the connection.

        A frame still partly unsent (the emulation, after a cancelled send)
        is finished first, for up to ``CLOSE_DRAIN_TIMEOUT`` seconds, by a
        task of the running loop; await ``wait_closed`` to know when the
        socket is closed; meanwhile a new send or receive raises ``EBADF``,
        as after any close.  If that loop ends first, the frame's rest is
        dropped and the socket closed: when ``asyncio.run`` cancels the
        task, or, for a loop closed by hand, at the next call on this
        connection (``close``, ``closed``, ``wait_closed``, a send or a
        receive; from any loop, or none) -- and, failing those, when the
        garbage collector destroys the task, with a ``ResourceWarning``.  The peer then reads
        end-of-stream inside that frame (a ``FramingError``), never part of
        one message joined to another.

        Messages received for cancelled receives and not taken since are
        dropped, their descriptors closed.
        """
        if self._closing is not None or self._closed_now:
            if self._closing_abandoned():
                self._close_now()
            return
        if self._framed and not self._conn.closed:
            try:
                self._flush()
            except BlockingIOError:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    pass  # no running loop to finish it: close at once
                else:
                    self._closing = loop.create_task(self._finish_then_close())
                    return
            except OSError:
                pass  # the peer is gone: nothing more can be delivered
        self._close_now()

    def _closed_error(self) -> OSError:
        """What a call after ``close`` raises while the socket is still finishing a frame."""
        if self._closing_abandoned():
            self._close_now()
        return OSError(errno.EBADF, "the connection is closed")

    def _closing_abandoned(self) -> bool:
        """Whether ``close``'s task was left pending in a loop closed under it."""
        closing = self._closing
        return closing is not None and not closing.done() and _closed(closing)

    async def _finish_then_close(self) -> None:
        try:
            await asyncio.wait_for(self._drain(), CLOSE_DRAIN_TIMEOUT)
        except (asyncio.TimeoutError, OSError):
            pass  # the peer is gone or does not read: nothing more can be delivered
        except GeneratorExit:  # destroyed, pending, with its closed loop
            if not self._closed_now:
                warnings.warn(
                    f"{self!r}: its event loop was closed before close() could finish a "
                    "partly sent frame; closed when the task was collected, the frame cut",
                    ResourceWarning,
                    stacklevel=1,
                    source=self,
                )
            raise
        finally:
            self._close_now()

    def _close_now(self) -> None:
        if self._closed_now:
            return
        flushing = self._flushing
        if flushing is not None and not flushing.done() and not _closed(flushing):
            flushing.cancel()
        # A task waiting to send or receive is woken with EBADF, as a thread would be.
        closed = OSError(errno.EBADF, "the connection is closed")
        self._readable.forget_closed_loops()  # what a dead task's receive took: closed below
        self._readable.stop(closed)
        self._writable.stop(closed)
        self._conn.close()
        kept = self._kept[:]
        self._kept.clear()  # in place: self._keep appends to this list
        for message in kept:
            _close_copies(message)
        self._closed_now = True
        self._flushing = self._closing = None  # a dead loop's tasks: nothing to hold them for
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            if not waiter.done() and not _closed(waiter):
                waiter.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        if self._closing_abandoned():
            self._close_now()
        if self._closed_now:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed_waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done() or waiter.cancelled():
                try:
                    self._closed_waiters.remove(waiter)
                except ValueError:
                    pass

    @property
    def closed(self) -> bool:
        """Whether the socket is closed (see ``close`` for a frame still going out)."""
        if self._closing_abandoned():
            self._close_now()
        return self._conn.closed

    async def __aenter__(self) -> AsyncSeqpacketConn:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self.messages()

    async def messages(self, bufsize: int = 65536, maxfds: int = 0) -> AsyncIterator[Message]:
        """Messages until end-of-stream (``async for m in conn.messages(maxfds=3)``)."""
        while True:
            message = await self.recv_message(bufsize, maxfds)
            if message is None:
                return
            yield message

    def __repr__(self) -> str:
        return f"<AsyncSeqpacketConn {self._conn!r}>"


async def open_seqpacket_connection(
    addr: AddressArg,
    *,
    implementation: Optional[str] = None,
    local_addr: Optional[AddressArg] = None,
) -> AsyncSeqpacketConn:
    """Connect to a seqpacket listener (blocking or asyncio) at ``addr``.

    While the listener's backlog is full the connect is retried (Linux
    answers a non-blocking AF_UNIX connect with EAGAIN then), never blocking
    the loop.  ``local_addr``: bind this end there first, as
    ``SeqpacketConn.connect`` does (its socket file is removed on close).

    Raises:
        OSError: from ``bind`` or ``connect``, with the address in the message.
    """
    address = as_address(addr)
    local = None if local_addr is None else as_address(local_addr, "local_addr")
    impl = _seqpacket.resolve_implementation(implementation)
    kind = backend.SOCK_SEQPACKET if impl == "native" else socket.SOCK_STREAM
    sock = socket.socket(socket.AF_UNIX, kind)
    file = None
    try:
        if local is not None:
            file = bind(sock, local)
        sock.setblocking(False)
        try:
            await _connect(sock, address)
        except OSError as exc:
            if isinstance(exc, (BlockingIOError, TimeoutError)):
                raise
            raise connect_error(exc, address, sock) from exc
        conn = _seqpacket.SeqpacketConn.from_socket(sock)
        conn._file, conn._peer = file, address
        conn._local = None if file is None else file.address
        return AsyncSeqpacketConn(conn)
    except BaseException:
        close_listener(sock, file)  # the file first: never left behind
        raise


async def _connect(sock: socket.socket, address: UnixSocketAddr) -> None:
    delay = 0.0005
    while True:
        try:
            connect_unix(sock, address)
            return
        except BlockingIOError as exc:
            if exc.errno == errno.EINPROGRESS:
                await _ready(sock.fileno(), write=True)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error)) from None
                return
        # EAGAIN: the backlog is full and nothing will signal when it is not.
        await asyncio.sleep(delay)
        delay = min(delay * 2, _CONNECT_RETRY_MAX)


def seqpacket_pair(
    *, implementation: Optional[str] = None
) -> Tuple[AsyncSeqpacketConn, AsyncSeqpacketConn]:
    """A connected pair of ``AsyncSeqpacketConn`` (call it inside a running loop)."""
    a, b = _seqpacket.seqpacket_pair(implementation=implementation)
    return AsyncSeqpacketConn(a), AsyncSeqpacketConn(b)


class SeqpacketServer:
    """Accepts seqpacket connections and runs ``handler(conn)`` for each in its own task.

    Each connection is closed when its handler returns.  ``close()`` stops
    accepting; ``wait_closed()`` waits for the running handlers.
    """

    def __init__(self, listener: _seqpacket.SeqpacketListener, handler: Handler) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._handler = handler
        self._tasks: Set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(listener.fileno(), self._accept_ready)

    @property
    def local_addr(self) -> UnixSocketAddr:
        return self._listener.local_addr

    @property
    def implementation(self) -> str:
        return self._listener.implementation

    def _accept_ready(self) -> None:
        # At most _STREAK accepts per readiness callback (asyncio's servers bound theirs
        # too): a peer connecting as fast as we accept must not keep the loop here.
        for _ in range(_STREAK):
            if self._closed.is_set():
                return
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: pause accepting briefly instead of spinning.
                    self._loop.remove_reader(self._listener.fileno())
                    self._loop.call_later(0.1, self._resume)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            task = self._loop.create_task(self._serve(AsyncSeqpacketConn(conn)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume(self) -> None:
        if not self._closed.is_set():
            self._loop.add_reader(self._listener.fileno(), self._accept_ready)

    async def _serve(self, conn: AsyncSeqpacketConn) -> None:
        try:
            await self._handler(conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # As asyncio's own servers do: the loop's exception handler reports it.
            self._loop.call_exception_handler(
                {"message": "unhandled exception in a seqpacket handler", "exception": exc}
            )
        finally:
            conn.close()
            await conn.wait_closed()

    def close(self) -> None:
        """Stop accepting and close the listener (running handlers go on)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._loop.remove_reader(self._listener.fileno())
        self._listener.close()

    def is_serving(self) -> bool:
        return not self._closed.is_set()

    async def wait_closed(self) -> None:
        """Wait until the server is closed and every handler has finished."""
        await self._closed.wait()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def serve_forever(self) -> None:
        """Serve until cancelled (or closed); cancelling closes the server."""
        try:
            await self._closed.wait()
        finally:
            self.close()

    async def __aenter__(self) -> SeqpacketServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


async def start_seqpacket_server(
    handler: Handler,
    addr: Union[AddressArg, UnixSocketAddr],
    *,
    backlog: int = socket.SOMAXCONN,
    implementation: Optional[str] = None,
    mode: Optional[int] = None,
    remove_on_close: bool = True,
) -> SeqpacketServer:
    """Listen at ``addr`` and run ``await handler(conn)`` for every connection.

    Arguments as ``SeqpacketListener`` (stale socket files replaced, live
    ones never).  Returns the server, already accepting.
    """
    listener = _seqpacket.SeqpacketListener(
        addr,
        backlog,
        implementation=implementation,
        mode=mode,
        remove_on_close=remove_on_close,
    )
    try:
        return SeqpacketServer(listener, handler)
    except BaseException:
        listener.close()
        raise


# --- fd passing on stream (or any) AF_UNIX sockets ---------------------------------------------


def _own_socket(sock: Any) -> Tuple[socket.socket, bool]:
    """A ``socket.socket`` to operate on, and whether it is a duplicate to close afterwards.

    asyncio transports hand out ``TransportSocket`` wrappers and keep the
    descriptor registered with the loop, so a duplicate descriptor (the same
    open socket) is used for those: it can be waited on independently.
    """
    if isinstance(sock, socket.socket):
        return sock, False
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        raise TypeError(f"expected a socket, got {type(sock).__name__}")
    copy = os.dup(fileno())
    try:
        dup = socket_for(copy)
    except BaseException:
        os.close(copy)  # not a socket, or one the kernel will not describe: nothing kept
        raise
    dup.setblocking(False)
    return dup, True


async def _wait_on(sock: socket.socket, *, write: bool) -> None:
    try:
        await _ready(sock.fileno(), write=write)
    except RuntimeError:
        # The loop refuses: a transport owns this descriptor.  Wait on a duplicate.
        dup = os.dup(sock.fileno())
        try:
            await _ready(dup, write=write)
        finally:
            os.close(dup)


async def send_fds(
    sock: Any, data: bytes, fds: Sequence[Any], flags: int = 0, address: Any = None
) -> int:
    """``udscompat.send_fds`` without blocking the loop; sends all of ``data``.

    On a stream socket the descriptors travel with the first byte and the
    rest of ``data`` follows; if the caller is cancelled after the first
    byte went out, the rest is still sent by a shielded task.  ``sock`` is a
    non-blocking AF_UNIX socket or an asyncio transport's socket
    (``transport.get_extra_info("socket")``).

    Returns ``len(data)``.
    """
    own, is_dup = _own_socket(sock)
    try:
        own.setblocking(False)
        payload = memoryview(data).cast("B")
        while True:
            try:
                sent = _fdpass.send_fds(own, [payload], fds, flags, address)
                break
            except BlockingIOError:
                await _wait_on(own, write=True)
        if sent < len(payload):
            rest = asyncio.ensure_future(_send_rest(own, payload[sent:], flags))
            if is_dup:
                rest.add_done_callback(lambda _: own.close())
                is_dup = False  # the task closes it
            await asyncio.shield(rest)
        return len(payload)
    finally:
        if is_dup:
            own.close()


async def _send_rest(sock: socket.socket, rest: memoryview, flags: int) -> None:
    while rest:
        try:
            rest = rest[sock.send(rest, flags | getattr(socket, "MSG_NOSIGNAL", 0)) :]
        except BlockingIOError:
            await _wait_on(sock, write=True)


async def recv_fds(
    sock: Any, bufsize: int, maxfds: int, flags: int = 0
) -> Tuple[bytes, List[int], int, Any]:
    """``udscompat.recv_fds`` without blocking the loop.

    For an asyncio transport's socket, pause the transport's reading first
    (``transport.pause_reading()``), or the transport may read the bytes
    (and the kernel then discards their descriptors).
    """
    own, is_dup = _own_socket(sock)
    try:
        own.setblocking(False)
        while True:
            try:
                return _fdpass.recv_fds(own, bufsize, maxfds, flags)
            except BlockingIOError:
                await _wait_on(own, write=False)
    finally:
        if is_dup:
            own.close()
