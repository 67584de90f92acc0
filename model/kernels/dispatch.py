"""Backend choice for the engine's kernels: decided once per device type, overridable in tests.

Every op (``selective_scan``, ``causal_conv1d``, ...) has a pure-PyTorch ``<op>_ref`` (the
specification) and may have faster implementations in *backends*:

- ``"ref"``: the references; always available, on every device.
- ``"cpp"``: CPU kernels in ``model/kernels/cpu/`` compiled on first use (needs a C++ compiler
  and ``ninja``).
- ``"triton"``: GPU kernels in ``model/kernels/triton_*.py`` (needs a CUDA device and Triton).

A backend is a *loader*: a function that returns ``{op_name: implementation}`` or raises
:class:`BackendUnavailable` with the fix. An op the backend does not provide falls back to the
reference for that op alone, so a backend can grow one kernel at a time. To plug in a new
backend, call :func:`register_backend` (the Triton backend is pre-registered below and looks for
``OPS`` in ``model.kernels.triton_backend``).

``use("auto")`` (the default) picks, per device type, the first backend of
:data:`AUTO_PREFERENCE` that loads and quietly falls back to the reference, logging ONE warning
per device type. An explicitly requested backend that cannot load raises, naming the fix.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "ref", "cpp", "triton")


class BackendUnavailable(RuntimeError):
    """A kernel backend cannot be used here; the message says why and how to fix it."""


@dataclass
class _Backend:
    name: str
    device_types: tuple[str, ...]
    loader: Callable[[], dict[str, Callable[..., Any]]]
    ops: dict[str, Callable[..., Any]] | None = None
    error: BackendUnavailable | None = None

    def load(self) -> dict[str, Callable[..., Any]]:
        """Load once; remember a failure so a missing compiler is not retried on every call."""
        if self.ops is None and self.error is None:
            try:
                self.ops = dict(self.loader())
            except BackendUnavailable as exc:
                self.error = exc
        if self.error is not None:
            raise self.error
        assert self.ops is not None
        return self.ops


_REFERENCE_OPS: dict[str, Callable[..., Any]] = {}
_registry: dict[str, _Backend] = {}
AUTO_PREFERENCE: dict[str, tuple[str, ...]] = {"cpu": ("cpp",), "cuda": ("triton",)}


@dataclass
class _State:
    requested: str = "auto"
    # device type -> (backend name, op table with reference fallbacks filled in)
    resolved: dict[str, tuple[str, dict[str, Callable[..., Any]]]] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)


_state = _State()
_lock = threading.Lock()


def register_reference(name: str, fn: Callable[..., Any]) -> None:
    """Declare ``fn`` as the specification of op ``name`` (done by the op's own module)."""
    _REFERENCE_OPS[name] = fn


def register_backend(
    name: str,
    loader: Callable[[], dict[str, Callable[..., Any]]],
    device_types: tuple[str, ...],
) -> None:
    """Add (or replace) a backend. ``loader`` returns ``{op_name: fn}`` or raises BackendUnavailable."""
    with _lock:
        _registry[name] = _Backend(name, device_types, loader)
        _state.resolved.clear()


def _load_cpp() -> dict[str, Callable[..., Any]]:
    from model.kernels.cpu import load_ops

    return load_ops()


def _load_triton() -> dict[str, Callable[..., Any]]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            "the 'triton' kernel backend needs Triton: pip install 'maestro-agents[gpu]'"
        ) from exc
    try:
        module = importlib.import_module("model.kernels.triton_backend")
    except ImportError as exc:
        raise BackendUnavailable(
            f"the 'triton' kernel backend is not available: {exc}"
        ) from exc
    return dict(module.OPS)


register_backend("cpp", _load_cpp, ("cpu",))
register_backend("triton", _load_triton, ("cuda",))


class _Restore:
    """Returned by :func:`use`; restores the previous choice when used as a context manager."""

    def __init__(self, previous: str) -> None:
        self._previous = previous

    def __enter__(self) -> _Restore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        use(self._previous)


def use(backend: str = "auto") -> _Restore:
    """Choose the kernel backend for all devices: ``"auto"``, ``"ref"``, ``"cpp"`` or ``"triton"``.

    Works as a plain call (``use("ref")``) or as a context manager (``with use("ref"): ...``),
    which restores the previous choice on exit. The choice is resolved lazily, per device type,
    on the first op call (or by :func:`active_backend`).
    """
    if backend not in BACKENDS and backend not in _registry:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {sorted(BACKENDS)}")
    with _lock:
        previous = _state.requested
        _state.requested = backend
        _state.resolved.clear()
    return _Restore(previous)


def _resolve(device_type: str) -> tuple[str, dict[str, Callable[..., Any]]]:
    requested = _state.requested
    if requested == "ref":
        return "ref", dict(_REFERENCE_OPS)
    if requested != "auto":
        backend = _registry[requested]
        if device_type not in backend.device_types:
            raise BackendUnavailable(
                f"kernel backend {requested!r} runs on {', '.join(backend.device_types)}, "
                f"not on {device_type!r}; call model.kernels.use('auto') or use('ref')"
            )
        return requested, {**_REFERENCE_OPS, **backend.load()}
    for name in AUTO_PREFERENCE.get(device_type, ()):
        backend = _registry[name]
        try:
            return name, {**_REFERENCE_OPS, **backend.load()}
        except BackendUnavailable as exc:
            if device_type not in _state.warned:
                _state.warned.add(device_type)
                logger.warning(
                    "kernel backend %r unavailable on %s, using the slow PyTorch reference: %s",
                    name,
                    device_type,
                    exc,
                )
    return "ref", dict(_REFERENCE_OPS)


def _table(device_type: str) -> tuple[str, dict[str, Callable[..., Any]]]:
    entry = _state.resolved.get(device_type)
    if entry is None:
        with _lock:
            entry = _state.resolved.get(device_type)
            if entry is None:
                entry = _resolve(device_type)
                _state.resolved[device_type] = entry
    return entry


def implementation(op: str, device_type: str) -> Callable[..., Any]:
    """The function that runs ``op`` on ``device_type`` under the current backend choice."""
    return _table(device_type)[1][op]


def active_backend(device: Any = "cpu") -> str:
    """Name of the backend that runs ops on ``device`` (a ``torch.device``, ``"cpu"``, ``"cuda:0"``).

    Resolving may compile the CPU kernels (first use only). Per-op fallbacks to the reference
    inside a partial backend are not reported here; see :func:`op_backends`.
    """
    return _table(_device_type(device))[0]


def op_backends(device: Any = "cpu") -> dict[str, str]:
    """For each op, ``"ref"`` or the backend that implements it on ``device``."""
    name, table = _table(_device_type(device))
    return {
        op: ("ref" if fn is _REFERENCE_OPS.get(op) else name) for op, fn in sorted(table.items())
    }


def _device_type(device: Any) -> str:
    return str(getattr(device, "type", device)).split(":")[0]
