"""Launcher for gpupass' vSphere API simulator (``backends/esxi/lab/vcsim``).

The simulator is a small Go program around govmomi's simulator library
(Debian: ``golang-go`` + ``golang-github-vmware-govmomi-dev``) with GPUs,
a working ``HostPciPassthruSystem``, ``RebootHost_Task`` and ESXi's
passthrough rules.  This module builds it (cached by a hash of the Go
sources), creates a throw-away CA and server certificate for 127.0.0.1,
writes the inventory JSON and runs the process until :meth:`VCSim.stop`.

Only the standard library and ``cryptography`` are used here; pyvmomi is
imported lazily by :meth:`VCSim.connect`.

Example::

    from gpupass.backends.esxi.lab.simulator import VCSim, lab_config

    with VCSim(lab_config()) as sim:
        si = sim.connect()                  # pyvmomi ServiceInstance, CA trusted
        ...                                 # or: SmartConnect(host=sim.host, port=sim.port,
                                            #       user=sim.username, pwd=sim.password,
                                            #       sslContext=sim.ssl_context())
        sim.disconnect_host("esx02.lab.local", after="ReconfigVM_Task")
"""

from __future__ import annotations

import base64
import copy
import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import selectors
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

__all__ = [
    "GIB",
    "LAB_BARS",
    "SimulatorError",
    "VCSim",
    "build_binary",
    "cache_dir",
    "lab_bars",
    "lab_config",
    "P40_VGPU_TYPES",
    "make_tls_material",
    "source_hash",
]

VCSIM_SOURCE_DIR = Path(__file__).resolve().parent / "vcsim"
DEFAULT_GOPATH = "/usr/share/gocode"
URL_PREFIX = "GPUPASS_VCSIM_URL="
GIB = 1024**3
MIB = 1024**2


class SimulatorError(RuntimeError):
    """The simulator could not be built, started or controlled."""


# --------------------------------------------------------------------------
# build


def cache_dir() -> Path:
    """``$GPUPASS_CACHE_DIR`` or ``~/.cache/gpupass``."""
    env = os.environ.get("GPUPASS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "gpupass"


def _go_sources(src: Path = VCSIM_SOURCE_DIR) -> list[Path]:
    return sorted(p for p in src.glob("*.go") if not p.name.endswith("_test.go"))


def source_hash(src: Path = VCSIM_SOURCE_DIR) -> str:
    """SHA-256 over the simulator's .go files (names and contents)."""
    h = hashlib.sha256()
    for p in _go_sources(src):
        h.update(p.name.encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def check_toolchain(go: str | None = None, gopath: str | None = None) -> None:
    """Go and Debian's govmomi sources, checked before a build so that a missing one is a hint, not compiler
    output."""
    go = go or shutil.which("go") or "/usr/lib/go/bin/go"
    if not Path(go).exists() and not shutil.which(go):
        raise SimulatorError("the Go toolchain is missing (Debian: apt-get install golang-go "
                             "golang-github-vmware-govmomi-dev)")
    gopath = gopath or os.environ.get("GPUPASS_GOPATH") or DEFAULT_GOPATH
    if not (Path(gopath) / "src" / "github.com" / "vmware" / "govmomi" / "simulator").is_dir():
        raise SimulatorError(f"Debian's govmomi sources are missing: no {gopath}/src/github.com/vmware/govmomi/"
                             "simulator (Debian: apt-get install golang-github-vmware-govmomi-dev, or point "
                             "GPUPASS_GOPATH at a GOPATH that has them)")


def build_binary(*, go: str | None = None, gopath: str | None = None, force: bool = False,
                 timeout: float = 600) -> Path:
    """Build the simulator into the cache dir (once per source hash); return its path.

    Builds offline in GOPATH mode: ``GO111MODULE=off GOPATH=/usr/share/gocode go build``
    (``$GPUPASS_GOPATH`` overrides the GOPATH).  Concurrent callers serialise on a lock file.
    """
    go = go or shutil.which("go") or "/usr/lib/go/bin/go"
    if not Path(go).exists() and not shutil.which(go):
        raise SimulatorError("the Go toolchain is missing (Debian: apt-get install golang-go "
                             "golang-github-vmware-govmomi-dev)")
    gopath = gopath or os.environ.get("GPUPASS_GOPATH") or DEFAULT_GOPATH
    out_dir = cache_dir() / "vcsim"
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / f"gpupass-vcsim-{source_hash()[:20]}"
    if binary.exists() and not force:
        return binary
    with open(out_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists() and not force:
            return binary
        env = dict(os.environ, GO111MODULE="off", GOPATH=gopath, CGO_ENABLED="0")
        env.pop("GOFLAGS", None)
        if not any(env.get(k) for k in ("GOCACHE", "XDG_CACHE_HOME", "HOME")):
            env["GOCACHE"] = str(cache_dir() / "go-build")  # Go has no default cache dir then
        tmp = out_dir / f".{binary.name}.{os.getpid()}.tmp"
        try:
            proc = subprocess.run([go, "build", "-o", str(tmp), "."], cwd=VCSIM_SOURCE_DIR, env=env,
                                  capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0:
                raise SimulatorError(f"go build failed ({proc.returncode}):\n{proc.stderr.strip()}")
            os.replace(tmp, binary)
        finally:
            tmp.unlink(missing_ok=True)
    return binary


# --------------------------------------------------------------------------
# TLS


def make_tls_material(directory: Path, host: str = "127.0.0.1") -> dict[str, Path]:
    """Write a throw-away CA and a server certificate for *host* (+ localhost).

    Returns ``{"ca": ..., "cert": ..., "key": ...}``.  The caller trusts ``ca``
    explicitly; nothing here turns certificate verification off.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"gpupass vcsim test CA {secrets.token_hex(4)}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    directory.mkdir(parents=True, exist_ok=True)
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server-key.pem"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


# --------------------------------------------------------------------------
# lab inventory

#: BARs are not part of the vSphere API; they live here for the planner's tests and the simulator's MMIO check.
#: PCI id -> (size in bytes, width in bits) of BAR0, the large BAR and BAR3. Sizes: field notes section 3 unless said.
#: Widths matter: with use64bitMMIO only the 64-bit BARs count against pciPassthru.64bitMMIOSizeGB (real ESXi output,
#: tests/fixtures/real/esxi/l4-esxi-firmware-could-not-allocate-pci-mmio.md; see checkMMIO in vcsim/passthru.go).
LAB_BARS: dict[str, list[tuple[int, int]]] = {
    # H100 SXM5: no published output gives its widths; 32/64/64 is NVIDIA's usual layout, assumed (another Hopper,
    # the H20, has a 64-bit BAR0: NVIDIA/nvtrust#128, tests/fixtures/real/kvm/nvtrust-128-h20-server.txt).
    "10de:2330": [(16 * MIB, 32), (128 * GIB, 64), (32 * MIB, 64)],
    # A100 PCIe 80GB (same layout as A100 80GB SXM4). Widths as lspci shows them for the A100 SXM4 80GB
    # (tests/fixtures/real/kvm/linux-pci-2021-8x-a100-80gb-guest-bars.txt: "32-bit, non-prefetchable" [size=16M],
    # "64-bit, prefetchable" [size=128G] and [size=32M]); assumed the same for the PCIe card.
    "10de:20b5": [(16 * MIB, 32), (128 * GIB, 64), (32 * MIB, 64)],
    # T4: the product brief gives sizes only; widths 32/64/64 assumed (NVIDIA's usual layout).
    "10de:1eb8": [(16 * MIB, 32), (256 * MIB, 64), (32 * MIB, 64)],
    # Tesla P40, sizes and widths from a real vmware.log (tests/fixtures/real/esxi/p40-vmware-log-bars.log):
    # barIndex 0 "flags 0" (a 32-bit memory BAR), barIndex 1 and 3 "flags 12" (0b1100: the PCI BAR type bits
    # 2:1 = 10b, 64-bit, and bit 3, prefetchable).
    "10de:1b38": [(16 * MIB, 32), (32 * GIB, 64), (32 * MIB, 64)],
}


def lab_bars(pci_id: str) -> list[dict[str, int]]:
    """The ``bars`` of a lab GPU as the simulator's config takes them."""
    return [{"size": size, "bits": bits} for size, bits in LAB_BARS[pci_id]]


#: The vGPU profiles of a Tesla P40 in the lab: name, framebuffer (MiB), max instances per GPU and class. The types,
#: framebuffers and max instances are the real `mdevctl types` of a P40 (tests/fixtures/real/sharing/
#: mdevctl-types-tesla-p40.txt: "GRID P40-4C ... framebuffer=4096M ... max_instance=6"); ESXi names a type "grid_"
#: + the board + "-" + the type in lower case (vgpu.go's header has the sources); the class is the API's
#: VirtualMachineVgpuProfileInfo.profileClass (C: compute; the B series has no class there: not listed).
P40_VGPU_TYPES: list[tuple[str, int, int, str]] = [
    ("grid_p40-2b", 2048, 12, ""),
    ("grid_p40-2b4", 2048, 12, ""),
    ("grid_p40-1b4", 1024, 24, ""),
    ("grid_p40-4c", 4096, 6, "compute"),
    ("grid_p40-6c", 6144, 4, "compute"),
    ("grid_p40-8c", 8192, 3, "compute"),
]


def _gpu(address: str, device_id: int, name: str, sub_device: int, *, enabled: bool, active: bool,
         functions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "address": address, "vendor_id": "0x10de", "device_id": f"0x{device_id:04x}",
        "sub_vendor_id": "0x10de", "sub_device_id": f"0x{sub_device:04x}",
        "vendor_name": "NVIDIA Corporation", "device_name": name, "class_id": "0x0302",
        "passthru_capable": True, "passthru_enabled": enabled, "passthru_active": active,
        # hidden from the vSphere API; the simulator uses them for its power-on MMIO check
        "bars": lab_bars(f"10de:{device_id:04x}"),
        "functions": functions or [],
    }


def _p40(address: str) -> dict[str, Any]:
    """A Tesla P40 (10de:1b38, 24 GiB) with the NVIDIA vGPU manager: it offers P40_VGPU_TYPES while it is not
    passthrough-active and its host's graphics type is shared direct."""
    gpu = _gpu(address, 0x1b38, "GP102GL [Tesla P40]", 0x11d9, enabled=False, active=False)
    gpu["memory_mb"] = 24 * 1024
    gpu["vgpu_types"] = [{"name": name, "framebuffer_mb": fb, "max_instances": most, "class": cls}
                         for name, fb, most, cls in P40_VGPU_TYPES]
    return gpu


def lab_config() -> dict[str, Any]:
    """The lab: a vCenter with two hosts in one cluster and a vGPU host in another.

    * ``esx01.lab.local``: H100 SXM5 (10de:2330, 128 GiB BAR) at 0000:3b:00.0, passthrough
      enabled and active (``cad-ws`` holds it); T4 (10de:1eb8) at 0000:d8:00.0, not enabled.
      It can switch passthrough without a reboot (``HostCapability.deviceRebindWithoutRebootSupported``,
      vSphere 7.0+): ``UpdatePassthruConfig`` applies at once unless ``applyNow=False``.
    * ``esx02.lab.local``: two A100 PCIe 80GB (10de:20b5) at 0000:3b:00.0 (enabled+active)
      and 0000:af:00.0 (not enabled).  It cannot: a change becomes active at the next reboot.
    * ``esx03.lab.local`` (cluster ``vgpu-cluster``): two Tesla P40 (10de:1b38) at 0000:3b:00.0 and 0000:af:00.0
      with NVIDIA's vGPU manager; host graphics "shared direct" (HostGraphicsConfig), assignment policy
      "performance". They offer the P40 vGPU profiles (:data:`P40_VGPU_TYPES`). ``vdi01`` (on, 8 GiB, all memory
      reserved) runs a ``grid_p40-2b`` vGPU, which ESXi placed on the first P40; ``ml-vgpu`` (off, EFI, 32 GiB, all
      reserved) holds a ``grid_p40-4c`` (placed only at power-on); ``infer01`` (off, EFI, 16 GiB) has none.
    * VMs: ``ml-train`` (off, EFI, 64 GiB, esx02), ``render01`` (off, BIOS, 16 GiB, esx02),
      ``web01`` (on, esx01), ``cad-ws`` (off, EFI, 32 GiB, full reservation, holds the H100,
      64-bit MMIO 256 GB), ``snap01`` (off, EFI, with snapshot ``before-upgrade``, esx02).

    Each GPU carries its BARs (``bars``: size and width, from :data:`LAB_BARS`); they never reach
    the vSphere API, but the simulator refuses to power on a VM whose passthrough BARs exceed
    917504 pages of 4 KiB (3.5 GiB) without ``pciPassthru.use64bitMMIO=TRUE`` (the real limit in
    Dell KB 000199172), and with it, BARs over 16 GB without EFI firmware or 64-bit BARs beyond
    ``pciPassthru.64bitMMIOSizeGB`` (an H100 or A100 80GB needs 256).
    """
    return copy.deepcopy({
        "mode": "vcenter",
        "datacenter": "Lab",
        "datastore": "datastore1",
        "clusters": ["gpu-cluster", "vgpu-cluster"],
        "hosts": [
            {
                "name": "esx01.lab.local", "cluster": "gpu-cluster", "memory_mb": 1024 * 1024,
                "rebind_without_reboot": True,
                "gpus": [
                    _gpu("0000:3b:00.0", 0x2330, "GH100 [H100 SXM5 80GB]", 0x16c1, enabled=True, active=True),
                    _gpu("0000:d8:00.0", 0x1eb8, "TU104GL [Tesla T4]", 0x12a2, enabled=False, active=False),
                ],
            },
            {
                "name": "esx02.lab.local", "cluster": "gpu-cluster", "memory_mb": 1024 * 1024,
                "gpus": [
                    _gpu("0000:3b:00.0", 0x20b5, "GA100 [A100 PCIe 80GB]", 0x1533, enabled=True, active=True),
                    _gpu("0000:af:00.0", 0x20b5, "GA100 [A100 PCIe 80GB]", 0x1533, enabled=False, active=False),
                ],
            },
            {
                "name": "esx03.lab.local", "cluster": "vgpu-cluster", "memory_mb": 512 * 1024,
                "graphics": {"default_type": "sharedDirect", "assignment_policy": "performance"},
                "gpus": [_p40("0000:3b:00.0"), _p40("0000:af:00.0")],
            },
        ],
        "vms": [
            {"name": "ml-train", "host": "esx02.lab.local", "power_state": "poweredOff", "firmware": "efi",
             "guest_id": "ubuntu64Guest", "num_cpus": 16, "memory_mb": 64 * 1024},
            {"name": "render01", "host": "esx02.lab.local", "power_state": "poweredOff", "firmware": "bios",
             "guest_id": "windows9Server64Guest", "num_cpus": 8, "memory_mb": 16 * 1024},
            {"name": "web01", "host": "esx01.lab.local", "power_state": "poweredOn", "firmware": "bios",
             "guest_id": "ubuntu64Guest", "num_cpus": 2, "memory_mb": 4 * 1024},
            {"name": "cad-ws", "host": "esx01.lab.local", "power_state": "poweredOff", "firmware": "efi",
             "guest_id": "windows9_64Guest", "num_cpus": 8, "memory_mb": 32 * 1024,
             "memory_reservation_mb": 32 * 1024, "memory_reservation_locked_to_max": True,
             "extra_config": {"pciPassthru.use64bitMMIO": "TRUE", "pciPassthru.64bitMMIOSizeGB": "256"},
             "passthrough": ["0000:3b:00.0"]},
            {"name": "snap01", "host": "esx02.lab.local", "power_state": "poweredOff", "firmware": "efi",
             "guest_id": "ubuntu64Guest", "num_cpus": 4, "memory_mb": 8 * 1024, "snapshot": "before-upgrade"},
            {"name": "vdi01", "host": "esx03.lab.local", "power_state": "poweredOn", "firmware": "efi",
             "guest_id": "windows9_64Guest", "num_cpus": 4, "memory_mb": 8 * 1024,
             "memory_reservation_mb": 8 * 1024, "memory_reservation_locked_to_max": True, "vgpus": ["grid_p40-2b"]},
            {"name": "ml-vgpu", "host": "esx03.lab.local", "power_state": "poweredOff", "firmware": "efi",
             "guest_id": "ubuntu64Guest", "num_cpus": 8, "memory_mb": 32 * 1024,
             "memory_reservation_mb": 32 * 1024, "memory_reservation_locked_to_max": True, "vgpus": ["grid_p40-4c"]},
            {"name": "infer01", "host": "esx03.lab.local", "power_state": "poweredOff", "firmware": "efi",
             "guest_id": "ubuntu64Guest", "num_cpus": 8, "memory_mb": 16 * 1024},
        ],
    })


# --------------------------------------------------------------------------
# process


class VCSim:
    """One running simulator process.

    Attributes after :meth:`start`: ``url`` (``https://127.0.0.1:PORT/sdk``), ``host``,
    ``port``, ``username``, ``password``, ``ca_file`` (PEM of the CA to trust), ``pid``.
    """

    def __init__(self, config: dict[str, Any] | None = None, *, scale_hosts: int = 0, scale_vms: int = 0,
                 scale_gpus_per_host: int = 0, api_version: str = "7.0.3.0", username: str = "gpupass",
                 password: str | None = None, binary: str | os.PathLike[str] | None = None,
                 startup_timeout: float = 60.0, build_timeout: float = 600.0) -> None:
        self.config = copy.deepcopy(config) if config is not None else {"mode": "vcenter", "hosts": []}
        self.scale_hosts, self.scale_vms, self.scale_gpus_per_host = scale_hosts, scale_vms, scale_gpus_per_host
        self.api_version = api_version
        self.username = username
        self.password = password or secrets.token_urlsafe(18)
        self.binary = Path(binary) if binary else None
        self.startup_timeout, self.build_timeout = startup_timeout, build_timeout
        self.url: str | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.ca_file: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_path: Path | None = None
        self._drainer: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> "VCSim":
        if self._proc is not None:
            raise SimulatorError("already started")
        binary = self.binary or build_binary(timeout=self.build_timeout)
        self._workdir = Path(tempfile.mkdtemp(prefix="gpupass-vcsim-"))
        os.chmod(self._workdir, 0o700)
        tls = make_tls_material(self._workdir / "tls", self.host)
        self.ca_file = tls["ca"]
        cfg = dict(self.config, username=self.username, password=self.password)
        cfg_path = self._workdir / "config.json"
        fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f, indent=1)
        cmd = [str(binary), "-l", f"{self.host}:0", "-api-version", self.api_version,
               "-tlscert", str(tls["cert"]), "-tlskey", str(tls["key"]), "-config", str(cfg_path),
               "-exit-on-stdin-eof"]
        if self.scale_hosts:
            cmd += ["-scale-hosts", str(self.scale_hosts)]
        if self.scale_vms:
            cmd += ["-scale-vms", str(self.scale_vms)]
        if self.scale_gpus_per_host:
            cmd += ["-scale-gpus-per-host", str(self.scale_gpus_per_host)]
        self._log_path = self._workdir / "vcsim.log"
        with open(self._log_path, "wb") as log:
            # stdin is a pipe we never write: if this process dies, the simulator sees EOF and exits
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                          cwd=self._workdir, start_new_session=True)
        try:
            self.url = self._read_url()
        except BaseException:
            self.stop()
            raise
        parsed = urllib.parse.urlsplit(self.url)
        self.port = parsed.port
        self._drainer = threading.Thread(target=self._drain, args=(self._proc.stdout.fileno(),),
                                         name="vcsim-stdout", daemon=True)
        self._drainer.start()
        return self

    def _read_url(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SimulatorError(f"simulator did not report its URL within {self.startup_timeout}s"
                                         f"{self._log_tail()}")
                if sel.select(left):
                    chunk = os.read(self._proc.stdout.fileno(), 4096)
                    if not chunk:
                        self._proc.wait(timeout=5)
                        raise SimulatorError(f"simulator exited with {self._proc.returncode}{self._log_tail()}")
                    buf += chunk
        line = buf.split(b"\n", 1)[0].decode().strip()
        if not line.startswith(URL_PREFIX):
            raise SimulatorError(f"unexpected first line from simulator: {line!r}{self._log_tail()}")
        return line[len(URL_PREFIX):]

    @staticmethod
    def _drain(fd: int) -> None:
        # keeps the pipe from filling; ends at EOF, i.e. when the process exits
        try:
            while os.read(fd, 65536):
                pass
        except OSError:
            pass

    def _log_tail(self) -> str:
        try:
            text = self._log_path.read_text(errors="replace") if self._log_path else ""
        except OSError:
            return ""
        return "\n--- simulator log ---\n" + text[-4000:] if text else ""

    def log(self) -> str:
        """The simulator's stderr so far."""
        try:
            return self._log_path.read_text(errors="replace") if self._log_path else ""
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process (by PID), SIGKILL after *timeout*; remove the work dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=timeout)
            drainer, self._drainer = self._drainer, None
            if drainer is not None:
                drainer.join(timeout=5)
            if proc.stdout is not None and (drainer is None or not drainer.is_alive()):
                proc.stdout.close()
            if proc.stdin is not None:
                proc.stdin.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "VCSim":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients ------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only the simulator's CA."""
        if self.ca_file is None:
            raise SimulatorError("not started")
        # with cafile given, create_default_context loads no system CAs
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))

    def connect(self, **kwargs: Any) -> Any:
        """pyvmomi ``SmartConnect`` to the simulator with the CA trusted (verification on)."""
        from pyVim.connect import SmartConnect  # lazy: pyvmomi is an optional dependency

        return SmartConnect(host=self.host, port=self.port, user=self.username, pwd=self.password,
                            sslContext=self.ssl_context(), **kwargs)

    # -- test control (see vcsim/http.go) -----------------------------------
    def _control(self, method: str, path: str, **query: str) -> Any:
        if self.port is None:
            raise SimulatorError("not started")
        q = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        url = f"https://{self.host}:{self.port}{path}" + (f"?{q}" if q else "")
        req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raise SimulatorError(f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')}") from e

    def disconnect_host(self, name: str, after: str | list[str] | None = None) -> Any:
        """Make host *name* vanish now, or (with *after*) when the next call of that SOAP method
        touching the host arrives — that call then fails with HostNotConnected."""
        if isinstance(after, (list, tuple)):
            after = ",".join(after)
        return self._control("POST", "/gpupass/disconnect", host=name, after=after)

    def drop_reply(self, method: str, skip: int = 0) -> Any:
        """The next SOAP call named *method* (after *skip* answered ones) is carried out, then its connection is
        closed unanswered: a reply lost after the fact (see vcsim/http.go)."""
        return self._control("POST", "/gpupass/drop-reply", call=method, skip=str(skip) if skip else None)

    def hold(self, method: str, skip: int = 0) -> Any:
        """The next SOAP call named *method* (after *skip* answered ones) waits, not yet carried out nor answered,
        until release()."""
        return self._control("POST", "/gpupass/hold", call=method, skip=str(skip) if skip else None)

    def slow_task(self, method: str, seconds: float, skip: int = 0) -> Any:
        """The next call of *method* (one answered with a Task, e.g. ReconfigVM_Task; after *skip* served as usual)
        gets its task at once, but the task stays queued for *seconds* before it runs and carries the call out (a busy
        vCenter's task queue; see vcsim/http.go): a client that stops waiting for it meanwhile does not stop it."""
        return self._control("POST", "/gpupass/slow-task", call=method, seconds=f"{seconds:g}",
                             skip=str(skip) if skip else None)

    def drip(self, method: str, interval: float, size: int = 1, skip: int = 0) -> Any:
        """The next call of *method* (after *skip* served as usual) is carried out as usual and its answer sent *size*
        bytes every *interval* seconds (see vcsim/http.go): a host answering too slowly, each read well within a
        socket timeout longer than *interval*."""
        return self._control("POST", "/gpupass/drip", call=method, interval=f"{interval:g}", bytes=str(size),
                             skip=str(skip) if skip else None)

    def held(self) -> str:
        """The SOAP method of the call waiting at a hold now ("" when none)."""
        return str(self._control("GET", "/gpupass/held")["held"])

    def release(self, discard: bool = False) -> Any:
        """Let the held call go: carried out and answered, or with *discard* dropped unanswered without being
        carried out (a request lost on the way)."""
        return self._control("POST", "/gpupass/release", discard="1" if discard else None)

    def restart(self, carried: bool = False) -> Any:
        """The endpoint killed and started again at once with its inventory (vcsim/http.go, /gpupass/restart): the
        held call is lost with it, or with *carried* was carried out first; its connection closes unanswered and
        every session seen so far is gone (NotAuthenticated)."""
        return self._control("POST", "/gpupass/restart", carried="1" if carried else None)

    def reconnect_host(self, name: str) -> Any:
        return self._control("POST", "/gpupass/reconnect", host=name)

    def state(self) -> Any:
        """Hosts, passthrough devices (enabled/active/owner) and connection state, as JSON."""
        return self._control("GET", "/gpupass/state")


# --------------------------------------------------------------------------
# manual use: python -m gpupass.backends.esxi.lab.simulator [--config FILE | --empty] [--scale-hosts N ...]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m gpupass.backends.esxi.lab.simulator",
                                 description="Run the gpupass vSphere simulator until Ctrl-C.")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--config", help="inventory JSON (default: the lab, see lab_config())")
    src.add_argument("--empty", action="store_true", help="start from an empty vCenter (use with --scale-*)")
    ap.add_argument("--scale-hosts", type=int, default=0)
    ap.add_argument("--scale-vms", type=int, default=0)
    ap.add_argument("--scale-gpus-per-host", type=int, default=0)
    ap.add_argument("--api-version", default="7.0.3.0")
    args = ap.parse_args(argv)
    if args.config:
        config = json.loads(Path(args.config).read_text())
    elif args.empty:
        config = {"mode": "vcenter", "hosts": []}
    else:
        config = lab_config()
    sim = VCSim(config, scale_hosts=args.scale_hosts, scale_vms=args.scale_vms,
                scale_gpus_per_host=args.scale_gpus_per_host, api_version=args.api_version)
    with sim:
        print(f"url={sim.url}\nuser={sim.username}\npassword={sim.password}\nca={sim.ca_file}\npid={sim.pid}",
              flush=True)
        try:
            while sim._proc is not None and sim._proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
