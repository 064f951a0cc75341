# Stub for the optional C extension udscompat/_speedups.c.
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from udscompat._errors import ControlTruncatedError

SOL_SOCKET: int
SCM_RIGHTS: int
MSG_CTRUNC: int
MSG_TRUNC: int
MSG_CMSG_CLOEXEC: Optional[int]
SCM_TIMESTAMP: Optional[int]
CMSG_SPACE_INT: int
CMSG_LEN_0: int
MAX_FD_ROOM: int
READS_SOCKET_FD: int

def sendmsg(fd: Any, data: Any, fds: Union[Sequence[int], Any, None], flags: int, /) -> int: ...
def recvmsg(
    fd: Any, bufsize: int, maxfds: int, flags: int, want_address: bool = ..., /
) -> Tuple[bytes, List[int], int, Any, bool]: ...
def configure(
    fd_room: int,
    marker_type: Optional[int],
    fd_cmsg_types: Sequence[int],
    truncated: Optional[Callable[[str, Optional[bytes], int, int], ControlTruncatedError]],
    /,
) -> None: ...
def control_size() -> int: ...

class Lock:
    """threading.Lock's equal, whose try-acquire the compiled emulated methods make in C."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...
    def release(self) -> None: ...
    def locked(self) -> bool: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, *exc: object) -> None: ...
    def _at_fork_reinit(self) -> None: ...
