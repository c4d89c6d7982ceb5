"""Desired assignments in a YAML file: parse with line numbers, compare with hosts, list the changes.

    assignments:
      - host: lab-kvm
        vm: ml-train
        gpus: ["0000:42:00.0"]
      - host: lab-kvm
        vm: render01
        model: A100            # or vendor:device, e.g. 10de:20f1
        count: 1
        options: {allow_firmware_change: true}

A host named in the file is managed by it: a VM there that holds GPUs but is not listed gives them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from gpupass.core.domain.inventory import Gpu, HostFacts
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignOptions
from gpupass.core.errors import GpupassError, UsageError
from gpupass.core.fleet import assignable, matches_model

OPTION_NAMES = {"include_companions", "allow_firmware_change", "hide_hypervisor", "dynamic", "allow_host_reboot"}
ENTRY_KEYS = {"host", "vm", "gpus", "model", "count", "options"}


class FileError(UsageError):
    def __init__(self, path: str, line: int, message: str, remedy: str | None = None) -> None:
        super().__init__(f"{path}:{line}: {message}", remedy=remedy or "see docs/declarative.md for the file's schema")
        self.line = line


class ApplyIncomplete(GpupassError):
    """`apply` stopped after changing something: the report names every change made and every one not made."""

    kind = "apply-incomplete"

    def __init__(self, message: str, *, remedy: str, results: list[dict[str, Any]], failed: dict[str, Any],
                 not_done: list[dict[str, Any]]) -> None:
        super().__init__(message, remedy=remedy)
        self.results, self.failed, self.not_done = results, failed, not_done

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "changed": True, "results": self.results, "failed": self.failed,
                "not_done": self.not_done}


@dataclass(frozen=True)
class Desired:
    host: str
    vm: str
    line: int
    gpus: tuple[PciAddress, ...] = ()
    model: str | None = None
    count: int = 0
    options: AssignOptions = field(default_factory=AssignOptions)


def parse(text: str, path: str = "<file>") -> list[Desired]:
    """Parse without YAML's implicit typing (0000:41:00.0 would read as a base-60 number) and keep lines."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        line = exc.problem_mark.line + 1 if getattr(exc, "problem_mark", None) else 1
        raise FileError(path, line, f"not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    except RecursionError as exc:  # PyYAML's composer recurses once per nesting level
        raise FileError(path, 1, "nested too deeply to be an assignments file") from exc
    if root is None:
        return []
    top = _mapping(root, path, "the file")
    unknown = set(top) - {"assignments", "version"}
    if unknown:
        raise FileError(path, top[sorted(unknown)[0]][0].start_mark.line + 1, f"unknown key {sorted(unknown)[0]!r}",
                        "the file has `version` and `assignments`")
    if "version" in top and _scalar(top["version"][1], path) != "1":
        raise FileError(path, top["version"][1].start_mark.line + 1, "unsupported version", "use version: 1")
    if "assignments" not in top:
        raise FileError(path, 1, "no `assignments` list")
    node = top["assignments"][1]
    if node.tag != "tag:yaml.org,2002:seq":
        raise FileError(path, node.start_mark.line + 1, "`assignments` must be a list")
    entries = [_entry(item, path) for item in node.value]
    _reject_duplicates(entries, path)
    return entries


def by_host(entries: list[Desired], identity: Callable[[str], str], path: str = "<file>") -> dict[str, list[Desired]]:
    """The file's entries per host, a host being one `identity` however the file spells it (`127.0.0.1` and
    `localhost`, a default port written or not, a trailing slash): each host is then read and planned once. The
    entries of a group carry its first spelling; the file's own checks (a VM listed twice, a GPU given to two VMs)
    run again across spellings."""
    first: dict[str, str] = {}
    groups: dict[str, list[Desired]] = {}
    for entry in entries:
        host = first.setdefault(identity(entry.host), entry.host)
        groups.setdefault(host, []).append(entry if entry.host == host else replace(entry, host=host))
    _reject_duplicates([e for group in groups.values() for e in group], path)
    return groups


def _reject_duplicates(entries: list[Desired], path: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for entry in entries:
        key = (entry.host, entry.vm)
        if key in seen:
            raise FileError(path, entry.line, f"VM {entry.vm!r} on {entry.host} is listed twice (first at line "
                            f"{seen[key]})", "merge the two entries")
        seen[key] = entry.line
    _reject_shared_gpus(entries, path)


def _reject_shared_gpus(entries: list[Desired], path: str) -> None:
    """One GPU can belong to one VM: a file that gives it to two is refused before anything is read or changed."""
    owners: dict[tuple[str, PciAddress], Desired] = {}
    for entry in entries:
        for address in entry.gpus:
            first = owners.setdefault((entry.host, address), entry)
            if first is not entry:
                raise FileError(path, entry.line, f"GPU {address} on {entry.host} is given to both {first.vm!r} "
                                f"(line {first.line}) and {entry.vm!r}", "give each GPU to one VM")


def _mapping(node: Any, path: str, what: str) -> dict[str, tuple[Any, Any]]:
    """A mapping's keys and values; a repeated key is an error (YAML 1.2 requires keys to be unique, and
    PyYAML would silently keep the last one)."""
    if node.tag != "tag:yaml.org,2002:map":
        raise FileError(path, node.start_mark.line + 1, f"{what} must be a mapping")
    fields: dict[str, tuple[Any, Any]] = {}
    for key, value in node.value:
        name = _scalar(key, path)
        if name in fields:
            raise FileError(path, key.start_mark.line + 1,
                            f"duplicate key {name!r} (first at line {fields[name][0].start_mark.line + 1})",
                            "keep one of the two: YAML keys must be unique")
        fields[name] = (key, value)
    return fields


def _scalar(node: Any, path: str) -> str:
    if node.tag in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
        raise FileError(path, node.start_mark.line + 1, "expected a single value here")
    return str(node.value)


def _entry(node: Any, path: str) -> Desired:
    line = node.start_mark.line + 1
    fields = _mapping(node, path, "each assignment")
    unknown = set(fields) - ENTRY_KEYS
    if unknown:
        name = sorted(unknown)[0]
        raise FileError(path, fields[name][0].start_mark.line + 1, f"unknown key {name!r}",
                        f"allowed keys: {', '.join(sorted(ENTRY_KEYS))}")
    for required in ("host", "vm"):
        if required not in fields:
            raise FileError(path, line, f"assignment without `{required}`")
    has_gpus, has_model = "gpus" in fields, "model" in fields
    if has_gpus == has_model:
        raise FileError(path, line, "give either `gpus` (addresses) or `model` with `count`")
    gpus: tuple[PciAddress, ...] = ()
    if has_gpus:
        value = fields["gpus"][1]
        items = value.value if value.tag == "tag:yaml.org,2002:seq" else [value]
        try:
            gpus = tuple(PciAddress.parse(_scalar(item, path)) for item in items)
        except UsageError as exc:
            raise FileError(path, value.start_mark.line + 1, exc.message, exc.remedy) from exc
    count = 0
    if has_model:
        raw = _scalar(fields["count"][1], path) if "count" in fields else "1"
        if not raw.isdigit() or int(raw) < 1:
            raise FileError(path, fields["count"][1].start_mark.line + 1, f"count {raw!r} is not a positive number")
        count = int(raw)
    options = AssignOptions()
    if "options" in fields:
        values: dict[str, bool] = {}
        for name, (key, value) in _mapping(fields["options"][1], path, "options").items():
            if name not in OPTION_NAMES:
                raise FileError(path, key.start_mark.line + 1, f"unknown option {name!r}",
                                f"options: {', '.join(sorted(OPTION_NAMES))}")
            text = _scalar(value, path).lower()
            if text not in ("true", "false"):
                raise FileError(path, value.start_mark.line + 1, f"option {name} must be true or false")
            values[name] = text == "true"
        options = AssignOptions(**values)  # type: ignore[arg-type]  # only the boolean options are read here
    return Desired(host=_scalar(fields["host"][1], path), vm=_scalar(fields["vm"][1], path), line=line, gpus=gpus,
                   model=_scalar(fields["model"][1], path) if has_model else None, count=count, options=options)


@dataclass(frozen=True)
class Change:
    host: str
    vm: str
    operation: str  # "assign" | "release"
    gpus: tuple[PciAddress, ...]
    options: AssignOptions = field(default_factory=AssignOptions)
    reason: str = ""
    line: int | None = None


def changes_for_host(host: str, facts: HostFacts, desired: list[Desired], path: str = "<file>") -> list[Change]:
    """Releases first (they free GPUs), then assignments; empty when the host matches the file."""
    held: dict[str, list[Gpu]] = {}
    for gpu in facts.gpus:
        if gpu.assigned_to:
            held.setdefault(gpu.assigned_to, []).append(gpu)
    releases, assigns = [], []
    listed = {d.vm for d in desired}
    for vm_name, gpus in sorted(held.items()):
        if vm_name not in listed:
            releases.append(Change(host, vm_name, "release", tuple(g.address for g in gpus),
                                   reason="not in the file"))
    # A GPU the file names for one VM is never picked by model for another.
    named = {address for d in desired for address in d.gpus}
    free = [g for g in facts.gpus if assignable(facts, g) and g.address not in named]
    for entry in desired:
        if facts.find_vm(entry.vm) is None:
            raise FileError(path, entry.line, f"no VM named {entry.vm!r} on {host}",
                            f"fix the name (`gpupass vms {host}`)")
        mine = held.get(entry.vm, [])
        if entry.model is None:
            wanted = set(entry.gpus)
            for address in entry.gpus:
                if not facts.gpus_at(address):
                    raise FileError(path, entry.line, f"no GPU at {address} on {host}", f"`gpupass gpus {host}` lists them")
            extra = tuple(g.address for g in mine if g.address not in wanted)
            missing = tuple(a for a in entry.gpus if a not in {g.address for g in mine})
        else:
            matching = [g for g in mine if matches_model(g, entry.model)]
            extra = tuple(g.address for g in mine if g not in matching[:entry.count])
            need = entry.count - min(len(matching), entry.count)
            pool = [g for g in free if matches_model(g, entry.model) and g.location in ("", *{m.location for m in mine})]
            if len(pool) < need:
                raise GpupassError(
                    f"{path}:{entry.line}: {host} has {len(pool)} free {entry.model} GPU(s), {entry.vm} needs {need} more",
                    remedy="free some, lower count, or use `gpupass fleet find` to pick another host")
            missing = tuple(g.address for g in pool[:need])
            for g in pool[:need]:
                free.remove(g)
        if extra:
            releases.append(Change(host, entry.vm, "release", extra, reason="not wanted by the file", line=entry.line))
        if missing:
            assigns.append(Change(host, entry.vm, "assign", missing, entry.options, reason="wanted by the file",
                                  line=entry.line))
    return releases + assigns


def after_releases(facts: HostFacts, changes: list[Change]) -> HostFacts:
    """The host as it will be once the releases among `changes` are done: what the assignments are planned on,
    so the whole file is checked before the first write."""
    freed = {(c.vm, address) for c in changes if c.operation == "release" for address in c.gpus}
    gpus: list[Gpu] = []
    functions_freed: dict[tuple[str | None, str], set[PciAddress]] = {}
    for gpu in facts.gpus:
        if (gpu.assigned_to, gpu.address) in freed:
            functions_freed.setdefault((gpu.assigned_to, gpu.location), set()).update(f.address for f in gpu.functions)
            gpu = replace(gpu, assigned_to=None)
        gpus.append(gpu)
    vms = tuple(replace(vm, assigned=tuple(a for a in vm.assigned if a not in functions_freed[(vm.name, vm.location)]))
                if (vm.name, vm.location) in functions_freed else vm for vm in facts.vms)
    return replace(facts, gpus=tuple(gpus), vms=vms)


def export(host: str, facts: HostFacts) -> list[dict[str, Any]]:
    rows = []
    for vm in facts.vms:
        gpus = [g for g in facts.gpus if g.assigned_to == vm.name and g.location == vm.location]
        if gpus:
            rows.append({"host": host, "vm": vm.name, "gpus": [str(g.address) for g in gpus]})
    return rows


def dump(rows: list[dict[str, Any]]) -> str:
    import yaml

    class Quoted(str):
        pass

    yaml.SafeDumper.add_representer(Quoted, lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style='"'))
    quoted = [{**row, "gpus": [Quoted(g) for g in row["gpus"]]} for row in rows]
    header = "# gpupass assignments (docs/declarative.md). `gpupass diff FILE` compares; `gpupass apply FILE` converges.\n"
    return header + str(yaml.safe_dump({"version": 1, "assignments": quoted}, sort_keys=False, allow_unicode=True))
