"""Where gpupass keeps its configuration and data: each platform's convention, through platformdirs (XDG on
Linux: $XDG_CONFIG_HOME/gpupass, ~/.config/gpupass; %APPDATA%\\gpupass on Windows, where Hyper-V admins run
it; ~/Library/Application Support/gpupass on macOS). GPUPASS_CONFIG and GPUPASS_DATA_DIR override both."""

from __future__ import annotations

import os
from pathlib import Path


def config_file() -> Path:
    explicit = os.environ.get("GPUPASS_CONFIG")
    if explicit:
        return Path(explicit)
    import platformdirs

    return platformdirs.user_config_path("gpupass", appauthor=False) / "config.toml"


def data_dir() -> Path:
    explicit = os.environ.get("GPUPASS_DATA_DIR")
    if explicit:
        return Path(explicit)
    import platformdirs

    return platformdirs.user_data_path("gpupass", appauthor=False)


def cache_dir() -> Path:
    """Things gpupass can rebuild at any time (the plugin index, the rendered --help). XDG's cache folder, as
    the simulator's build uses (gpupass.backends.esxi.lab.simulator.cache_dir), without importing platformdirs:
    `gpupass --help` reads it first thing (gpupass.core.cli.entry.cache_dir is this, without pathlib)."""
    explicit = os.environ.get("GPUPASS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpupass"
