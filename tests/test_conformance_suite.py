"""The conformance suite itself: its result file, its truthfulness, its outcomes and its stand-in.

Each test runs ``python -m udscompat_conformance run`` in a child process, as a user would.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from tests.conftest import c_compiler
from udscompat import _probes
from udscompat._platform import backend
from udscompat_conformance.catalogue import FLAGGED, NOT_OBSERVED, ROWS

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "udscompat_conformance" / "result.schema.json").read_text())

LINUX = backend.OS_NAME == "Linux"


def needs_root_here(case: Dict[str, Any]) -> bool:
    """A case that reports itself unavailable because this run is not root."""
    return (
        os.geteuid() != 0
        and case["outcome"] == "unavailable"
        and "needs root" in (case.get("message") or "")
    )


def run_suite(tmp: Path, *args: str, env: Dict[str, str] | None = None) -> Dict[str, Any]:
    out = tmp / f"result-{len(list(tmp.iterdir()))}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "udscompat_conformance", "run", "--out", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data: Dict[str, Any] = json.loads(out.read_text())
    return data


def validate(result: Dict[str, Any]) -> None:
    import jsonschema

    jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(result)


@pytest.fixture(scope="module")
def serial_result(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    return run_suite(tmp_path_factory.mktemp("serial"), "-n", "0")


def by_id(result: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {case["id"]: case for case in result["cases"]}


def test_result_file_is_valid_and_complete(serial_result: Dict[str, Any]) -> None:
    validate(serial_result)
    cases = serial_result["cases"]
    assert len(cases) > 120
    ids = [c["id"] for c in cases]
    assert ids == sorted(set(ids)), "ids are unique and sorted"
    assert {c["kind"] for c in cases} == {"os", "shim"}
    summary: Dict[str, int] = {}
    for case in cases:
        summary[case["outcome"]] = summary.get(case["outcome"], 0) + 1
    assert serial_result["summary"] == summary
    failing = [(c["id"], c["message"]) for c in cases if c["outcome"] in ("fail", "error")]
    assert not failing
    host = serial_result["host"]
    assert (host["os"], host["release"], host["machine"]) == (
        platform.system(),
        platform.release(),
        platform.machine(),
    )
    assert host["python_version"] == platform.python_version()
    assert serial_result["run"]["seqpacket_implementation"] == "auto"


def test_observations_are_what_this_kernel_does(serial_result: Dict[str, Any]) -> None:
    cases = by_id(serial_result)

    def seen(case_id: str) -> Any:
        assert cases[case_id]["outcome"] == "observed", cases[case_id]
        return cases[case_id]["observed"]

    # What the library's own probes measured in this process, on this kernel.
    assert seen("os.fdpass.max_per_message")["fds"] == _probes.max_fds_per_message()
    # The stdlib passes paths with a NUL (udscompat's own limit may be all of sun_path).
    assert seen("os.address.longest_path") == backend.SUN_PATH_SIZE - 1
    assert (seen("os.seqpacket.exists") == "ok") is _probes.seqpacket().available
    assert (seen("os.fdpass.close_after_send[pipe]") == "works") is _probes.close_after_send()
    assert seen("os.fdpass.same_process_reuse") is _probes.same_process_fd_reuse()
    implementation = "native" if _probes.seqpacket().conformant else "emulated"
    assert cases["shim.seqpacket.implementation"]["observed"]["implementation"] == implementation
    if not LINUX:
        return
    # Linux's own values (af_unix.c, scm.h, /proc/sys/net/core).
    assert seen("os.fdpass.max_per_message") == {"fds": 253, "beyond": "EINVAL"}  # SCM_MAX_FD
    assert seen("os.address.longest_path") == 107
    assert seen("os.address.longest_abstract") == 107
    assert seen("os.seqpacket.exists") == "ok"
    assert seen("os.seqpacket.short_read")["rest"] == "discarded"
    assert (
        seen("os.fdpass.zero_byte_payload[stream]")["receiver"] == "nothing arrives (fds dropped)"
    )
    assert seen("os.fdpass.close_after_send[pipe]") == "works"
    assert seen("os.fdpass.same_process_reuse") is False
    assert seen("os.creds.unconnected") == {
        "no_error": {"pid": 0, "uid": 2**32 - 1, "gid": 2**32 - 1}
    }
    sndbuf = int(Path("/proc/sys/net/core/wmem_default").read_text())
    assert seen("os.stream.buffer_sizes")["stream_sndbuf"] == sndbuf


def test_seqpacket_shim_cases_carry_evidence_for_both_implementations(
    serial_result: Dict[str, Any],
) -> None:
    both = [
        c
        for c in serial_result["cases"]
        if c["id"].startswith(("shim.seqpacket.", "shim.aio."))
        and c["id"] != "shim.seqpacket.implementation"
    ]
    assert len(both) >= 10
    for case in both:
        assert set(case["observed"]) == {"native", "emulated"}, case["id"]
        assert [run["outcome"] for run in case["observed"].values()] == ["pass", "pass"], case


def test_a_case_failing_on_one_implementation_fails_and_says_which(tmp_path: Path) -> None:
    fake = tmp_path / "test_fake_impl.py"
    fake.write_text(
        "import pytest\n"
        "@pytest.mark.case('shim.fake.one_side', 'passes on native only')\n"
        "@pytest.mark.parametrize('n', [1])\n"
        "def test_one_side(observe, seqpacket_implementation, n):\n"
        "    observe(seqpacket_implementation)\n"
        "    assert seqpacket_implementation == 'native', 'emulated breaks here'\n"
    )
    result = run_suite(tmp_path, "--", "-k", "one_side", str(fake))
    validate(result)
    (case,) = result["cases"]
    assert case["id"] == "shim.fake.one_side[1]"  # the implementation is not in the id
    assert case["outcome"] == "fail"
    assert case["observed"]["native"] == {"outcome": "pass", "observed": "native", "message": None}
    assert case["observed"]["emulated"]["outcome"] == "fail"
    assert "emulated: fail" in case["message"] and "emulated breaks here" in case["message"]


def test_catalogue_rows_are_covered_or_explained(serial_result: Dict[str, Any]) -> None:
    covered = {row for case in serial_result["cases"] for row in case["rows"]}
    missing = [row for row in ROWS if row not in covered and row not in NOT_OBSERVED]
    assert not missing, f"catalogue rows with no case and no reason: {missing}"
    claimed_twice = sorted(covered & set(NOT_OBSERVED))
    assert not claimed_twice, f"rows both observed and explained away: {claimed_twice}"
    assert not covered - set(ROWS), f"cases name rows the catalogue lacks: {covered - set(ROWS)}"
    assert (len(ROWS), len(FLAGGED)) == (183, 101) and set(FLAGGED) <= set(ROWS)


def _comparable(result: Dict[str, Any]) -> List[Tuple[str, str, Any]]:
    return [(c["id"], c["outcome"], c["observed"]) for c in result["cases"]]


def test_serial_and_parallel_runs_agree(serial_result: Dict[str, Any], tmp_path: Path) -> None:
    parallel = run_suite(tmp_path, "-n", "2")
    validate(parallel)
    assert parallel["run"]["workers"] == 2
    assert _comparable(parallel) == _comparable(serial_result)


def test_forced_emulation_is_recorded(tmp_path: Path) -> None:
    result = run_suite(tmp_path, "-n", "2", "--seqpacket", "emulated", "--", "-k", "shim")
    validate(result)
    assert result["run"]["seqpacket_implementation"] == "emulated"
    cases = by_id(result)
    assert cases["shim.seqpacket.implementation"]["observed"]["implementation"] == "emulated"
    assert all(c["outcome"] == "pass" or needs_root_here(c) for c in result["cases"]), [
        (c["id"], c["message"]) for c in result["cases"] if c["outcome"] != "pass"
    ]


FAKE_CASES = textwrap.dedent(
    """
    import os, time
    import pytest
    from udscompat_conformance.plugin import unavailable

    @pytest.mark.case("shim.fake.hangs", "sleeps past the timeout")
    def test_hangs(observe):
        time.sleep(60)

    @pytest.mark.case("shim.fake.leaks", "leaves a descriptor open")
    def test_leaks(observe):
        global LEAKED
        LEAKED = os.pipe()
        observe(True)

    @pytest.mark.case("shim.fake.breaks_contract", "asserts something false")
    def test_breaks_contract(observe):
        assert 1 + 1 == 3, "arithmetic"

    @pytest.mark.case("os.fake.cannot_observe", "raises while observing")
    def test_cannot_observe(observe):
        raise OSError(5, "the probe itself failed")

    @pytest.mark.case("os.fake.missing_here", "a feature this OS lacks")
    def test_missing_here(observe):
        unavailable("no such feature on this OS")

    @pytest.mark.case("os.fake.observes", "records a value")
    @pytest.mark.parametrize("n", [1, 2])
    def test_observes(observe, n):
        observe({"n": n}, note="a remark")
    """
)


def test_outcomes_of_hangs_leaks_failures_and_errors(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "test_fake.py").write_text(FAKE_CASES)
    result = run_suite(tmp_path, "--timeout", "3", "--", "-k", "fake", str(fake / "test_fake.py"))
    validate(result)
    cases = by_id(result)
    assert cases["shim.fake.hangs"]["outcome"] == "fail"
    assert "Timeout" in cases["shim.fake.hangs"]["message"]
    assert cases["shim.fake.leaks"]["outcome"] == "fail"
    assert cases["shim.fake.leaks"]["message"].startswith("leaked descriptors")
    assert cases["shim.fake.breaks_contract"]["outcome"] == "fail"
    assert "arithmetic" in cases["shim.fake.breaks_contract"]["message"]
    assert cases["os.fake.cannot_observe"]["outcome"] == "error"
    assert "the probe itself failed" in cases["os.fake.cannot_observe"]["message"]
    assert cases["os.fake.missing_here"]["outcome"] == "unavailable"
    assert cases["os.fake.missing_here"]["message"] == "no such feature on this OS"
    assert cases["os.fake.observes[1]"]["observed"] == {"n": 1}
    assert cases["os.fake.observes[2]"]["message"] == "a remark"
    assert set(cases) == {
        "shim.fake.hangs",
        "shim.fake.leaks",
        "shim.fake.breaks_contract",
        "os.fake.cannot_observe",
        "os.fake.missing_here",
        "os.fake.observes[1]",
        "os.fake.observes[2]",
    }


def test_a_case_without_an_id_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "test_bad.py"
    bad.write_text("def test_anonymous():\n    pass\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "udscompat_conformance",
            "run",
            "--out",
            str(tmp_path / "r.json"),
            "--",
            str(bad),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "needs @pytest.mark.case" in proc.stdout + proc.stderr


def test_result_file_is_replaced_atomically(tmp_path: Path) -> None:
    from udscompat_conformance.plugin import write_atomically

    target = tmp_path / "r.json"
    write_atomically(target, {"a": 1})
    write_atomically(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["r.json"], "no temporary file is left behind"


# --- the kernel stand-in (LD_PRELOAD): a stand-in for kernels that cannot run here -----------


@pytest.fixture(scope="module")
def standin_result(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    if not LINUX:
        pytest.skip("the kernel stand-in interposes glibc's socket calls (LD_PRELOAD): Linux only")
    if c_compiler() is None:
        pytest.skip("no C compiler to build the kernel stand-in")
    return run_suite(
        tmp_path_factory.mktemp("standin"),
        "-n",
        "2",
        "--standin",
        "noseqpacket,noabstract,nocloexec",
    )


def test_standin_makes_the_probes_take_the_other_branches(standin_result: Dict[str, Any]) -> None:
    validate(standin_result)
    cases = by_id(standin_result)
    assert standin_result["run"]["standin"] == "noseqpacket,noabstract,nocloexec"
    assert cases["os.seqpacket.exists"]["observed"] == "EPROTONOSUPPORT"
    assert cases["os.address.abstract_supported"]["observed"] == "ENOENT"
    assert cases["os.address.autobind"]["observed"] == {"bind": "EINVAL"}
    assert cases["os.fdpass.cloexec"]["observed"]["with_msg_cmsg_cloexec"] is False
    implementation = cases["shim.seqpacket.implementation"]["observed"]
    assert implementation["implementation"] == "emulated"
    capabilities = cases["shim.capabilities.measured"]["observed"]
    assert capabilities["features"]["abstract_addresses"]["status"] == "unavailable"
    assert capabilities["features"]["seqpacket"]["status"] == "emulated"
    assert capabilities["quirks"]["msg_cmsg_cloexec"] is False


def test_shim_cases_hold_under_the_standin(standin_result: Dict[str, Any]) -> None:
    shim = [c for c in standin_result["cases"] if c["kind"] == "shim"]
    bad = [
        (c["id"], c["outcome"], c["message"])
        for c in shim
        if c["outcome"] not in ("pass", "unavailable")
    ]
    assert not bad
    unavailable = {
        c["id"] for c in shim if c["outcome"] == "unavailable" and not needs_root_here(c)
    }
    # Only what the stand-in removed may be unavailable: abstract names and kernel seqpacket
    # sockets used directly; the seqpacket contract itself runs on the emulation.
    assert unavailable == {
        "shim.address.abstract",
        "shim.ancillary.stream_as_probed[seqpacket]",
        "shim.fdpass.roundtrip_cloexec[seqpacket]",
        "shim.fdpass.truncation_no_leak[seqpacket]",
    }
    assert all(c["outcome"] == "pass" for c in shim if c["id"].startswith("shim.seqpacket."))
    cases = by_id(standin_result)
    native = cases["shim.seqpacket.truncation"]["observed"]["native"]
    assert native["outcome"] == "unavailable"  # no kernel seqpacket: evidence says why
    assert cases["shim.seqpacket.truncation"]["observed"]["emulated"]["outcome"] == "pass"
    errors = [c["id"] for c in standin_result["cases"] if c["outcome"] == "error"]
    assert not errors


# --- the README's main command keeps README.md, report/ and report/results/ in agreement ------


def test_run_with_readme_keeps_the_readme_table_and_the_report_in_agreement(
    tmp_path: Path,
) -> None:
    """The README's main command (``run --report report --readme README.md``) adds this
    machine's result; the tests then check README.md's table and report/ against
    report/results/ (test_report.py).  Run without ``--readme`` it left the table one result
    behind, and the README's test command failed right after its main command."""
    from udscompat_conformance import report
    from udscompat_conformance.matrix import build_matrix, find_result_files

    # One published column that is not this machine's, and the README whose table has seven:
    # the run must leave a table of two.
    (tmp_path / "report" / "results").mkdir(parents=True)
    published = "netbsd-7.99.34-rump-native-abi-x86_64.json"
    shutil.copy2(ROOT / "report" / "results" / published, tmp_path / "report" / "results")
    shutil.copy2(ROOT / "README.md", tmp_path / "README.md")
    out = tmp_path / "report" / "results" / "this-machine.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "udscompat_conformance",
            "run",
            "--out",
            str(out),
            "--report",
            "report",
            "--readme",
            "README.md",
            "--",
            "-k",
            "test_implementation",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    matrix = build_matrix(find_result_files([str(tmp_path / "report" / "results")]))
    assert len(matrix["columns"]) == 2
    assert "this-machine.json" in (tmp_path / "report" / "MATRIX.md").read_text()
    block = (tmp_path / "README.md").read_text().split(report.README_START)[1]
    assert block.split(report.README_END)[0].strip() == report.summary_markdown(matrix).strip()
    rendered = tmp_path / "rendered"
    report.write_report([str(tmp_path / "report" / "results")], rendered, report.default_claims())
    for name in ("MATRIX.md", "matrix.json", "index.html"):
        assert (rendered / name).read_bytes() == (tmp_path / "report" / name).read_bytes(), name


def test_run_refuses_readme_without_report(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "udscompat_conformance", "run", "--readme", "README.md"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--readme" in proc.stderr and "--report" in proc.stderr
    assert not list(tmp_path.iterdir()), "nothing ran, nothing was written"
