"""Run the lab endpoint by hand: ``python -m gpupass.backends.hyperv.lab.wsman --state lab.json``.

Binds 127.0.0.1 only; prints the URL; Ctrl-C stops it.  The model is loaded from --state (a fresh
lab_host() when the file does not exist yet) and written back after every script.
"""
from __future__ import annotations

import argparse
import signal
import threading

from ..hostmodel.lab import load_lab
from .server import serve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpupass.backends.hyperv.lab.wsman")
    ap.add_argument("--state", required=True, help="JSON file holding the lab model (created if missing)")
    ap.add_argument("--auth", choices=("basic", "ntlm"), default="ntlm")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD",
                    help="may be repeated; default Administrator:Passw0rd!")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--fault", action="append", default=[], metavar="CMDLET[:N]",
                    help="the next (N-th) call of CMDLET fails with a terminating error (HostModel.inject_fault); may "
                         "be repeated")
    args = ap.parse_args(argv)
    users = dict(u.split(":", 1) for u in args.user) or {"Administrator": "Passw0rd!"}
    model = load_lab(args.state)
    for fault in args.fault:
        cmdlet, _, nth = fault.partition(":")
        model.inject_fault(cmdlet, int(nth or 1))
    ep = serve(model, auth=args.auth, users=users, port=args.port, verbose=args.verbose, state_path=args.state)
    ep.save_state()
    print(ep.url, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        ep.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
