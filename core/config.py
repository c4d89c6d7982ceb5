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
from pathlib import Path
from typing import Any, Mapping

from gpupass.core.errors import UsageError
from gpupass.core.records import field, field_names, record


@record(frozen=True)
class HostEntry:
    name: str
    uri: str
    password_env: str | None = None
    keyring: bool = False
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    insecure: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    # seconds one network call to the host may take (connect and read); gpupass.core.target.DEFAULT_TIMEOUT_S
    timeout: float | None = None


@record(frozen=True)
class Config:
    path: Path | None = None
    hosts: Mapping[str, HostEntry] = field(default_factory=dict)


class ConfigError(UsageError):
    """A problem in the config file, located by file and (where the TOML lets us find it) line."""

    def __init__(self, path: Path, line: int | None, message: str, remedy: str | None = None) -> None:
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}",
                         remedy=remedy or "fix that line of the config file (`gpupass hosts add` writes valid entries)")
        self.path, self.line = path, line


# The file's top-level tables; a key not listed here is an error, not silently ignored.
TOP_LEVEL_KEYS = {"hosts"}


def host_keys() -> dict[str, Any]:
    """Each key a [hosts.NAME] table may have and its type: HostEntry's fields, so a new field is typed too."""
    import typing

    hints = typing.get_type_hints(HostEntry)
    return {name: hints[name] for name in field_names(HostEntry) if name != "name"}


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # as Path.exists() reads them: no config file
        return Config(path=None)
    except (OSError, UnicodeDecodeError) as exc:  # a folder on the way it may not enter (EACCES) included
        raise ConfigError(path, None, f"cannot be read: {getattr(exc, 'strerror', None) or exc}",
                          remedy="check the file's permissions and that it is UTF-8 text") from exc
    import tomllib  # only where there is a file to read

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}", remedy="fix the line named above") from exc
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(path, _line_of(text, (), key), f"unknown key {key!r}",
                              f"the config file has [hosts.NAME] tables only ({', '.join(sorted(TOP_LEVEL_KEYS))})")
    tables = data.get("hosts", {})
    if not isinstance(tables, dict):
        raise ConfigError(path, _line_of(text, (), "hosts"), "`hosts` must be a table of [hosts.NAME] tables")
    return Config(path=path, hosts={name: _host_entry(path, text, name, entry) for name, entry in tables.items()})


def _host_entry(path: Path, text: str, name: str, entry: Any) -> HostEntry:
    from gpupass.core.target import MAX_TIMEOUT_S
    from gpupass.core.uri import check_uri

    table = ("hosts", name)
    if not isinstance(entry, dict):
        raise ConfigError(path, _line_of(text, ("hosts",), name), f"host {name!r} must be a table",
                          f'write [hosts.{name}] and uri = "..." on the next line')
    allowed = host_keys()
    for key, value in entry.items():
        if key not in allowed:
            raise ConfigError(path, _line_of(text, table, key), f"host {name!r} has an unknown key {key!r}",
                              f"allowed keys are {', '.join(sorted(allowed))}")
        if not _has_type(value, allowed[key]):
            # The value itself is never echoed: it may be a password.
            raise ConfigError(path, _line_of(text, table, key),
                              f"host {name!r}: {key} must be {_type_name(allowed[key])}, not {_value_kind(value)}",
                              f"write {key} = {_example(allowed[key])}")
    if "timeout" in entry and not 0 < entry["timeout"] <= MAX_TIMEOUT_S:  # nan and inf fail this too
        raise ConfigError(path, _line_of(text, table, "timeout"),
                          f"host {name!r}: timeout must be more than 0 and at most {MAX_TIMEOUT_S:.0f} seconds (a day)",
                          "write timeout = 30 (seconds one call to the host may take)")
    if "uri" not in entry:
        raise ConfigError(path, _line_of(text, ("hosts",), name), f"host {name!r} has no uri",
                          'add uri = "qemu:///system" (or the like)')
    try:
        check_uri(entry["uri"])
    except UsageError as exc:
        raise ConfigError(path, _line_of(text, table, "uri"), f"host {name!r}: {exc.message}", exc.remedy) from exc
    if "password" in entry:
        _require_private(path, name)
    return HostEntry(name=name, **entry)


def _has_type(value: Any, hint: Any) -> bool:
    """TOML's types against a field's annotation; a bool is not a number and a string is never a bool."""
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arm) for arm in typing.get_args(hint) if arm is not type(None))
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is not None and issubclass(origin, Mapping) or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, origin or hint)


def _type_name(hint: Any) -> str:
    import types
    import typing

    arm = hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arm = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(arm)
    if arm is dict or isinstance(origin, type) and issubclass(origin, Mapping):
        return "a table"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(arm, str(arm))


def _value_kind(value: Any) -> str:
    for kind, name in ((bool, "true/false"), (int, "a number"), (float, "a number"), (str, "a string (in quotes)"),
                       (dict, "a table"), (list, "a list")):
        if isinstance(value, kind):
            return name
    return "a date or time"


def _example(hint: Any) -> str:
    name = _type_name(hint)
    return {"true or false": "true (or false), without quotes", "a string": '"..." (in quotes)',
            "a table": "{ key = value }"}.get(name, "a value of that type")


def _line_of(text: str, table: tuple[str, ...], key: str) -> int | None:
    """The line that defines `key` in `table` (a [header] or a key = line), or None when the TOML writes it in a
    form this simple scan does not follow (dotted keys, inline tables): the message then names the file only."""
    current: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = _header(stripped)
            if current[:len(table) + 1] == (*table, key):
                return number
        elif current == table and _assigned_key(stripped) == key:
            return number
    return None


def _header(line: str) -> tuple[str, ...]:
    import tomllib

    try:
        node: Any = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return ("",)
    path = []
    while isinstance(node, (dict, list)) and node:
        if isinstance(node, list):
            node = node[-1]
            continue
        key = next(iter(node))
        path.append(key)
        node = node[key]
    return tuple(path)


def _assigned_key(line: str) -> str | None:
    import re

    match = re.match(r"""([A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*=""", line)
    return match[1].strip("\"'") if match else None


def _require_private(path: Path, name: str) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"host {name!r} keeps a password in {path}, which other users can read (mode {stat.S_IMODE(mode):o})",
            remedy=f"chmod 600 {path}, or move the password to an environment variable (password_env) or the keyring",
        )


def render_config(config: Config, existing: str | None = None) -> str:
    """The file's text for `config`; with the current text, everything not changed stays as written."""
    from gpupass.core import config_writer

    return config_writer.render(config, existing)


def save_config(path: Path, config: Config) -> None:
    from gpupass.core import config_writer

    config_writer.save(path, config)


def with_host(config: Config, entry: HostEntry) -> Config:
    return Config(path=config.path, hosts={**config.hosts, entry.name: entry})


def without_host(config: Config, name: str) -> Config:
    if name not in config.hosts:
        raise UsageError(f"no host named {name!r} in the config file", remedy="`gpupass hosts list` shows them")
    return Config(path=config.path, hosts={k: v for k, v in config.hosts.items() if k != name})
