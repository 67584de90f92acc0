"""The ``python`` Maestro tool: one sandboxed, stateful session per run.

Each run (``ToolContext.run_id``) gets its own :class:`PythonSandbox`, started on first use,
so variables persist from one call to the next within a run — the model can load data in one
step and analyse it in the next — and never leak between runs. Calls of one run are
serialised (a session is a single interpreter). A failing cell goes back to the model as a
``ToolRetry`` with the traceback, so it can fix its code; a missing sandbox is a
``UserError`` naming the fix, because only the developer can install bubblewrap.
"""

from __future__ import annotations

import threading

from maestro import Tool, ToolContext, ToolRetry, UserError, tool
from tools.python.sandbox import PythonSandbox, SandboxLimits, SandboxUnavailable


class PythonSessions:
    """Sandboxed sessions keyed by run id; expose ``.tool`` to an agent, ``close_all()`` at exit."""

    def __init__(
        self,
        *,
        limits: SandboxLimits | None = None,
        allow_unsandboxed: bool = False,
        default_timeout: float = 30.0,
        max_sessions: int = 8,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.allow_unsandboxed = allow_unsandboxed
        self.default_timeout = default_timeout
        self.max_sessions = max_sessions
        self._sessions: dict[str, tuple[PythonSandbox, threading.Lock]] = {}
        self._lock = threading.Lock()
        self.tool: Tool = self._make_tool()

    def session(self, run_id: str) -> tuple[PythonSandbox, threading.Lock]:
        """The run's session, created (not yet started) on first use."""
        with self._lock:
            if run_id not in self._sessions:
                if len(self._sessions) >= self.max_sessions:
                    oldest = next(iter(self._sessions))
                    self._sessions.pop(oldest)[0].close()
                sandbox = PythonSandbox(
                    limits=self.limits,
                    allow_unsandboxed=self.allow_unsandboxed,
                    default_timeout=self.default_timeout,
                )
                self._sessions[run_id] = (sandbox, threading.Lock())
            return self._sessions[run_id]

    def close(self, run_id: str) -> None:
        """End one run's session and delete its work dir."""
        with self._lock:
            entry = self._sessions.pop(run_id, None)
        if entry is not None:
            entry[0].close()

    def close_all(self) -> None:
        with self._lock:
            entries = list(self._sessions.values())
            self._sessions.clear()
        for sandbox, _ in entries:
            sandbox.close()

    def run(self, run_id: str, code: str, timeout: float | None = None) -> str:
        """Run a cell in the run's session; failures raise ``ToolRetry`` with the traceback."""
        sandbox, lock = self.session(run_id)
        with lock:
            try:
                result = sandbox.run(code, timeout=timeout)
            except SandboxUnavailable as exc:
                raise UserError(str(exc)) from exc
        if result.status != "ok":
            raise ToolRetry(result.to_text() + "\nFix the code and call python again.")
        return result.to_text()

    def _make_tool(self) -> Tool:
        sessions = self
        limit = self.default_timeout

        @tool(name="python", timeout=limit * 2 + 10)
        def python(ctx: ToolContext, code: str, timeout: float = limit) -> str:
            """Run Python code in a sandboxed, stateful session (like a notebook cell).

            Variables, imports and files in the current directory persist between calls in the
            same run. The value of a final expression is returned, with anything printed. There
            is no network access and no subprocesses; write output files to the current dir.

            Args:
                code: Python source to execute.
                timeout: Seconds before the cell is interrupted (the session survives).
            """
            return sessions.run(ctx.run_id, code, min(max(timeout, 0.1), limit * 2))

        return python
