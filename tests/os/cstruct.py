"""Bytes of a C struct from its header's field list, laid out by the C rules (LP64).

Layout tests build their fixtures with this, from the field order and types a
header declares, so they do not repeat the backend's own ``struct`` format
strings: a wrong format in a backend cannot agree with a fixture by accident.
"""

from __future__ import annotations

import struct
from typing import List, Sequence, Tuple, Union

#: C type -> (struct code, size = alignment), for the types the headers here use.
C_TYPES = {
    "char": ("b", 1),
    "short": ("h", 2),
    "int": ("i", 4),
    "u_int": ("I", 4),
    "uint32_t": ("I", 4),
    "pid_t": ("i", 4),
    "uid_t": ("I", 4),
    "gid_t": ("I", 4),
    "zoneid_t": ("i", 4),
    "projid_t": ("i", 4),
    "socklen_t": ("I", 4),
    "size_t": ("Q", 8),
    "void *": ("Q", 8),
}

Field = Tuple[str, Union[int, Sequence[int]]]


def c_struct(fields: Sequence[Field]) -> bytes:
    """Pack ``(c_type, value)`` pairs (a list value is an array) with C padding.

    Each field is aligned to its own size and the whole struct to its
    largest member, as GCC and Clang do on LP64.
    """
    out = bytearray()
    widest = 1
    for c_type, value in fields:
        code, size = C_TYPES[c_type]
        widest = max(widest, size)
        out += bytes(-len(out) % size)
        values: List[int] = [value] if isinstance(value, int) else list(value)
        out += struct.pack(f"={len(values)}{code}", *values)
    out += bytes(-len(out) % widest)
    return bytes(out)


def c_sizeof(fields: Sequence[Tuple[str, int]]) -> int:
    """``sizeof`` of a struct of ``(c_type, array length)`` fields."""
    return len(c_struct([(c_type, [0] * count) for c_type, count in fields]))
