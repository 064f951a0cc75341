"""Kernel columns without a kernel: per-case runs, hangs, merging, ABI marks in the matrix.

The real NetBSD and gVisor runs are the ``rump`` tier's (tests/test_kernels_netbsd.py);
here the harness's own logic runs against real processes and hand-made result files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from udscompat_conformance import SCHEMA_VERSION, cli, matrix, report
from udscompat_conformance.kernels import columns


def _meta(case_id: str, kind: str = "os") -> Dict[str, Any]:
    return {
        "id": case_id,
        "kind": kind,
        "area": case_id.split(".")[1],
        "title": case_id,
        "rows": [],
    }


def _result(
    host: Dict[str, Any], run: Dict[str, Any], cases: List[Dict[str, Any]]
) -> Dict[str, Any]:
    base_host = {
        "os": "Linux",
        "release": "6.1",
        "version": "v",
        "machine": "x86_64",
        "kernel": "Linux 6.1",
        "libc": None,
        "python_implementation": "CPython",
        "python_version": "3.11",
        "udscompat_version": "0.1.0",
        "git_commit": None,
    }
    base_run = {
        "started": "2026-11-30T00:00:00+00:00",
        "duration_s": 1.0,
        "seqpacket_implementation": "auto",
        "standin": None,
        "environment": {},
        "workers": 0,
    }
    full = [
        {**_meta(c["id"], c.get("kind", "os")), "message": None, "duration_s": 0.1, **c}
        for c in cases
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "host": {**base_host, **host},
        "run": {**base_run, **run},
        "summary": {},
        "cases": full,
    }


def test_a_case_past_its_deadline_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    started = time.monotonic()
    status, hang, seconds = columns.run_case(
        [sys.executable, "-c", code], dict(os.environ), 1.0, tmp_path / "log"
    )
    assert (status, hang) == (None, True)
    assert 1.0 <= seconds < 10 and time.monotonic() - started < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the case's child outlived the kill")
    assert columns.run_case([sys.executable, "-c", "pass"], dict(os.environ), 30, tmp_path / "l2")[
        :2
    ] == (0, False)


def test_merge_records_hangs_crashes_and_translations(tmp_path: Path) -> None:
    ok = tmp_path / "ok.json"
    ok.write_text(
        json.dumps(
            _result(
                {},
                {},
                [
                    {"id": "os.creds.mechanism", "outcome": "observed", "observed": "x"},
                ],
            )
        )
    )
    runs = [
        columns.CaseRun("a::m", _meta("os.creds.mechanism"), 1.0, 0, False, False, ok, ""),
        columns.CaseRun(
            "a::z",
            _meta("os.seqpacket.zero_length"),
            30.0,
            None,
            True,
            False,
            tmp_path / "none1",
            "",
        ),
        columns.CaseRun(
            "a::s",
            _meta("shim.seqpacket.send", "shim"),
            30.0,
            None,
            True,
            True,
            tmp_path / "none2",
            "",
        ),
        columns.CaseRun(
            "a::c",
            _meta("os.fdpass.cloexec"),
            2.0,
            -11,
            False,
            False,
            tmp_path / "none3",
            "boom\nSegmentation fault",
        ),
    ]
    merged = columns.merge(runs, 30.0, {"os.creds.mechanism": "translated by compat"})
    cases = {c["id"]: c for c in merged["cases"]}
    assert cases["os.creds.mechanism"]["abi_translation"] == "translated by compat"
    zero = cases["os.seqpacket.zero_length"]
    assert (zero["outcome"], zero["hang"]) == ("error", True)
    assert zero["message"].startswith("hang: no result after 30 s")
    shim = cases["shim.seqpacket.send"]
    assert (shim["outcome"], shim["hang"]) == ("fail", True)
    assert "the rump server died during this case" in shim["message"]
    crash = cases["os.fdpass.cloexec"]
    assert crash["outcome"] == "error" and "hang" not in crash
    assert "exited with -11" in crash["message"] and "Segmentation fault" in crash["message"]
    assert merged["summary"] == {"error": 2, "fail": 1, "observed": 1}
    with pytest.raises(columns.KernelError):
        columns.merge(runs[1:], 30.0, {})


def test_differences_name_every_changed_case() -> None:
    old = _result(
        {},
        {},
        [
            {"id": "os.a.b", "outcome": "observed", "observed": 1},
            {"id": "os.a.c", "outcome": "observed", "observed": 2},
        ],
    )
    same = json.loads(json.dumps(old))
    assert columns.differences(old, same) == []
    new = _result(
        {"release": "7"},
        {},
        [
            {"id": "os.a.b", "outcome": "error", "observed": None},
            {"id": "os.a.d", "outcome": "observed", "observed": 3},
        ],
    )
    found = columns.differences(old, new)
    assert "host.release: committed '6.1', now '7'" in found
    assert any(f.startswith('os.a.b: outcome was "observed", now "error"') for f in found)
    assert "os.a.c: no longer run" in found and "os.a.d: new case" in found


def _netbsd_matrix(tmp_path: Path) -> Dict[str, Any]:
    netbsd = {"os": "NetBSD", "release": "7.99.34"}
    files = {
        "native.json": _result(
            netbsd,
            {"kernel": "netbsd-rump"},
            [
                {"id": "os.address.longest_path", "outcome": "observed", "observed": 253},
                {"id": "os.seqpacket.exists", "outcome": "observed", "observed": "ok"},
                {"id": "os.seqpacket.zero_length", "outcome": "observed", "observed": "lost"},
            ],
        ),
        "compat.json": _result(
            netbsd,
            {"kernel": "netbsd-rump-linux"},
            [
                {"id": "os.address.longest_path", "outcome": "observed", "observed": 107},
                {"id": "os.seqpacket.exists", "outcome": "observed", "observed": "ok"},
                {
                    "id": "os.creds.mechanism",
                    "outcome": "observed",
                    "observed": {"mechanism": "SO_PEERCRED"},
                    "abi_translation": "SO_PEERCRED by the project's patch",
                },
                {
                    "id": "os.seqpacket.zero_length",
                    "outcome": "error",
                    "observed": None,
                    "message": "hang: no result after 30 s",
                    "hang": True,
                },
            ],
        ),
        "gvisor.json": _result(
            {"release": "4.4.0"},
            {"kernel": "gvisor"},
            [
                {"id": "os.seqpacket.exists", "outcome": "observed", "observed": "ok"},
                {
                    "id": "os.address.autobind",
                    "outcome": "observed",
                    "observed": {"bind": "EINVAL"},
                },
            ],
        ),
    }
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
        paths.append(tmp_path / name)
    claims = [
        {
            "case": "os.address.autobind",
            "os": "Linux",
            "says": "autobind",
            "expect": {"path": ["bind"], "equals": "ok"},
            "source": "t",
            "reference": None,
        },
        {
            "case": "os.address.longest_path",
            "os": "NetBSD",
            "says": "253",
            "expect": {"equals": 253},
            "source": "t",
            "reference": None,
        },
        {
            "case": "os.creds.mechanism",
            "os": "NetBSD",
            "says": "LOCAL_PEEREID",
            "expect": {"path": ["mechanism"], "equals": "LOCAL_PEEREID"},
            "source": "t",
            "reference": None,
        },
    ]
    return matrix.build_matrix(paths, claims)


def test_the_compat_column_is_labelled_and_its_translations_marked(tmp_path: Path) -> None:
    built = _netbsd_matrix(tmp_path)
    variants = {c["kernel"]: c["variant"] for c in built["columns"]}
    assert variants == {
        "netbsd-rump": "rump kernel, native ABI",
        "netbsd-rump-linux": "rump kernel, Linux ABI via compat_linux",
        "gvisor": "gVisor",
    }
    # The native-ABI column comes first: the compat one is read against it.
    assert [c["kernel"] for c in built["columns"]] == ["gvisor", "netbsd-rump", "netbsd-rump-linux"]
    compat = next(c["key"] for c in built["columns"] if c["kernel"] == "netbsd-rump-linux")
    rows = {r["id"]: r["cells"] for r in built["rows"]}
    # Differs from the native column: marked as compat_linux's, with the native value.
    assert (
        "differs from the native-ABI column (253)"
        in rows["os.address.longest_path"][compat]["abi_note"]
    )
    assert rows["os.seqpacket.exists"][compat]["abi_note"] is None  # the same: NetBSD's own
    assert rows["os.creds.mechanism"][compat]["abi_note"] == "SO_PEERCRED by the project's patch"
    assert rows["os.seqpacket.zero_length"][compat]["hang"] is True
    # A hang has no value a translation could have changed: not marked (it is NetBSD's).
    assert rows["os.seqpacket.zero_length"][compat]["abi_note"] is None
    # Claims take the native column and never a translated cell.
    by_case = {c["case"]: c for c in built["claims"]}
    assert by_case["os.address.longest_path"]["status"] == "confirmed"
    assert [e["observed"] for e in by_case["os.address.longest_path"]["evidence"]] == [253]
    assert by_case["os.creds.mechanism"]["status"] == "unverified"
    # gVisor answers as Linux but is not Linux's kernel: no evidence for a Linux claim.
    assert by_case["os.address.autobind"]["status"] == "unverified"
    markdown = report.render_markdown(built)
    assert "Linux ABI via compat_linux" in markdown
    assert "107†" in markdown and "ABI translation: differs from the native-ABI column" in markdown
    assert "| hang" in markdown or " hang[" in markdown
    assert "† the value crossed an ABI translation" in markdown
    assert "td.abi" in report.render_html(built) and 'class="o-error hang"' in report.render_html(
        built
    )


def test_matrix_with_kernel_columns_follows_its_schema(tmp_path: Path) -> None:
    import jsonschema

    schema = json.loads((Path(matrix.__file__).parent / "matrix.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(_netbsd_matrix(tmp_path))


def test_kernel_runs_refuse_options_that_do_not_apply(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["run", "--kernel", "gvisor", "--standin", "noabstract"],
        ["run", "--kernel", "netbsd-rump", "--seqpacket", "native"],
        ["run", "--kernel", "netbsd-rump", "-n", "2"],
        ["run", "--check", "x.json"],
    ):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == 2
    assert "--check compares a --kernel run" in capsys.readouterr().err


def test_one_process_per_case_id_with_all_its_items(tmp_path: Path) -> None:
    """A case run on both seqpacket implementations is two pytest items and one case: both
    items go to one process (else each process records the other as "did not run")."""
    script = tmp_path / "fake_pytest.py"
    script.write_text(
        "import json, sys\n"
        "out = [a.split('=', 1)[1] for a in sys.argv if a.startswith('--udscompat-results=')][0]\n"
        "items = [a for a in sys.argv[1:] if '::' in a]\n"
        "json.dump({'items': items}, open(out, 'w'))\n"
    )
    cases = [
        {"nodeid": "t.py::test_a[@native]", "meta": _meta("shim.x.a", "shim")},
        {"nodeid": "t.py::test_a[@emulated]", "meta": _meta("shim.x.a", "shim")},
        {"nodeid": "t.py::test_b", "meta": _meta("os.x.b")},
    ]
    runs = columns.run_each(
        cases,
        tmp_path,
        tmp_path / "work",
        command=[sys.executable, str(script)],
        extra=[],
        env=dict(os.environ),
        timeout=30,
        server=None,
        progress=False,
    )
    seen = [json.loads(run.result_file.read_text())["items"] for run in runs]
    assert seen == [
        [str(tmp_path / "t.py::test_a[@native]"), str(tmp_path / "t.py::test_a[@emulated]")],
        [str(tmp_path / "t.py::test_b")],
    ]
    assert [run.meta["id"] for run in runs] == ["shim.x.a", "os.x.b"]
