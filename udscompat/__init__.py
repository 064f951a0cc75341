"""Unix domain sockets that behave the same on Linux, macOS, the BSDs and illumos.

Abstract addresses, fd passing (SCM_RIGHTS), SOCK_SEQPACKET (emulated where
the kernel lacks it), peer credentials and capabilities -- one API and one
behaviour on every OS, with the kernels' differences normalised.
"""

from __future__ import annotations

from udscompat._address import UnixSocketAddr
from udscompat._ancillary import (
    AncillaryMessage,
    pass_credentials,
    peer_security_label,
    recv_ancillary,
    send_ancillary,
    send_credentials,
)
from udscompat._bind import SocketFile, bind
from udscompat._capabilities import Capabilities, Feature, capabilities
from udscompat._creds import peer_credentials
from udscompat._dgram import UnixDatagram
from udscompat._errors import ControlTruncatedError, FramingError, UnsupportedError
from udscompat._fdpass import recv_fds, release_sent_fds, send_fds
from udscompat._msgcreds import ClaimedCredentials, ReceivedCredentials, SendCredentials
from udscompat._records import ConnCredentials, Message, ReceivedInto
from udscompat._seqpacket import SeqpacketConn, SeqpacketListener, seqpacket_pair

__version__ = "0.1.0"

__all__ = [
    "AncillaryMessage",
    "Capabilities",
    "ClaimedCredentials",
    "ConnCredentials",
    "ControlTruncatedError",
    "Feature",
    "FramingError",
    "Message",
    "ReceivedCredentials",
    "ReceivedInto",
    "SendCredentials",
    "SeqpacketConn",
    "SeqpacketListener",
    "SocketFile",
    "UnixDatagram",
    "UnixSocketAddr",
    "UnsupportedError",
    "bind",
    "capabilities",
    "pass_credentials",
    "peer_credentials",
    "peer_security_label",
    "recv_ancillary",
    "recv_fds",
    "release_sent_fds",
    "send_ancillary",
    "send_credentials",
    "send_fds",
    "seqpacket_pair",
]
