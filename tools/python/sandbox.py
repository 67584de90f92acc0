"""A stateful, isolated Python session for model-written code, without Docker.

What it protects against (each is an escape test in ``tests/tools/test_python_sandbox.py``):

* **Host filesystem.** bubblewrap gives the code a private mount namespace holding only a
  read-only ``/usr`` (the interpreter and its standard library), a minimal ``/dev`` and
  ``/proc``, a size-capped tmpfs ``/tmp`` and a size-capped tmpfs work dir ``/workspace``.
  ``/etc/shadow``, ``/root``, ``/home``, the host ``/tmp`` and other sessions do not exist
  there. Landlock (where the kernel has it) additionally confines writes to the work dir and
  ``/tmp``.
* **Privilege.** bwrap runs as the unprivileged uid 65534 when the host is root, inside a new
  user namespace with every capability dropped and nested user namespaces disabled — so a
  remount read-write fails (running bwrap as root with capabilities would allow it; see
  ENVIRONMENT.md).
* **Processes and the kernel.** seccomp denies execve, fork, clone without CLONE_THREAD,
  ptrace, mount, unshare/setns, bpf, io_uring, keyrings and more; a private PID namespace
  hides host processes.
* **Network.** A private network namespace (loopback only); seccomp refuses non-Unix sockets;
  Landlock ABI >= 4 refuses TCP; there is no resolver configuration.
* **Resources.** Hard rlimits (address space, CPU seconds, file size, open files, threads);
  capped tmpfs sizes; a per-cell soft timeout (SIGALRM inside, session survives) and a hard
  timeout (SIGKILL of the whole sandbox; a fresh session is started and the result says the
  state was lost).
* **Information.** The environment is cleared; only PATH, HOME, LANG are set.
* **Harvesting.** Files the code wrote are read through a directory descriptor with
  ``O_NOFOLLOW`` per component, size caps and type checks (:mod:`tools.python.harvest`).

What it does not protect against: kernel bugs reachable through the syscalls that remain
allowed; CPU and memory-bandwidth contention and timing side channels; memory pressure up to
the rlimits times the number of sessions (no cgroups); code that fakes its own output (the
session's replies are the code's own word). It gives no confidentiality between cells of one
session, by design. When bubblewrap or user namespaces are unavailable the sandbox refuses to
start unless ``allow_unsandboxed=True`` — then the code runs as the host user with rlimits,
seccomp and Landlock only, and can read everything that user can.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tools.python import harvest
from tools.python.isolation import (
    SANDBOX_UID,
    bwrap_argv,
    bwrap_available,
    kill_group,
    unprivileged_kwargs,
)
from tools.python.protocol import ProtocolError, recv_frame, send_frame

__all__ = ["ExecResult", "PythonSandbox", "SandboxLimits", "SandboxUnavailable", "bwrap_available"]

MAX_CODE_BYTES = 512 << 10  # the worker refuses request frames over 1 MiB
_WORKER_FILES = ("worker.py", "confine.py")
_INSIDE_WORKDIR = "/workspace"
_INSIDE_CODE_DIR = "/sandbox"


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be started here; the message says why and what to do."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource caps for one session. Defaults suit data analysis on a small machine."""

    memory_bytes: int = 1 << 30
    cpu_seconds: int = 600
    file_size_bytes: int = 64 << 20
    open_files: int = 256
    threads: int = 64
    tmp_bytes: int = 64 << 20
    workdir_bytes: int = 256 << 20
    output_chars: int = 20_000


@dataclass
class ExecResult:
    """The outcome of one cell."""

    status: Literal["ok", "error", "timeout", "killed"]
    result: str | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    duration_s: float = 0.0
    files: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        """A compact rendering for a model: output first, then the value or the error."""
        parts = []
        if self.stdout:
            parts.append(self.stdout.rstrip("\n"))
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr.rstrip("\n"))
        if self.error:
            parts.append(self.error.rstrip("\n"))
        elif self.result is not None:
            parts.append(self.result)
        if self.files:
            parts.append("[files in work dir] " + ", ".join(self.files))
        return "\n".join(parts) if parts else "(no output)"


class PythonSandbox:
    """One isolated, stateful Python session. Use as a context manager, or call ``close()``.

    ``run(code)`` executes a cell; variables persist between cells until a hard kill.
    """

    def __init__(
        self,
        *,
        limits: SandboxLimits | None = None,
        python: str = "/usr/bin/python3",
        allow_unsandboxed: bool = False,
        default_timeout: float = 30.0,
        kill_grace: float = 2.0,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.python = python
        self.allow_unsandboxed = allow_unsandboxed
        self.default_timeout = default_timeout
        self.kill_grace = kill_grace
        self.isolation: Literal["bubblewrap", "unsandboxed"] | None = None
        self.info: dict[str, Any] = {}
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._dir_fd: int | None = None
        self._stage: Path | None = None
        self._host_workdir: Path | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> PythonSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the session (idempotent). Raises SandboxUnavailable with the reason."""
        if self.alive:
            return
        if self.isolation is None:
            reason = bwrap_available()
            if reason is None:
                self.isolation = "bubblewrap"
            elif self.allow_unsandboxed:
                self.isolation = "unsandboxed"
            else:
                raise SandboxUnavailable(
                    f"refusing to run model-written Python without isolation: {reason}. "
                    "Install bubblewrap, or pass allow_unsandboxed=True to accept the risk.")
        self._stage = self._stage or self._stage_worker()
        host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv, kwargs = self._command(child_end.fileno())
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, pass_fds=(child_end.fileno(),), env=self._env(),
                start_new_session=True, **kwargs)
        finally:
            child_end.close()
        # A session dropped without close() must not outlive its owner object.
        weakref.finalize(self, kill_group, self._proc)
        self._sock = host_end
        try:
            self._handshake()
        except BaseException:
            self._kill()
            raise

    def _handshake(self) -> None:
        assert self._sock is not None and self._proc is not None
        self._sock.settimeout(30)
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(self._sock, 1, 1)
            if len(fds) != 1:
                raise ProtocolError("the worker did not send its work dir")
            old_fd, self._dir_fd = self._dir_fd, fds[0]
            ready = recv_frame(self._sock, deadline=time.monotonic() + 30)
        except (OSError, ProtocolError) as exc:
            stderr = self._drain_stderr()
            raise SandboxUnavailable(f"the sandbox failed to start: {exc}. {stderr}") from exc
        if not ready.get("ready"):
            raise SandboxUnavailable(f"the sandbox refused to start: {ready.get('error')}")
        self.info = ready
        if old_fd is not None:  # a restart: carry the files over from the killed session
            if self.isolation == "bubblewrap":  # unsandboxed sessions reuse the same host dir
                self._copy_workdir(old_fd, self._dir_fd)
            os.close(old_fd)

    def _drain_stderr(self) -> str:
        assert self._proc is not None
        self._kill()
        err = self._proc.stderr.read(4000) if self._proc.stderr else b""
        return err.decode("utf-8", "replace").strip()

    def _stage_worker(self) -> Path:
        """Copy the worker scripts to a world-readable, root-owned dir the sandbox can read."""
        stage = Path(tempfile.mkdtemp(prefix="maestro-sbx-code-"))
        weakref.finalize(self, shutil.rmtree, stage, True)
        here = Path(__file__).parent
        for name in _WORKER_FILES:
            shutil.copyfile(here / name, stage / name)
            (stage / name).chmod(0o644)
        stage.chmod(0o755)
        return stage

    def _config(self, writable: list[str]) -> str:
        lim = self.limits
        return json.dumps({
            "rlimits": {"AS": lim.memory_bytes, "CPU": lim.cpu_seconds,
                        "FSIZE": lim.file_size_bytes, "NOFILE": lim.open_files,
                        "NPROC": lim.threads, "CORE": 0},
            "writable_dirs": writable,
            "output_limit": lim.output_chars,
            "keep_env": ["PATH", "HOME", "LANG"],
        })

    def _env(self) -> dict[str, str]:
        home = _INSIDE_WORKDIR if self.isolation == "bubblewrap" else str(self._host_workdir)
        return {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8"}

    def _command(self, channel_fd: int) -> tuple[list[str], dict[str, Any]]:
        assert self._stage is not None
        if self.isolation == "unsandboxed":
            if self._host_workdir is None:
                self._host_workdir = Path(tempfile.mkdtemp(prefix="maestro-sbx-work-"))
            work = str(self._host_workdir)
            argv = [sys.executable, "-I", "-u", str(self._stage / "worker.py"), str(channel_fd),
                    work, self._config([work, tempfile.gettempdir()])]
            return argv, {"cwd": work}
        argv = bwrap_argv(
            code_dir=self._stage, inside_code_dir=_INSIDE_CODE_DIR, workdir=_INSIDE_WORKDIR,
            tmp_bytes=self.limits.tmp_bytes, workdir_bytes=self.limits.workdir_bytes,
            env=self._env(), command=[
                self.python, "-I", "-u", f"{_INSIDE_CODE_DIR}/worker.py", str(channel_fd),
                _INSIDE_WORKDIR, self._config([_INSIDE_WORKDIR, "/tmp"])],
        )
        return argv, unprivileged_kwargs()

    def _kill(self) -> None:
        """SIGKILL the whole sandbox. bwrap's --die-with-parent and the PID namespace take
        every process inside down with the outer bwrap process."""
        if self._proc is not None:
            kill_group(self._proc)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def restart(self) -> None:
        """Kill the session and start a fresh one; work dir files are carried over."""
        self._kill()
        self.restarts += 1
        self.start()

    def close(self) -> None:
        """Kill the session and delete its work dir and staged code."""
        self._kill()
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        for path in (self._stage, self._host_workdir):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)  # fd-based: does not follow symlinks
        self._stage = self._host_workdir = None

    # -- running code -----------------------------------------------------------------------

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        """Run one cell. A timeout keeps the session; a hard kill restarts it (status killed)."""
        if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
            return ExecResult(status="error", error=(
                f"CodeTooLarge: cells are limited to {MAX_CODE_BYTES} bytes; put data in a "
                "file with write_file() and read it from the code instead"))
        self.start()
        assert self._sock is not None
        timeout = self.default_timeout if timeout is None else timeout
        started = time.monotonic()
        try:
            send_frame(self._sock, {"code": code, "timeout": timeout})
            reply = recv_frame(self._sock, deadline=started + timeout + self.kill_grace)
            result = ExecResult(
                status=reply.get("status", "error"), result=reply.get("result"),
                stdout=str(reply.get("stdout", "")), stderr=str(reply.get("stderr", "")),
                error=reply.get("error"))
        except (OSError, ProtocolError) as exc:
            reason = ("it ignored the soft timeout" if isinstance(exc, TimeoutError)
                      else f"the session died ({self._death_reason(exc)})")
            self.restart()
            result = ExecResult(status="killed", error=(
                f"SandboxKilled: the code was stopped by force because {reason}. A fresh "
                "session was started: variables and imports from earlier cells are lost; "
                "files in the work dir were kept."))
        result.duration_s = time.monotonic() - started
        result.files = [f.path for f in self.list_files() if f.kind == "file"]
        return result

    def _death_reason(self, exc: BaseException) -> str:
        """Name the signal that ended the worker; bwrap exits with 128 + signal number."""
        code = None
        if self._proc is not None:
            try:
                code = self._proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                code = None
        signum = -code if code is not None and code < 0 else (
            code - 128 if code is not None and 128 < code < 128 + 65 else None)
        if signum is not None:
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = f"signal {signum}"
            hint = {"SIGXCPU": "the session's CPU-time limit was spent",
                    "SIGSYS": "a forbidden system call", "SIGSEGV": "a crash",
                    "SIGKILL": "killed"}.get(name, "")
            return f"killed by {name}" + (f": {hint}" if hint else "")
        return str(exc) or type(exc).__name__

    # -- work dir ---------------------------------------------------------------------------

    def _root_fd(self) -> int:
        self.start()
        assert self._dir_fd is not None
        return self._dir_fd

    def list_files(self) -> list[harvest.FileInfo]:
        """Entries of the work dir (symlinks listed, never followed)."""
        return harvest.list_files(self._root_fd())

    def read_file(self, path: str, max_bytes: int = 10 << 20) -> bytes:
        """Read a regular file the code wrote; refuses symlinks, FIFOs and oversize files."""
        return harvest.read_file(self._root_fd(), path, max_bytes)

    def write_file(self, path: str, data: bytes) -> None:
        """Put an input file into the work dir, owned by the sandbox user."""
        uid = SANDBOX_UID if self.isolation == "bubblewrap" and os.geteuid() == 0 else -1
        harvest.write_file(self._root_fd(), path, data, uid=uid)

    def _copy_workdir(self, old_fd: int, new_fd: int) -> None:
        budget = self.limits.workdir_bytes
        uid = SANDBOX_UID if self.isolation == "bubblewrap" and os.geteuid() == 0 else -1
        for info in harvest.list_files(old_fd):
            if info.kind != "file" or info.size > budget:
                continue
            try:
                data = harvest.read_file(old_fd, info.path, budget)
                harvest.write_file(new_fd, info.path, data, uid=uid)
            except (OSError, harvest.UnsafePathError):
                continue
            budget -= len(data)
