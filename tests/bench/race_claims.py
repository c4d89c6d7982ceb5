"""Concurrent assigns of one GPU, 100 rounds per platform (issue 10: "0 double assignments in 100 concurrent
rounds per platform"). CI runs the same tests with 100 rounds; this prints their figures for any number. Run on demand:

    .venv/bin/python tests/bench/race_claims.py [ROUNDS]

Each round, three worker processes (tests/support/race.py's RacePool: started once per test with 'spawn'), each
with its own new connection, plan and then assign at one barrier, against the KVM test-driver lab file, a real
unprivileged libvirtd, the vSphere simulator and the WS-Management endpoint. Every round asserts exactly one winner
(or, every tenth round, identical assigns that leave the device on the VM once) and the losers' own change undone.

Hyper-V needs no claim of gpupass': a dismounted device can be added to one VM only, which the lab host model
enforces, so the losers' own scripts fail and roll themselves back (reported as a conflict after reading who holds
the device).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = {
    "kvm (test driver)": "tests/integration/kvm/test_kvm_claims.py::"
                         "test_100_rounds_of_concurrent_assigns_from_separate_processes",
    "kvm (libvirtd)": "tests/integration/libvirtd/test_kvm_claims_libvirtd.py::"
                      "test_100_rounds_of_concurrent_assigns_on_the_daemon",
    "esxi (vcsim)": "tests/integration/esxi/test_esxi_claims.py::"
                    "test_100_rounds_of_concurrent_assigns_give_one_device_to_one_vm",
    "hyperv (endpoint)": "tests/integration/hyperv/test_hyperv_claims.py::"
                         "test_100_rounds_of_concurrent_assigns_give_one_gpu_to_one_vm",
}


def _run(kind: str, name: str, selector: str, rounds: int, env: dict) -> int:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", selector],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    if result.returncode != 0 and not lines:
        lines = [result.stdout[-2000:] + result.stderr[-2000:]]
    tally = next((line.split("outcomes ", 1)[1] for line in result.stdout.splitlines() if "outcomes " in line), "")
    print(f"{kind:<10} {name:<20} {rounds:>7} {len(lines):>7} {time.perf_counter() - started:>8.1f}  {tally}")
    for line in lines:
        print("   ", line)
    return len(lines)


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    env = {**os.environ, "GPUPASS_RACE_ROUNDS": str(rounds)}
    failed = 0
    print(f"{'rounds':<10} {'platform':<20} {'rounds':>7} {'failed':>7} {'seconds':>8}  outcomes")
    for name, selector in TESTS.items():
        failed += _run("processes", name, selector, rounds, env)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
