"""Read, list and search files inside one configured workspace directory — and nowhere else.

A model asking for ``../../etc/passwd``, an absolute path, or a file that is really a symlink
to ``/root/.ssh/id_rsa`` must get a refusal, not the file. Paths are therefore never handed
to the OS whole: the workspace root is opened once, and every access walks from that
directory descriptor one component at a time with ``O_NOFOLLOW`` (the helpers in
:mod:`tools.python.harvest`). ``..`` and absolute paths are refused up front; symlinks are
refused wherever they appear — including ones pointing back inside the workspace, which is
the conservative choice (a link's target can be changed between a check and a use). FIFOs and
devices are refused too, and reads, listings and searches are bounded.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from maestro import Tool, ToolRetry, UserError, tool
from tools.python.harvest import UnsafePathError, list_files, open_dir, split_relative

MAX_READ_BYTES = 1 << 20
MAX_SEARCH_FILES = 5000
MAX_LIST_ENTRIES = 2000


@dataclass(frozen=True)
class SearchHit:
    """One matching line."""

    path: str
    line: int
    text: str


class Workspace:
    """A directory the model may read. Create once; it holds the root directory open."""

    def __init__(self, root: str | Path, *, max_read_bytes: int = MAX_READ_BYTES) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UserError(f"workspace {self.root} is not a directory")
        self.max_read_bytes = max_read_bytes
        self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _parts(self, path: str) -> list[str]:
        clean = path.strip()
        if clean in ("", ".", "./"):
            return []
        return split_relative(clean)

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        """Up to ``limit`` bytes of a regular file; raises UnsafePathError for escapes."""
        *dirs, name = self._parts(path) or [""]
        if not name:
            raise UnsafePathError("give a file path")
        dir_fd = open_dir(self._root_fd, dirs)
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == 40:  # ELOOP: a symlink
                    raise UnsafePathError(f"{path!r} is a symlink; it is not followed") from exc
                raise
        finally:
            os.close(dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePathError(f"{path!r} is not a regular file")
            return os.read(fd, limit if limit is not None else self.max_read_bytes)
        finally:
            os.close(fd)

    def read_text(self, path: str, start_line: int = 1, max_lines: int = 400) -> str:
        """Lines ``start_line``.. of a text file, numbered, with a note when cut short."""
        data = self.read_bytes(path, self.max_read_bytes + 1)
        if b"\x00" in data[:8192]:
            raise UnsafePathError(f"{path!r} looks binary; only text files can be read")
        truncated = len(data) > self.max_read_bytes
        lines = data[: self.max_read_bytes].decode("utf-8", "replace").splitlines()
        first = max(start_line, 1)
        chosen = lines[first - 1 : first - 1 + max_lines]
        out = [f"{first + i:>6}  {line}" for i, line in enumerate(chosen)]
        if first - 1 + max_lines < len(lines) or truncated:
            out.append(f"[... more lines; continue with start_line={first + len(chosen)}]")
        return "\n".join(out)

    def list_dir(self, path: str = ".", pattern: str = "*", recursive: bool = False) -> list[str]:
        """Entries below ``path``: directories end with '/', symlinks are marked, not followed."""
        dir_fd = open_dir(self._root_fd, self._parts(path))
        try:
            entries = list_files(dir_fd, max_entries=MAX_LIST_ENTRIES)
        finally:
            os.close(dir_fd)
        out = []
        for entry in entries:
            if not recursive and "/" in entry.path:
                continue
            if not fnmatch.fnmatch(entry.path.rsplit("/", 1)[-1], pattern):
                continue
            suffix = {"dir": "/", "symlink": " (symlink, not followed)", "other": " (special)"}
            out.append(entry.path + suffix.get(entry.kind, ""))
        return out

    def search(
        self, query: str, path: str = ".", glob: str = "*", regex: bool = False,
        max_results: int = 50,
    ) -> list[SearchHit]:
        """Lines matching ``query`` (a substring, or a regex when ``regex``) in text files."""
        try:
            matcher = re.compile(query if regex else re.escape(query), re.IGNORECASE)
        except re.error as exc:
            raise UnsafePathError(f"invalid regular expression: {exc}") from exc
        base = self._parts(path)
        dir_fd = open_dir(self._root_fd, base)
        try:
            entries = list_files(dir_fd, max_entries=MAX_SEARCH_FILES)
        finally:
            os.close(dir_fd)
        hits: list[SearchHit] = []
        prefix = "/".join(base) + "/" if base else ""
        for entry in entries:
            if entry.kind != "file" or not fnmatch.fnmatch(entry.path.rsplit("/", 1)[-1], glob):
                continue
            try:
                data = self.read_bytes(prefix + entry.path)
            except (OSError, UnsafePathError):
                continue  # vanished, swapped for a symlink, or unreadable: skip it
            if b"\x00" in data[:8192]:
                continue
            for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                if matcher.search(line):
                    hits.append(SearchHit(prefix + entry.path, number, line.strip()[:300]))
                    if len(hits) >= max_results:
                        return hits
        return hits


def _guard(fn_name: str, exc: BaseException) -> ToolRetry:
    return ToolRetry(f"{fn_name}: {exc}. Use a path relative to the workspace root.")


def files_tools(workspace: Workspace) -> list[Tool]:
    """``read_file``, ``list_files`` and ``search_files`` bound to one workspace."""

    @tool
    def read_file(path: str, start_line: int = 1, max_lines: int = 400) -> str:
        """Read a text file from the workspace, with line numbers.

        Args:
            path: Path relative to the workspace root, e.g. "docs/report.md".
            start_line: First line to show (1-based).
            max_lines: How many lines to show at most.
        """
        try:
            return workspace.read_text(path, start_line, min(max_lines, 2000))
        except (OSError, UnsafePathError) as exc:
            raise _guard("read_file", exc) from exc

    @tool
    def list_files(path: str = ".", pattern: str = "*", recursive: bool = False) -> str:
        """List files and directories in the workspace (directories end with '/').

        Args:
            path: Directory relative to the workspace root.
            pattern: Shell-style filter on names, e.g. "*.csv".
            recursive: Include subdirectories' contents.
        """
        try:
            return "\n".join(workspace.list_dir(path, pattern, recursive)) or "(empty)"
        except (OSError, UnsafePathError) as exc:
            raise _guard("list_files", exc) from exc

    @tool
    def search_files(query: str, path: str = ".", glob: str = "*", regex: bool = False) -> str:
        """Search text files in the workspace for a string (case-insensitive) or a regex.

        Args:
            query: Text to find, or a regular expression when regex is true.
            path: Directory to search, relative to the workspace root.
            glob: Shell-style filter on file names, e.g. "*.py".
            regex: Treat query as a regular expression.
        """
        try:
            hits = workspace.search(query, path, glob, regex)
        except (OSError, UnsafePathError) as exc:
            raise _guard("search_files", exc) from exc
        return "\n".join(f"{h.path}:{h.line}: {h.text}" for h in hits) or "(no matches)"

    return [read_file, list_files, search_files]
