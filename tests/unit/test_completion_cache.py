"""The names `gpus`, `vms` and `status` keep for shell completion (gpupass.core.cli.complete): one file per host,
named by a checksum of the host, which records its host so that another host's names are never offered."""

from __future__ import annotations

import json
from types import SimpleNamespace

from gpupass.core.cli import complete


def _facts(vm: str) -> SimpleNamespace:
    return SimpleNamespace(vms=[SimpleNamespace(name=vm)], gpus=[])


def test_names_are_kept_per_host_and_read_back():
    complete.remember("qemu+ssh://a/system", _facts("vm-a"))
    complete.remember("qemu+ssh://b/system", _facts("vm-b"))
    assert complete._names("qemu+ssh://a/system", "vms") == ["vm-a"]
    assert complete._names("qemu+ssh://b/system", "vms") == ["vm-b"]


def test_a_file_recording_another_host_is_not_this_hosts_names():
    """Two hosts whose names share a checksum: the file holds the last one read, and the other gets no names."""
    complete.remember("qemu+ssh://a/system", _facts("vm-a"))
    path = complete._cache_file("qemu+ssh://a/system")
    path.write_text(json.dumps({"host": "qemu+ssh://other/system", "vms": ["vm-other"], "gpus": []}))
    assert complete._names("qemu+ssh://a/system", "vms") == []


def test_the_same_names_again_are_not_written_again_and_new_ones_are():
    complete.remember("qemu+ssh://a/system", _facts("vm-a"))
    path = complete._cache_file("qemu+ssh://a/system")
    written = path.stat()
    complete.remember("qemu+ssh://a/system", _facts("vm-a"))
    again = path.stat()  # a write replaces the file (a new one renamed over it): another inode
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    complete.remember("qemu+ssh://a/system", _facts("vm-renamed"))
    assert complete._names("qemu+ssh://a/system", "vms") == ["vm-renamed"]
