"""The user's config file: named hosts and where each one's credential comes from.

    [hosts.gpu-node-1]
    uri = "qemu+ssh://admin@gpu-node-1/system"

    [hosts.vcenter]
    uri = "esxi://administrator@vsphere.local@vc.example.com/DC1"
    password_env = "VCENTER_PASSWORD"      # or: keyring = true
    ca_file = "/etc/ssl/certs/vcenter-ca.pem"
"""

from __future__ import annotations

import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from gpupass.core.errors import UsageError


@dataclass(frozen=True)
class HostEntry:
    name: str
    uri: str
    password_env: str | None = None
    keyring: bool = False
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    insecure: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    hosts: Mapping[str, HostEntry] = field(default_factory=dict)


_HOST_KEYS = {"uri", "password_env", "keyring", "password", "ca_file", "insecure", "options"}


def load_config(path: Path) -> Config:
    if not path.exists():
        return Config(path=None)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}", remedy="fix the line named above") from exc
    hosts: dict[str, HostEntry] = {}
    for name, entry in data.get("hosts", {}).items():
        if not isinstance(entry, dict) or "uri" not in entry:
            raise UsageError(f"host {name!r} in {path} has no uri", remedy='add uri = "qemu:///system" (or the like)')
        unknown = set(entry) - _HOST_KEYS
        if unknown:
            raise UsageError(
                f"host {name!r} in {path} has unknown keys: {', '.join(sorted(unknown))}",
                remedy=f"allowed keys are {', '.join(sorted(_HOST_KEYS))}",
            )
        if "password" in entry:
            _require_private(path, name)
        hosts[name] = HostEntry(name=name, **entry)
    return Config(path=path, hosts=hosts)


def _require_private(path: Path, name: str) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"host {name!r} keeps a password in {path}, which other users can read (mode {stat.S_IMODE(mode):o})",
            remedy=f"chmod 600 {path}, or move the password to an environment variable (password_env) or the keyring",
        )


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string without \\u escapes of surrogates is a valid TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise UsageError(f"cannot store {value!r} in the config file")


def _toml_key(key: str) -> str:
    import re

    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def render_config(config: Config) -> str:
    lines = ["# gpupass hosts: managed by `gpupass hosts add|remove`; edits by hand are kept.", ""]
    for entry in config.hosts.values():
        lines.append(f"[hosts.{_toml_key(entry.name)}]")
        for key in ("uri", "password_env", "keyring", "password", "ca_file", "insecure", "options"):
            value = getattr(entry, key)
            if value in (None, False, {}, ""):
                continue
            lines.append(f"{key} = {_toml_value(dict(value) if key == 'options' else value)}")
        lines.append("")
    return "\n".join(lines)


def save_config(path: Path, config: Config) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    # Owner-only from the start: the file may name where secrets live, or hold one.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(render_config(config))
    os.replace(temporary, path)


def with_host(config: Config, entry: HostEntry) -> Config:
    return Config(path=config.path, hosts={**config.hosts, entry.name: entry})


def without_host(config: Config, name: str) -> Config:
    if name not in config.hosts:
        raise UsageError(f"no host named {name!r} in the config file", remedy="`gpupass hosts list` shows them")
    return Config(path=config.path, hosts={k: v for k, v in config.hosts.items() if k != name})
