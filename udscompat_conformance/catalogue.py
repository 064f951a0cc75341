"""The behaviours of the shared conformance catalogue, and which of them this suite observes.

``ROWS`` lists all 183 catalogue rows, ``FLAGGED`` the ones marked as
differing between OSes (⚑).  Every row is either named in some case's
``rows=`` or explained in ``NOT_OBSERVED``; ``tests/test_conformance_suite.py``
holds the suite to that.
"""

from __future__ import annotations

from typing import Dict, Tuple

_ROWS_TEXT = """
ADDR-01 ADDR-02 ADDR-03 ADDR-04 ADDR-05 ADDR-06 ADDR-07 ADDR-08 ADDR-09 ADDR-10 ADDR-11
ADDR-12 ADDR-13 ADDR-14 ADDR-15 ADDR-16 ADDR-17 ADDR-18 ADDR-19 ADDR-20 ADDR-21 ADDR-22
ADDR-23 ADDR-24 ADDR-25 ADDR-26 ADDR-27 ADDR-28 ADDR-29 ADDR-30 ADDR-31 ADDR-32 ADDR-33
STR-01 STR-02 STR-03 STR-04 STR-05 STR-06 STR-07 STR-08 STR-09 STR-10 STR-11 STR-12 STR-13
STR-14 STR-15 STR-16 STR-17 STR-18 STR-19 STR-20 STR-21 STR-22 STR-23 STR-24 STR-25 STR-26
STR-27 STR-28 STR-29 STR-30 STR-31 STR-32 STR-33 STR-34 STR-35 STR-36 STR-37 SEQ-01 SEQ-02
SEQ-03 SEQ-04 SEQ-05 SEQ-06 SEQ-07 SEQ-08 SEQ-09 SEQ-10 SEQ-11 SEQ-12 SEQ-13 SEQ-14 SEQ-15
SEQ-16 SEQ-17 SEQ-18 SEQ-19 SEQ-20 SEQ-21 SEQ-22 SEQ-23 SEQ-24 DG-01 DG-02 DG-03 DG-04
DG-05 DG-06 DG-07 DG-08 DG-09 DG-10 DG-11 DG-12 DG-13 DG-14 DG-15 DG-16 DG-17 DG-18 DG-19
DG-20 DG-21 FD-01 FD-02 FD-03 FD-04 FD-05 FD-06 FD-07 FD-08 FD-09 FD-10 FD-11 FD-12 FD-13
FD-14 FD-15 FD-16 FD-17 FD-18 FD-19 FD-20 FD-21 FD-22 FD-23 FD-24 FD-25 FD-26 FD-27 FD-28
FD-29 FD-30 FD-31 FD-32 FD-33 FD-34 FD-35 FD-36 FD-37 CRED-01 CRED-02 CRED-03 CRED-04
CRED-05 CRED-06 CRED-07 CRED-08 CRED-09 CRED-10 CRED-11 CRED-12 CRED-13 CRED-14 CRED-15
CRED-16 CRED-17 CRED-18 CRED-19 CRED-20 CRED-21 ERR-01 ERR-02 ERR-03 ERR-04 ERR-05 ERR-06
ERR-07 ERR-08 ERR-09 ERR-10
"""
ROWS: Tuple[str, ...] = tuple(_ROWS_TEXT.split())

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
    "FD-30": "needs a 32-bit and a 64-bit process on one kernel",
    "FD-37": "needs an LSM or BPF program loaded into the kernel",
    "ERR-04": "connectat(2) errors: FreeBSD's syscall, not in Python's socket module "
    "(connect's EPROTOTYPE is os.errors.type_mismatch)",
    "ERR-08": "sendmmsg/recvmmsg are not in Python's socket module",
    # Rows without the flag that Python cannot reach either:
    "FD-18": "a malformed cmsg (cmsg_len below the header): CPython builds every cmsg itself",
    "FD-24": "a fault while copying out control data needs a bad user pointer",
    "FD-36": "ownership by dropping a Rust buffer; in Python the caller closes received fds "
    "(every shim case runs under a leak check)",
    "CRED-21": "getpeereid(3) is not in Python; it reads what os.creds.mechanism reads",
    "ERR-07": "EFAULT from bad user buffers needs a bad pointer",
}
