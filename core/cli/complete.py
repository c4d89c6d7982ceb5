"""Dynamic completion of host, VM and GPU names (the `shell_complete` callbacks of HOST, VM and GPU).

Hosts complete from the config file and the lab hosts. VM and GPU names complete from what gpupass last read
of that host (`gpus`, `vms` and `status` keep the names under the data dir) and, for a lab host without a
server (lab-kvm), from the lab directly (a local file, read in milliseconds); completion never connects to a remote host, so <TAB> never waits on the
network or asks for a password. Imported by the command modules: it must stay light (no SDK, no plugin load
until a completion runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # `gpupass gpus HOST` keeps names through this module without importing click
    import click
    from click.shell_completion import CompletionItem


# -- the cache of names, written after an inventory read --------------------------------------------------

def _cache_file(host: str) -> Path:
    """A file name for any host string. A checksum, not a cryptographic digest (hashlib costs every `gpus` more than
    the rest of this module): the file records its host, and _names reads only a file that names this host."""
    import zlib

    from gpupass.core import paths

    return paths.data_dir() / "completion" / f"{zlib.crc32(host.encode('utf-8', 'surrogateescape')):08x}.json"


def remember(host: str, facts: Any) -> None:
    """Keep the VM and GPU names of `host` for completion (names only: no secrets, nothing else)."""
    import os

    from gpupass.core.domain.inventory import qualified

    document = {"host": host, "vms": [vm.name for vm in facts.vms],
                "gpus": list(dict.fromkeys([qualified(g) for g in facts.gpus] + [str(g.address) for g in facts.gpus]
                                           + [g.function.ids for g in facts.gpus]))}
    path, text = _cache_file(host), json.dumps(document)
    try:
        if path.read_text() == text:
            return  # the same names as last time (the common case): a read, not a write, a rename and a flush
    except (OSError, ValueError):
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + f".{os.getpid()}")
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError:
        pass  # a cache: never worth failing the command for


def _names(host: str | None, kind: str) -> list[str]:
    if not host:
        return []
    try:
        document = json.loads(_cache_file(host).read_text())
        if document.get("host") == host:  # another host whose name has the same checksum: not this one's names
            return list(document.get(kind, []))
    except (OSError, ValueError, AttributeError):
        pass
    from gpupass.core.plugins import default_registry

    lab = default_registry().lab_host(host)
    if lab is not None and not lab.has_server:  # a lab without a server is local and instant: read it
        try:
            from gpupass.core.api import open_host

            with open_host(host) as opened:
                facts = opened.inventory()
            remember(host, facts)
            return _names(host, kind) if _cache_file(host).exists() else []
        except Exception:  # noqa: BLE001 - completion must never print a traceback into the shell
            return []
    return []


def _items(values: Iterable[str], incomplete: str) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    return [CompletionItem(value) for value in values if value.startswith(incomplete)]


def complete_host(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    names: list[str] = []
    try:
        from gpupass.core import paths
        from gpupass.core.config import load_config
        from gpupass.core.plugins import default_registry

        names += list(load_config(paths.config_file()).hosts)
        names += [lab.name for lab in default_registry().lab_hosts]
    except Exception:  # noqa: BLE001 - a broken config must not break the shell
        pass
    return _items(names, incomplete)


def _host_of(ctx: click.Context) -> str | None:
    return ctx.params.get("host") or ctx.params.get("src_host")


def complete_vm(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _items(_names(_host_of(ctx), "vms"), incomplete)


def complete_gpu(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _items(_names(_host_of(ctx), "gpus"), incomplete)
