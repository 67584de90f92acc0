"""Suite-wide test settings.

- Real network access is blocked: a socket may connect to loopback and Unix sockets only,
  unless the test is marked ``network``. (Subprocesses are not covered; the one that fetches
  the default model from the package registry does so on purpose, once per machine.)
- Real model calls are blocked through ``maestro.testing.block_real_models`` when that exists;
  a test that means to use a real model opts in with the ``real_model`` marker.
- Tests marked ``gpu`` are skipped without a CUDA device.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _is_local(address: Any) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX path or abstract name
        return True
    host = address[0] if isinstance(address, tuple) and address else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NetworkBlocked(RuntimeError):
    """A test tried to reach the network without the ``network`` marker."""


@pytest.fixture(autouse=True)
def _block_network(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if request.node.get_closest_marker("network"):
        yield
        return
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded(method: Any) -> Any:
        def connect(self: socket.socket, address: Any) -> Any:
            if not _is_local(address):
                raise NetworkBlocked(f"test tried to connect to {address!r}; mark it `network` to allow")
            return method(self, address)

        return connect

    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
    yield


@pytest.fixture(autouse=True)
def _block_real_models(request: pytest.FixtureRequest) -> Iterator[None]:
    try:
        from maestro.testing import block_real_models
    except ImportError:  # the core package is not there yet
        yield
        return
    if request.node.get_closest_marker("real_model") or request.node.get_closest_marker("slow"):
        yield
        return
    with block_real_models():
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
