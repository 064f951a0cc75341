"""``udscompat-conformance report``: render the merged matrix as Markdown, HTML and JSON.

    udscompat-conformance report RESULTS... [--out DIR] [--claims FILE...] [--readme README.md]

RESULTS are result files or directories of them.  Writes ``DIR/MATRIX.md``,
``DIR/index.html`` and ``DIR/matrix.json`` (default DIR: ``report``).  The
same inputs give byte-identical outputs.  A bad input file is reported on
stderr and in the outputs, and the rest still render.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from udscompat_conformance.matrix import (
    AREA_LABELS,
    ResultError,
    build_matrix,
    find_result_files,
    load_claims,
)

CLAIMS_DIR = Path(__file__).resolve().parent / "claims"
README_START = "<!-- udscompat-matrix:start -->"
README_END = "<!-- udscompat-matrix:end -->"
_SHORT = 48  # longer cell texts go to a footnote in Markdown

#: The summary table: (feature, case id, how to read its cell).
SUMMARY: List[Tuple[str, str, str]] = [
    ("Seqpacket (kernel)", "os.seqpacket.exists", "ok"),
    ("Seqpacket (udscompat)", "shim.seqpacket.implementation", "implementation"),
    ("fd passing", "os.fdpass.one_fd[stream]", "same_file"),
    ("abstract addresses", "os.address.abstract_supported", "ok"),
    ("peer credentials", "shim.creds.self[stream]", "pid"),
    ("fd usable after sender closes it", "os.fdpass.close_after_send[pipe]", "works"),
    ("MSG_CMSG_CLOEXEC honoured", "os.fdpass.cloexec", "with_msg_cmsg_cloexec"),
    ("max fds per message", "os.fdpass.max_per_message", "fds"),
    ("longest socket path (bytes)", "os.address.longest_path", "value"),
    ("event-loop integration (asyncio)", "shim.aio.echo", "pass"),
]


# --- values as text -----------------------------------------------------------------------------


def text_of(value: Any) -> str:
    """A compact, readable rendering of an observed value."""
    if value is True:
        return "✔"
    if value is False:
        return "✘"
    if value is None:
        return "—"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list):
        return ", ".join(text_of(v) for v in value) or "(none)"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {text_of(v)}" for k, v in value.items())
    return json.dumps(value, sort_keys=True)


def cell_text(cell: Optional[Dict[str, Any]]) -> str:
    """What a matrix cell shows: the outcome for shim cases, the observed value for OS cases."""
    if cell is None:
        return "·"
    if cell.get("conflict"):
        texts = sorted({_plain_cell_text(c) for c in cell["conflict"]})
        return "⚠ conflict: " + " | ".join(texts)
    return _plain_cell_text(cell)


def _plain_cell_text(cell: Dict[str, Any]) -> str:
    outcome = cell["outcome"]
    if cell.get("hang"):
        return "hang"
    if outcome == "pass":
        return "✔" if cell.get("observed") in (None, True) else f"✔ {text_of(cell['observed'])}"
    if outcome == "fail":
        return "✘ fails"
    if outcome == "unavailable":
        return "unavailable"
    if outcome == "error":
        return "error"
    if outcome == "skip":
        return "skipped"
    return text_of(cell.get("observed"))


def summary_text(cell: Optional[Dict[str, Any]], how: str) -> str:
    """One summary-table cell, read from its case's cell in the ``how`` way."""
    if cell is None:
        return "·"
    if cell.get("conflict"):
        return "⚠"
    text = _summary_value(cell, how)
    return f"{text} †" if cell.get("abi_note") else text


def _summary_value(cell: Dict[str, Any], how: str) -> str:
    outcome, value = cell["outcome"], cell.get("observed")
    if cell.get("hang"):
        return "✘ hang"
    if outcome == "unavailable":
        return "✘ N/A"
    if outcome in ("fail", "error"):
        return f"✘ {outcome}"
    if how == "ok":
        return "✔" if value == "ok" else f"✘ {value}"
    if how == "pass":
        return "✔" if outcome == "pass" else "✘"
    if how == "value":
        return text_of(value)
    if how == "works":
        return "✔" if value == "works" else f"✘ {value}"
    if how == "implementation":
        chosen = value.get("implementation") if isinstance(value, dict) else None
        return "✔ native" if chosen == "native" else f"{chosen}" if chosen else "?"
    if how == "pid":
        pid = value.get("pid") if isinstance(value, dict) else None
        return "✔ pid, uid, gid" if pid == "reported" else "✔ uid, gid (no pid)"
    inner = value.get(how) if isinstance(value, dict) else value
    return text_of(inner)


# --- Markdown -----------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _file_count(columns: List[Dict[str, Any]]) -> int:
    return sum(len(c["sources"]) for c in columns)


def _short_commit(host: Dict[str, Any]) -> str:
    return str(host.get("git_commit") or "")[:10]


def column_title(column: Dict[str, Any]) -> str:
    title = f"{column['os_label']} {column['release']}"
    if column["variant"] != "native":
        title += f" ({column['variant']})"
    return title


def summary_markdown(matrix: Dict[str, Any]) -> str:
    """The at-a-glance table (the README embeds it)."""
    columns = matrix["columns"]
    if not columns:
        return "_No result files yet._\n"
    lines = [
        "| | " + " | ".join(_md_escape(column_title(c)) for c in columns) + " |",
        "|-|" + "-|" * len(columns),
    ]
    rows = {row["id"]: row for row in matrix["rows"]}
    for label, case_id, how in SUMMARY:
        row = rows.get(case_id)
        cells = [summary_text(row["cells"].get(c["key"]) if row else None, how) for c in columns]
        lines.append(f"| **{label}** | " + " | ".join(_md_escape(t) for t in cells) + " |")
    shim_line = []
    for column in columns:
        shim = [
            r["cells"][column["key"]]
            for r in matrix["rows"]
            if r["kind"] == "shim" and column["key"] in r["cells"]
        ]
        counts = {
            label: sum(1 for c in shim if c["outcome"] in outcomes)
            for label, outcomes in (
                ("pass", ("pass",)),
                ("✘", ("fail", "error")),
                ("N/A", ("unavailable", "skip")),
            )
        }
        shim_line.append(", ".join(f"{n} {label}" for label, n in counts.items() if n) or "·")
    lines.append("| **udscompat contract** | " + " | ".join(shim_line) + " |")
    if any(cell.get("abi_note") for row in matrix["rows"] for cell in row["cells"].values()):
        lines += [
            "",
            "† the value crossed an ABI translation (NetBSD's compat_linux) and is not evidence "
            "about the kernel; the native-ABI column has the kernel's own.",
        ]
    return "\n".join(lines) + "\n"


def render_markdown(matrix: Dict[str, Any]) -> str:
    columns = matrix["columns"]
    notes: Dict[str, int] = {}

    def footnote(text: str) -> str:
        number = notes.setdefault(text, len(notes) + 1)
        return f"[^{number}]"

    out = [
        "# udscompat feature matrix",
        "",
        f"Generated by `udscompat-conformance report` from {_file_count(columns)} result files; "
        "every value was measured on the machine named in its column.",
        "",
        "## Summary",
        "",
        summary_markdown(matrix),
        "## Columns",
        "",
        "| Column | Kernel | Machine | Python | udscompat | Run | Files |",
        "|-|-|-|-|-|-|-|",
    ]
    for column in columns:
        for source in column["sources"]:
            host, run = source["host"], source["run"]
            out.append(
                "| "
                + " | ".join(
                    _md_escape(str(x))
                    for x in (
                        column_title(column),
                        host.get("kernel", ""),
                        host.get("machine", ""),
                        f"{host.get('python_implementation', '')} {host.get('python_version', '')}",
                        f"{host.get('udscompat_version', '')} {_short_commit(host)}",
                        run.get("started", ""),
                        source["file"],
                    )
                )
                + " |"
            )
    out.append("")
    by_area: Dict[str, List[Dict[str, Any]]] = {}
    for row in matrix["rows"]:
        by_area.setdefault(row["area"], []).append(row)
    header = "| Case | " + " | ".join(_md_escape(column_title(c)) for c in columns) + " |"
    rule = "|-|" + "-|" * len(columns)
    for area, rows in by_area.items():
        out += [f"## {AREA_LABELS.get(area, area)}", "", header, rule]
        for row in rows:
            cells = []
            for column in columns:
                cell = row["cells"].get(column["key"])
                text = cell_text(cell)
                marks = ""
                if len(text) > _SHORT:
                    marks += footnote(f"{row['id']} on {column_title(column)}: {text}")
                    text = text[: _SHORT - 1] + "…"
                if cell is not None and cell.get("message"):
                    marks += footnote(cell["message"])
                if cell is not None and cell.get("abi_note"):
                    marks += "†" + footnote(f"ABI translation: {cell['abi_note']}")
                cells.append(_md_escape(text) + marks)
            kind = "shim" if row["kind"] == "shim" else "os"
            title = f"{_md_escape(row['title'])} <sub>`{row['id']}` {kind}</sub>"
            out.append(f"| {title} | " + " | ".join(cells) + " |")
        out.append("")
    if matrix["claims"]:
        out += [
            "## Claims against observations",
            "",
            "| Source | OS | Claim | Case | Observed | Status |",
            "|-|-|-|-|-|-|",
        ]
        for claim in matrix["claims"]:
            observed = "; ".join(text_of(e["observed"]) for e in claim["evidence"]) or "·"
            status = {"confirmed": "✔ confirmed", "contradicted": "✘ contradicted"}.get(
                claim["status"], "? unverified"
            )
            corrected = claim.get("corrected")
            if corrected:
                where = f" on {corrected['column']}" if corrected.get("column") else ""
                status += footnote(
                    f'Corrected: the source said "{corrected["was"]}"; '
                    f"{corrected['shown_by']} showed otherwise{where}"
                )
            out.append(
                "| "
                + " | ".join(
                    _md_escape(x)
                    for x in (
                        claim["source"],
                        claim["os_label"],
                        claim["says"],
                        f"`{claim['case']}`",
                        observed if len(observed) <= _SHORT else observed[: _SHORT - 1] + "…",
                        status,
                    )
                )
                + " |"
            )
        out.append("")
    if matrix["errors"]:
        out += ["## Files that could not be read", ""]
        out += [f"- `{e['file']}`: {e['error']}" for e in matrix["errors"]]
        out.append("")
    if notes:
        out += ["## Notes", ""]
        out += [f"[^{n}]: {_md_escape(text)}" for text, n in notes.items()]
        out.append("")
    return "\n".join(out) + ("" if out[-1] == "" else "\n")


# --- HTML ---------------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; font-family: system-ui, -apple-system, sans-serif; }
body { margin: 0 auto; padding: 0.5rem 1rem 3rem; max-width: 100rem; color: #1a1a1a; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 1.6rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #c8c8c8; padding: 0.25rem 0.45rem; vertical-align: top;
  text-align: left; }
thead th { background: #f0f0f0; position: sticky; top: 0; }
th.case { position: sticky; left: 0; background: #fafafa; min-width: 14rem; max-width: 24rem;
  font-weight: normal; }
th.case code { font-size: 0.75rem; color: #555; }
td { max-width: 18rem; overflow-wrap: anywhere; }
td details summary { cursor: pointer; }
td details div { font-size: 0.75rem; color: #333; white-space: pre-wrap; }
.o-pass { background: #dff3df; } .o-fail, .o-error { background: #f8d4d4; }
.o-unavailable, .o-skip { background: #ececec; color: #555; }
.o-observed.v-true { background: #e6f4e6; } .o-observed.v-false { background: #fbeed5; }
.s-yes { background: #dff3df; } .s-no { background: #fbeed5; }
.conflict { outline: 3px solid #d08000; outline-offset: -3px; }
td.abi summary::after { content: " †"; color: #8a5a00; }
.c-confirmed { background: #dff3df; } .c-contradicted { background: #f8d4d4; }
.c-unverified { background: #ececec; }
.controls { display: flex; flex-wrap: wrap; gap: 0.4rem 1rem; align-items: center;
  margin: 0.6rem 0; }
.controls label { white-space: nowrap; }
body:has(#only-diff:checked) tr.same { display: none; }
"""


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _value_class(cell: Dict[str, Any]) -> str:
    classes = [f"o-{cell['outcome']}"]
    if cell.get("observed") is True:
        classes.append("v-true")
    elif cell.get("observed") is False:
        classes.append("v-false")
    if cell.get("conflict"):
        classes.append("conflict")
    if cell.get("abi_note"):
        classes.append("abi")
    if cell.get("hang"):
        classes.append("hang")
    return " ".join(classes)


def _cell_html(cell: Optional[Dict[str, Any]], column: Dict[str, Any]) -> str:
    if cell is None:
        return '<td class="o-missing" title="not run in this column">·</td>'
    detail = [f"outcome: {cell['outcome']}"]
    if cell.get("observed") is not None:
        detail.append(
            "observed: " + json.dumps(cell["observed"], sort_keys=True, ensure_ascii=False)
        )
    if cell.get("message"):
        detail.append("message: " + cell["message"])
    if cell.get("abi_note"):
        detail.append("ABI translation: " + cell["abi_note"])
    if cell.get("conflict"):
        for other in cell["conflict"]:
            detail.append(
                f"{other['file']}: {other['outcome']} "
                + json.dumps(other["observed"], sort_keys=True, ensure_ascii=False)
            )
    detail.append("from: " + ", ".join(cell["files"]))
    full = "\n".join(detail)
    return (
        f'<td class="{_value_class(cell)}" title="{_h(full)}"><details>'
        f"<summary>{_h(cell_text(cell))}</summary><div>{_h(full)}</div></details></td>"
    )


def _column_header(column: Dict[str, Any]) -> str:
    facts = []
    for source in column["sources"]:
        host, run = source["host"], source["run"]
        facts.append(
            "\n".join(
                f"{k}: {v}"
                for k, v in (
                    ("file", source["file"]),
                    ("kernel", host.get("kernel")),
                    ("version", host.get("version")),
                    ("machine", host.get("machine")),
                    ("libc", host.get("libc")),
                    ("python", f"{host.get('python_implementation')} {host.get('python_version')}"),
                    (
                        "udscompat",
                        f"{host.get('udscompat_version')} {host.get('git_commit') or ''}",
                    ),
                    ("run started", run.get("started")),
                    ("duration", f"{run.get('duration_s')} s"),
                    ("seqpacket", run.get("seqpacket_implementation")),
                    ("run --kernel", run.get("kernel")),
                    ("stand-in", run.get("standin")),
                    ("summary", json.dumps(source["summary"], sort_keys=True)),
                )
            )
        )
    variant = "" if column["variant"] == "native" else f"<br><small>{_h(column['variant'])}</small>"
    return (
        f'<th scope="col">{_h(column["os_label"])} {_h(column["release"])}{variant}'
        f"<details><summary>host</summary><div>{_h(chr(10).join(facts))}</div></details></th>"
    )


def render_html(matrix: Dict[str, Any]) -> str:
    columns = matrix["columns"]
    areas: List[str] = []
    for row in matrix["rows"]:
        if row["area"] not in areas:
            areas.append(row["area"])
    area_css = "\n".join(
        f"body:has(#area-{a}:checked) section.area:not(.a-{a}) {{ display: none; }}" for a in areas
    )
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>udscompat feature matrix</title>",
        f"<style>{_CSS}\n{area_css}</style>",
        "</head><body>",
        "<h1>udscompat feature matrix</h1>",
        "<p>Every value was measured by the conformance suite on the machine named in its column. "
        "Click a cell (or hover it) for the detail. Green: the shim keeps its contract or the "
        "kernel says yes; red: a failure; grey: not available on that OS.</p>",
        '<div class="scroll"><table id="summary"><caption>Summary</caption><thead><tr><th></th>',
    ]
    out += [
        f'<th scope="col">{_h(c["os_label"])} {_h(c["release"])}'
        + ("" if c["variant"] == "native" else f"<br><small>{_h(c['variant'])}</small>")
        + "</th>"
        for c in columns
    ]
    out.append("</tr></thead><tbody>")
    rows = {row["id"]: row for row in matrix["rows"]}
    for label, case_id, how in SUMMARY:
        row = rows.get(case_id)
        out.append(f'<tr><th scope="row">{_h(label)}</th>')
        for column in columns:
            cell = row["cells"].get(column["key"]) if row else None
            text = summary_text(cell, how)
            css = "s-yes" if text.startswith("✔") else "s-no" if text.startswith("✘") else "s-other"
            out.append(f'<td class="{css}">{_h(text)}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    out.append('<form class="controls" id="filters"><strong>Area:</strong>')
    out.append('<label><input type="radio" name="area" id="area-all" checked> all</label>')
    for area in areas:
        out.append(
            f'<label><input type="radio" name="area" id="area-{_h(area)}"> '
            f"{_h(AREA_LABELS.get(area, area))}</label>"
        )
    out.append('<label><input type="checkbox" id="only-diff"> only differences</label></form>')
    header = "".join(_column_header(c) for c in columns)
    for area in areas:
        out.append(f'<section class="area a-{_h(area)}"><h2>{_h(AREA_LABELS.get(area, area))}</h2>')
        out.append(
            '<div class="scroll"><table><thead><tr><th class="case">Case</th>'
            f"{header}</tr></thead><tbody>"
        )
        for row in matrix["rows"]:
            if row["area"] != area:
                continue
            same = "" if row["differs"] else ' class="same"'
            kind = "shim contract" if row["kind"] == "shim" else "OS behaviour"
            catalogue = f" · {', '.join(row['rows'])}" if row["rows"] else ""
            out.append(
                f'<tr{same} data-area="{_h(area)}"><th class="case" scope="row">{_h(row["title"])}'
                f"<br><code>{_h(row['id'])}</code> <small>{kind}{_h(catalogue)}</small></th>"
            )
            out += [_cell_html(row["cells"].get(c["key"]), c) for c in columns]
            out.append("</tr>")
        out.append("</tbody></table></div></section>")
    if matrix["claims"]:
        out.append(
            '<h2 id="claims">Claims against observations</h2><div class="scroll"><table><thead><tr>'
        )
        out.append(
            "<th>Source</th><th>OS</th><th>Claim</th><th>Case</th><th>Observed</th><th>Status</th></tr></thead><tbody>"
        )
        for claim in matrix["claims"]:
            observed = "; ".join(text_of(e["observed"]) for e in claim["evidence"]) or "·"
            says = claim["says"]
            if claim.get("corrected"):
                says += f" (corrected; the source said: {claim['corrected']['was']})"
            out.append(
                f"<tr><td>{_h(claim['source'])}</td><td>{_h(claim['os_label'])}</td><td>{_h(says)}</td>"
                f"<td><code>{_h(claim['case'])}</code></td><td>{_h(observed)}</td>"
                f'<td class="c-{_h(claim["status"])}">{_h(claim["status"])}</td></tr>'
            )
        out.append("</tbody></table></div>")
    if matrix["errors"]:
        out.append('<h2 id="errors">Files that could not be read</h2><ul>')
        out += [
            f"<li><code>{_h(e['file'])}</code>: {_h(e['error'])}</li>" for e in matrix["errors"]
        ]
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- files ---------------------------------------------------------------------------------------


def default_claims() -> List[Path]:
    return sorted(CLAIMS_DIR.glob("*.json"))


class ReportError(Exception):
    """The outputs could not be written; none of them was changed."""


def readme_with_summary(readme: Path, summary: str) -> str:
    """``readme``'s text with the block between the matrix markers replaced.

    Raises:
        ReportError: the README cannot be read or has no marker block.
    """
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{readme}: cannot read it: {exc.strerror}") from exc
    if README_START not in text or README_END not in text:
        raise ReportError(f"{readme}: no {README_START} ... {README_END} block to update")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{summary}{README_END}{tail}"


def write_all_or_nothing(files: Dict[Path, str]) -> None:
    """Write every file, or none: each is written beside its target first, then all are renamed.

    A failure before the renames (a missing or read-only directory, a full disk) removes
    what was written and changes no target.  The renames themselves do not fail on one
    filesystem.

    Raises:
        ReportError: naming the file that could not be written.
    """
    written: List[Tuple[Path, Path]] = []
    try:
        for target, text in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            written.append((Path(tmp), target))
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            if target.exists():
                os.chmod(tmp, target.stat().st_mode & 0o7777)
            else:
                os.chmod(tmp, 0o666 & ~_umask())
    except OSError as exc:
        for tmp, _ in written:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        failed = written[-1][1] if written else next(iter(files))
        raise ReportError(f"{failed}: cannot write it: {exc.strerror or exc}") from exc
    for tmp, target in written:
        os.replace(tmp, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_report(
    inputs: Sequence[str], out: Path, claims_files: Sequence[Path], readme: Optional[Path] = None
) -> Dict[str, Any]:
    """Build the matrix from ``inputs``; write MATRIX.md, index.html and matrix.json to ``out``
    (and the summary block of ``readme``), all of them or none.

    Raises:
        ReportError: an output could not be written (or the README has no marker block);
            no output was changed.
    """
    claims: List[Dict[str, Any]] = []
    claim_errors = []
    for path in claims_files:
        try:
            claims.extend(load_claims(path))
        except ResultError as exc:
            claim_errors.append({"file": path.name, "error": str(exc)})
    matrix = build_matrix(find_result_files(inputs), claims)
    matrix["errors"].extend(claim_errors)
    files = {
        out / "matrix.json": json.dumps(matrix, indent=1, sort_keys=True, ensure_ascii=False)
        + "\n",
        out / "MATRIX.md": render_markdown(matrix),
        out / "index.html": render_html(matrix),
    }
    if readme is not None:
        files[readme] = readme_with_summary(readme, summary_markdown(matrix))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{out}: cannot create it: {exc.strerror}") from exc
    write_all_or_nothing(files)
    return matrix


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="udscompat-conformance report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("results", nargs="+", help="result files, or directories of them")
    parser.add_argument("--out", default="report", help="output directory (default: report)")
    parser.add_argument(
        "--claims",
        nargs="*",
        type=Path,
        default=None,
        help="claims files (default: the ones shipped in udscompat_conformance/claims/)",
    )
    parser.add_argument("--readme", type=Path, help="update the summary block in this README")
    args = parser.parse_args(argv)
    claims = default_claims() if args.claims is None else args.claims
    try:
        matrix = write_report(args.results, Path(args.out), claims, args.readme)
    except ReportError as exc:
        print(f"udscompat-conformance report: {exc}; no output was changed", file=sys.stderr)
        return 2
    for error in matrix["errors"]:
        print(f"udscompat-conformance report: {error['file']}: {error['error']}", file=sys.stderr)
    counts = f"{len(matrix['columns'])} columns, {len(matrix['rows'])} rows"
    print(
        f"udscompat-conformance report: {counts}, {len(matrix['claims'])} claims "
        f"-> {args.out}/MATRIX.md, index.html, matrix.json"
    )
    if not matrix["columns"]:
        return 2
    return 0
