"""The `gpupass` console script. `gpupass --help` prints click's own rendering of the top-level help from a
cache, without importing click or any command (issue 11: start-up near the interpreter's); the plain forms of
the listing commands (`gpupass gpus HOST [--json]`, vms, status) run their work without click
(gpupass.core.cli.listing); every other command line, and a cold or stale cache, goes through click
(gpupass.core.cli.main).

The cache file holds the rendering for one width, under a stamp of what could change it: this package's
CLI modules and every folder on sys.path (installing or upgrading click or gpupass changes one). Only the
standard library modules the interpreter has already loaded are used before the cache is known good.
"""

from __future__ import annotations

import gc
import os
import sys

HELP_ARGS = (["--help"], ["-h"])
MAX_CONTENT_WIDTH = 100  # the root group's context_settings (tests check the two agree)


def main() -> None:
    try:
        _run()
    except SystemExit as done:
        sys.exit(_with_output_written(done.code))
    code = _with_output_written(0)
    if code:
        sys.exit(code)


def _run() -> None:
    if sys.argv[1:] in HELP_ARGS:
        width = help_width()
        path, stamp = _cache_file(width), _stamp()
        text = _read(path, stamp)
        if text is None:
            text = render_help(width)
            _write(path, stamp, text)
        _write_help(text)
        return
    # A listing is a short process that reads one host, prints and exits. The cyclic garbage collector would run
    # ~25 times while its modules load and find next to nothing (records, ElementTree elements and libvirt handles
    # hold no cycles; reference counting frees them), and once more at shutdown over the ~15,000 objects the
    # modules made (~3 ms), to free memory the process gives back on exit anyway: together ~5-8 ms of CPU of a
    # command that should cost little more than a hand-written libvirt script (issue 11, tests/bench/bench_kvm.py).
    # So a listing runs without it and freezes what it made before it exits (gc.freeze: the last pass skips it);
    # shutdown itself (atexit handlers, module teardown) is as for any program. Every other command keeps it on.
    gc.disable()
    from gpupass.core.cli import listing

    plain = listing.plain_form(sys.argv[1:], os.environ)
    if plain is not None:  # `gpupass gpus HOST [--json]`: the listing's own work, without click
        try:
            listing.run(*plain)
        finally:
            gc.freeze()
        return
    gc.enable()
    from gpupass.core.cli.main import main as click_main

    click_main()


def _write_help(text: str) -> None:
    """The help text, as QuietPipe writes output (without importing it: this path loads nothing of gpupass's)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `gpupass --help | head -1`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError as error:  # a full disk behind `> file`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        sys.stderr.write(f"error: cannot write the output: {error.strerror or error}\n")
        sys.exit(1)


def _with_output_written(code: int | str | None) -> int | str | None:
    """The exit code, once what is still buffered is written: 1 instead of 0 when output could not be written
    (a full disk behind `> file`; gpupass.core.cli.app.QuietPipe has said so on stderr). A command that failed
    keeps its own code."""
    app = sys.modules.get("gpupass.core.cli.app")  # not loaded: nothing went through QuietPipe
    if app is None:
        return code
    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # a stdout that is not QuietPipe (replaced by a caller), or closed
        pass
    if app.QuietPipe.lost is not None and code in (0, None):
        return 1
    return code


def help_width() -> int:
    """The width click formats help at: the terminal's columns (as shutil.get_terminal_size reads them,
    COLUMNS first), at most max_content_width, less 2, at least 50 (click.formatting.HelpFormatter)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            stream = sys.__stdout__  # None when Python runs without a stdout
            columns = os.get_terminal_size(stream.fileno()).columns if stream is not None else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
    columns = columns or 80  # shutil's fallback
    return max(min(columns, MAX_CONTENT_WIDTH) - 2, 50)


def render_help(width: int) -> str:
    """What `gpupass --help` prints at this width, rendered by click itself."""
    from gpupass.core.cli.main import cli

    context = cli.make_context("gpupass", [], resilient_parsing=True, terminal_width=width)
    return context.get_help() + "\n"


def cache_dir() -> str:
    """gpupass.core.paths.cache_dir(), without pathlib (tests check they agree)."""
    explicit = os.environ.get("GPUPASS_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gpupass")


def _cache_file(width: int) -> str:
    # One file per environment (the folders on sys.path), as the plugin index: two virtualenvs sharing one cache
    # folder would otherwise overwrite each other's rendering, and each would find the other's stamp stale.
    import zlib

    key = zlib.crc32("\0".join(sys.path[1:]).encode("utf-8", "surrogateescape"))
    return os.path.join(cache_dir(), f"help-{width}-{key:08x}.txt")


def _stamp() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    stamps = []
    for entry in [os.path.join(here, name) for name in ("entry.py", "main.py", "manifest.py")] + sys.path[1:]:
        try:
            stat = os.stat(entry)
        except OSError:
            continue
        stamps.append(f"{entry}={stat.st_mtime_ns}:{stat.st_size}")
    return "|".join(stamps)


def _read(path: str, stamp: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as cached:
            first, _, text = cached.read().partition("\n")
    except (OSError, ValueError):
        return None
    return text if first == stamp and text else None


def _write(path: str, stamp: str, text: str) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as out:
            out.write(f"{stamp}\n{text}")
        os.replace(temporary, path)
    except OSError:
        pass  # no cache folder we may write: click renders the help every time, as before
