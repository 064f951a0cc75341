"""Merge conformance result files into one feature matrix (pure data, no rendering).

A column is one OS release on one machine with one variant (native, forced
emulation, or the kernel stand-in).  Several result files for one column
are merged; when they disagree the cell keeps every value and is marked
as a conflict instead of one silently winning.  Claims (what a README or
our own os-facts sheet says) are checked against the columns of their OS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

from udscompat_conformance import SCHEMA_VERSION

MATRIX_SCHEMA_VERSION = 1

#: Display names and order of the OSes, keyed by ``platform.system()``.
OS_LABELS = {
    "Linux": "Linux",
    "Darwin": "macOS",
    "FreeBSD": "FreeBSD",
    "OpenBSD": "OpenBSD",
    "NetBSD": "NetBSD",
    "DragonFly": "DragonFly BSD",
    "SunOS": "illumos",
}
_OS_ORDER = list(OS_LABELS)

#: Areas in reading order; others follow alphabetically.
AREA_ORDER = ["seqpacket", "fdpass", "address", "bind", "creds", "aio", "stream", "dgram", "errors"]
AREA_LABELS = {
    "seqpacket": "SOCK_SEQPACKET",
    "fdpass": "Descriptor passing (SCM_RIGHTS)",
    "address": "Addresses",
    "bind": "Binding",
    "creds": "Peer credentials",
    "aio": "asyncio (udscompat.aio)",
    "stream": "Stream sockets and connection lifecycle",
    "dgram": "Datagram sockets",
    "errors": "Errors",
    "capabilities": "Capabilities",
}


#: Variants of the columns ``run --kernel`` makes (``run.kernel`` in the result file).
KERNEL_VARIANTS = {
    "netbsd-rump": "rump kernel, native ABI",
    "netbsd-rump-linux": "rump kernel, Linux ABI via compat_linux",
    "gvisor": "gVisor",
}
#: The kernel whose cells are ABI translations of another column's kernel, and that column.
TRANSLATING_KERNELS = {"netbsd-rump-linux": "netbsd-rump"}
#: Kernels that report an OS's name without being that OS's kernel: gVisor answers as
#: "Linux", but what it does says nothing about Linux, so it is no evidence for Linux claims.
IMPERSONATING_KERNELS = {"gvisor"}


class ResultError(ValueError):
    """A file that cannot be used as a result (or claims) file; says why, not which."""


def load_result(path: Path) -> Dict[str, Any]:
    """Read and check one result file.

    Raises:
        ResultError: unreadable, not JSON (e.g. truncated), not a result
            file, or a schema version this code does not know.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultError(f"cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultError(f"not valid JSON (truncated?): {exc}") from exc
    if not isinstance(data, dict) or "cases" not in data or "host" not in data:
        raise ResultError("not a udscompat conformance result file")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultError(
            f"unknown schema_version {version!r} (this report reads {SCHEMA_VERSION})"
        )
    problems = _shape_problems(data)
    if problems:
        raise ResultError(f"malformed result file: {'; '.join(problems[:5])}")
    return data


def _shape_problems(data: Dict[str, Any]) -> List[str]:
    problems = []
    host, run = data.get("host"), data.get("run")
    if not isinstance(host, dict) or not isinstance(host.get("os"), str):
        problems.append("host.os missing")
    if not isinstance(run, dict):
        problems.append("run missing")
    cases = data.get("cases")
    if not isinstance(cases, list):
        return [*problems, "cases is not a list"]
    for i, case in enumerate(cases):
        if not isinstance(case, dict):
            problems.append(f"cases[{i}] is not an object")
            continue
        for key in ("id", "kind", "area", "title", "outcome"):
            if not isinstance(case.get(key), str):
                problems.append(f"cases[{i}].{key} missing")
    return problems


def column_of(result: Dict[str, Any]) -> Dict[str, Any]:
    """The column a result belongs to: OS, release, machine and variant."""
    host, run = result["host"], result.get("run", {})
    standin = run.get("standin")
    forced = run.get("seqpacket_implementation", "auto")
    kernel = run.get("kernel")
    if run.get("stage"):
        variant = f"failed at {run['stage']}"
    elif kernel:
        variant = KERNEL_VARIANTS.get(kernel, str(kernel))
    elif standin:
        variant = f"stand-in: {standin}"
    elif forced not in (None, "", "auto"):
        variant = f"seqpacket {forced}"
    else:
        variant = "native"
    os_name = host.get("os", "?")
    release = host.get("release", "?")
    machine = host.get("machine", "?")
    return {
        "key": f"{os_name}|{release}|{machine}|{variant}",
        "os": os_name,
        "os_label": OS_LABELS.get(os_name, os_name),
        "release": release,
        "machine": machine,
        "variant": variant,
        "kernel": kernel,
        "evidence": not standin and not run.get("stage"),
    }


def _column_sort_key(column: Dict[str, Any]) -> Tuple[Any, ...]:
    os_rank = _OS_ORDER.index(column["os"]) if column["os"] in _OS_ORDER else len(_OS_ORDER)
    variant_rank = 0 if column["variant"] == "native" else 1
    # The machine's own kernels first, then the run --kernel columns in KERNEL_VARIANTS order.
    kernel = column.get("kernel")
    kernels = list(KERNEL_VARIANTS)
    kernel_rank = -1 if not kernel else kernels.index(kernel) if kernel in kernels else len(kernels)
    return (
        os_rank,
        column["os"],
        kernel_rank,
        _version_key(column["release"]),
        column["machine"],
        variant_rank,
        column["variant"],
    )


def _version_key(release: str) -> Tuple[Any, ...]:
    parts: List[Any] = []
    for piece in release.replace("-", ".").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)


def _area_sort_key(area: str) -> Tuple[int, str]:
    return (AREA_ORDER.index(area) if area in AREA_ORDER else len(AREA_ORDER), area)


def build_matrix(files: Iterable[Path], claims: Iterable[Dict[str, Any]] = ()) -> Dict[str, Any]:
    """Merge result ``files`` (bad ones are listed under ``errors``) and check ``claims``."""
    errors: List[Dict[str, str]] = []
    columns: Dict[str, Dict[str, Any]] = {}
    cells: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    meta: Dict[str, Dict[str, Any]] = {}
    for path in sorted(set(files), key=lambda p: str(p)):
        try:
            result = load_result(path)
        except ResultError as exc:
            errors.append({"file": path.name, "error": str(exc)})
            continue
        column = column_of(result)
        entry = columns.setdefault(column["key"], {**column, "sources": []})
        entry["sources"].append(
            {
                "file": path.name,
                "host": result["host"],
                "run": {k: v for k, v in result.get("run", {}).items() if k != "log_tail"},
                "summary": result.get("summary", {}),
            }
        )
        for case in result["cases"]:
            meta.setdefault(
                case["id"],
                {
                    "id": case["id"],
                    "kind": case["kind"],
                    "area": case["area"],
                    "title": case["title"],
                    "rows": case.get("rows", []),
                },
            )
            cells.setdefault(case["id"], {}).setdefault(column["key"], []).append(
                {
                    "outcome": case["outcome"],
                    "observed": case.get("observed"),
                    "message": case.get("message"),
                    "file": path.name,
                    "hang": bool(case.get("hang")),
                    "abi_note": case.get("abi_translation"),
                }
            )
    ordered_columns = sorted(columns.values(), key=_column_sort_key)
    rows = []
    for case_id in sorted(
        meta, key=lambda i: (_area_sort_key(meta[i]["area"]), meta[i]["kind"] != "shim", i)
    ):
        row_cells = {}
        for column in ordered_columns:
            found = cells[case_id].get(column["key"])
            if found:
                row_cells[column["key"]] = _merge_cell(found)
        values = {json.dumps(_cell_value(c), sort_keys=True) for c in row_cells.values()}
        rows.append(
            {
                **meta[case_id],
                "cells": row_cells,
                "differs": len(values) > 1 or len(row_cells) < len(ordered_columns),
            }
        )
    _mark_translations(ordered_columns, rows)
    for column in ordered_columns:
        column["conflict"] = any(
            row["cells"].get(column["key"], {}).get("conflict") for row in rows
        )
    matrix = {
        "schema_version": MATRIX_SCHEMA_VERSION,
        "columns": ordered_columns,
        "rows": rows,
        "claims": [],
        "errors": errors,
    }
    matrix["claims"] = [check_claim(claim, matrix) for claim in claims]
    return matrix


def _merge_cell(found: List[Dict[str, Any]]) -> Dict[str, Any]:
    distinct = {json.dumps({"o": f["outcome"], "v": f["observed"]}, sort_keys=True) for f in found}
    first = found[0]
    cell = {
        "outcome": first["outcome"],
        "observed": first["observed"],
        "message": first["message"],
        "files": [f["file"] for f in found],
        "conflict": None,
        "hang": first["hang"],
        "abi_note": first["abi_note"],
    }
    if len(distinct) > 1:
        cell["conflict"] = [
            {
                "file": f["file"],
                "outcome": f["outcome"],
                "observed": f["observed"],
                "message": f["message"],
            }
            for f in found
        ]
    return cell


def _mark_translations(columns: List[Dict[str, Any]], rows: List[Dict[str, Any]]) -> None:
    """In a column whose kernel is reached through a translating ABI (NetBSD via compat_linux),
    note every cell that differs from the same kernel's native-ABI column: that value is the
    translation's until shown otherwise.  Cells the result file marked keep their reason."""
    for column in columns:
        native_kernel = TRANSLATING_KERNELS.get(column.get("kernel") or "")
        if native_kernel is None:
            continue
        native = next(
            (
                c
                for c in columns
                if c.get("kernel") == native_kernel
                and (c["os"], c["release"], c["machine"])
                == (column["os"], column["release"], column["machine"])
            ),
            None,
        )
        if native is None:
            continue
        for row in rows:
            cell, reference = row["cells"].get(column["key"]), row["cells"].get(native["key"])
            if cell is None or reference is None or cell["abi_note"]:
                continue
            if cell["outcome"] not in _VALUES or reference["outcome"] not in _VALUES:
                continue  # a hang or an unavailable case carries no value to misread
            if not _same_observation(cell, reference):
                cell["abi_note"] = (
                    f"differs from the native-ABI column ({text_value(reference)}): "
                    "compat_linux's translation, not NetBSD's behaviour"
                )


#: Outcomes that carry a value a translation could have changed.
_VALUES = ("observed", "pass", "fail")


def _same_observation(cell: Dict[str, Any], reference: Dict[str, Any]) -> bool:
    """Does ``cell`` show what ``reference`` shows?  Keys only the reference has (the native
    cases record extra detail) do not count."""
    if cell["outcome"] != reference["outcome"]:
        return False
    mine, theirs = cell["observed"], reference["observed"]
    if isinstance(mine, dict) and isinstance(theirs, dict):
        return all(theirs.get(key) == value for key, value in mine.items() if key in theirs)
    return bool(mine == theirs)


def text_value(cell: Dict[str, Any]) -> str:
    """A short plain rendering of a cell for notes."""
    if cell["outcome"] not in ("observed", "pass"):
        return cell["outcome"]
    return json.dumps(cell["observed"], sort_keys=True)[:120]


def _cell_value(cell: Dict[str, Any]) -> Any:
    return {
        "outcome": cell["outcome"],
        "observed": cell["observed"],
        "conflict": cell["conflict"] is not None,
    }


# --- claims ---------------------------------------------------------------------------------


def load_claims(path: Path) -> List[Dict[str, Any]]:
    """The claims in a claims file, each tagged with the file's source name.

    Raises:
        ResultError: the file is unreadable or not a claims file.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultError(f"not a readable claims file: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise ResultError("not a claims file (no 'claims' list)")
    source = {"name": data.get("source", path.stem), "reference": data.get("reference")}
    claims = []
    for i, claim in enumerate(data["claims"]):
        missing = [k for k in ("case", "os", "says", "expect") if k not in claim]
        if missing:
            raise ResultError(f"claims[{i}] lacks {', '.join(missing)}")
        claims.append({**claim, "source": source["name"], "reference": source["reference"]})
    return claims


def holds(expect: Dict[str, Any], observed: Any) -> bool:
    """Whether ``observed`` satisfies an ``expect`` predicate from a claims file.

    ``path`` (a list of keys) selects inside the observed value; then one of
    ``equals``, ``not_equals``, ``in``, ``contains``, ``le``, ``ge``.
    """
    value = observed
    for key in expect.get("path", []):
        if not isinstance(value, dict) or key not in value:
            return False
        value = value[key]
    if "equals" in expect:
        return bool(value == expect["equals"])
    if "not_equals" in expect:
        return bool(value != expect["not_equals"])
    if "in" in expect:
        return value in expect["in"]
    if "contains" in expect:
        return isinstance(value, (list, str)) and expect["contains"] in value
    if "le" in expect:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value <= expect["le"]
        )
    if "ge" in expect:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value >= expect["ge"]
        )
    raise ValueError(f"unknown predicate in {expect!r}")


def check_claim(claim: Dict[str, Any], matrix: Dict[str, Any]) -> Dict[str, Any]:
    """Confirmed, contradicted or unverified, with the evidence from each column of the OS."""
    row = next((r for r in matrix["rows"] if r["id"] == claim["case"]), None)
    evidence = []
    for column in matrix["columns"]:
        if column["os"] != claim["os"] or not column["evidence"] or row is None:
            continue
        if column.get("kernel") in IMPERSONATING_KERNELS:
            continue
        cell = row["cells"].get(column["key"])
        if cell is None or cell["outcome"] not in ("observed", "pass", "fail"):
            continue
        if cell.get("abi_note"):
            continue  # an ABI translation's value says nothing about the OS

        if claim["expect"].get("outcome"):
            ok = cell["outcome"] == claim["expect"]["outcome"]
        else:
            ok = holds(claim["expect"], cell["observed"])
        evidence.append({"column": column["key"], "observed": cell["observed"], "holds": ok})
    if not evidence:
        status = "unverified"
    elif all(e["holds"] for e in evidence):
        status = "confirmed"
    else:
        status = "contradicted"
    return {
        "source": claim["source"],
        "reference": claim.get("reference"),
        "os": claim["os"],
        "os_label": OS_LABELS.get(claim["os"], claim["os"]),
        "topic": claim.get("topic", claim["case"]),
        "case": claim["case"],
        "says": claim["says"],
        "status": status,
        "evidence": evidence,
        "corrected": claim.get("corrected"),
    }


def find_result_files(inputs: Iterable[str]) -> List[Path]:
    """Result files named directly, or every ``*.json`` in a named directory."""
    found: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(path.glob("*.json")))
        else:
            found.append(path)
    return found
