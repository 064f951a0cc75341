"""The behaviours of the shared conformance catalogue, and which of them this suite observes.

``FLAGGED`` lists the catalogue rows marked as differing between OSes (⚑).
Every one is either named in some case's ``rows=`` or explained in
``NOT_OBSERVED``; ``tests/test_conformance_suite.py`` holds the suite to that.
"""

from __future__ import annotations

from typing import Dict, Tuple

_FLAGGED_TEXT = """
ADDR-02 ADDR-03 ADDR-04 ADDR-05 ADDR-09 ADDR-10 ADDR-11 ADDR-12 ADDR-13 ADDR-14 ADDR-16
ADDR-17 ADDR-18 ADDR-19 ADDR-21 ADDR-24 ADDR-26 ADDR-27 ADDR-29 ADDR-30 ADDR-32 ADDR-33
STR-04 STR-07 STR-11 STR-12 STR-13 STR-18 STR-19 STR-21 STR-22 STR-26 STR-28 STR-29 STR-30
STR-32 STR-33 STR-35 SEQ-01 SEQ-02 SEQ-03 SEQ-04 SEQ-05 SEQ-07 SEQ-10 SEQ-12 SEQ-13 SEQ-17
SEQ-21 DG-04 DG-08 DG-09 DG-10 DG-12 DG-13 DG-14 DG-16 DG-21 FD-05 FD-07 FD-08 FD-09 FD-10
FD-12 FD-13 FD-14 FD-15 FD-16 FD-19 FD-20 FD-21 FD-25 FD-26 FD-27 FD-28 FD-30 FD-31 FD-34
FD-37 CRED-01 CRED-03 CRED-04 CRED-05 CRED-06 CRED-07 CRED-08 CRED-09 CRED-10 CRED-11
CRED-12 CRED-14 CRED-15 CRED-16 CRED-17 CRED-18 CRED-19 CRED-20 ERR-04 ERR-05 ERR-08 ERR-10
"""
FLAGGED: Tuple[str, ...] = tuple(_FLAGGED_TEXT.split())

#: Flagged rows no case observes, and why.  "not yet" marks work still to do, not a limit.
NOT_OBSERVED: Dict[str, str] = {
    "ADDR-02": "the addrlen getsockname() returns: CPython hands back the decoded name, "
    "not the length",
    "ADDR-05": "an oversized sockaddr (paths beyond sun_path): CPython refuses them before the "
    "kernel sees them",
    "ADDR-30": "connectat(2) is FreeBSD's and not in Python's socket module",
    "STR-32": "CPython makes every socket close-on-exec itself (SOCK_CLOEXEC, else fcntl), so "
    "whether the kernel did it atomically cannot be seen from Python",
    "STR-35": "not yet: sock_diag needs a netlink request codec",
    "DG-10": "recv(MSG_TRUNC) returning more than the buffer: CPython sizes its result by the "
    "return value and would read past its buffer, so the case would crash the interpreter",
    "DG-14": "not yet: sender fairness needs a timing-free design",
    "FD-28": "not yet: LOCAL_CREDS with rights on a full stream is FreeBSD-only and unwritten",
    "FD-30": "needs a 32-bit and a 64-bit process on one kernel",
    "FD-37": "needs an LSM or BPF program loaded into the kernel",
    "CRED-14": "not yet: coalescing of differently credentialed stream data",
    "CRED-17": "not yet: LOCAL_CREDS (FreeBSD/NetBSD) is unwritten; SCM_CREDS is covered",
    "ERR-04": "connectat(2) errors: FreeBSD's syscall, not in Python's socket module "
    "(connect's EPROTOTYPE is os.errors.type_mismatch)",
    "ERR-08": "sendmmsg/recvmmsg are not in Python's socket module",
}
