"""`-v` / `--debug`: standard logging to stderr, with every secret handed to an SDK blanked out.

gpupass logs under the `gpupass` logger (`gpupass.kvm`, `gpupass.esxi`, `gpupass.hyperv` name each SDK call,
never its credentials); `--debug` also shows the libraries' own loggers (urllib3, pyvmomi, winrm).
"""

from __future__ import annotations

import logging

from gpupass.core.target import REVEALED

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactSecrets(logging.Filter):
    """Replaces any password gpupass revealed to an SDK with '***' in the final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if REVEALED:
            message = record.getMessage()
            redacted = message
            for secret in sorted(REVEALED, key=len, reverse=True):  # longest first: no partial blanks
                redacted = redacted.replace(secret, "***")
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


def configure(verbosity: int) -> None:
    """0: warnings only; 1 (-v): what gpupass does; 2 (-vv or --debug): every SDK call and the libraries' logs."""
    if verbosity <= 0:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    logging.getLogger("gpupass").setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
