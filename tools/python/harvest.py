"""Host-side access to a sandbox work dir that hostile code has had write access to.

Everything in the work dir may have been planted: symlinks to host files (``out.csv ->
/etc/shadow``), FIFOs that block a reader forever, directories swapped for symlinks between a
check and a use, millions of entries. So the host never resolves a path in one go. It walks
from a directory descriptor one component at a time with ``openat(..., O_NOFOLLOW)``,
opens files ``O_NONBLOCK`` and checks ``fstat`` is a regular file before reading, caps sizes,
depth and entry counts, and never follows a symlink — it only reports one.
"""

from __future__ import annotations

import ctypes
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

MAX_DEPTH = 16
MAX_ENTRIES = 10_000


class UnsafePathError(ValueError):
    """A work-dir path that is absolute, climbs with ``..``, or crosses a symlink."""


@dataclass(frozen=True)
class FileInfo:
    """One entry of a work dir listing (symlinks are listed, never followed)."""

    path: str
    kind: str  # "file" | "dir" | "symlink" | "other"
    size: int
    mtime_ns: int


def split_relative(path: str) -> list[str]:
    """Split a work-dir path into components, refusing anything that could leave the dir."""
    if not path or path.startswith("/") or "\x00" in path:
        raise UnsafePathError(f"{path!r}: give a path relative to the work dir")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise UnsafePathError(f"{path!r}: '..' and empty paths are not allowed")
    return parts


def open_dir(root_fd: int, parts: list[str], *, create: bool = False) -> int:
    """Open the directory ``root/parts...`` without following symlinks at any level."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise UnsafePathError(f"{part!r} is not a plain directory: {exc}") from exc
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(root_fd: int, path: str, max_bytes: int) -> bytes:
    """Read a regular file below ``root_fd``; refuse symlinks, FIFOs, devices and big files."""
    *dirs, name = split_relative(path)
    dir_fd = open_dir(root_fd, dirs)
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: the final component is a symlink
                raise UnsafePathError(f"{path!r} is a symlink; it is not followed") from exc
            raise
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePathError(f"{path!r} is not a regular file")
        if info.st_size > max_bytes:
            raise UnsafePathError(f"{path!r} is {info.st_size} bytes, over the {max_bytes} cap")
        data = os.read(fd, max_bytes + 1)
        if len(data) > max_bytes:  # grew after fstat
            raise UnsafePathError(f"{path!r} is over the {max_bytes} byte cap")
        return data
    finally:
        os.close(fd)


def _as_fsuid(uid: int, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a short-lived thread whose filesystem uid/gid is ``uid``.

    The sandbox's tmpfs belongs to its user namespace, where only the sandbox uid is mapped:
    host root creating a file there gets EOVERFLOW. Linux keeps fsuid per thread (glibc does
    not broadcast ``setfsuid``), so a throwaway thread can create files as the sandbox user
    without touching the credentials of the rest of the process.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setfsgid(uid)
        libc.setfsuid(uid)
        if libc.setfsuid(-1) != uid:  # setfsuid reports the previous value; this checks it
            failure.append(PermissionError(f"could not switch to filesystem uid {uid}"))
            return
        try:
            outcome.append(fn())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=body, name="sandbox-fsuid")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def write_file(root_fd: int, path: str, data: bytes, *, uid: int = -1) -> None:
    """Create or replace a regular file below ``root_fd`` (never through a symlink).

    ``uid`` >= 0 (host running as root) creates it as that user, see :func:`_as_fsuid`.
    """
    if uid >= 0 and os.geteuid() == 0:
        _as_fsuid(uid, lambda: _write_file(root_fd, path, data))
    else:
        _write_file(root_fd, path, data)


def _write_file(root_fd: int, path: str, data: bytes) -> None:
    *dirs, name = split_relative(path)
    dir_fd = open_dir(root_fd, dirs, create=True)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            raise UnsafePathError(f"cannot write {path!r}: {exc}") from exc
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{path!r} is not a regular file")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def list_files(root_fd: int, *, max_entries: int = MAX_ENTRIES) -> list[FileInfo]:
    """Every entry below ``root_fd`` (lstat only), sorted by path; bounded in depth and count."""
    out: list[FileInfo] = []

    def walk(dir_fd: int, prefix: str, depth: int) -> Iterator[FileInfo]:
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                rel = prefix + entry.name
                yield FileInfo(rel, _kind(info.st_mode), info.st_size, info.st_mtime_ns)
                if stat.S_ISDIR(info.st_mode) and depth < MAX_DEPTH:
                    try:
                        sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                      dir_fd=dir_fd)
                    except OSError:  # replaced by a symlink meanwhile, or unreadable: skip
                        continue
                    try:
                        yield from walk(sub, rel + "/", depth + 1)
                    finally:
                        os.close(sub)

    top = os.dup(root_fd)
    try:
        for item in walk(top, "", 0):
            out.append(item)
            if len(out) >= max_entries:
                break
    finally:
        os.close(top)
    return sorted(out, key=lambda f: f.path)
