"""Writes the config file as `gpupass hosts add|remove` change it, keeping what a person wrote by hand.

tomlkit edits the parsed document in place, so comments, blank lines, key order and the layout of every
host gpupass did not touch stay exactly as they were; only the [hosts.NAME] table being added, changed or
removed is rewritten. (The loader refuses unknown tables, so there are none to lose.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpupass.core.config import Config, HostEntry

HEADER = "# gpupass hosts: managed by `gpupass hosts add|remove`; comments and edits by hand are kept."
# The keys gpupass writes for a host, in this order; a key at its default is left out.
KEYS = ("uri", "password_env", "keyring", "password", "ca_file", "insecure", "timeout", "options")


def _values(entry: HostEntry) -> dict[str, Any]:
    values = {}
    for key in KEYS:
        value = getattr(entry, key)
        if value in (None, False, {}, ""):
            continue
        values[key] = dict(value) if key == "options" else value
    return values


def render(config: Config, existing: str | None = None) -> str:
    import tomlkit

    document = tomlkit.parse(existing) if existing and existing.strip() else tomlkit.document()
    if not existing or not existing.strip():
        document.add(tomlkit.comment(HEADER[2:]))
        document.add(tomlkit.nl())
    if "hosts" not in document:
        document.add("hosts", tomlkit.table(is_super_table=True))
    hosts = document["hosts"]
    for name in [n for n in hosts if n not in config.hosts]:
        del hosts[name]
    for name, entry in config.hosts.items():
        wanted = _values(entry)
        if name in hosts:
            table = hosts[name]
            if {k: _plain(table[k]) for k in table} == wanted:
                continue  # untouched: byte for byte as it was
            for key in [k for k in table if k not in wanted]:
                del table[key]
            for key, value in wanted.items():
                if key not in table or _plain(table[key]) != value:
                    table[key] = _item(value)
        else:
            table = tomlkit.table()
            for key, value in wanted.items():
                table[key] = _item(value)
            hosts[name] = table
    return tomlkit.dumps(document)


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def _item(value: Any) -> Any:
    import tomlkit

    if isinstance(value, dict):
        inline = tomlkit.inline_table()
        inline.update(value)
        return inline
    return value


def save(path: Path, config: Config) -> None:
    existing = path.read_text(encoding="utf-8") if path.exists() else None
    text = render(config, existing)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    # Owner-only from the start: the file may name where secrets live, or hold one.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
