"""The simulator launcher's pure-Python parts (no Go toolchain, no pyvmomi needed)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys

import pytest
from cryptography.exceptions import InvalidSignature

from gpupass.backends.esxi.lab import simulator
from gpupass.backends.esxi.lab.simulator import GIB, LAB_BARS, MIB, lab_config, make_tls_material, source_hash


def test_module_does_not_import_pyvmomi():
    code = "import sys, gpupass.backends.esxi.lab.simulator; print(any(m.startswith('pyVmomi') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_lab_config_is_the_lab():
    cfg = lab_config()
    json.dumps(cfg)  # serialisable as the -config file
    gpus = {(h["name"], g["address"]): g for h in cfg["hosts"] for g in h["gpus"]}
    ids = sorted(g["device_id"] for g in gpus.values())
    assert ids == ["0x1b38", "0x1b38", "0x1eb8", "0x20b5", "0x20b5", "0x2330"]
    h100 = gpus[("esx01.lab.local", "0000:3b:00.0")]
    assert h100["device_id"] == "0x2330"
    assert h100["bars"] == [{"size": 16 * MIB, "bits": 32}, {"size": 128 * GIB, "bits": 64},
                            {"size": 32 * MIB, "bits": 64}]
    assert LAB_BARS["10de:2330"][1] == (128 * GIB, 64)
    vms = {v["name"]: v for v in cfg["vms"]}
    assert set(vms) == {"ml-train", "render01", "web01", "cad-ws", "snap01", "vdi01", "ml-vgpu", "infer01"}
    assert vms["vdi01"]["vgpus"] == ["grid_p40-2b"] and vms["vdi01"]["power_state"] == "poweredOn"
    assert (vms["ml-train"]["power_state"], vms["ml-train"]["firmware"], vms["ml-train"]["memory_mb"]) == (
        "poweredOff", "efi", 65536)
    assert (vms["render01"]["firmware"], vms["render01"]["memory_mb"]) == ("bios", 16384)
    assert vms["web01"]["power_state"] == "poweredOn"
    assert vms["cad-ws"]["passthrough"] == ["0000:3b:00.0"] and vms["cad-ws"]["host"] == "esx01.lab.local"
    assert vms["snap01"]["snapshot"]
    assert lab_config() is not cfg and lab_config() == cfg  # a fresh copy each time


def test_tls_material_verifies_only_against_its_ca(tmp_path):
    from cryptography import x509

    paths = make_tls_material(tmp_path / "a")
    other = make_tls_material(tmp_path / "b")
    assert (paths["key"].stat().st_mode & 0o777) == 0o600
    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    cert.verify_directly_issued_by(ca)
    with pytest.raises((ValueError, TypeError, InvalidSignature)):
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(other["ca"].read_bytes()))
    ssl.create_default_context(cafile=str(paths["ca"]))  # loads as a trust anchor


def test_source_hash_tracks_the_go_sources(tmp_path):
    for name in ("main.go", "extra.go"):
        (tmp_path / name).write_text(f"package main // {name}\n")
    first = source_hash(tmp_path)
    assert source_hash(tmp_path) == first
    (tmp_path / "extra.go").write_text("package main // changed\n")
    assert source_hash(tmp_path) != first
    assert len(source_hash()) == 64


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUPASS_CACHE_DIR", str(tmp_path))
    assert simulator.cache_dir() == tmp_path
