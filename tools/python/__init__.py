"""Sandboxed, stateful Python execution for model-written code (see ``sandbox.py``)."""

from tools.python.harvest import FileInfo, UnsafePathError
from tools.python.sandbox import ExecResult, PythonSandbox, SandboxLimits, SandboxUnavailable

__all__ = [
    "ExecResult",
    "FileInfo",
    "PythonSandbox",
    "SandboxLimits",
    "SandboxUnavailable",
    "UnsafePathError",
]
