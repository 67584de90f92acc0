"""The long-lived Python process inside the sandbox: a tiny notebook kernel.

Started by :mod:`tools.python.sandbox` as ``python3 -I -u worker.py CHANNEL_FD WORKDIR
CONFIG_JSON``. Standard library only — it runs under the sandbox interpreter, not maestro's.

Start-up, before any user code is read:

1. keep the channel (a Unix stream socket inherited as ``CHANNEL_FD``), point fds 0-2 at
   ``/dev/null`` so nothing user code prints can reach the host except through capture;
2. send the host a descriptor of the work dir (SCM_RIGHTS) so the host can harvest files from
   the sandbox's private tmpfs with ``openat``/``O_NOFOLLOW`` — sent now, while this process
   is still trustworthy;
3. apply rlimits, Landlock and seccomp (:mod:`confine`); report what was applied.

Protocol: frames of a 4-byte big-endian length and a UTF-8 JSON object. Requests
``{"code": str, "timeout": float}``; replies ``{"status": "ok"|"error"|"timeout", "result",
"stdout", "stderr", "error"}``. Each cell runs in one persistent namespace; when its last
statement is an expression its ``repr`` is the result, as in a REPL. stdout/stderr are
captured at the file-descriptor level into memfds, so C extensions and ``os.write(1, ...)``
are caught too. A per-cell ``SIGALRM`` raises :class:`CellTimeout` (a ``BaseException``) and
the session lives on; code that defeats the alarm is killed by the host.

Nothing here is a security boundary by itself: user code runs in this process and can
overwrite any of it. The boundary is the kernel (namespaces, rlimits, Landlock, seccomp).
"""

from __future__ import annotations

import ast
import json
import linecache
import os
import signal
import socket
import struct
import sys
import traceback
from typing import Any

MAX_FRAME = 1 << 20
_HEADER = struct.Struct(">I")


class CellTimeout(BaseException):
    """Raised inside user code when the cell's time is up (not an Exception on purpose)."""


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode("utf-8")
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> dict[str, Any]:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > MAX_FRAME:
        raise ValueError("request too large")
    message = json.loads(_recv_exact(sock, size).decode("utf-8"))
    if not isinstance(message, dict):
        raise ValueError("request is not an object")
    return message


def _on_alarm(signum: int, frame: Any) -> None:
    raise CellTimeout("cell timed out")


def _read_capture(fd: int, limit: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, limit + 1)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    text = data[:limit].decode("utf-8", "replace")
    if len(data) > limit:
        text += f"\n[... output truncated at {limit} bytes]"
    return text


class Kernel:
    """Runs cells in one namespace and captures their output."""

    def __init__(self, output_limit: int) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.output_limit = output_limit
        self.cell_count = 0
        self.null_fd = os.open("/dev/null", os.O_RDWR)
        self.out_fd = os.memfd_create("stdout")
        self.err_fd = os.memfd_create("stderr")

    def _compile(self, code: str) -> tuple[Any, Any | None]:
        self.cell_count += 1
        filename = f"<cell-{self.cell_count}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        tree = ast.parse(code, filename, "exec")
        last = None
        tail = tree.body[-1] if tree.body else None
        if isinstance(tail, ast.Expr):
            tree.body.pop()
            last = compile(ast.Expression(tail.value), filename, "eval")
        return compile(tree, filename, "exec"), last

    def run(self, code: str, timeout: float) -> dict[str, Any]:
        reply: dict[str, Any] = {"status": "ok", "result": None, "error": None}
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        os.dup2(self.out_fd, 1)
        os.dup2(self.err_fd, 2)
        signal.signal(signal.SIGALRM, _on_alarm)
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))
                body, last = self._compile(code)
                exec(body, self.namespace)
                if last is not None:
                    value = eval(last, self.namespace)
                    if value is not None:
                        self.namespace["_"] = value
                        reply["result"] = repr(value)[: self.output_limit]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except CellTimeout:
            reply["status"] = "timeout"
            reply["error"] = f"CellTimeout: the cell ran past its {timeout:.3g} s limit and was stopped; " \
                "variables defined so far are kept"
        except BaseException as exc:
            reply["status"] = "error"
            reply["error"] = _format_user_traceback(exc)[-self.output_limit:]
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    if stream is not None:
                        stream.flush()
                except BaseException:
                    pass
            os.dup2(self.null_fd, 1)
            os.dup2(self.null_fd, 2)
        reply["stdout"] = _read_capture(self.out_fd, self.output_limit)
        reply["stderr"] = _read_capture(self.err_fd, self.output_limit)
        return reply


def _format_user_traceback(exc: BaseException) -> str:
    """A traceback without this module's frames: the model only needs its own cell's lines."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def main() -> None:
    channel_fd, workdir, config_json = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    config = json.loads(config_json)
    sock = socket.socket(fileno=channel_fd)
    null_fd = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null_fd, fd)
    os.close(null_fd)
    dir_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    socket.send_fds(sock, [b"D"], [dir_fd])
    os.close(dir_fd)
    os.chdir(workdir)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import confine

    ready: dict[str, Any] = {"ready": True, "pid": os.getpid()}
    try:
        confine.apply_rlimits(config["rlimits"])
        ready["landlock_abi"] = 0
        if config.get("landlock", True):
            try:
                ready["landlock_abi"] = confine.apply_landlock(
                    config["writable_dirs"], ["/dev/null"])
            except OSError as exc:  # Landlock is an extra layer; report it, do not fail
                ready["landlock_error"] = str(exc)
        ready["seccomp_denied"] = confine.apply_seccomp() if config.get("seccomp", True) else []
    except Exception as exc:
        _send(sock, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    for name in list(os.environ):
        if name not in config.get("keep_env", ()):
            del os.environ[name]
    kernel = Kernel(int(config["output_limit"]))
    _send(sock, ready)
    while True:
        try:
            request = _recv(sock)
        except (EOFError, ConnectionError):
            return
        _send(sock, kernel.run(str(request.get("code", "")), float(request.get("timeout", 10))))


if __name__ == "__main__":
    main()
