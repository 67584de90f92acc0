"""The C++ kernels' build survives a lock file left by a killed build (no compile runs here).

torch's cpp_extension sleeps on ``<build dir>/lock`` until it disappears; a process killed while
holding it used to leave every later process (and a whole CI run) waiting forever.
"""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path
from typing import Any

import pytest
from torch.utils import cpp_extension

from model.kernels.cpu import loader


@pytest.fixture
def build_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    return tmp_path


def _flock_is_held(path: Path) -> bool:
    with open(path, "a") as other:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(other, fcntl.LOCK_UN)
        return False


def test_a_lock_left_by_a_killed_build_is_cleared(build_root: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    directory = build_root / loader._extension_name()
    directory.mkdir()
    (directory / "lock").touch()  # what a build killed mid-compile leaves
    seen: dict[str, Any] = {}

    def fake_load(**kwargs: Any) -> None:
        seen.update(kwargs)
        seen["lock_left"] = (directory / "lock").exists()
        seen["flock_held"] = _flock_is_held(directory / "build.flock")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    loader._compile()
    assert seen["build_directory"] == str(directory)
    assert seen["lock_left"] is False
    assert seen["flock_held"] is True
    assert not _flock_is_held(directory / "build.flock")  # released after the build


def test_builds_wait_for_each_other(build_root: Path) -> None:
    directory = loader._build_directory("demo")
    order: list[str] = []
    inside = threading.Event()

    def second() -> None:
        with loader._exclusive_build(directory):
            order.append("second")

    with loader._exclusive_build(directory):
        thread = threading.Thread(target=second)
        thread.start()
        inside.wait(0.2)  # give the second builder time to (wrongly) get in
        order.append("first")
        (directory / "lock").touch()  # a live build's lock is not touched by the waiter...
        assert (directory / "lock").exists()
    thread.join(10)
    assert order == ["first", "second"]
    assert not (directory / "lock").exists()  # ...and is cleared once its holder is gone
