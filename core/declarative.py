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
      - host: lab-kvm
        vm: web01
        shares:                # a part of a GPU: an mdev type, a vGPU profile, a GPU partition
          - {gpu: "0000:81:00.0", type: nvidia-46}

A host named in the file is managed by it: a VM there that holds GPUs or shares but is not listed gives
them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from gpupass.core.domain.inventory import Gpu, HostFacts
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignOptions
from gpupass.core.domain.sharing import Share, Sharing
from gpupass.core.errors import GpupassError, UsageError
from gpupass.core.fleet import assignable, matches_model

OPTION_NAMES = {"include_companions", "allow_firmware_change", "hide_hypervisor", "dynamic", "allow_host_reboot"}
ENTRY_KEYS = {"host", "vm", "gpus", "model", "count", "options", "shares"}
MAX_COUNT_DIGITS = 4  # `count` up to 9999 GPUs for one VM: more than any host holds, well short of int()'s limit
SHARE_KEYS = {"gpu", "type"}


class FileError(UsageError):
    def __init__(self, path: str, line: int, message: str, remedy: str | None = None) -> None:
        super().__init__(f"{path}:{line}: {message}", remedy=remedy or "see docs/declarative.md for the file's schema")
        self.line = line


class FileCannotBeMet(GpupassError):
    """A host cannot meet the file now (too few free GPUs of a model it has): found while planning the whole file,
    before any change, so it exits as a preflight blocker does (3) -- the file itself is fine."""

    exit_code = 3
    kind = "preflight-failed"


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
    # (GPU, share type as the file names it: an id, a name or a vGPU profile); one share per GPU and VM.
    shares: tuple[tuple[PciAddress, str], ...] = ()


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
    entries of a group carry its first spelling; the file's own check of a VM listed twice runs again across
    spellings (a GPU given to two VMs is checked per host, changes_for_host)."""
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


def _reject_shared_gpus(host: str, facts: HostFacts, entries: list[Desired], path: str) -> None:
    """One GPU can belong to one VM: a file that gives it to two is refused before anything is changed. Compared on
    each VM's machine, so it needs the host read: on a vCenter two ESXi hosts can each have a GPU at the same address
    (0000:3b:00.0 on esx01 and on esx02 are two GPUs)."""
    owners: dict[tuple[str | None, PciAddress], Desired] = {}
    for entry in entries:
        found = facts.find_vm(entry.vm)
        machine = found.location if found else None
        for address in entry.gpus:
            first = owners.setdefault((machine, address), entry)
            if first is not entry:
                where = f" ({machine})" if machine and machine != host else ""
                raise FileError(path, entry.line, f"GPU {address} on {host}{where} is given to both {first.vm!r} "
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
    # By the node's kind, not its tag: a list or mapping under another tag (`!x [a]`, `!!python/object/apply:...`)
    # is no single value either, and str() of it would make up a name out of PyYAML's node objects.
    if node.id != "scalar":
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
    if has_gpus and has_model or not (has_gpus or has_model or "shares" in fields):
        raise FileError(path, line, "give either `gpus` (addresses) or `model` with `count`, and/or `shares`")
    gpus: tuple[PciAddress, ...] = ()
    if has_gpus:
        value = fields["gpus"][1]
        items = value.value if value.tag == "tag:yaml.org,2002:seq" else [value]
        texts = [_scalar(item, path) for item in items]  # its own FileError, with its line, not wrapped again
        try:
            gpus = tuple(PciAddress.parse(text) for text in texts)
        except UsageError as exc:
            raise FileError(path, value.start_mark.line + 1, exc.message, exc.remedy) from exc
    count = 0
    if has_model:
        raw = _scalar(fields["count"][1], path) if "count" in fields else "1"
        # ASCII digits only: str.isdigit() takes '²' (which int() refuses) and 5,000 digits (past int()'s limit)
        if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_COUNT_DIGITS) or int(raw) < 1:
            raise FileError(path, fields["count"][1].start_mark.line + 1,
                            f"count {raw[:12] + '...' if len(raw) > 12 else raw!r} is not a positive number (a whole "
                            f"number from 1 to {10 ** MAX_COUNT_DIGITS - 1})")
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
    shares = _shares(fields["shares"][1], path) if "shares" in fields else ()
    return Desired(host=_scalar(fields["host"][1], path), vm=_scalar(fields["vm"][1], path), line=line, gpus=gpus,
                   model=_scalar(fields["model"][1], path) if has_model else None, count=count, options=options,
                   shares=shares)


def _shares(node: Any, path: str) -> tuple[tuple[PciAddress, str], ...]:
    """`shares: [{gpu: ADDRESS, type: TYPE}, ...]`: one share per GPU for a VM (a share request finds the VM's share
    of a type on a GPU, so a second one of the same GPU could never be told apart)."""
    if node.tag != "tag:yaml.org,2002:seq":
        raise FileError(path, node.start_mark.line + 1, "`shares` must be a list",
                        'write shares: [{gpu: "0000:81:00.0", type: nvidia-46}]')
    shares: list[tuple[PciAddress, str]] = []
    for item in node.value:
        item_line = item.start_mark.line + 1
        fields = _mapping(item, path, "each share")
        unknown = set(fields) - SHARE_KEYS
        missing = SHARE_KEYS - set(fields)
        if unknown or missing:
            problem = f"unknown key {sorted(unknown)[0]!r}" if unknown else f"share without `{sorted(missing)[0]}`"
            raise FileError(path, item_line, problem, "a share has `gpu` (the physical GPU's address) and `type` (one "
                            "of the types `gpupass gpus HOST --json` lists under sharing.types)")
        try:
            address = PciAddress.parse(_scalar(fields["gpu"][1], path))
        except UsageError as exc:
            raise FileError(path, item_line, exc.message, exc.remedy) from exc
        share_type = _scalar(fields["type"][1], path).strip()
        if not share_type:
            raise FileError(path, item_line, "share without a type", "name one of the GPU's share types")
        if any(address == a for a, _ in shares):
            raise FileError(path, item_line, f"GPU {address} is shared with this VM twice",
                            "give a VM one share of a GPU (a larger type if it needs more)")
        shares.append((address, share_type))
    return tuple(shares)


@dataclass(frozen=True)
class Change:
    host: str
    vm: str
    operation: str  # "assign" | "release"
    gpus: tuple[PciAddress, ...]
    options: AssignOptions = field(default_factory=AssignOptions)
    reason: str = ""
    line: int | None = None
    # A share change: the type to give (as the file names it) or the type of the share taken back; the change
    # names one GPU. None for whole GPUs.
    share: str | None = None


def changes_for_host(host: str, facts: HostFacts, desired: list[Desired], path: str = "<file>") -> list[Change]:
    """Releases first (they free GPUs), then assignments; empty when the host matches the file."""
    _reject_shared_gpus(host, facts, desired, path)
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
    # A GPU the file names for one VM, whole or shared, is never picked by model for another.
    named = {address for d in desired for address in (*d.gpus, *(a for a, _ in d.shares))}
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
                existing = sum(1 for g in facts.gpus if matches_model(g, entry.model))
                if entry.count > existing:  # no release on the host could meet it: the file is wrong
                    raise FileError(path, entry.line, f"count {entry.count} asks for more {entry.model} GPUs than "
                                    f"{host} has ({existing})", f"lower count to at most {existing}, or pick "
                                    "another host (`gpupass fleet find`)")
                raise FileCannotBeMet(
                    f"{path}:{entry.line}: {host} has {len(pool)} free {entry.model} GPU(s), {entry.vm} needs {need} "
                    "more; nothing was changed",
                    remedy="free some, lower count, or use `gpupass fleet find` to pick another host")
            missing = tuple(g.address for g in pool[:need])
            for g in pool[:need]:
                free.remove(g)
        if extra:
            releases.append(Change(host, entry.vm, "release", extra, reason="not wanted by the file", line=entry.line))
        if missing:
            assigns.append(Change(host, entry.vm, "assign", missing, entry.options, reason="wanted by the file",
                                  line=entry.line))
    share_releases, share_assigns = _share_changes(host, facts, desired, path)
    return releases + share_releases + assigns + share_assigns


def _share_changes(host: str, facts: HostFacts, desired: list[Desired], path: str) -> tuple[list[Change], list[Change]]:
    """The shares to take back and to give, checked as a whole against what each GPU offers and has room for, so a
    file asking for the impossible is refused before the first write.

    A listed VM holds exactly the shares its entry lists (none without `shares`), like its whole GPUs; a VM the file
    does not list gives its shares back, as it gives back its whole GPUs."""
    entries = {d.vm: d for d in desired}
    _reject_whole_and_shared(host, facts, desired, path)
    releases: list[Change] = []
    kept: set[tuple[str, PciAddress]] = set()
    released: dict[tuple[str, PciAddress], list[Share]] = {}
    for gpu in facts.gpus:
        for vm_name in gpu.sharing.holders:
            held = gpu.sharing.held_by(vm_name)
            entry = entries.get(vm_name)
            wanted = dict(entry.shares).get(gpu.address) if entry else None
            if wanted is not None and len(held) == 1 and _is_type(gpu.sharing, held[0], wanted):
                kept.add((vm_name, gpu.address))
                continue
            released.setdefault((gpu.location, gpu.address), []).extend(held)
            reason = "not in the file" if entry is None else "not wanted by the file"
            releases.append(Change(host, vm_name, "release", (gpu.address,), reason=reason,
                                   line=entry.line if entry else None, share=held[0].type_id))
    assigns: list[Change] = []
    asked: dict[tuple[str, PciAddress], list[tuple[str, Desired]]] = {}
    for entry in desired:
        for address, type_name in entry.shares:
            if (entry.vm, address) in kept:
                continue
            holder = facts.find_vm(entry.vm)
            # On a host of several machines (an ESXi cluster) the same address can be on each: the VM's own counts.
            gpus = [g for g in facts.gpus_at(address) if holder is None or g.location == holder.location]
            if not gpus:
                raise FileError(path, entry.line, f"no GPU at {address} on {host} to share",
                                f"`gpupass gpus {host}` lists them")
            matches = gpus[0].sharing.types_answering(type_name)
            if len(matches) != 1:
                offered = ", ".join(f"{t.id} ({t.name})" if t.name and t.name != t.id else t.id
                                    for t in gpus[0].sharing.types)
                problem = (f"share type {type_name!r} matches {len(matches)} types of GPU {address}" if matches else
                           f"GPU {address} on {host} offers no share type {type_name!r}")
                raise FileError(path, entry.line, problem, f"name one of its types: {offered}" if offered else
                                "it offers no sharing: give it whole with `gpus`, or share another GPU")
            asked.setdefault((gpus[0].location, address), []).append((matches[0].id, entry))
            assigns.append(Change(host, entry.vm, "assign", (address,), reason="wanted by the file", line=entry.line,
                                  share=type_name))
    for (location, address), wants in asked.items():
        sharing = next(g.sharing for g in facts.gpus_at(address) if g.location == location)
        _check_room(host, sharing, address, wants, released.get((location, address), []), path)
    return releases, assigns


def _reject_whole_and_shared(host: str, facts: HostFacts, desired: list[Desired], path: str) -> None:
    """A GPU given whole to one VM and shared with another (or the same) in one file is refused. Compared on each
    VM's machine: on an ESXi cluster two hosts can each have a GPU at the same address."""
    def machine(entry: Desired) -> str | None:
        found = facts.find_vm(entry.vm)
        return found.location if found else None

    whole = {(machine(d), address): d for d in desired for address in d.gpus}
    for entry in desired:
        for address, _ in entry.shares:
            owner = whole.get((machine(entry), address))
            if owner is not None:
                raise FileError(path, entry.line, f"GPU {address} on {host} is given whole to {owner.vm!r} "
                                f"(line {owner.line}) and shared with {entry.vm!r}",
                                "a GPU is either given whole to one VM or shared: drop one of the two")


def _is_type(sharing: Sharing, share: Share, type_name: str) -> bool:
    known = sharing.type_named(share.type_id)
    return share.type_id == type_name or (known is not None and known.answers_to(type_name))


def _check_room(host: str, sharing: Sharing, address: PciAddress, wants: list[tuple[str, Desired]],
                released: list[Share], path: str) -> None:
    """More shares of a type than the GPU can still create (plus those created ahead and those the file frees), or
    two types on a GPU that takes one type at a time, is refused with the entry that asks for too much."""
    # The type first: a GPU holding another type reports no room for this one, which would hide the reason.
    if sharing.one_type_at_a_time:
        modes = {t.mode for t in sharing.types if t.id in {w for w, _ in wants}}  # VFs beside vGPUs: another mode
        staying = {s.type_id for s in sharing.shares if s not in released and (not modes or s.mode in modes)}
        types = staying | {t for t, _ in wants}
        if len(types) > 1:
            raise FileError(path, wants[0][1].line, f"GPU {address} on {host} holds shares of one type at a time and "
                            f"would hold {', '.join(sorted(types))}",
                            "use one type on this GPU (release the others in the file) or share another GPU")
    for type_id in dict.fromkeys(t for t, _ in wants):
        asking = [d for t, d in wants if t == type_id]
        share_type = sharing.type_named(type_id)
        available = share_type.available if share_type else None
        if available is None:
            continue  # the platform does not say; the share's own preflight decides
        room = available + len(sharing.free(type_id)) + sum(1 for s in released if s.type_id == type_id)
        if len(asking) > room:
            raise FileError(path, asking[room].line, f"GPU {address} on {host} has room for {room} more {type_id} "
                            f"share(s) and the file asks for {len(asking)}",
                            "share fewer VMs on it, pick a smaller type, or share another GPU")


def after_releases(facts: HostFacts, changes: list[Change]) -> HostFacts:
    """The host as it will be once the releases among `changes` are done: what the assignments are planned on,
    so the whole file is checked before the first write."""
    freed = {(c.vm, address) for c in changes if c.operation == "release" and c.share is None for address in c.gpus}
    unshared = {(c.vm, c.gpus[0]) for c in changes if c.operation == "release" and c.share is not None}
    gpus: list[Gpu] = []
    functions_freed: dict[tuple[str | None, str], set[PciAddress]] = {}
    for gpu in facts.gpus:
        if (gpu.assigned_to, gpu.address) in freed:
            functions_freed.setdefault((gpu.assigned_to, gpu.location), set()).update(f.address for f in gpu.functions)
            gpu = replace(gpu, assigned_to=None)
        if any((s.holder, gpu.address) in unshared for s in gpu.sharing.shares):
            # Counted as created and free once taken back: the assignments are only checked on this, and each is
            # planned again on the host as it is when its turn comes.
            shares = tuple(replace(s, holder=None) if (s.holder, gpu.address) in unshared else s
                           for s in gpu.sharing.shares)
            gpu = replace(gpu, sharing=replace(gpu.sharing, shares=shares))
        gpus.append(gpu)
    vms = tuple(replace(vm, assigned=tuple(a for a in vm.assigned if a not in functions_freed[(vm.name, vm.location)]))
                if (vm.name, vm.location) in functions_freed else vm for vm in facts.vms)
    return replace(facts, gpus=tuple(gpus), vms=vms)


def export(host: str, facts: HostFacts) -> list[dict[str, Any]]:
    rows = []
    for vm in facts.vms:
        mine = [g for g in facts.gpus if g.location == vm.location]
        gpus = [g for g in mine if g.assigned_to == vm.name]
        shares = [{"gpu": str(g.address), "type": s.type_id} for g in mine for s in g.sharing.held_by(vm.name)]
        row: dict[str, Any] = {"host": host, "vm": vm.name}
        if gpus:
            row["gpus"] = [str(g.address) for g in gpus]
        if shares:
            row["shares"] = shares
        if gpus or shares:
            rows.append(row)
    return rows


def dump(rows: list[dict[str, Any]]) -> str:
    import yaml

    class Quoted(str):
        pass

    yaml.SafeDumper.add_representer(Quoted, lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style='"'))
    def quote(row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        if "gpus" in row:
            out["gpus"] = [Quoted(g) for g in row["gpus"]]
        if "shares" in row:
            out["shares"] = [{"gpu": Quoted(s["gpu"]), "type": Quoted(s["type"])} for s in row["shares"]]
        return out

    quoted = [quote(row) for row in rows]
    header = "# gpupass assignments (docs/declarative.md). `gpupass diff FILE` compares; `gpupass apply FILE` converges.\n"
    return header + str(yaml.safe_dump({"version": 1, "assignments": quoted}, sort_keys=False, allow_unicode=True))
