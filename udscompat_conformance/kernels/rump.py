"""A NetBSD rump kernel server, started and stopped by PID, and what it is.

``RumpServer`` runs ``rump_server`` with NetBSD's AF_LOCAL code (``rumpnet_local``)
on a unix socket in a private directory.  With ``linux_abi=True`` it also
loads ``librumpkern_sys_linux``: its clients then speak the Linux ABI and every
call crosses NetBSD's compat_linux.  The server ignores SIGPIPE (a client that
vanishes mid-write would otherwise kill it) and is stopped by its PID: SIGTERM,
then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from udscompat_conformance.kernels.rumpbuild import Build

#: The components the AF_LOCAL socket code needs: VFS (socket files), the network stack
#: core and the local domain.
NATIVE_LIBS = ["rumpvfs", "rumpnet", "rumpnet_net", "rumpnet_local"]
LINUX_LIBS = [*NATIVE_LIBS, "rumpkern_sys_linux"]
START_TIMEOUT = 20.0
STOP_GRACE = 5.0


class ServerError(RuntimeError):
    """rump_server did not start (the message has the end of its log)."""


class RumpServer:
    """One ``rump_server`` process; use as a context manager or call start/stop."""

    def __init__(self, build: Build, rundir: Path, *, linux_abi: bool = False) -> None:
        self.build = build
        self.rundir = rundir
        self.linux_abi = linux_abi
        self.libs = LINUX_LIBS if linux_abi else NATIVE_LIBS
        name = "linux" if linux_abi else "native"
        self.socket_path = rundir / f"{name}.sock"
        self.log_path = rundir / f"{name}.log"
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = str(self.build.libdir)
        return env

    def start(self) -> None:
        if self.alive():
            return
        self.rundir.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            self.socket_path.unlink()
        argv = [str(self.build.rump_server), "-s"]
        argv += [f"-l{lib}" for lib in self.libs]
        argv.append(self.url)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                preexec_fn=_ignore_sigpipe,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"rump_server exited with {self.process.returncode}: {self.log_tail()}"
                )
            if self.socket_path.exists():
                return
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"rump_server made no socket in {START_TIMEOUT} s: {self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        """SIGTERM the server by its PID; SIGKILL it if it has not gone after the grace."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_GRACE)
        if self.socket_path.exists():
            self.socket_path.unlink()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> RumpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ignore_sigpipe() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def host_facts(build: Build, abi: str, server_libs: List[str]) -> Dict[str, Any]:
    """The ``host`` entries that say what ran: the NetBSD release, rump, the ABI, the source
    revision and the patches' hash (the rest of ``host`` stays the Linux machine's own)."""
    manifest = build.manifest
    release = str(manifest["netbsd_release"])
    src = manifest["src_netbsd"]
    revision = src.get("revision") or f"unknown (tarball sha256 {src['sha256']})"
    uname = platform.uname()
    abi_label = {
        "native": "native NetBSD ABI (ctypes over librumpclient)",
        "linux": "Linux ABI via NetBSD compat_linux (librumphijack + librumpkern_sys_linux)",
    }[abi]
    return {
        "os": "NetBSD",
        "release": release,
        "version": f"NetBSD {release} rump kernel, src-netbsd {revision[:12]}",
        "kernel": f"NetBSD {release} rump kernel ({abi_label})",
        "abi": abi,
        "rump": {
            "netbsd_release": release,
            "abi": abi_label,
            "server_libs": server_libs,
            "src_netbsd_revision": revision,
            "src_netbsd_sha256": src["sha256"],
            "buildrump_revision": manifest["buildrump"].get("revision"),
            "buildrump_sha256": manifest["buildrump"]["sha256"],
            "patches": manifest["patches"],
            "patches_sha256": manifest["patches_sha256"],
            "compiler": manifest["compiler"],
            "build_key": manifest["key"],
        },
        "host_kernel": f"{uname.system} {uname.release}",
    }
