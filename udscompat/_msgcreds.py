"""Credentials that travel with a message: what a sender claims, what a receiver gets.

A leaf module (no other udscompat import but the errors), so every per-OS
backend can build these values without an import cycle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Tuple

__all__ = ["ClaimedCredentials", "ReceivedCredentials", "SendCredentials"]

_MAX_ID = 2**32 - 2  # (uid_t)-1 means "no id" to every kernel here
_MAX_PID = 2**31 - 1


def _check_id(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= _MAX_ID:
        raise ValueError(f"{name}={value} is outside 0..{_MAX_ID}")


def _check_pid(value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if type(value) is not int:
        raise TypeError(f"pid must be an int, got {type(value).__name__}")
    if not 1 <= value <= _MAX_PID:
        raise ValueError(f"pid={value} is outside 1..{_MAX_PID}")


def _check_process_ids(pid: object, uid: object, gid: object) -> None:
    """One process's pid, uid and gid, as a sender claims them (no field optional)."""
    _check_pid(pid, optional=False)
    _check_id("uid", uid)
    _check_id("gid", gid)


@dataclass(frozen=True)
class SendCredentials:
    """The process ids a sender attaches to a message (``send_ancillary(credentials=...)``).

    Build one with ``send_credentials()`` (this process's own ids).  Only
    Linux lets the sender choose: an unprivileged process may name its own
    pid and any of its real, effective or saved uid and gid; with
    CAP_SYS_ADMIN, CAP_SETUID or CAP_SETGID it may name others (the kernel
    checks, EPERM or ESRCH otherwise).  On FreeBSD, DragonFly, NetBSD and
    illumos the kernel fills in the truth, so udscompat refuses ids other
    than this process's own rather than send something else than asked.

    Attributes:
        pid: the process id claimed.
        uid: the user id claimed.
        gid: the group id claimed.
    """

    __slots__ = ("gid", "pid", "uid")

    pid: int
    uid: int
    gid: int

    def __post_init__(self) -> None:
        _check_process_ids(self.pid, self.uid, self.gid)

    def is_own(self) -> bool:
        """Whether these are this process's pid and one of its real or effective ids."""
        return (
            self.pid == os.getpid()
            and self.uid in (os.getuid(), os.geteuid())
            and self.gid in (os.getgid(), os.getegid())
        )

    def __reduce__(self) -> Tuple[Any, ...]:
        return (SendCredentials, (self.pid, self.uid, self.gid))


@dataclass(frozen=True)
class ReceivedCredentials:
    """The sender's credentials as the kernel attached them to one received message.

    The same type on every OS; a field the kernel does not report is ``None``:

    =========================  =====  ==================  ===============  ======
    mechanism                  pid    uid / gid           euid / egid      groups
    =========================  =====  ==================  ===============  ======
    Linux SCM_CREDENTIALS      yes    sent ids (1)        None             None
    FreeBSD sockcred2          yes    real                effective        yes
    FreeBSD/DragonFly cmsgcred yes    real                effective (2)    yes
    FreeBSD sockcred           None   real                effective        yes
    NetBSD sockcred            yes    real                effective        yes
    illumos ucred_t            yes    real                effective        yes
    =========================  =====  ==================  ===============  ======

    (1) the ids in the sender's ``struct ucred``: its real uid and gid
    unless it chose to send its effective or saved ones (the kernel checks
    that it holds them) or, privileged, others.  Linux carries one uid and
    one gid, so ``euid``/``egid`` stay ``None`` rather than be guessed.
    (2) ``egid`` is ``cmcred_groups[0]``, which ``sys/socket.h`` documents as
    the effective gid.

    Attributes:
        pid: the sending process, or ``None`` where the kernel gives none or
            gives 0 (a sender in a pid namespace this process cannot see).
        uid: the sender's user id (see the table for which).
        gid: the sender's group id (see the table for which).
        euid: the sender's effective user id, where reported separately.
        egid: the sender's effective group id, where reported separately.
        groups: the sender's groups as the kernel lists them (at most 16 on
            the BSDs), or ``None`` where the mechanism carries none.
    """

    __slots__ = ("egid", "euid", "gid", "groups", "pid", "uid")

    #: Vouched for by the kernel (``ClaimedCredentials.verified`` is False).
    verified: ClassVar[bool] = True

    pid: Optional[int]
    uid: int
    gid: int
    euid: Optional[int]
    egid: Optional[int]
    groups: Optional[Tuple[int, ...]]

    def __post_init__(self) -> None:
        _check_pid(self.pid, optional=True)
        _check_id("uid", self.uid)
        _check_id("gid", self.gid)
        _check_id("euid", self.euid, optional=True)
        _check_id("egid", self.egid, optional=True)
        if self.groups is not None:
            if type(self.groups) is not tuple:
                raise TypeError(f"groups must be a tuple, got {type(self.groups).__name__}")
            for group in self.groups:
                _check_id("a group", group)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (
            ReceivedCredentials,
            (self.pid, self.uid, self.gid, self.euid, self.egid, self.groups),
        )


@dataclass(frozen=True)
class ClaimedCredentials:
    """Credentials a peer WROTE into an emulated frame: NOT verified by any kernel.

    A peer can claim anything here -- any pid, root's ids.  An emulated
    seqpacket connection carries them only where the kernel attaches no
    credentials to stream writes (macOS, OpenBSD; NetBSD after a
    connection's first message) and only when both ends ask: the sender
    with ``send(..., credentials=send_credentials())`` (its own ids only),
    the receiver with ``pass_credentials(claimed=True)``.  Where the kernel
    does attach credentials, the receiver gets the kernel's
    ``ReceivedCredentials`` and claims are dropped unread.  Use them for
    diagnostics, or to cross-check ``peer_credentials()``; never to grant
    anything.  ``verified`` is ``False`` (``ReceivedCredentials.verified``
    is ``True``), so one test tells the two apart.

    Attributes:
        pid: the process id the peer claims.
        uid: the user id the peer claims.
        gid: the group id the peer claims.
    """

    __slots__ = ("gid", "pid", "uid")

    #: Never vouched for by a kernel.
    verified: ClassVar[bool] = False

    pid: int
    uid: int
    gid: int

    def __post_init__(self) -> None:
        _check_process_ids(self.pid, self.uid, self.gid)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (ClaimedCredentials, (self.pid, self.uid, self.gid))


SendCredentials.__module__ = "udscompat"
ClaimedCredentials.__module__ = "udscompat"
ReceivedCredentials.__module__ = "udscompat"
