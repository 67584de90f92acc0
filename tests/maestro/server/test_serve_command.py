"""``maestro serve`` wiring (without binding a port) and the import rule for the server."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from maestro.commands.serve import app, is_loopback, keys_from_env


def test_keys_from_env() -> None:
    assert keys_from_env({}) == {}
    assert keys_from_env({"MAESTRO_API_KEY": " k0 "}) == {"k0": "default"}
    keys = keys_from_env({"MAESTRO_API_KEY": "k0", "MAESTRO_API_KEYS": "alice=k1, bob=k2"})
    assert keys == {"k0": "default", "k1": "alice", "k2": "bob"}
    with pytest.raises(typer.BadParameter, match="user=key"):
        keys_from_env({"MAESTRO_API_KEYS": "alice"})


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_serve_help_shows_the_loopback_default() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "127.0.0.1" in result.output and "--model" in result.output


def test_serve_rejects_a_bad_model_url() -> None:
    result = CliRunner().invoke(app, ["--model", "ftp://example.com/v1", "--no-store"])
    assert result.exit_code == 2
    assert "http" in result.output


def test_importing_maestro_does_not_import_the_server() -> None:
    code = (
        "import sys, maestro, maestro.agent, maestro.cli; "
        "bad = [m for m in sys.modules if m.startswith(('maestro.server', 'starlette', 'uvicorn'))]; "
        "print(bad); raise SystemExit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
