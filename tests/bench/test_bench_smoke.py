"""Keeps the on-demand benchmark working: runs it small, and checks pytest does not collect bench_*.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'gpupass[kvm]')")

HERE = Path(__file__).resolve().parent


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_kvm", HERE / "bench_kvm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_small_and_prints_its_figures(capsys):
    assert load_bench().main(["--quick", "--repeat", "1", "--others", "3"]) == 0
    out = capsys.readouterr().out
    assert "lab-kvm" in out and "generated: 2 GPUs, 4 VMs" in out
    assert "goal: <= 1.1x" in out and "hand-written libvirt script" in out and "cost curve" in out


def test_the_regular_install_the_start_up_figures_use_works(tmp_path):
    import subprocess
    import sys

    sys.path.insert(0, str(HERE))
    try:
        import regular_install
    finally:
        sys.path.remove(str(HERE))
    bin_dir = regular_install.build(tmp_path)
    env = regular_install.clean_env()
    result = subprocess.run([str(bin_dir / "gpupass"), "--help"], capture_output=True, text=True, check=True, env=env)
    assert "Usage: gpupass" in result.stdout
    where = subprocess.run([str(bin_dir / "python"), "-c", "import gpupass.core.cli.main as m; print(m.__file__)"],
                           capture_output=True, text=True, check=True, env=env).stdout
    assert where.startswith(str(tmp_path)), where  # the installed copy, not this checkout
    # libvirt.py (a single-file module, linked into the install) is loaded from bytecode, as after a real install:
    # compiling its source on every run would make the anchor script of bench_kvm.py slow
    verbose = subprocess.run([str(bin_dir / "python"), "-v", "-c", "import libvirt"], capture_output=True, text=True,
                             check=True, env=env).stderr
    loaded_from = [line for line in verbose.splitlines() if line.startswith("# code object from") and "libvirt" in line]
    assert len(loaded_from) == 1 and loaded_from[0].endswith("libvirt.cpython-311.pyc'".replace(
        "311", f"{sys.version_info[0]}{sys.version_info[1]}")), loaded_from
    # what `gpupass --help` loads before it prints: no click, and none of the costly standard modules
    loaded = subprocess.run([str(bin_dir / "python"), "-c", "import sys, gpupass.core.cli.entry; "
                             "print(sorted(m for m in ('click', 'typing', 're', 'json', 'pathlib') if m in sys.modules))"],
                            capture_output=True, text=True, check=True, env=env).stdout
    assert loaded.strip() == "[]", loaded


def test_round_trips_grow_with_the_host_as_documented(tmp_path):
    bench = load_bench()
    uri, vm, gpu = bench.generated_host(tmp_path, gpus=2, others=3, domains=4)
    figures = bench.measure(uri, vm, gpu, repeat=1)
    # open + list devices + one XMLDesc per PCI function (2*2+3) + domain stats + one XMLDesc per VM (4)
    assert figures["gpus_rt"] == 1 + 1 + 7 + 1 + 4
    # inventory, the write (lookup + XMLDesc guard + define), the claim (the test driver refuses a secret,
    # VIR_ERR_NO_SUPPORT, so core/domain/claims.py's bakery: one more define and two reads of every domain,
    # list + one XMLDesc each), the VM read back (lookup + XMLDesc + state)
    assert figures["assign_rt"] == figures["gpus_rt"] + 3 + 1 + 1 + 2 * (1 + 4) + 3


def test_pytest_does_not_collect_the_benchmark(pytestconfig):
    assert not pytestconfig.getini("python_files") or all(
        not Path("bench_kvm.py").match(pattern) for pattern in pytestconfig.getini("python_files"))


def test_fleet_bench_runs_small():
    spec = importlib.util.spec_from_file_location("bench_fleet", HERE / "bench_fleet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.run(hosts=4, latency_ms=1, concurrency=4, sample=2)
    # (28 per host: the listing of stopped mediated devices, which the test driver refuses, is asked once per connection)
    assert figures["round_trips"] == 4 * 28 and figures["fleet_s"] > 0 and figures["slowest_single_s"] > 0
    assert figures["script_fleet_s"] > 0 and figures["fleet_cpu_s"] > 0
    assert figures["turns_fleet_s"] > 0 and figures["remote_fleet_s"] > 0 and figures["remote_slowest_single_s"] > 0
    # the read's CPU and its parts are measured (not compared: timings on a shared machine, see tests/bench)
    assert figures["open_cpu_s"] > 0 and figures["test_file_cpu_s"] > 0 and figures["cpu_per_host_s"] > 0
    assert figures["answers_cpu_s"] > 0
    # the goal's arithmetic: the client is the read less the simulated host's work, and the best ratio it allows
    # grows with the client's CPU per host (the bound is computed, not measured: checked exactly)
    bounds = module.goal_arithmetic({**figures, "hosts": 1000, "slowest_single_s": 0.5, "cpu_per_host_s": 0.003,
                                     "open_cpu_s": 0.001, "test_file_cpu_s": 0.0005, "turns_fleet_cpu_s": 4.0}, cores=2)
    assert abs(bounds["client_s"] - 0.0015) < 1e-12 and abs(bounds["budget_s"] - 0.00075) < 1e-12
    assert abs(bounds["client_bound"] - 3.0) < 1e-9  # 1,000 x 1.5 ms under one lock against 0.5 s
    assert abs(bounds["simulated_bound"] - 4.0) < 1e-9  # + 0.5 ms under the lock: 2.0 s (the open fits on 2 cores)
    assert abs(bounds["fleet_cpu_bound"] - 4.0) < 1e-9  # 4 s of CPU on 2 cores
    pool = module.pool(hosts=20, latency_ms=1, requests=2, concurrency=5, sample=2)
    assert 1 <= pool["peak_threads"] <= 5 and pool["single_s"] > 0 and pool["fleet_s"] > 0
    assert 0 < pool["streamed_small"] and 0 < pool["streamed"] and pool["kept"] > 0


def test_fleet_bench_prints_each_goal_as_a_ratio_next_to_its_anchor(capsys):
    spec = importlib.util.spec_from_file_location("bench_fleet", HERE / "bench_fleet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--hosts", "20", "--latency-ms", "1", "--requests", "2", "--concurrency", "20",
                        "--real-hosts", "3", "--command-hosts", "2"]) == 0
    out = capsys.readouterr().out
    assert "slowest of 5 hosts read alone (anchor)" in out and "ratio" in out and "(goal <= 1.5x)" in out
    assert "rows streamed: " in out and "for 10x the hosts (flat: ~1)" in out
    assert "the script's reads, same pool" in out and "the goal's arithmetic" in out
    assert "the simulated host's own work" in out and "the client: gpupass's" in out and "allows at best" in out
    # the whole commands ran as processes (each asserted its exit code 0) and were timed against one host's
    assert "gpupass gpus --json HOST (anchor, median)" in out and "gpupass fleet gpus --json --hosts" in out


def test_hyperv_bench_runs_as_shipped_and_counts_one_session(capsys):
    pytest.importorskip("winrm", reason="pywinrm is not installed (pip install 'gpupass[hyperv]')")
    spec = importlib.util.spec_from_file_location("bench_hyperv", HERE / "bench_hyperv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--repeat", "1", "--auth", "ntlm"]) == 0
    figures = {k: v[0] for k, v in module.measure("ntlm", 1).items()}
    # gpus: one script in one shell, as the anchor; assign: inventory, assign, read back in one shell.
    assert figures["gpus_http"] == figures["anchor_http"] and figures["gpus_rt"] == 1
    # status sees a stopped release in that one script (the VMs' gpupass records come with the inventory)
    assert figures["status_rt"] == 1 and figures["status_http"] == figures["gpus_http"]
    assert figures["assign_rt"] == 3 and figures["assign_http"] < figures["naive_assign_http"]
    assert "goal: <= 1.5x" in capsys.readouterr().out


def test_esxi_bench_runs_as_shipped(capsys):
    pytest.importorskip("pyVmomi", reason="pyvmomi is not installed (pip install 'gpupass[esxi]')")
    spec = importlib.util.spec_from_file_location("bench_esxi", HERE / "bench_esxi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "govc object.collect anchor" in out and "goal: <= 4" in out and "cost curve" in out
    # the calls on both sides, and the assign's count, are deterministic
    kept, first, command = (line.split() for line in out.splitlines() if line.strip().startswith("2 ") and "x" in line)
    assert int(kept[3]) == int(kept[5]) == 1  # through a kept view: one RetrievePropertiesEx on each side
    assert int(first[3]) == 2 and int(first[5]) == 3  # the session keeps the view it made; govc destroys its own
    # the whole command: RetrieveServiceContent, Login, the datacenter, the view, the read, (the anchor:
    # DestroyView), Logout: gpupass sends no request govc does not
    assert int(command[3]) == 6 and int(command[5]) == 7
    assign = next(line for line in out.splitlines() if line.startswith("  2 hosts, 10 VMs: "))
    assert "assign 4," in assign  # QueryConfigTarget, ReconfigVM_Task, its task's info, RetrievePropertiesEx
