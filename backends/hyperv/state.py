"""Where gpupass keeps a VM's settings from before an assignment, so a release can restore them.

Hyper-V keeps no record of them, so gpupass does: the assign script returns the VM's previous stop action,
MMIO sizes and cache setting, and they are written to ``<data dir>/hyperv/previous-settings.json`` keyed by
host URI (without the query) and VM id. A release that leaves the VM without devices restores them and
removes the record. ``Target.options["state_file"]`` overrides the file (tests, several gpupass installs).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gpupass.core import paths
from gpupass.core.target import Target


class SettingsStore:
    def __init__(self, path: Path, host: str) -> None:
        self.path, self.host = path, host

    @classmethod
    def for_target(cls, target: Target) -> "SettingsStore":
        explicit = target.options.get("state_file") if target.options else None
        path = Path(explicit) if explicit else paths.data_dir() / "hyperv" / "previous-settings.json"
        parts = urlsplit(target.uri)
        host = f"{parts.hostname}:{parts.port or ''}".lower()
        return cls(path, host)

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".settings.")
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    def get(self, vm: str) -> dict[str, Any] | None:
        record = self._load().get(self.host, {}).get(vm)
        return record if isinstance(record, dict) else None

    def put(self, vm: str, settings: dict[str, Any]) -> None:
        data = self._load()
        data.setdefault(self.host, {})[vm] = settings
        self._save(data)

    def delete(self, vm: str) -> None:
        data = self._load()
        if data.get(self.host, {}).pop(vm, None) is not None:
            if not data[self.host]:
                del data[self.host]
            self._save(data)
