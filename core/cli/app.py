"""What every command shares and that needs no click: the application context (config, plugins, opening a
host) and stdout that goes quiet when its reader leaves. The console script's quick path for the listing
commands (gpupass.core.cli.listing) uses them without importing click; the click commands use the same."""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

from gpupass.core.errors import UsageError

if TYPE_CHECKING:  # `gpupass --help` imports none of these
    from gpupass.core.config import Config
    from gpupass.core.plugins import Registry
    from gpupass.core.ports import Backend


class AppContext:
    def __init__(self, config_path: str | None = None, insecure: bool = False, ca_file: str | None = None,
                 verbosity: int = 0) -> None:
        self.config_path, self.insecure, self.ca_file = config_path, insecure, ca_file
        self.verbosity = verbosity
        self._registries: dict[str | None, Registry] = {}

    @functools.cached_property
    def registry(self) -> Registry:
        from gpupass.core.plugins import default_registry

        return default_registry()

    @functools.cached_property
    def config(self) -> Config:
        from pathlib import Path

        from gpupass.core import paths
        from gpupass.core.config import load_config

        if self.config_path:
            # A file named on purpose with --config that is not there is a mistake, not "no hosts".
            explicit = Path(self.config_path)
            try:
                is_file, exists = explicit.is_file(), explicit.exists()
            except OSError:  # a folder on the way it may not enter: load_config says so, naming the file
                return load_config(explicit)
            if not is_file:
                raise UsageError(f"config file {explicit} does not exist" if not exists
                                 else f"config file {explicit} is not a file",
                                 remedy="check the path given to --config (GPUPASS_CONFIG names a file that "
                                        "`gpupass hosts add` creates)")
            return load_config(explicit)
        return load_config(paths.config_file())

    def registry_for(self, host: str | None) -> Registry:
        """The plugins HOST needs (its platform's backend and rules), without loading the others."""
        if host not in self._registries:
            from gpupass.core.hosts import registry_for_host

            self._registries[host] = registry_for_host(host, self.config)
        return self._registries[host]

    def open(self, host: str | None) -> Backend:
        from gpupass.core.hosts import open_host
        from gpupass.core.target import TlsOptions

        return open_host(host, self.config, self.registry_for(host),
                         TlsOptions(verify=not self.insecure, ca_file=self.ca_file))


class QuietPipe:
    """stdout that goes quiet when the reader leaves (`gpupass check ... | head -1`): the command still
    finishes and exits with its own code (check's 3 stays 3), with no BrokenPipeError traceback.

    Output that cannot be written (`> file` on a full disk: ENOSPC, an I/O error) is an error, said once on
    stderr; the command still finishes -- an assign is not stopped between its steps -- and the console script
    exits 1 where it would have exited 0 (gpupass.core.cli.entry), as the output it promised is lost."""

    lost: OSError | None = None  # the first write error that lost output, for the exit code

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _closed_pipe(self) -> None:
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())  # what is still buffered goes nowhere, quietly
        finally:
            os.close(devnull)

    def _lost_output(self, error: OSError) -> None:
        if QuietPipe.lost is None:
            QuietPipe.lost = error
            sys.stderr.write(f"error: cannot write the output: {error.strerror or error}\n"
                             "  fix: free some space where the output goes (or fix the device), then run it again\n")
            sys.stderr.flush()
        self._closed_pipe()

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            self._closed_pipe()
        except OSError as error:
            self._lost_output(error)
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._closed_pipe()
        except OSError as error:
            self._lost_output(error)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def quiet_stdout() -> None:
    if not isinstance(sys.stdout, QuietPipe) and sys.stdout is not None:
        sys.stdout = QuietPipe(sys.stdout)
