"""Unix domain sockets that behave the same on Linux, macOS, the BSDs and illumos.

Abstract addresses, fd passing (SCM_RIGHTS), SOCK_SEQPACKET (emulated where
the kernel lacks it), peer credentials and capabilities -- one API and one
behaviour on every OS, with the kernels' differences normalised.
"""

from __future__ import annotations

from udscompat._address import UnixSocketAddr
from udscompat._bind import SocketFile, bind
from udscompat._capabilities import Capabilities, Feature, capabilities
from udscompat._creds import peer_credentials
from udscompat._errors import ControlTruncatedError, FramingError, UnsupportedError
from udscompat._fdpass import recv_fds, release_sent_fds, send_fds
from udscompat._records import ConnCredentials, Message
from udscompat._seqpacket import SeqpacketConn, SeqpacketListener, seqpacket_pair

__version__ = "0.1.0"

__all__ = [
    "Capabilities",
    "ConnCredentials",
    "ControlTruncatedError",
    "Feature",
    "FramingError",
    "Message",
    "SeqpacketConn",
    "SeqpacketListener",
    "SocketFile",
    "UnixSocketAddr",
    "UnsupportedError",
    "bind",
    "capabilities",
    "peer_credentials",
    "recv_fds",
    "release_sent_fds",
    "send_fds",
    "seqpacket_pair",
]
