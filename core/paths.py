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
