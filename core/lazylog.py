"""Loggers for modules every command loads, which import `logging` only once a record could be shown.

Until something imports logging (gpupass's -v and --debug through gpupass.core.logs, or an application that
uses gpupass as a library and configures its logging), no handler and no level has been set in the process: the
standard library would drop a DEBUG or INFO record (an unconfigured logger's effective level is the root's
WARNING), and only WARNING and above would reach stderr, through logging's last-resort handler. So DEBUG and INFO
are skipped while logging is not loaded, and WARNING loads it: what is printed is the standard library's in every
case, and a `gpupass gpus` without -v does not pay for importing logging (issue 11).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging


class LazyLogger:
    def __init__(self, name: str) -> None:
        self.name = name

    def _logger(self) -> logging.Logger:
        import logging

        return logging.getLogger(self.name)

    # stacklevel=2: the record names the caller's file and line, as the logger's own methods would.
    def debug(self, message: str, *args: Any) -> None:
        if "logging" in sys.modules:
            self._logger().debug(message, *args, stacklevel=2)

    def info(self, message: str, *args: Any) -> None:
        if "logging" in sys.modules:
            self._logger().info(message, *args, stacklevel=2)

    def warning(self, message: str, *args: Any) -> None:
        self._logger().warning(message, *args, stacklevel=2)
