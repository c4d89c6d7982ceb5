"""Concurrent assigns of one GPU, 100 rounds per platform (issue 10: "0 double assignments in 100 concurrent
rounds per platform"). Run on demand:

    .venv/bin/python tests/bench/race_claims.py [ROUNDS]

Each round starts several processes that plan first and apply together (tests/support/race.py) against the
KVM test-driver lab file, a real unprivileged libvirtd and the vSphere simulator; every round asserts
exactly one winner, the losers undone. CI runs the same tests with a few rounds (GPUPASS_RACE_ROUNDS
defaults: 4 on the test driver, 3 on libvirtd and vcsim, 2 on Hyper-V). Hyper-V needs no claim of gpupass':
a dismounted device can be added to one VM only, which the lab host model enforces, so the losers' own
scripts fail and roll themselves back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITES = {
    "kvm (test driver)": "tests/integration/kvm/test_kvm_claims.py::test_of_concurrent_assigns_of_one_gpu_exactly_one_wins",
    "kvm (libvirtd)": "tests/integration/libvirtd/test_kvm_claims_libvirtd.py",
    "esxi (vcsim)": "tests/integration/esxi/test_esxi_claims.py::test_of_concurrent_assigns_of_one_device_exactly_one_wins",
    "hyperv (endpoint)":
        "tests/integration/hyperv/test_hyperv_lost_replies.py::test_of_concurrent_assigns_of_one_device_exactly_one_wins",
}


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    env = {**os.environ, "GPUPASS_RACE_ROUNDS": str(rounds)}
    failed = 0
    print(f"{'platform':<20} {'rounds':>7} {'failed':>7} {'seconds':>8}")
    for name, selector in SUITES.items():
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", selector],
                                cwd=ROOT, env=env, capture_output=True, text=True)
        lines = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        if result.returncode != 0 and not lines:
            lines = [result.stdout[-2000:] + result.stderr[-2000:]]
        failed += len(lines)
        print(f"{name:<20} {rounds:>7} {len(lines):>7} {time.perf_counter() - started:>8.1f}")
        for line in lines:
            print("   ", line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
