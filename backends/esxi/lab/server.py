"""The `lab-esxi` server process: runs the vSphere simulator with the lab inventory until SIGTERM.

Prints one line ``READY{json}`` (url, port, ca, user, datacenter) once the simulator serves, copies the
simulator's CA into --dir (so the lab's target trusts exactly it) and stops the simulator on SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import threading
from pathlib import Path

from gpupass.backends.esxi.lab.simulator import VCSim, lab_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ready", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--dir", required=True)
    args = ap.parse_args(argv)
    password = Path(args.password_file).read_text().strip()
    sim = VCSim(lab_config(), username=args.user, password=password)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sim.start()
    try:
        ca = Path(args.dir) / "ca.pem"
        shutil.copyfile(sim.ca_file, ca)
        info = {"url": sim.url, "port": sim.port, "ca": str(ca), "user": args.user,
                "datacenter": lab_config()["datacenter"], "simulator_pid": sim.pid}
        sys.stdout.write(args.ready + " " + json.dumps(info) + "\n")
        sys.stdout.flush()
        sys.stdout = open("/dev/null", "w")  # nobody reads our stdout any more
        while not stop.wait(0.5):
            if sim._proc is None or sim._proc.poll() is not None:
                return 1
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
