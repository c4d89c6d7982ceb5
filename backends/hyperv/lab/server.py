"""The lab-hyperv server process: `python -m gpupass.backends.hyperv.lab.server --state FILE ...`.

Reads the password from a file (never argv), serves the model on 127.0.0.1, prints one line
``<ready prefix> {"url", "port", "auth", "user"}`` once it serves, and stops on SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpupass.backends.hyperv.lab.server")
    ap.add_argument("--auth", choices=("basic", "ntlm"), default="ntlm")
    ap.add_argument("--user", default="Administrator")
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready", default="GPUPASS-HYPERV-LAB-READY")
    ap.add_argument("--state", required=True)
    args = ap.parse_args(argv)
    from gpupass.backends.hyperv.lab.hostmodel.lab import load_lab
    from gpupass.backends.hyperv.lab.wsman import serve

    password = Path(args.password_file).read_text().strip()
    endpoint = serve(load_lab(args.state), auth=args.auth, users={args.user: password}, port=args.port,
                     state_path=args.state)
    endpoint.save_state()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(args.ready + " " + json.dumps({"url": endpoint.url, "port": endpoint.port, "auth": args.auth,
                                         "user": args.user}), flush=True)
    sys.stdout = open("/dev/null", "w")   # nobody reads our stdout after the ready line
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        endpoint.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
