"""Where gpupass keeps its configuration and data (XDG on Linux; overridable for tests and CI)."""

from __future__ import annotations

import os
from pathlib import Path


def config_file() -> Path:
    explicit = os.environ.get("GPUPASS_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gpupass" / "config.toml"


def data_dir() -> Path:
    explicit = os.environ.get("GPUPASS_DATA_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "gpupass"
