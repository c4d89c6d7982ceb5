"""KVM backend figures, run on demand: `.venv/bin/python tests/bench/bench_kvm.py [--repeat N] [--quick]`.

Each goal of issue 11 is printed as a ratio next to its anchor, measured in the same run:

1. assign/release cost in libvirt calls against one `gpus` on the same host (goal <= 1.1x), on the lab host
   and on a generated host with 4 GPUs and 1,000 VMs. Calls are counted by the backend (deterministic).
   The test driver has no secret driver, so its claims are the bakery in the domains' metadata (two reads
   of every domain); 1b. is the same on a real unprivileged libvirtd with 1,000 defined domains, where the
   claim is a libvirt secret (backends/kvm/secretclaims.py), with the bakery forced for comparison.
2. `gpus` (the backend's inventory) against a hand-written libvirt script making the same calls and
   parsing each XML document once with ElementTree (the least any script must do to know owners and
   devices), in this process; and `gpupass gpus --json` against that script as a program, both in a
   regular (non-editable) install (goal <= 1.5x).
3. the inventory's cost curve over 4/32/128 GPUs x 10/100/1,000 VMs: calls, milliseconds, per-VM cost.
4. `gpupass --help` against `python -c pass` in a regular install (goal <= 2x).

Not collected by pytest (see conftest.py); tests/bench/test_bench_smoke.py runs it small.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from gpupass.backends.kvm.lab import testhost
from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core.domain.pci import PciAddress
from gpupass.core.domain.request import AssignmentRequest, ReleaseRequest
from gpupass.core.plugins import default_registry
from gpupass.core.service import execute, make_plan
from gpupass.core.target import Target

HERE = Path(__file__).resolve().parent

# The anchor: what an admin writes by hand to list PCI devices and VM definitions with libvirt-python.
ANCHOR = '''\
import sys
import xml.etree.ElementTree as ET

import libvirt


def gpus(uri):
    conn = libvirt.open(uri)
    devices = [ET.fromstring(d.XMLDesc(0))
               for d in conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV)]
    domains = [(ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)),
                ET.fromstring(dom.XMLDesc(0)) if stats.get("state.state") in (1, 2, 3, 4, 7) else None)
               for dom, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0)]
    conn.close()
    return devices, domains


if __name__ == "__main__":
    devices, domains = gpus(sys.argv[1])
    print(len(devices), len(domains))
'''


def lab_host(directory: Path) -> tuple[str, str, PciAddress]:
    path = directory / "lab-kvm.xml"
    with resources.as_file(resources.files("gpupass.backends.kvm.lab").joinpath("lab-kvm.xml")) as original:
        shutil.copyfile(original, path)
    return f"test://{path}", "ml-train", PciAddress.parse("0000:42:00.0")


def generated_host(directory: Path, gpus: int, others: int, domains: int) -> tuple[str, str, PciAddress]:
    functions, vms = testhost.generated_host(gpus, others, domains)
    uri = testhost.write_host(directory / f"generated-{gpus}-{others}-{domains}.xml", functions, vms)
    return uri, "vm-000", PciAddress.parse("0000:10:00.0")


def measure(uri: str, vm: str, gpu: PciAddress, repeat: int) -> dict[str, float]:
    """Median calls and seconds of `gpus`, of an assign and of the release that follows it."""
    registry = default_registry()
    figures: dict[str, list[float]] = {k: [] for k in ("gpus_rt", "gpus_s", "assign_rt", "assign_s",
                                                       "release_rt", "release_s")}
    for _ in range(repeat):
        with KvmBackend(Target(uri=uri)) as backend:  # a fresh open each time: its own test-driver state
            started = time.perf_counter()
            backend.inventory()
            figures["gpus_s"].append(time.perf_counter() - started)
            figures["gpus_rt"].append(backend.round_trips)
        with KvmBackend(Target(uri=uri)) as backend:
            for name, request in (("assign", AssignmentRequest(vm, (gpu,))), ("release", ReleaseRequest(vm))):
                began_calls, started = backend.round_trips, time.perf_counter()
                plan = make_plan(backend, backend.inventory(), request, registry)
                assert not plan.blocked and not plan.nothing_to_do, plan.findings
                execute(backend, plan)
                figures[f"{name}_s"].append(time.perf_counter() - started)
                # The release runs on the open connection: count its calls as if it had opened one.
                figures[f"{name}_rt"].append(backend.round_trips - began_calls + (name == "release"))
    return {name: statistics.median(values) for name, values in figures.items()}


def libvirtd_figures(domains: int) -> dict[str, float] | None:
    """gpus / assign / release calls on a real libvirtd holding `domains` defined (not started) domains, with
    secret claims and with the bakery forced; None where no libvirtd can be started here."""
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE.parent / "integration" / "libvirtd"))
    import libvirt
    from support.libvirtd import LibvirtdUnavailable, UnprivilegedLibvirtd
    from test_kvm_backend_libvirtd import T4, q35, with_gpus

    try:
        daemon = UnprivilegedLibvirtd()  # started by its constructor
    except LibvirtdUnavailable:
        return None
    figures: dict[str, float] = {}
    try:
        conn = libvirt.open(daemon.uri)
        for i in range(domains):
            conn.defineXML(q35(f"bench-{i:04d}"))
        conn.close()
        registry = default_registry()
        for kind in ("secret", "bakery"):
            with KvmBackend(Target(uri=daemon.uri, name="bench")) as backend:
                if kind == "bakery":
                    backend._secret_driver = False  # what a connection without a secret driver does
                before = backend.round_trips
                backend.inventory()
                figures["gpus_rt"] = backend.round_trips - before + 1  # + the open
                for name, request in (("assign", AssignmentRequest("bench-0000", (T4.address,))),
                                      ("release", ReleaseRequest("bench-0000"))):
                    before = backend.round_trips
                    plan = make_plan(backend, with_gpus(backend.inventory(), T4), request, registry)
                    assert not plan.blocked and not plan.nothing_to_do, plan.findings
                    execute(backend, plan)
                    figures[f"{kind}_{name}_rt"] = backend.round_trips - before + 1  # as if it opened its own
    finally:
        daemon.stop()
    return figures


def anchor_seconds(uri: str, repeat: int) -> float:
    namespace: dict = {"__name__": "anchor"}
    exec(compile(ANCHOR, "anchor", "exec"), namespace)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        namespace["gpus"](uri)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def median_wall(command: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    return median_walls({"": command}, runs, env)[""][0]


def median_walls(commands: dict[str, list[str]], runs: int, env: dict[str, str] | None = None
                 ) -> dict[str, tuple[float, float]]:
    """Each command's median wall time and median CPU time (user + system), the commands taking turns run after
    run so that a burst of load on a shared machine falls on all of them alike, not on whichever ran then."""
    import resource

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            cpu, started = children_cpu(), time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            walls[name].append(time.perf_counter() - started)
            cpus[name].append(children_cpu() - cpu)
    return {name: (statistics.median(walls[name]), statistics.median(cpus[name])) for name in commands}


def ratio(value: float, anchor: float) -> str:
    return f"{value / anchor:5.2f}x" if anchor else "   n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (median)")
    parser.add_argument("--cli-runs", type=int, default=21, help="subprocess runs per start-up figure")
    parser.add_argument("--others", type=int, default=200, help="non-GPU PCI functions on generated hosts")
    parser.add_argument("--quick", action="store_true", help="small hosts only, no regular install (CI smoke)")
    args = parser.parse_args(argv)
    gpu_counts, vm_counts = ((2,), (4,)) if args.quick else ((4, 32, 128), (10, 100, 1000))
    big = (2, 4) if args.quick else (4, 1000)

    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        print("1. assign and release against one `gpus`, in libvirt calls (goal: <= 1.1x)")
        print(f"{'host':<40} {'gpus':>6} {'assign':>7} {'ratio':>7} {'release':>8} {'ratio':>7}")
        hosts = {"lab-kvm": lab_host(directory),
                 f"generated: {big[0]} GPUs, {big[1]} VMs": generated_host(directory, big[0], args.others, big[1])}
        for name, (uri, vm, gpu) in hosts.items():
            f = measure(uri, vm, gpu, args.repeat)
            print(f"{name:<40} {f['gpus_rt']:>6.0f} {f['assign_rt']:>7.0f} {ratio(f['assign_rt'], f['gpus_rt']):>7} "
                  f"{f['release_rt']:>8.0f} {ratio(f['release_rt'], f['gpus_rt']):>7}")

        domains = 10 if args.quick else 1000
        print(f"\n1b. the same on a real libvirtd with {domains} defined domains (goal: <= 1.1x)")
        real = libvirtd_figures(domains)
        if real is None:
            print("   no libvirtd could be started here (tests/support/libvirtd.py)")
        else:
            print(f"{'claims':<40} {'gpus':>6} {'assign':>7} {'ratio':>7} {'release':>8} {'ratio':>7}")
            for kind, label in (("secret", "libvirt secret (the default)"), ("bakery", "bakery (forced)")):
                print(f"{label:<40} {real['gpus_rt']:>6.0f} {real[kind + '_assign_rt']:>7.0f} "
                      f"{ratio(real[kind + '_assign_rt'], real['gpus_rt']):>7} {real[kind + '_release_rt']:>8.0f} "
                      f"{ratio(real[kind + '_release_rt'], real['gpus_rt']):>7}")

        print("\n2. `gpus` against the hand-written libvirt script (same calls, one parse per XML; goal: <= 1.5x)")
        print(f"{'host':<40} {'gpupass ms':>10} {'script ms':>10} {'ratio':>7}")
        for name, (uri, vm, gpu) in hosts.items():
            ours = measure(uri, vm, gpu, args.repeat)["gpus_s"]
            anchor = anchor_seconds(uri, args.repeat)
            print(f"{name:<40} {ours * 1000:>10.1f} {anchor * 1000:>10.1f} {ratio(ours, anchor):>7}")

        print(f"\n3. inventory cost curve ({args.others} other PCI functions on each host)")
        print(f"{'GPUs':>5} {'VMs':>6} {'objects':>8} {'calls':>7} {'ms':>9} {'us per object':>14}")
        for gpus in gpu_counts:
            for vms in vm_counts:
                uri, vm, gpu = generated_host(directory, gpus, args.others, vms)
                with KvmBackend(Target(uri=uri)) as backend:
                    times = []
                    for _ in range(args.repeat):
                        backend.round_trips = 0
                        started = time.perf_counter()
                        facts = backend.inventory()
                        times.append(time.perf_counter() - started)
                    calls, seconds = backend.round_trips, statistics.median(times)
                objects = len(facts.functions) + len(facts.vms)  # what the host has: PCI functions and VMs
                print(f"{gpus:>5} {vms:>6} {objects:>8} {calls:>7} {seconds * 1000:>9.1f} "
                      f"{seconds * 1e6 / objects:>14.1f}")

        if args.quick:
            return 0
        sys.path.insert(0, str(HERE))
        import regular_install

        print("\n4. start-up in a regular (non-editable) install")
        bin_dir = regular_install.build(directory / "install")
        python, gpupass = str(bin_dir / "python"), str(bin_dir / "gpupass")
        script = directory / "anchor.py"
        script.write_text(ANCHOR, encoding="utf-8")
        env = regular_install.clean_env()
        median_wall([gpupass, "plugins"], 1, env)  # the first command after an install scans the plugins
        median_wall([gpupass, "--help"], 1, env)  # and the first --help renders it once
        times = median_walls({"pass": [python, "-c", "pass"], "help": [gpupass, "--help"]}, args.cli_runs, env)
        (baseline, baseline_cpu), (help_time, help_cpu) = times["pass"], times["help"]
        print("(wall time, the goal; CPU time, user + system, in brackets: less moved by other load on the machine)")
        print(f"python -c pass                         {baseline * 1000:7.1f} ms   (CPU {baseline_cpu * 1000:.1f} ms)")
        print(f"gpupass --help                         {help_time * 1000:7.1f} ms   {ratio(help_time, baseline)} "
              f"(goal: <= 2x)   (CPU {help_cpu * 1000:.1f} ms, {ratio(help_cpu, baseline_cpu).strip()})")
        for name, (uri, _vm, _gpu) in hosts.items():
            times = median_walls({"script": [python, str(script), uri], "gpus": [gpupass, "gpus", "--json", uri]},
                                 args.cli_runs, env)
            (anchor, anchor_cpu), (ours, ours_cpu) = times["script"], times["gpus"]
            print(f"gpus {name:<34} {ours * 1000:7.1f} ms   {ratio(ours, anchor)} of the script as a program "
                  f"({anchor * 1000:.1f} ms; goal: <= 1.5x)   (CPU {ours_cpu * 1000:.1f} ms against "
                  f"{anchor_cpu * 1000:.1f} ms, {ratio(ours_cpu, anchor_cpu).strip()})")
        uri = hosts["lab-kvm"][0]
        print("where the start-up goes (lab-kvm; -X importtime, best of 5 runs per module, which adds its own cost):")
        for label, command in (("script", [str(script), uri]), ("gpupass gpus --json", [gpupass, "gpus", "--json", uri])):
            modules, total, own, dataclasses, records = import_weight(python, command, env)
            print(f"  {label:<21} {modules:4d} modules imported, {total:5.1f} ms of imports"
                  + (f" ({own:.1f} ms in gpupass's own modules, which define {dataclasses} dataclasses and {records} "
                     "records)" if own else ""))
    return 0


def import_weight(python: str, command: list[str], env: dict[str, str], runs: int = 5
                  ) -> tuple[int, float, float, int, int]:
    """What a command imports: modules, the sum of their own import times in ms (each module's best of `runs`),
    the part of it in gpupass's modules, the dataclasses those define (created at import, each costs an exec of
    generated code per method) and their records (gpupass.core.records: the same methods without exec)."""
    import ast
    import importlib.util

    best: dict[str, int] = {}
    for _ in range(runs):
        err = subprocess.run([python, "-X", "importtime", *command], capture_output=True, text=True, env=env).stderr
        for line in err.splitlines():
            fields = line.removeprefix("import time:").split("|")
            if len(fields) == 3 and fields[0].strip().isdigit():
                name = fields[2].strip()
                best[name] = min(best.get(name, 1 << 60), int(fields[0]))
    ours = [name for name in best if name == "gpupass" or name.startswith("gpupass.")]
    dataclasses = records = 0
    for name in ours:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
            decorators = [ast.unparse(d) for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                          for d in node.decorator_list]
            dataclasses += sum(1 for d in decorators if "dataclass" in d)
            records += sum(1 for d in decorators if d.startswith(("record", "records.record")))
    return len(best), sum(best.values()) / 1000, sum(best[n] for n in ours) / 1000, dataclasses, records


if __name__ == "__main__":
    sys.exit(main())
