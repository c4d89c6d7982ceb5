"""Where gpupass keeps its configuration and data: each platform's convention, through platformdirs (XDG on
Linux: $XDG_CONFIG_HOME/gpupass, ~/.config/gpupass; %APPDATA%\\gpupass on Windows, where Hyper-V admins run
it; ~/Library/Application Support/gpupass on macOS). GPUPASS_CONFIG and GPUPASS_DATA_DIR override both."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def config_file() -> Path:
    explicit = os.environ.get("GPUPASS_CONFIG")
    if explicit:
        return Path(explicit)
    return _user_folder("XDG_CONFIG_HOME", ".config", "user_config_path") / "config.toml"


def data_dir() -> Path:
    explicit = os.environ.get("GPUPASS_DATA_DIR")
    if explicit:
        return Path(explicit)
    return _user_folder("XDG_DATA_HOME", os.path.join(".local", "share"), "user_data_path")


def lab_data_dir() -> Path:
    """data_dir(), with the `lab` folder in it made: where the lab hosts keep their state, logs and passwords. A data
    folder that cannot be made (GPUPASS_DATA_DIR naming a file such as /dev/null, a folder gpupass may not write) is
    a usage error naming it, instead of an OSError from inside a lab host on first use."""
    data = data_dir()
    try:
        (data / "lab").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from gpupass.core.errors import UsageError

        raise UsageError(f"gpupass's data folder {data} cannot be used for the lab hosts: {exc.strerror or exc}",
                         remedy="set GPUPASS_DATA_DIR to a folder you can write, or unset it") from exc
    return data


def _user_folder(variable: str, under_home: str, platformdirs_function: str) -> Path:
    """gpupass's folder of one XDG kind. On Linux, where the variable holds an absolute path or is unset or empty and
    $HOME is absolute, the XDG Base Directory rule every platformdirs release applies (the variable, else that
    folder under $HOME) is applied here: importing platformdirs costs a command like `gpupass gpus` a tenth of its
    start-up (issue 11). Anywhere else, and where the variables leave room for interpretation (a relative path, no
    absolute $HOME), platformdirs decides. tests/unit/test_paths.py checks the two agree."""
    if sys.platform.startswith("linux"):
        value, home = os.environ.get(variable, ""), os.environ.get("HOME", "")
        if os.path.isabs(value):
            return Path(value) / "gpupass"
        if not value and os.path.isabs(home):
            return Path(home) / under_home / "gpupass"
    import platformdirs

    found: Path = getattr(platformdirs, platformdirs_function)("gpupass", appauthor=False)
    return found


def cache_dir() -> Path:
    """Things gpupass can rebuild at any time (the plugin index, the rendered --help). XDG's cache folder, as
    the simulator's build uses (gpupass.backends.esxi.lab.simulator.cache_dir), without importing platformdirs:
    `gpupass --help` reads it first thing (gpupass.core.cli.entry.cache_dir is this, without pathlib)."""
    explicit = os.environ.get("GPUPASS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpupass"
