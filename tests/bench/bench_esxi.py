"""ESXi backend figures, run on demand: `.venv/bin/python tests/bench/bench_esxi.py [--repeat 3] [--quick]`.

Starts the vSphere simulator (backends/esxi/lab/vcsim) with the lab plus generated hosts and VMs and prints,
each as a ratio next to its anchor from the same run (issue 11):

1. `gpus` (the backend's inventory on a logged-in session) against the anchor: what `govc object.collect`
   does for the same properties (CreateContainerView, RetrievePropertiesEx + continuations, DestroyView),
   in Go with the govmomi sources the simulator is built from (tests/bench/govc_collect; Debian ships
   govmomi's library but not the govc command); SOAP calls counted on both sides. Goal: <= 1.5x.
   a. each read through the session's view against the anchor keeping its view too (-keep-view): the same
      single RetrievePropertiesEx on both sides;
   b. a session's first read (CreateContainerView + RetrievePropertiesEx, the view kept) against govc as it
      runs (CreateContainerView, RetrievePropertiesEx, DestroyView);
   c. the whole `gpupass gpus NAME --json` (the vCenter named in a config file with its CA), process start to
      exit, in a regular install (regular_install.py), against the anchor as a program that logs in, finds the
      datacenter, reads once and logs out: 6 SOAP calls against 7 (gpupass keeps its view to the logout, which
      ends it; the anchor destroys it); and `gpupass --ca-file FILE gpus URI --json`, which click parses.
2. an assign (a passthrough-active A100 to ml-train): SOAP calls beyond the inventory. Goal: <= 4. Its
   release too, for comparison.
3. the inventory's cost curve over 50/200 hosts x 500/2,000 VMs: calls, milliseconds, per-object cost.
4. a naive pyvmomi traversal (attribute access per object), for scale, on the first size only.
Not collected by pytest (see conftest.py); tests/bench/test_bench_smoke.py runs it small (--quick).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # noqa: E402 - run from a checkout

HERE = Path(__file__).resolve().parent
USER = "administrator@vsphere.local"


def build_anchor(directory: Path) -> Path:
    """go build tests/bench/govc_collect offline, in GOPATH mode, as the simulator is built."""
    from gpupass.backends.esxi.lab.simulator import DEFAULT_GOPATH

    binary = directory / "govc-collect"
    env = dict(os.environ, GO111MODULE="off", GOPATH=os.environ.get("GPUPASS_GOPATH") or DEFAULT_GOPATH,
               CGO_ENABLED="0")
    env.pop("GOFLAGS", None)
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=HERE / "govc_collect", env=env, check=True,
                   capture_output=True, timeout=600)
    return binary


def naive_gpus(si) -> int:
    """What a typical script does: attribute access per object (each one a PropertyCollector call)."""
    from pyVmomi import vim

    content = si.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    found = 0
    for host in view.view:
        name = host.name
        for dev in host.hardware.pciDevice:
            if (dev.classId & 0xFFFF) >> 8 == 0x03:
                found += 1
        for info in host.config.pciPassthruInfo:
            _ = (info.id, info.passthruEnabled, name)
    view.Destroy()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    for vm in view.view:
        _ = (vm.name, vm.runtime.powerState, vm.runtime.host.name, vm.config.firmware, vm.config.hardware.memoryMB)
        for dev in vm.config.hardware.device:
            if isinstance(dev, vim.vm.device.VirtualPCIPassthrough):
                found += 0
    view.Destroy()
    return found


def count_stub(si) -> list[int]:
    counter = [0]
    stub = si._stub
    invoke = stub.InvokeMethod

    def counted(*args, **kwargs):
        counter[0] += 1
        return invoke(*args, **kwargs)

    stub.InvokeMethod = counted
    return counter


def property_spec(backend) -> dict[str, list[str]]:
    """The types and paths the backend's inventory asks for (gpupass.backends.esxi.inventory.properties, the
    graphics properties included)."""
    from gpupass.backends.esxi import inventory as inv
    from gpupass.backends.esxi import vgpu

    return dict(inv.properties(rebind_known=backend.ex_api_version() >= (7, 0),
                               graphics_known=backend.ex_api_version() >= vgpu.GRAPHICS_MIN_API))


def this_checkouts_command() -> tuple[list[str], dict[str, str]]:
    """The `gpupass` script beside this interpreter (an editable install: each start compiles the checkout
    when PYTHONDONTWRITEBYTECODE is set, as on this machine), else the same entry point."""
    script = Path(sys.executable).with_name("gpupass")
    if script.exists():
        return [str(script)], dict(os.environ)
    return [sys.executable, "-c", "import sys; from gpupass.core.cli.entry import main; sys.exit(main())"], \
        dict(os.environ)


def regular_install_command(directory: Path) -> tuple[list[str], dict[str, str]]:
    """`gpupass` of a regular install, compiled as an installer would (regular_install.py, as bench_kvm)."""
    sys.path.insert(0, str(HERE))
    import regular_install

    bin_dir = regular_install.build(directory)
    env = regular_install.clean_env()
    subprocess.run([str(bin_dir / "gpupass"), "plugins"], env=env, capture_output=True, check=True)  # first scan
    return [str(bin_dir / "gpupass")], env


def run_anchor(anchor: Path, sim, spec: dict[str, list[str]], *flags: str) -> dict[str, float]:
    """One run of the anchor program (it logs in, then times only the read, unless timed from outside)."""
    result = subprocess.run(
        [str(anchor), "-u", f"https://{USER}@127.0.0.1:{sim.port}/sdk", "-ca", str(sim.ca_file), "-dc", "Lab",
         "-spec", json.dumps(spec), "-n", "1", *flags],
        env=dict(os.environ, ANCHOR_PASSWORD=sim.password), capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def paired(figures: dict[str, float], name: str, ours: list[float], theirs: list[float]) -> None:
    """Medians of both sides, and the spread of the per-pair ratios (each pair ran back to back, so a busy
    moment of this shared machine weighs on both of its runs)."""
    ratios = sorted(a / b for a, b in zip(ours, theirs, strict=True))
    figures[f"{name}_s"], figures[f"anchor_{name}_s"] = statistics.median(ours), statistics.median(theirs)
    figures[f"{name}_spread"] = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"  # type: ignore[assignment]


def whole_command(sim, anchor: Path, spec: dict[str, list[str]], repeat: int,
                  gpupass: tuple[list[str], dict[str, str]], scratch: Path) -> dict[str, float]:
    """`gpupass gpus NAME --json` from process start to exit, NAME the vCenter in a config file with its CA (as
    `gpupass hosts add` keeps it; the command line click need not parse), against the anchor as a program doing
    the same: log in, find the datacenter, one read, log out (process_calls counts every request it sends); the
    two run in turns. The same with `--ca-file FILE gpus URI` (click parses that command line) is timed too."""
    uri = f"esxi://administrator%40vsphere.local@127.0.0.1:{sim.port}/Lab"
    config = scratch / f"config-{sim.port}.toml"
    config.write_text(f'[hosts.bench-vc]\nuri = "{uri}"\npassword_env = "GPUPASS_PASSWORD"\n'
                      f'ca_file = "{sim.ca_file}"\n', encoding="utf-8")
    program = gpupass[0]
    named, flagged = ["gpus", "bench-vc", "--json"], ["--ca-file", str(sim.ca_file), "gpus", uri, "--json"]
    env = dict(gpupass[1], GPUPASS_PASSWORD=sim.password, GPUPASS_CONFIG=str(config))
    figures: dict[str, float] = {}
    ours, theirs, clicked = [], [], []
    for _ in range(repeat):
        began = time.perf_counter()
        subprocess.run(program + named, env=env, capture_output=True, check=True)
        ours.append(time.perf_counter() - began)
        began = time.perf_counter()
        figures["anchor_command_calls"] = run_anchor(anchor, sim, spec, "-logout")["process_calls"]
        theirs.append(time.perf_counter() - began)
        began = time.perf_counter()
        subprocess.run(program + flagged, env=env, capture_output=True, check=True)
        clicked.append(time.perf_counter() - began)
    paired(figures, "command", ours, theirs)
    figures["command_click_s"] = statistics.median(clicked)
    debug = subprocess.run([*program, "--debug", *named], env=env, capture_output=True, text=True, check=True)
    # every SOAP request is logged, the login's RetrieveServiceContent and Login included (wire.Session.call)
    figures["command_calls"] = sum(1 for line in debug.stderr.splitlines() if "gpupass.esxi: SOAP " in line)
    return figures


def measure(hosts: int, vms: int, repeat: int, anchor: Path | None, naive: bool = False,
            gpupass: tuple[list[str], dict[str, str]] | None = None,
            scratch: Path | None = None) -> dict[str, float]:
    from gpupass.backends.esxi.backend import EsxiBackend
    from gpupass.backends.esxi.lab.simulator import VCSim, lab_config
    from gpupass.core.domain.pci import PciAddress
    from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
    from gpupass.core.plugins import default_registry
    from gpupass.core.service import execute, make_plan
    from gpupass.core.target import Secret, Target, TlsOptions

    figures: dict[str, float] = {"hosts": hosts, "vms": vms}
    with VCSim(lab_config(), scale_hosts=hosts, scale_vms=vms, username=USER) as sim:
        target = Target(uri=f"esxi://administrator%40vsphere.local@127.0.0.1:{sim.port}/Lab",
                        password=Secret(sim.password), tls=TlsOptions(ca_file=str(sim.ca_file)))
        with EsxiBackend(target) as backend:
            backend._root_folder()  # login, service content and datacenter: once per session
            facts = backend.inventory()
            spec = property_spec(backend)
            kept, kept_anchor, first, first_anchor = [], [], [], []
            for _ in range(repeat):  # gpupass and the anchor in turns
                # a. one read through the session's view; the anchor's one read through the view it keeps
                before, began = backend.round_trips, time.perf_counter()
                facts = backend.inventory()
                kept.append(time.perf_counter() - began)
                figures["gpus_calls"] = backend.round_trips - before
                # b. a new session's first read: CreateContainerView (kept) + RetrievePropertiesEx; govc as it runs
                with EsxiBackend(target) as fresh:
                    fresh._root_folder()
                    before, began = fresh.round_trips, time.perf_counter()
                    fresh.inventory()
                    first.append(time.perf_counter() - began)
                    figures["gpus_first_calls"] = fresh.round_trips - before
                if anchor is not None:
                    got = run_anchor(anchor, sim, spec, "-keep-view")
                    kept_anchor.append(got["median_ms"] / 1000)
                    figures["anchor_kept_calls"], figures["anchor_objects"] = got["calls"], got["objects"]
                    got = run_anchor(anchor, sim, spec)
                    first_anchor.append(got["median_ms"] / 1000)
                    figures["anchor_first_calls"] = got["calls"]
            figures["gpus_s"] = statistics.median(kept)
            if anchor is not None:
                paired(figures, "kept", kept, kept_anchor)
                paired(figures, "first", first, first_anchor)
            plan = make_plan(backend, facts, AssignmentRequest("ml-train", (PciAddress.parse("0000:3b:00.0"),)),
                             default_registry())
            assert not plan.blocked, plan.findings
            before = backend.round_trips
            execute(backend, plan)
            figures["assign_calls"] = backend.round_trips - before
            facts = backend.inventory()
            plan = make_plan(backend, facts, ReleaseRequest("ml-train", (PciAddress.parse("0000:3b:00.0"),)),
                             default_registry())
            before = backend.round_trips
            execute(backend, plan)
            figures["release_calls"] = backend.round_trips - before
        if anchor is not None and gpupass is not None:
            figures.update(whole_command(sim, anchor, spec, repeat, gpupass,
                                         scratch or Path(tempfile.gettempdir())))
        if naive:
            si = sim.connect()
            counter = count_stub(si)
            began = time.perf_counter()
            naive_gpus(si)
            figures["naive_s"], figures["naive_calls"] = time.perf_counter() - began, counter[0]
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one small size (CI smoke)")
    args = ap.parse_args(argv)
    sizes = [(2, 10)] if args.quick else [(50, 500), (50, 2000), (200, 500), (200, 2000)]

    with tempfile.TemporaryDirectory() as scratch:
        anchor = build_anchor(Path(scratch))
        # --quick (the CI smoke) runs this checkout's script; the figures come from a regular install
        gpupass = this_checkouts_command() if args.quick else regular_install_command(Path(scratch) / "install")
        rows = [measure(h, v, args.repeat, anchor, naive=(i == 0), gpupass=gpupass, scratch=Path(scratch))
                for i, (h, v) in enumerate(sizes)]

    print("1. gpus against the govc object.collect anchor (same properties, same calls; goal: <= 1.5x)")
    print(f"   medians of {args.repeat} runs, gpupass and the anchor in turns; pairs: the range of the per-pair ratios")
    header = (f"{'hosts':>6} {'VMs':>6} {'objects':>8} {'calls':>6} {'gpupass ms':>11} {'anchor calls':>13} "
              f"{'anchor ms':>10} {'ratio':>7} {'pairs':>10}")

    def row(r: dict[str, float], calls: str, name: str, anchor_calls: str) -> str:
        ours, theirs = r[f"{name}_s"], r[f"anchor_{name}_s"]
        return (f"{r['hosts']:>6.0f} {r['vms']:>6.0f} {r['anchor_objects']:>8.0f} {r[calls]:>6.0f} "
                f"{ours * 1000:>11.1f} {r[anchor_calls]:>13.0f} {theirs * 1000:>10.1f} {ours / theirs:>6.2f}x "
                f"{r[f'{name}_spread']:>10}")

    print("   a. each read of a session through its view (the anchor keeps its view too: -keep-view)")
    print(header)
    for r in rows:
        print(row(r, "gpus_calls", "kept", "anchor_kept_calls"))
    print("   b. a session's first read (gpupass makes its view and keeps it; the anchor, as govc object.collect,")
    print("      makes one and destroys it)")
    print(header)
    for r in rows:
        print(row(r, "gpus_first_calls", "first", "anchor_first_calls"))
    print("   c. the whole command, process start to exit: `gpupass gpus NAME --json` (NAME in the config file, with")
    print("      its CA) against the anchor as a program (log in, datacenter, view, one read, log out); gpupass "
          f"{'of this checkout (--quick)' if args.quick else 'in a regular install'}")
    print(header)
    for r in rows:
        print(row(r, "command_calls", "command", "anchor_command_calls"))
    print("      the same read as `gpupass --ca-file FILE gpus URI --json` (a command line click parses), medians:")
    for r in rows:
        print(f"      at {r['hosts']:.0f} hosts / {r['vms']:.0f} VMs: {r['command_click_s'] * 1000:.1f} ms "
              f"({r['command_click_s'] / r['anchor_command_s']:.2f}x the anchor)")
    print("\n2. assign (and its release): SOAP calls beyond the inventory (goal: <= 4 for the assign)")
    for r in rows:
        print(f"  {r['hosts']:.0f} hosts, {r['vms']:.0f} VMs: assign {r['assign_calls']:.0f}, "
              f"release {r['release_calls']:.0f}")
    print("\n3. inventory cost curve")
    print(f"{'hosts':>6} {'VMs':>6} {'objects':>8} {'ms':>9} {'us per object':>14}")
    for r in rows:
        print(f"{r['hosts']:>6.0f} {r['vms']:>6.0f} {r['anchor_objects']:>8.0f} {r['gpus_s'] * 1000:>9.1f} "
              f"{r['gpus_s'] * 1e6 / r['anchor_objects']:>14.1f}")
    first = rows[0]
    print(f"\n4. naive pyvmomi traversal at {first['hosts']:.0f} hosts, {first['vms']:.0f} VMs: "
          f"{first['naive_calls']:.0f} calls, {first['naive_s'] * 1000:.0f} ms "
          f"({first['naive_s'] / first['gpus_s']:.1f}x gpupass)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
