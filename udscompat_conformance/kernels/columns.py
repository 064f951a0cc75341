"""Matrix columns from kernels that cannot boot here: NetBSD (rump kernel) and gVisor.

``udscompat-conformance run --kernel NAME``:

``netbsd-rump``
    NetBSD's native ABI: the cases in ``kernels/native_cases`` drive a rump
    kernel through ctypes over librumpclient, with NetBSD's constants and
    layouts.  OS cases only (the shim cannot run on NetBSD's ABI from here).
``netbsd-rump-linux``
    The whole suite, unmodified, with its AF_UNIX sockets and pipes in the
    same NetBSD kernel, reached through librumphijack and NetBSD's compat_linux.
    Values that compat_linux produces rather than NetBSD (``COMPAT_LINUX_VALUES``)
    are marked in the result so the report labels them.
``gvisor``
    The whole suite under ``runsc do`` (gVisor: an independent implementation
    of the Linux system-call ABI).  Needs ``runsc`` (Debian package ``runsc``).

Both NetBSD columns start their own ``rump_server`` and stop it by PID, and run
every case in its own process with a hard timeout: a call blocked in the rump
kernel blocks signals, so pytest-timeout cannot end it.  A case killed at the
deadline is recorded as a hang; a server that died during a case is restarted
and the case says so.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

from udscompat_conformance import SCHEMA_VERSION
from udscompat_conformance.hostinfo import git_commit, utc_time
from udscompat_conformance.kernels import rumpbuild
from udscompat_conformance.kernels.rump import RumpServer, host_facts

CASES = Path(__file__).resolve().parent.parent / "cases"
NATIVE_CASES = Path(__file__).resolve().parent / "native_cases"
KERNELS = ("netbsd-rump", "netbsd-rump-linux", "gvisor")
#: librumphijack's configuration for the Linux-ABI column: AF_LOCAL sockets in the rump
#: kernel, and /tmp (where the cases make their socket files and temporary files) too.
RUMPHIJACK = "path=/rump,socket=local,blanket=/tmp"
DEFAULT_CASE_TIMEOUT = {"netbsd-rump": 60.0, "netbsd-rump-linux": 30.0, "gvisor": 60.0}

_WALK = (
    "udscompat's bind walks the path with openat() from /, which librumphijack does not route: "
    "it walks the host's /tmp, not the rump kernel's"
)
#: Cases (by id, or by id without parameters) whose value in the Linux-ABI column is
#: compat_linux's doing, not NetBSD's, and why.  The report also flags every cell that
#: differs from the native-ABI column's.
COMPAT_LINUX_VALUES: Dict[str, str] = {
    "os.address.longest_path": "CPython for Linux refuses paths past 107 bytes, and "
    "compat_linux's linux_get_sa() caps a sockaddr at 255 bytes",
    "os.address.full_sun_path": "sockaddr lengths are Linux's (108-byte sun_path) and "
    "converted by linux_get_sa()",
    "os.address.unbound_name": "getsockname() is converted to a Linux sockaddr by linux_sa_put()",
    "os.creds.mechanism": "SO_PEERCRED exists only through the project's compat_linux patch, "
    "which answers it with NetBSD's LOCAL_PEEREID",
    "os.creds.socketpair": "SO_PEERCRED answered by LOCAL_PEEREID (project patch)",
    "os.creds.unconnected": "SO_PEERCRED answered by LOCAL_PEEREID (project patch)",
    "os.creds.scm_credentials": "SO_PASSCRED/SCM_CREDENTIALS have no NetBSD equivalent: "
    "compat_linux refuses or drops them",
    "os.creds.passcred_implicit": "SO_PASSCRED has no NetBSD equivalent",
    "os.creds.forged_pid": "SCM_CREDENTIALS is dropped by compat_linux's sendmsg",
    "os.creds.ucred_truncated": "SO_PASSCRED has no NetBSD equivalent",
    "os.creds.not_coalesced": "SCM_CREDENTIALS is dropped by compat_linux's sendmsg",
    "os.fdpass.control_too_small": "compat_linux's linux_copyout_msg_control() decides "
    "truncation, not NetBSD's copyout_msg_control()",
    "os.fdpass.max_per_message": "compat_linux's sendmsg refuses control data of a page "
    "(1020 fds) or more with EINVAL before NetBSD sees it",
    "os.fdpass.several_cmsgs": "compat_linux repacks the cmsgs before NetBSD's "
    "unp_internalize() sees them",
    "os.stream.socket_options": "option names and values are translated by compat_linux",
    "os.stream.linux_options": "Linux-only options: compat_linux maps or refuses them",
    "os.stream.boolean_options": "option names are translated by compat_linux",
    "os.errors.bad_options": "option levels and names are translated by compat_linux",
    "os.address.proc_net_unix": "/proc/net/unix is the host's, not the rump kernel's",
    "os.dgram.receiver_full": "SO_SNDTIMEO has no compat_linux mapping (EINVAL)",
    "os.stream.rcvtimeo": "SO_RCVTIMEO has no compat_linux mapping (EINVAL)",
    "os.creds.sendto_unconnected": "SO_PASSCRED has no NetBSD equivalent",
    "os.creds.peer_pidfd": "SO_PEERPIDFD is Linux's: compat_linux answers EINVAL for any "
    "option it does not map",
    "os.creds.peer_security": "SO_PEERSEC is Linux's: compat_linux answers EINVAL for any "
    "option it does not map",
    "os.fdpass.passrights_off": "SO_PASSRIGHTS is Linux's: compat_linux answers EINVAL for any "
    "option it does not map",
    "os.fdpass.passed_socket_works": "socket(fileno=...) asks SO_PROTOCOL, which "
    "compat_linux does not map (EINVAL)",
    "os.seqpacket.fd_round_trip": "socket(fileno=...) asks SO_PROTOCOL, which "
    "compat_linux does not map (EINVAL)",
    "os.fdpass.receiver_out_of_fds": "the process's setrlimit() goes to the host, not to the "
    "rump kernel that holds its descriptors",
    "os.errors.sigpipe": "the case runs a child process: under librumphijack its pipes are rump "
    "pipes and signals do not cross from the rump kernel",
    "os.creds.captured_at_connect": "SO_PEERCRED answered by LOCAL_PEEREID (project patch); "
    "the child's pid is the rump kernel's",
    # Shim cases: what fails here because the shim runs its Linux backend on a kernel it is not.
    "shim.creds.self": "pids are the rump kernel's: the peer pid is not the host pid the case "
    "expects",
    "shim.address.path_limit": _WALK,
    "shim.aio.echo": _WALK,
    "shim.bind.stale_and_live": _WALK,
    "shim.creds.other_user": _WALK,
    "shim.seqpacket.listener": _WALK,
    "shim.ancillary.peer_security_label": "SO_PEERSEC has no compat_linux mapping (EINVAL)",
    "shim.ancillary.unavailable_says_so": "SO_PASSCRED has no compat_linux mapping (EINVAL)",
    "shim.fdpass.receiver_out_of_fds": "the process's setrlimit() goes to the host, not to the "
    "rump kernel that holds its descriptors",
    "shim.capabilities.measured": "the Linux backend's capabilities: 253 fds per message "
    "(Linux's cap; this kernel carries 509), no ancillary credentials or security labels "
    "(unmapped options), no path limit (bind's openat walk)",
    "shim.conn.local_addr": _WALK,
    "os.stream.sock_diag_uid": "sock_diag is the host kernel's, not the rump kernel's",
}


class KernelError(RuntimeError):
    """A column could not run at all (missing build, server, runsc)."""


class CaseRun(NamedTuple):
    nodeid: str
    meta: Dict[str, Any]
    seconds: float
    returncode: Optional[int]
    hang: bool
    server_died: bool
    result_file: Path
    output_tail: str


# --- collection and per-case runs -----------------------------------------------------------


def pytest_base(case_dir: Path) -> List[str]:
    return [
        "-p",
        "udscompat_conformance.plugin",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "-p",
        "no:hypothesispytest",  # see cli.pytest_args: no case needs it, it costs every run
        f"--rootdir={case_dir}",
        "-c",
        str(case_dir / "pytest.ini"),
    ]


def collect(case_dir: Path, workdir: Path, select: List[str]) -> List[Dict[str, Any]]:
    """Every case under ``case_dir`` (node id and metadata), collected without running any."""
    out = workdir / f"collected-{case_dir.name}.json"
    env = dict(os.environ, UDSCOMPAT_COLLECT_OUT=str(out))
    argv = [
        sys.executable,
        "-m",
        "pytest",
        str(case_dir),
        "--collect-only",
        "-q",
        *pytest_base(case_dir),
        "-p",
        "udscompat_conformance.kernels.collect",
        *select,
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    if not out.is_file():
        raise KernelError(
            f"collecting {case_dir} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    cases: List[Dict[str, Any]] = json.loads(out.read_text(encoding="utf-8"))
    return cases


def run_case(
    argv: List[str], env: Dict[str, str], timeout: float, log: Path
) -> tuple[Optional[int], bool, float]:
    """Run one case process; kill its whole process group at ``timeout``.

    Returns (exit status or None, killed at the deadline, seconds)."""
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: Optional[int] = proc.wait(timeout)
            hang = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code, hang = None, True
    return code, hang, round(time.monotonic() - started, 3)


def run_each(
    cases: List[Dict[str, Any]],
    case_dir: Path,
    workdir: Path,
    *,
    command: List[str],
    extra: List[str],
    env: Dict[str, str],
    timeout: float,
    server: Optional[RumpServer],
    progress: bool = True,
) -> List[CaseRun]:
    """Each case in its own process (``command`` + pytest args), one after another."""
    runs: List[CaseRun] = []
    percase = workdir / "percase"
    percase.mkdir(parents=True, exist_ok=True)
    # One process per case id: a case that runs on both seqpacket implementations is two
    # pytest items recorded as one case, so both run in its process (each with the deadline).
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for entry in cases:
        groups.setdefault(entry["meta"]["id"], []).append(entry)
    for index, (case_id, entries) in enumerate(groups.items()):
        if server is not None and not server.alive():
            server.restart()
        result = percase / f"{index:04d}.json"
        log = percase / f"{index:04d}.log"
        argv = [
            *command,
            *(str(case_dir / entry["nodeid"]) for entry in entries),
            *pytest_base(case_dir),
            f"--udscompat-results={result}",
            f"--timeout={max(timeout - 5, 1)}",
            "-q",
            *extra,
        ]
        code, hang, seconds = run_case(argv, env, timeout * len(entries), log)
        died = server is not None and not server.alive()
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        nodeids = " ".join(entry["nodeid"] for entry in entries)
        runs.append(CaseRun(nodeids, entries[0]["meta"], seconds, code, hang, died, result, tail))
        if progress:
            mark = "HANG" if hang else ("SERVER DIED" if died else "")
            print(
                f"[{index + 1}/{len(groups)}] {case_id} {seconds:.1f}s {mark}",
                file=sys.stderr,
                flush=True,
            )
    return runs


def merge(runs: List[CaseRun], timeout: float, translations: Dict[str, str]) -> Dict[str, Any]:
    """One result file from the per-case runs (a case without a result says why)."""
    cases: Dict[str, Dict[str, Any]] = {}
    first: Optional[Dict[str, Any]] = None
    for run in runs:
        recorded: List[Dict[str, Any]] = []
        if run.result_file.is_file():
            data = json.loads(run.result_file.read_text(encoding="utf-8"))
            first = first or data
            recorded = data["cases"]
        if not recorded:
            meta = run.meta
            if run.hang:
                message = (
                    f"hang: no result after {timeout:g} s, so the case's process was killed "
                    "(a call blocked inside the kernel; the rump kernel blocks signals meanwhile)"
                )
            else:
                message = (
                    f"the case's process exited with {run.returncode} and wrote no result: "
                    + (run.output_tail.strip().splitlines()[-1:] or ["(no output)"])[0][:300]
                )
            recorded = [
                {
                    **meta,
                    "outcome": "fail" if meta["kind"] == "shim" else "error",
                    "observed": None,
                    "message": message,
                    "duration_s": run.seconds,
                }
            ]
        for case in recorded:
            if run.hang:
                case["hang"] = True
            if run.server_died:
                note = "the rump server died during this case (restarted for the next one)"
                case["message"] = f"{case['message']}; {note}" if case.get("message") else note
            reason = translations.get(case["id"]) or translations.get(case["id"].split("[", 1)[0])
            if reason:
                case["abi_translation"] = reason
            cases[case["id"]] = case
    ordered = [cases[key] for key in sorted(cases)]
    summary: Dict[str, int] = {}
    for case in ordered:
        summary[case["outcome"]] = summary.get(case["outcome"], 0) + 1
    if first is None:
        raise KernelError("no case produced a result file")
    return {
        "schema_version": SCHEMA_VERSION,
        "host": dict(first["host"]),
        "run": dict(first["run"]),
        "summary": dict(sorted(summary.items())),
        "cases": ordered,
    }


# --- the columns ----------------------------------------------------------------------------


def ensure_build() -> rumpbuild.Build:
    """The cached build for the default inputs (building it when the inputs are there)."""
    src = rumpbuild.default_input(rumpbuild.SRC_NETBSD, "UDSCOMPAT_RUMP_SRC")
    buildrump = rumpbuild.default_input(rumpbuild.BUILDRUMP, "UDSCOMPAT_RUMP_BUILDRUMP")
    if src is not None and buildrump is not None:
        try:
            return rumpbuild.build(src, buildrump, progress=sys.stderr)
        except rumpbuild.BuildError as exc:
            raise KernelError(f"building the rump kernel failed: {exc}") from exc
    found = rumpbuild.find_build()
    if found is None:
        raise KernelError(
            "no rump kernel build and no sources to build one: run python -m "
            "udscompat_conformance.kernels.rumpbuild --src-netbsd ... --buildrump ... first"
        )
    return found


def _workdir() -> Path:
    base = rumpbuild.cache_root() / "runs"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=base))


def _under_blanket(path: Path) -> bool:
    resolved = path.resolve()
    return resolved == Path("/tmp") or Path("/tmp") in resolved.parents


def hidden_from_hijacked_children() -> List[str]:
    """What a hijacked Python child needs from the host but would look for in the rump
    kernel (``blanket=/tmp``): its interpreter, its packages, its working directory."""
    import udscompat

    needed = {
        "the Python environment": Path(sys.prefix),
        "the interpreter": Path(sys.executable),
        "udscompat": Path(udscompat.__file__).parent,
        "udscompat_conformance": Path(__file__).parent.parent,
        "the working directory": Path.cwd(),
    }
    return [f"{what} ({path})" for what, path in needed.items() if _under_blanket(path)]


def _finish(result: Dict[str, Any], started: float, extra_run: Dict[str, Any]) -> None:
    result["run"].pop("stage", None)
    result["run"].update(extra_run)
    result["run"]["started"] = utc_time(started)
    result["run"]["duration_s"] = round(time.time() - started, 3)
    result["run"]["workers"] = 0


def run_netbsd(kernel: str, timeout: float, select: List[str]) -> Dict[str, Any]:
    linux_abi = kernel == "netbsd-rump-linux"
    build = ensure_build()
    workdir = _workdir()
    if linux_abi and _under_blanket(workdir):
        raise KernelError(
            f"the run directory {workdir} is under /tmp, which the hijacked cases see in the "
            "rump kernel: set UDSCOMPAT_CACHE_DIR elsewhere"
        )
    hidden = hidden_from_hijacked_children() if linux_abi else []
    if hidden:
        raise KernelError(
            "the hijacked cases see /tmp in the rump kernel, so they cannot reach "
            + ", ".join(hidden)
            + ": run from a checkout and an environment outside /tmp"
        )
    # A short private directory for the server's socket (sun_path holds 107 bytes).
    rundir = Path(tempfile.mkdtemp(prefix="udsc-rump-"))
    server = RumpServer(build, rundir, linux_abi=linux_abi)
    started = time.time()
    try:
        server.start()
        env = dict(os.environ)
        env["RUMP_SERVER"] = server.url
        if linux_abi:
            case_dir = CASES
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            env.update(
                LD_LIBRARY_PATH=str(build.libdir),
                LD_PRELOAD=str(build.libdir / "librumphijack.so"),
                RUMPHIJACK=RUMPHIJACK,
                RUMPHIJACK_UDSC_PIPES="1",
                RUMPHIJACK_UDSC_NOFILE=str(min(soft, 4096)),
            )
            # pytest's default fd-level capture dup2()s a temporary file (in the rump /tmp)
            # over fds 1 and 2; capture at the sys level instead.
            command = [sys.executable, "-m", "udscompat_conformance.kernels.child"]
            extra = ["--capture=sys"]
        else:
            case_dir = NATIVE_CASES
            env.update(
                UDSCOMPAT_RUMP_LIBDIR=str(build.libdir),
                UDSCOMPAT_RUMP_HEADERS=str(build.headers),
            )
            command = [sys.executable, "-m", "pytest"]
            extra = []
        # Children must not run git: under librumphijack their pipes are the rump kernel's.
        env.setdefault("UDSCOMPAT_GIT_COMMIT", git_commit() or "unknown")
        cases = collect(case_dir, workdir, select)
        runs = run_each(
            cases,
            case_dir,
            workdir,
            command=command,
            extra=extra,
            env=env,
            timeout=timeout,
            server=server,
        )
        result = merge(runs, timeout, COMPAT_LINUX_VALUES if linux_abi else {})
    finally:
        server.stop()
        shutil.rmtree(rundir, ignore_errors=True)
        _clean(workdir)
    abi = "linux" if linux_abi else "native"
    result["host"].update(host_facts(build, abi, server.libs))
    _finish(
        result,
        started,
        {
            "kernel": kernel,
            "mode": "one process per case",
            "per_case_timeout_s": timeout,
            "server_restarts": server.restarts,
            "hangs": sum(1 for r in runs if r.hang),
        },
    )
    if linux_abi:
        result["run"]["environment"]["RUMPHIJACK"] = RUMPHIJACK
    return result


def _clean(workdir: Path) -> None:
    """Remove a run's directory, unless UDSCOMPAT_KEEP_RUN asks to keep its per-case logs."""
    if os.environ.get("UDSCOMPAT_KEEP_RUN"):
        print(f"udscompat-conformance: per-case logs kept in {workdir}", file=sys.stderr)
        return
    shutil.rmtree(workdir, ignore_errors=True)


def runsc_version(runsc: str) -> str:
    try:
        out = subprocess.run([runsc, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise KernelError(f"cannot run {runsc}: {exc}") from exc
    return out.stdout.splitlines()[0].strip() if out.stdout else "unknown"


def run_gvisor(timeout: float, select: List[str]) -> Dict[str, Any]:
    runsc = os.environ.get("UDSCOMPAT_RUNSC") or shutil.which("runsc")
    if runsc is None:
        raise KernelError("runsc not found: apt-get install runsc (or set UDSCOMPAT_RUNSC)")
    version = runsc_version(runsc)
    workdir = _workdir()
    out = workdir / "gvisor.json"
    started = time.time()
    argv = [
        runsc,
        "--network=none",
        "--ignore-cgroups",
        "--platform=ptrace",
        f"--root={workdir / 'runsc-root'}",
        "do",
        "-force-overlay=false",
        sys.executable,
        "-m",
        "udscompat_conformance",
        "run",
        "--out",
        str(out),
        "--timeout",
        str(timeout),
        "--",
        "-p",
        "no:xdist",
        *select,
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        if not out.is_file():
            raise KernelError(
                f"runsc do wrote no result (exit {proc.returncode}): {proc.stderr[-2000:]}"
            )
        result: Dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    uname = platform.uname()
    seen = result["host"]
    result["host"].update(
        kernel=f"gVisor ({version}, platform ptrace), reporting Linux {seen['release']}",
        host_kernel=f"{uname.system} {uname.release}",
        gvisor={"runsc": version, "platform": "ptrace", "network": "none"},
    )
    _finish(result, started, {"kernel": "gvisor", "mode": "one pytest run under runsc do"})
    return result


def run_kernel(kernel: str, timeout: Optional[float], select: List[str]) -> Dict[str, Any]:
    """Run one kernel's column and return its result (not yet written)."""
    limit = timeout if timeout is not None else DEFAULT_CASE_TIMEOUT[kernel]
    if kernel == "gvisor":
        return run_gvisor(limit, select)
    if kernel in ("netbsd-rump", "netbsd-rump-linux"):
        return run_netbsd(kernel, limit, select)
    raise KernelError(f"unknown kernel {kernel!r}: expected one of {', '.join(KERNELS)}")


def differences(committed: Dict[str, Any], fresh: Dict[str, Any]) -> List[str]:
    """What a fresh run of a column shows differently from the committed one: per case id, a
    changed outcome or observed value, a case only one of them has, a different kernel."""
    found: List[str] = []
    for key in ("os", "release"):
        was, now = committed["host"].get(key), fresh["host"].get(key)
        if was != now:
            found.append(f"host.{key}: committed {was!r}, now {now!r}")
    old = {c["id"]: c for c in committed["cases"]}
    new = {c["id"]: c for c in fresh["cases"]}
    for case_id in sorted(old.keys() | new.keys()):
        before, after = old.get(case_id), new.get(case_id)
        if before is None or after is None:
            found.append(f"{case_id}: {'new case' if before is None else 'no longer run'}")
            continue
        for key in ("outcome", "observed"):
            if before.get(key) != after.get(key):
                found.append(
                    f"{case_id}: {key} was {json.dumps(before.get(key), sort_keys=True)}, "
                    f"now {json.dumps(after.get(key), sort_keys=True)}"
                    + (f" ({after['message']})" if after.get("message") else "")
                )
    return found


def default_result_name(kernel: str, result: Dict[str, Any]) -> str:
    host = result["host"]
    machine = platform.uname().machine.lower()
    if kernel == "gvisor":
        return f"gvisor-linux-{host['release']}-{machine}.json"
    abi = "linux-abi" if kernel == "netbsd-rump-linux" else "native-abi"
    return f"netbsd-{host['release']}-rump-{abi}-{machine}.json"
