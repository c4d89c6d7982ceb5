"""Restore records an older gpupass kept on the workstation, read once so that nothing assigned then is lost.

gpupass now keeps a VM's settings from before an assignment in the VM's own notes (scripts.RECORD_BEGIN). Before
that it kept them in ``<data dir>/hyperv/previous-settings.json``, keyed by ``host:port`` as the URI spelled them
and by VM id. A VM assigned by that version still has its record only there, so:

* a release that finds no record in the VM's notes restores the one in this file (where the same spelling of the
  host finds it), and removes it once the release has restored it;
* an assign of a further GPU to such a VM writes this record into the VM's notes (migration) and removes it here.

Nothing is written to this file any more. ``Target.options["state_file"]`` names another file (tests, several
gpupass installs). Removals take an exclusive lock on the file, so two gpupass processes cannot lose each other's
removals; a damaged file is reported, never read as empty.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from gpupass.core import paths
from gpupass.core.errors import OperationFailed
from gpupass.core.target import Target

from .scripts import STOP_ACTIONS, VmSettings


class LegacySettings:
    def __init__(self, path: Path, host: str) -> None:
        self.path, self.host = path, host

    @classmethod
    def for_target(cls, target: Target) -> "LegacySettings":
        explicit = target.options.get("state_file") if target.options else None
        path = Path(explicit) if explicit else paths.data_dir() / "hyperv" / "previous-settings.json"
        parts = urlsplit(target.uri)
        return cls(path, f"{parts.hostname}:{parts.port or ''}".lower())

    # Reads of a file on this workstation: an error here changed nothing on the host (rolled_back=True).
    def _load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise OperationFailed(f"cannot read the restore records of an older gpupass in {self.path}: {exc}",
                                  remedy="make the file readable, or move it away if no VM needs it", rolled_back=True) from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise OperationFailed(f"{self.path} (restore records of an older gpupass) is damaged: {exc}",
                                  remedy="repair it, or move it away and restore the VMs' stop action and MMIO "
                                         "by hand after releasing", rolled_back=True) from exc
        if not isinstance(data, dict):
            raise OperationFailed(f"{self.path} (restore records of an older gpupass) is not a JSON object",
                                  remedy="repair it, or move it away", rolled_back=True)
        return data

    def get(self, vm_id: str) -> VmSettings | None:
        """The record for this VM on this host (as the URI spells it), or None."""
        if not vm_id or not self.path.exists():
            return None
        record = (self._load().get(self.host) or {}).get(vm_id)
        if record is None:
            return None
        try:
            settings = VmSettings(stop_action=record["stop_action"], low_mmio=record["low_mmio"],
                                  high_mmio=record["high_mmio"], guest_cache=record["guest_cache"])
            if settings.stop_action not in STOP_ACTIONS or not isinstance(settings.guest_cache, bool):
                raise ValueError(settings.stop_action)
        except (KeyError, TypeError, ValueError) as exc:
            raise OperationFailed(f"{self.path}: the record of VM {vm_id} on {self.host} is damaged ({exc!r})",
                                  remedy="repair or delete that entry", rolled_back=True) from exc
        return settings

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def delete(self, vm_id: str) -> None:
        """Forget the record (it was restored, or moved into the VM's notes)."""
        if not vm_id or not self.path.exists():
            return
        with self._locked():
            data = self._load()
            if (data.get(self.host) or {}).pop(vm_id, None) is None:
                return
            if not data[self.host]:
                del data[self.host]
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".settings.")
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=2, sort_keys=True)
            os.replace(tmp, self.path)
