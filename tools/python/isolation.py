"""The bubblewrap layer of the Python sandbox: probing it, building its command line, killing it.

Kept apart from the session logic so the namespace policy can be read in one place. The
policy: every namespace unshared (user, mount, PID, network, IPC, UTS, cgroup); bwrap run as
the unprivileged uid 65534 when the host is root — *never* as root with capabilities, which
would let the code remount ``/`` read-write (ENVIRONMENT.md) — with all capabilities dropped
and nested user namespaces disabled; only ``/usr`` (read-only), the merged-``/usr`` links, a
few read-only ``/etc`` files the dynamic loader needs, fresh ``/proc`` and ``/dev``, and two
size-capped tmpfs mounts (``/tmp`` and the work dir) exist inside.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

SANDBOX_UID = 65534


def bwrap_available() -> str | None:
    """Why bubblewrap cannot be used here, or None when a probe sandbox starts fine."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed; on Debian: apt-get install bubblewrap"
    return _probe_bwrap(bwrap)


@functools.cache
def _probe_bwrap(bwrap: str) -> str | None:
    """Start one empty sandbox (once per process and bwrap binary) to see namespaces work."""
    probe = [bwrap, "--unshare-all", "--unshare-user", "--cap-drop", "ALL",
             "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
             "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
             "--", "/usr/bin/true"]
    proc = subprocess.run(probe, capture_output=True, text=True, timeout=30,
                          **unprivileged_kwargs(), env={})
    if proc.returncode != 0:
        return f"bubblewrap cannot create namespaces here: {proc.stderr.strip()}"
    return None


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def unprivileged_kwargs() -> dict[str, Any]:
    if os.geteuid() == 0:
        return {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}
    return {}


def _root_symlinks() -> list[str]:
    """Recreate the host's merged-/usr links (/bin -> usr/bin ...) or bind the real dirs."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{name}"]
    return args



def bwrap_argv(
    *,
    code_dir: Path,
    inside_code_dir: str,
    workdir: str,
    tmp_bytes: int,
    workdir_bytes: int,
    env: dict[str, str],
    command: list[str],
) -> list[str]:
    """The bwrap command line running ``command`` under the policy in the module docstring."""
    bwrap = shutil.which("bwrap") or "bwrap"
    return [
        bwrap, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID),
        "--gid", str(SANDBOX_UID), "--disable-userns", "--cap-drop", "ALL",
        "--die-with-parent", "--new-session", "--hostname", "sandbox",
        "--ro-bind", "/usr", "/usr", *_root_symlinks(),
        "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
        "--ro-bind-try", "/etc/localtime", "/etc/localtime",
        # Debian resolves some libraries (libblas for numpy) through these symlinks.
        "--ro-bind-try", "/etc/alternatives", "/etc/alternatives",
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(tmp_bytes), "--tmpfs", "/tmp",
        "--size", str(workdir_bytes), "--perms", "0700", "--tmpfs", workdir,
        "--ro-bind", str(code_dir), inside_code_dir,
        "--chdir", workdir, "--clearenv",
        *[a for k, v in env.items() for a in ("--setenv", k, v)],
        "--", *command,
    ]
