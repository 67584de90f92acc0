"""Where Maestro keeps its files and which database it talks to.

Resolved from the environment on every call (not cached at import time) so that tests and
sub-processes can point a fresh process at a temporary home with one environment variable:

- ``MAESTRO_HOME``: the data directory. Without it, the platform's user data dir
  (``platformdirs``; ``$XDG_DATA_HOME/maestro`` on Linux).
- ``MAESTRO_DATABASE_URL``: any SQLAlchemy URL (``sqlite:///...``, ``postgresql://...``).
  Without it, an SQLite file ``maestro.db`` inside the data directory: the embedded default
  that needs no server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "maestro"
DEFAULT_DB_FILENAME = "maestro.db"


def data_dir() -> Path:
    """The directory for the database, model cache and other durable state (not created)."""
    home = os.environ.get("MAESTRO_HOME")
    if home:
        return Path(home).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME, appauthor=False))


def default_database_url() -> str:
    """The embedded default: an SQLite file in the data directory."""
    return f"sqlite:///{data_dir() / DEFAULT_DB_FILENAME}"


def database_url() -> str:
    """``MAESTRO_DATABASE_URL`` when set, else the embedded SQLite default."""
    url = os.environ.get("MAESTRO_DATABASE_URL", "").strip()
    return url or default_database_url()


def model_cache_dir() -> Path:
    """Where downloaded and converted model weights live (``MAESTRO_MODEL_CACHE`` overrides)."""
    override = os.environ.get("MAESTRO_MODEL_CACHE")
    if override:
        return Path(override).expanduser()
    return data_dir() / "models"


@dataclass(frozen=True)
class Settings:
    """A snapshot of the resolved settings, for code that wants to pass them around."""

    data_dir: Path
    database_url: str
    model_cache_dir: Path

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            data_dir=data_dir(), database_url=database_url(), model_cache_dir=model_cache_dir()
        )


__all__ = [
    "APP_NAME",
    "DEFAULT_DB_FILENAME",
    "Settings",
    "data_dir",
    "database_url",
    "default_database_url",
    "model_cache_dir",
]
