"""Snapshot files: written private and whole; a path or disk that cannot take one, or a damaged file, is a
clean error with the documented exit code, never a traceback."""

import json
import os
import stat

import pytest

from support.cli import gpupass


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("snap") / "lab-kvm.json"
    gpupass("snapshot", "lab-kvm", "-o", str(path))
    return path


def test_a_snapshot_is_private_even_over_a_readable_file(tmp_path, good):
    assert stat.S_IMODE(good.stat().st_mode) == 0o600
    path = tmp_path / "old.json"
    path.write_text("old")
    os.chmod(path, 0o644)
    gpupass("snapshot", "lab-kvm", "-o", str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and json.loads(path.read_text())["platform"] == "kvm"
    assert [p.name for p in tmp_path.iterdir()] == ["old.json"]  # no temporary file left beside it


@pytest.mark.parametrize("target, code, message", [
    ("/nonexistent/x.json", 2, "cannot write /nonexistent/x.json: the folder /nonexistent does not exist"),
    ("/dev/full", 1, "writing snapshot /dev/full failed: No space left on device"),
])
def test_a_place_that_cannot_take_the_file_is_a_clean_error(target, code, message):
    result = gpupass("snapshot", "lab-kvm", "-o", target, expect=code)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # written in place, never replaced by a file


def test_export_to_a_missing_directory_is_a_clean_error():
    result = gpupass("export", "lab-kvm", "-o", "/nonexistent/gpus.yaml", expect=2)
    assert "cannot write export file /nonexistent/gpus.yaml" in result.stderr


def _damaged(document):
    facts = document["facts"]
    yield "truncated", None
    yield "not utf-8", b"\xff\xfe{}"
    yield "deep", "[" * 100000 + "]" * 100000
    yield "facts missing", {**document, "facts": None}
    yield "platform a number", {**document, "platform": 7}
    yield "no vms", {**document, "facts": {k: v for k, v in facts.items() if k != "vms"}}
    yield "memory a string", {**document, "facts": {**facts, "vms": [{**facts["vms"][0], "memory_bytes": "16G"}]}}
    yield "bad address", {**document, "facts": {**facts, "gpus": [{**facts["gpus"][0], "function": {
        **facts["gpus"][0]["function"], "address": "zz:zz"}}]}}
    yield "bars not a list", {**document, "facts": {**facts, "gpus": [{**facts["gpus"][0], "function": {
        **facts["gpus"][0]["function"], "bars": 5}}]}}
    # Numbers of the right type and the wrong sign or width: sizes, counts and PCI ids are never below 0.
    yield "memory negative", {**document, "facts": {**facts, "vms": [{**facts["vms"][0], "memory_bytes": -1}]}}
    yield "snapshots negative", {**document, "facts": {**facts, "vms": [{**facts["vms"][0], "snapshots": -3}]}}
    yield "vendor id too wide", {**document, "facts": {**facts, "gpus": [{**facts["gpus"][0], "function": {
        **facts["gpus"][0]["function"], "vendor_id": 0x10000}}]}}
    yield "power state unknown", {**document, "facts": {**facts, "vms": [{**facts["vms"][0], "power_state": "?"}]}}
    yield "domain xml broken", {**document, "backend_state": {"domain_xml": {
        name: "<domain" for name in document["backend_state"]["domain_xml"]}}}
    yield "domain xml missing", {**document, "backend_state": {"domain_xml": []}}


def test_damaged_snapshots_are_usage_errors(tmp_path, good):
    document = json.loads(good.read_text())
    for label, damaged in _damaged(document):
        path = tmp_path / f"{label.replace(' ', '-')}.json"
        if damaged is None:
            path.write_text(good.read_text()[:200])
        elif isinstance(damaged, bytes):
            path.write_bytes(damaged)
        else:
            path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
        commands = [["plan", str(path), "ml-train", "42:00.0", "--json"]]
        if not label.startswith("domain"):  # the facts are read by every command, backend_state by planners
            commands.append(["gpus", str(path)])
        for args in commands:
            result = gpupass(*args, expect=2)
            assert "Traceback" not in result.stderr, (label, result.stderr)
            said = result.stderr + result.stdout
            assert "snapshot" in said and ("damaged" in said or "cannot read" in said), (label, said)
            if label == "memory negative":
                assert "facts.vms[0].memory_bytes is -1, which is below 0" in said, said
