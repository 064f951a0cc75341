"""``capabilities()``: what is native, emulated or unavailable here, from probes."""

from __future__ import annotations

import functools
import os
import platform
import socket
import tempfile
from types import MappingProxyType
from typing import Any, Dict, Mapping, NamedTuple, Optional

from udscompat import _accel, _ancillary, _fdpass, _probes
from udscompat._platform import backend

__all__ = ["Capabilities", "Feature", "capabilities"]


class Feature(NamedTuple):
    """One feature's status: ``"native"``, ``"emulated"`` or ``"unavailable"``, and why."""

    status: str
    detail: str


class Capabilities(NamedTuple):
    """What udscompat found on this OS (see ``capabilities()``); read-only throughout."""

    os_name: str
    os_release: str
    features: Mapping[str, Feature]
    quirks: Mapping[str, Any]

    def as_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "os_name": self.os_name,
            "os_release": self.os_release,
            "features": {k: dict(v._asdict()) for k, v in self.features.items()},
            "quirks": dict(self.quirks),
        }


@functools.cache
def capabilities() -> Capabilities:
    """Probe this kernel once per process and report what udscompat can do here.

    Features: ``abstract_addresses``, ``fd_passing``, ``seqpacket``,
    ``peer_credentials``, ``speedups`` (``native``: the compiled accelerator
    runs the system calls; ``unavailable``: pure Python, with the reason),
    ``ancillary_credentials``, ``peer_security_label``, ``datagram``,
    ``seqpacket_dup``, ``seqpacket_peek``, ``seqpacket_credentials`` (how
    ``Message.credentials`` is filled: the kernel's, or on an emulation
    without kernel credentials on streams only unverified claims).
    Quirks: ``msg_cmsg_cloexec``,
    ``max_fds_per_message``, ``max_path_bytes``, ``ctrunc``,
    ``close_after_send_safe``, ``holds_sent_fds``,
    ``same_process_fd_reuse``, ``seqpacket_short_read``,
    ``seqpacket_zero_length``, ``stream_fd_padding``, ``peek_installs_fds``,
    ``stale_socket_files`` (what ``bind()`` does with a socket file no socket
    is bound to, and how it tells one from a live one),
    ``stream_credentials`` (``"every message"``, ``"first message"``,
    ``"sender attaches"`` or ``"none"``), ``undecided``.
    Every value comes from a probe run on a private socketpair (or a
    temporary directory), not from a table.
    No probe blocks; ``undecided`` names the probes that could not decide
    here (their quirk then holds the answer that is safe for udscompat) and why.
    """
    features: Dict[str, Feature] = {}
    abstract, why = _probes.abstract_addresses()
    features["abstract_addresses"] = Feature("native" if abstract else "unavailable", why)
    features["fd_passing"] = Feature("native", "SCM_RIGHTS, one control message per send")
    seq = _probes.seqpacket()
    if seq.conformant:
        features["seqpacket"] = Feature("native", seq.reason)
    else:
        features["seqpacket"] = Feature("emulated", f"framed over SOCK_STREAM: {seq.reason}")
    features["peer_credentials"] = _credentials_feature()
    features["speedups"] = Feature(
        "native" if _accel.speedups is not None else "unavailable", _accel.REASON
    )
    cloexec = _probes.cmsg_cloexec_flag()
    quirks: Dict[str, Any] = {
        "msg_cmsg_cloexec": cloexec is not None,
        "max_fds_per_message": _fds_per_message(),
        "max_path_bytes": _longest_bindable_path(),
        "ctrunc": _probes.ctrunc_behaviour(),
        "close_after_send_safe": _probes.close_after_send(),
        "holds_sent_fds": _fdpass.hold_sent_fds(),
        "same_process_fd_reuse": _probes.same_process_fd_reuse(),
        "seqpacket_short_read": seq.short_read,
        "seqpacket_zero_length": seq.zero_length,
        "stream_fd_padding": _probes.fd_control_padding(),
        "peek_installs_fds": _probes.peek_installs_fds(),
        "stale_socket_files": _probes.stale_socket_files()[1],
    }
    # Issue 14's rows (parity): ancillary credentials, labels, datagrams, connection methods.
    for name, (status, detail) in _ancillary.features(features["seqpacket"].status).items():
        features[name] = Feature(status, detail)
    quirks["stream_credentials"] = _ancillary.credentials_probe().stream
    quirks["undecided"] = _probes.undecided()
    # Read-only views: the answer is cached, so a caller changing it would change every later one.
    return Capabilities(
        backend.OS_NAME, platform.release(), MappingProxyType(features), MappingProxyType(quirks)
    )


def _fds_per_message() -> Optional[int]:
    """The most descriptors udscompat passes in one message here: what the kernel carries
    whole, but no more than the backend sends and makes room for on receipt (a Linux-ABI
    layer may carry more than Linux's 253: NetBSD's compat_linux carries 509)."""
    measured = _probes.max_fds_per_message()
    cap = backend.MAX_FDS_PER_MESSAGE
    if measured is None or cap is None:
        return measured
    return min(measured, cap)


def _credentials_feature() -> Feature:
    truthful, reason = _probes.peer_credentials_name_the_peer()
    if not truthful:
        return Feature("unavailable", reason)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        creds = backend.peer_credentials(a)
    except OSError as exc:
        return Feature("unavailable", str(exc))
    finally:
        a.close()
        b.close()
    if creds.euid != os.geteuid():
        return Feature("unavailable", f"reported euid {creds.euid}, expected {os.geteuid()}")
    parts = ["euid", "egid"]
    if creds.pid == os.getpid():
        parts.insert(0, "pid")
    if creds.groups is not None:
        parts.append("groups")
    return Feature("native", "reports " + ", ".join(parts))


def _longest_bindable_path() -> Optional[int]:
    """Bind ever longer paths in a private directory with udscompat's bind; the longest.

    None (and ``undecided`` says why) where not even the shortest length tried binds.
    """
    from udscompat._bind import bind  # reaches a full Linux sun_path, which CPython refuses

    with tempfile.TemporaryDirectory(prefix="udsc") as tmp:
        base = os.fsencode(tmp) + b"/"
        best: Optional[int] = None
        for length in range(backend.SUN_PATH_SIZE - 3, backend.SUN_PATH_SIZE + 3):
            if length <= len(base):
                continue
            path = base + b"p" * (length - len(base))
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                try:
                    socket_file = bind(sock, path)
                except (OSError, ValueError) as exc:
                    if best is None:
                        _probes._note_undecided(
                            "max_path_bytes",
                            f"udscompat's bind() of a {length}-byte path in a private "
                            f"directory failed: {type(exc).__name__}: {exc}",
                        )
                    break
                best = length
            if socket_file is not None:
                socket_file.remove()
        return best
