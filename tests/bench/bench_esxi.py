"""ESXi backend figures, run on demand: `.venv/bin/python tests/bench/bench_esxi.py [--hosts 50 --vms 500]`.

Starts the vSphere simulator with the lab plus N generated hosts and M generated VMs, then measures `gpus`
two ways: the backend's inventory (a ContainerView + one RetrievePropertiesEx, with continuations) and a
naive pyvmomi traversal written the way most scripts do it (for each host, read hardware.pciDevice and
config.pciPassthruInfo by attribute; for each VM, read name, runtime, config by attribute). SOAP round trips
are counted on the stub for both (deterministic); wall times are the median of --repeat runs.
Not collected by pytest (see conftest.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # noqa: E402 - run from a checkout


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--vms", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    from gpupass.backends.esxi.backend import EsxiBackend
    from gpupass.backends.esxi.simulator import VCSim, lab_config
    from gpupass.core.target import Secret, Target, TlsOptions

    with VCSim(lab_config(), scale_hosts=args.hosts, scale_vms=args.vms) as sim:
        target = Target(uri=f"esxi://{sim.username}@127.0.0.1:{sim.port}/Lab", password=Secret(sim.password),
                        tls=TlsOptions(ca_file=str(sim.ca_file)))
        ours_rt, ours_t, gpus, vms = [], [], 0, 0
        for _ in range(args.repeat):
            with EsxiBackend(target) as backend:
                start = time.perf_counter()
                facts = backend.inventory()
                ours_t.append(time.perf_counter() - start)
                ours_rt.append(backend.round_trips)
                gpus, vms = len(facts.gpus), len(facts.vms)
        naive_rt, naive_t = [], []
        for _ in range(args.repeat):
            si = sim.connect()
            counter = count_stub(si)
            start = time.perf_counter()
            naive_gpus(si)
            naive_t.append(time.perf_counter() - start)
            naive_rt.append(counter[0])
        print(f"vCenter simulator: lab + {args.hosts} hosts, {args.vms} VMs ({gpus} GPUs, {vms} VMs seen)")
        print(f"{'method':<44} {'round trips':>11} {'wall (median)':>14}")
        print(f"{'gpupass inventory (PropertyCollector)':<44} {ours_rt[-1]:>11} "
              f"{statistics.median(ours_t) * 1000:>11.0f} ms")
        print(f"{'naive pyvmomi attribute traversal':<44} {naive_rt[-1]:>11} "
              f"{statistics.median(naive_t) * 1000:>11.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
