"""In-process confinement applied by the sandbox worker before it reads any user code.

This module runs *inside* the sandbox, under whatever interpreter the sandbox uses (Debian's
``/usr/bin/python3`` by default), so it uses the standard library only and must not import
anything from maestro. It layers three kernel mechanisms on top of bubblewrap's namespaces:

* **rlimits** — hard limits (soft == hard) on address space, CPU seconds, file size, open
  files, threads and core dumps. An unprivileged process can lower but never raise a hard limit.
* **Landlock** (when the kernel has it) — filesystem writes only below the writable roots
  (the work dir and ``/tmp``), no TCP bind/connect (ABI >= 4), no signals or abstract Unix
  sockets outside the sandbox's domain (ABI >= 6). Optional: kernels without it still get the
  other layers, and the worker reports the ABI it got.
* **seccomp** (mandatory) — through libseccomp via ctypes, so no Python binding is needed in
  the sandbox interpreter. It denies creating processes (execve, fork, clone without
  ``CLONE_THREAD``; clone3 answers ENOSYS so glibc falls back to clone), sockets other than
  ``AF_UNIX``, ptrace, mounts, namespace changes, BPF, io_uring, keyrings, kernel modules and a
  few other rarely needed, often exploited syscalls. Threads keep working.

Every denial returns an errno (EPERM unless noted) rather than killing the process, so the
model sees an ordinary Python exception and the session stays alive.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource
from collections.abc import Sequence

# --- rlimits -------------------------------------------------------------------------------


def apply_rlimits(limits: dict[str, int]) -> None:
    """Set soft == hard for each named limit (``{"AS": bytes, "CPU": seconds, ...}``).

    CPU is the exception: the hard limit is one second above the soft one, so the kernel
    sends SIGXCPU (which the host reports by name) before its SIGKILL at the hard limit.
    """
    for name, value in limits.items():
        hard = value + 1 if name == "CPU" else value
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, hard))


# --- Landlock (raw syscalls; numbers are the same on every architecture) -------------------

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights that change something; reads are left to the mount namespace.
_FS_WRITE_FILE = 1 << 1
_FS_WRITE_RIGHTS_ABI1 = (
    _FS_WRITE_FILE | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8)
    | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12)
)
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_NET_BIND_CONNECT_TCP = 1 | 2  # ABI 4
_SCOPE_ABSTRACT_UNIX_AND_SIGNAL = 1 | 2  # ABI 6
# Rights that make sense on a single file (Landlock rejects directory rights there).
_FILE_RIGHTS = _FS_WRITE_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is missing or disabled."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    return int(abi) if abi > 0 else 0


def apply_landlock(writable_dirs: Sequence[str], writable_files: Sequence[str]) -> int:
    """Restrict writes to ``writable_dirs`` (recursively) and ``writable_files``.

    Returns the ABI used, or 0 when Landlock is unavailable (nothing is applied then).
    """
    abi = landlock_abi()
    if abi == 0:
        return 0
    fs_rights = _FS_WRITE_RIGHTS_ABI1
    if abi >= 2:
        fs_rights |= _FS_REFER
    if abi >= 3:
        fs_rights |= _FS_TRUNCATE
    if abi >= 5:
        fs_rights |= _FS_IOCTL_DEV
    attr = _RulesetAttr(fs_rights, _NET_BIND_CONNECT_TCP if abi >= 4 else 0,
                        _SCOPE_ABSTRACT_UNIX_AND_SIGNAL if abi >= 6 else 0)
    attr_size = 8 if abi < 4 else (16 if abi < 6 else 24)
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ruleset_fd = libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr),
        ctypes.c_size_t(attr_size), ctypes.c_uint32(0),
    )
    if ruleset_fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        rules = [(d, fs_rights) for d in writable_dirs]
        rules += [(f, fs_rights & _FILE_RIGHTS) for f in writable_files]
        for path, rights in rules:
            path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneathAttr(rights, path_fd)
                rc = libc.syscall(
                    ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset_fd),
                    ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule),
                    ctypes.c_uint32(0),
                )
                if rc < 0:
                    raise OSError(ctypes.get_errno(), "landlock_add_rule failed for " + path)
            finally:
                os.close(path_fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        rc = libc.syscall(ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF),
                          ctypes.c_int(ruleset_fd), ctypes.c_uint32(0))
        if rc < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset_fd)
    return abi


# --- seccomp through libseccomp ------------------------------------------------------------

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_NE = 1
_SCMP_CMP_EQ = 4
_SCMP_CMP_MASKED_EQ = 7
_CLONE_THREAD = 0x00010000
_AF_UNIX = 1
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C

# Denied outright with EPERM. Names unknown to this kernel/libseccomp are skipped.
DENIED_SYSCALLS: list[str] = [
    "execve", "execveat", "fork", "vfork",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount", "umount2", "pivot_root", "chroot", "mount_setattr", "open_tree",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "unshare", "setns",
    "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "vhangup",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "personality", "modify_ldt", "iopl", "ioperm", "uselib",
    "name_to_handle_at", "open_by_handle_at", "lookup_dcookie",
    "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
    "sethostname", "setdomainname", "memfd_secret",
]


def _scmp_act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _load_libseccomp() -> ctypes.CDLL:
    # The soname first: find_library() runs ldconfig in a subprocess (~75 ms of start-up).
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def apply_seccomp() -> list[str]:
    """Load the syscall filter into this process (and its future threads).

    Returns the names of the syscalls denied outright. Raises ``OSError`` when libseccomp is
    missing or the filter cannot be loaded: the caller must then refuse to run user code.
    """
    lib = _load_libseccomp()
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.EINVAL, "seccomp_init failed")
    eperm = _scmp_act_errno(errno.EPERM)
    denied: list[str] = []

    def rule(action: int, name: str, *cmps: _ArgCmp) -> bool:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a syscall on this architecture
            return False
        array = (_ArgCmp * max(1, len(cmps)))(*cmps)
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
        if rc < 0:
            raise OSError(-rc, "seccomp_rule_add_array failed for " + name)
        return True

    try:
        for name in DENIED_SYSCALLS:
            if rule(eperm, name):
                denied.append(name)
        # clone() is how both threads and processes are made: allow only CLONE_THREAD.
        rule(eperm, "clone", _ArgCmp(0, _SCMP_CMP_MASKED_EQ, _CLONE_THREAD, 0))
        # clone3 passes its flags in memory, which seccomp cannot inspect: answer ENOSYS so
        # glibc falls back to clone(), which the rule above filters.
        rule(_scmp_act_errno(errno.ENOSYS), "clone3")
        for name in ("socket", "socketpair"):
            rule(_scmp_act_errno(errno.EAFNOSUPPORT), name,
                 _ArgCmp(0, _SCMP_CMP_NE, _AF_UNIX, 0))
        # Terminal injection into a controlling terminal (bwrap --new-session also stops it).
        for request in (_TIOCSTI, _TIOCLINUX):
            rule(eperm, "ioctl", _ArgCmp(1, _SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, request))
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise OSError(-rc, "seccomp_load failed")
    finally:
        lib.seccomp_release(ctx)
    return denied
