"""Config and data folders follow the platform's convention (XDG on Linux) unless overridden."""

from pathlib import Path

from gpupass.core import paths


def test_xdg_on_linux_and_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("GPUPASS_CONFIG", raising=False)
    monkeypatch.delenv("GPUPASS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert paths.config_file() == tmp_path / "cfg" / "gpupass" / "config.toml"
    assert paths.data_dir() == tmp_path / "data" / "gpupass"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.config_file() == tmp_path / "home" / ".config" / "gpupass" / "config.toml"
    monkeypatch.setenv("GPUPASS_CONFIG", "/etc/gpupass.toml")
    monkeypatch.setenv("GPUPASS_DATA_DIR", str(tmp_path / "d"))
    assert paths.config_file() == Path("/etc/gpupass.toml") and paths.data_dir() == tmp_path / "d"


def test_linux_folders_agree_with_platformdirs(monkeypatch, tmp_path):
    """paths applies the XDG rule itself on Linux (no platformdirs import for every command): it must give what
    platformdirs gives, for each way the variables can be set."""
    import platformdirs

    monkeypatch.delenv("GPUPASS_CONFIG", raising=False)
    monkeypatch.delenv("GPUPASS_DATA_DIR", raising=False)
    cases = [({"XDG_CONFIG_HOME": str(tmp_path / "c"), "XDG_DATA_HOME": str(tmp_path / "d")}, str(tmp_path / "h")),
             ({}, str(tmp_path / "h")), ({"XDG_CONFIG_HOME": "", "XDG_DATA_HOME": ""}, str(tmp_path / "h") + "/"),
             ({"XDG_CONFIG_HOME": "relative/c", "XDG_DATA_HOME": "relative/d"}, str(tmp_path / "h")),
             ({}, "relative-home")]
    for variables, home in cases:
        for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("HOME", home)
        assert paths.config_file() == platformdirs.user_config_path("gpupass", appauthor=False) / "config.toml"
        assert paths.data_dir() == platformdirs.user_data_path("gpupass", appauthor=False)
