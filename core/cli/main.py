"""The gpupass command line. Importing this module must not import any hypervisor SDK."""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Any, Callable, TypeVar

import click

from gpupass.core.cli import manifest
from gpupass.core.cli.app import AppContext as AppContext  # the commands import it from here
from gpupass.core.cli.app import quiet_stdout
from gpupass.core.cli.escape import shown
from gpupass.core.errors import GpupassError, PreflightFailed

# A click command function, wrapped or not.
F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = """\b
Exit codes:
  0  done (or nothing needed doing)
  1  error: the host, the backend or a step failed (rolled_back says whether the change was undone)
  2  usage: bad arguments, a host, VM or GPU that does not exist, or a change refused without --yes
  3  preflight found blocking problems (fleet find: no host can take the VM now); nothing was changed
  4  fleet: some hosts could not be read (their rows carry the error); the rest is complete
  5  diff: the hosts differ from the file (apply would change something)
  6  conflict: another run changed the same GPU or VM at the same time and won; this one was undone
  130  interrupted (Ctrl-C); a change under way was undone (rolled_back and the message say what the host holds)
"""


def emit_json(document: Any) -> None:
    from gpupass.core.jsontext import dumps  # json.dumps(indent=2)'s text, faster (a fleet's document is large)

    click.echo(dumps(document))


def handles_errors(command: F) -> F:
    """Report gpupass errors as 'error:' + 'fix:' (or as JSON with --json) and exit with their code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = kwargs.get("as_json", False)
        try:
            return command(*args, **kwargs)
        except GpupassError as exc:
            report_error(exc, as_json, kwargs)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature F describes


def report_error(exc: GpupassError, as_json: bool, arguments: dict[str, Any], color: bool | None = None) -> None:
    """An error as 'error:' + 'fix:' on stderr, or as one JSON document on stdout with --json (a preflight's
    findings are printed by the command itself). `color` as click.echo takes it: None decides by the stream
    (within a click command, by the context's choice)."""
    if isinstance(exc, PreflightFailed):
        if not as_json:
            click.echo(click.style("error: ", fg="red", bold=True) + shown(exc.message, True), err=True, color=color)
        return
    _fill_in_host(exc, arguments)
    if as_json:
        emit_json(exc.to_dict())
    else:
        # Messages quote names from hosts and files: escaped, so none can act on the terminal.
        click.echo(click.style("error: ", fg="red", bold=True) + shown(exc.message, True), err=True, color=color)
        if exc.remedy:
            click.echo(f"  fix: {shown(exc.remedy, True)}", err=True, color=color)


def _fill_in_host(exc: GpupassError, arguments: dict[str, Any]) -> None:
    """A remedy names the host as HOST where the code raising it does not know what the user typed (a backend's
    error table); the command does: `gpupass status HOST` becomes `gpupass status lab-kvm`."""
    import re
    import shlex

    host = arguments.get("host") or arguments.get("dst_host")
    if host is None and "host" in arguments:
        from gpupass.core import environment

        chosen = environment.default_host()
        host = chosen[1] if chosen else None
    if host and exc.remedy:
        exc.remedy = re.sub(r"(`gpupass [a-z-]+(?: [a-z-]+)? )HOST\b", lambda m: m.group(1) + shlex.quote(host),
                            exc.remedy)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")


# The global options, accepted before the subcommand (`gpupass --insecure gpus H`) and after it
# (`gpupass gpus H --insecure`), as govc and virsh users type them. A subcommand's own option of the same
# name (hosts add --insecure) wins after the subcommand.
GLOBAL_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--config", "config_path"), dict(metavar="FILE",
                                      help="Config file with named hosts, which must exist (default: $GPUPASS_CONFIG, "
                                           "else ~/.config/gpupass/config.toml).")),
    (("--insecure",), dict(is_flag=True, default=None,
                           help="Do not verify TLS certificates (ESXi, Hyper-V). Never the default.")),
    (("--ca-file",), dict(metavar="FILE", help="Trust this CA bundle for the host's TLS certificate.")),
    (("-v", "--verbose", "verbosity"), dict(count=True, help="Log what gpupass does to stderr; -vv also every SDK call.")),
    (("--debug",), dict(is_flag=True, default=None, help="Same as -vv: every SDK call, never a password.")),
]


def _apply_global(ctx: click.Context, name: str, value: Any) -> None:
    app = ctx.find_object(AppContext)
    if app is None or value in (None, False, 0):
        return
    if name == "config_path":
        app.config_path = value
        app.__dict__.pop("config", None)
    elif name == "insecure":
        app.insecure = True
    elif name == "ca_file":
        app.ca_file = value
    elif name in ("verbosity", "debug"):
        app.verbosity = max(app.verbosity, 2 if name == "debug" else value)
        from gpupass.core import logs

        logs.configure(app.verbosity)


def _late_global_options(command: click.Command) -> click.Command:
    """Give a subcommand hidden copies of the global options it does not define itself (once)."""
    if getattr(command, "_gpupass_globals", False):
        return command
    taken = {opt for param in command.params for opt in getattr(param, "opts", [])}
    taken |= {param.name for param in command.params}
    for declaration, attrs in GLOBAL_OPTIONS:
        flags = [d for d in declaration if d.startswith("-")]
        name = declaration[-1].lstrip("-").replace("-", "_") if not declaration[-1].startswith("-") else \
            flags[-1].lstrip("-").replace("-", "_")
        flags = [f for f in flags if f not in taken]
        if not flags:
            continue
        extra = {k: v for k, v in attrs.items() if k not in ("help", "envvar")}
        command.params.append(click.Option(
            flags, hidden=True, expose_value=False, **extra,
            callback=lambda ctx, _param, value, _name=name: _apply_global(ctx, _name, value)))
    command._gpupass_globals = True  # type: ignore[attr-defined]
    return command


class GlobalOptionsGroup(click.Group):
    """A group whose subcommands also accept the global options after their own name."""

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        return _late_global_options(command) if command is not None else None


GlobalOptionsGroup.group_class = GlobalOptionsGroup


class LazyGroup(GlobalOptionsGroup):
    """Imports a subcommand's module only when that subcommand runs (or its own help is asked for).

    The modules register their commands with `@cli.command()` as before; `manifest.COMMANDS` says which
    module defines which name, and carries the short help that `gpupass --help` lists without importing any.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(manifest.COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in manifest.COMMANDS:
            importlib.import_module(manifest.COMMANDS[name][0])
        command = self.commands.get(name)
        return _late_global_options(command) if command is not None else None

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            # "No such command": add the nearest names, as git does.
            import difflib

            name = click.utils.make_str(args[0]) if args else ""
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=3, cutoff=0.5)
            if close and "did you mean" not in exc.message.lower():
                # click marks `message` Final, yet its own suggestions are made by setting it the same way
                exc.message += f" Did you mean {' or '.join(repr(c) for c in close)}?"  # type: ignore[misc]
            raise

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.commands:  # registered already (a plugin's, or imported): ask the command itself
                if self.commands[name].hidden:
                    continue
                rows.append((name, self.commands[name].get_short_help_str(limit)))
            else:
                # Shortened exactly as click shortens a command's own help (the text is one paragraph).
                stand_in = click.Command(name, help=manifest.COMMANDS[name][1])
                rows.append((name, stand_in.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _global_options(command: F) -> F:
    for declaration, attrs in reversed(GLOBAL_OPTIONS):
        command = click.option(*declaration, **attrs)(command)
    return command


@click.group(cls=LazyGroup, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="gpupass")
@_global_options
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, insecure: bool | None, ca_file: str | None, verbosity: int,
        debug: bool | None) -> None:
    """Give a physical GPU to a virtual machine on KVM, VMware ESXi and Hyper-V.

    HOST is a URI (qemu:///system, qemu+ssh://admin@node/system, test:///path/host.xml,
    esxi://user@vcenter/DC, hyperv://user@host), a name from the config file, or a lab host
    such as lab-kvm. Passwords come from the environment (GPUPASS_PASSWORD_<HOST>), the
    config file or the keyring, never from the command line.
    """
    ctx.obj = AppContext(config_path, bool(insecure), ca_file)
    if verbosity or debug:
        _apply_global(ctx, "verbosity", 2 if debug else verbosity)




INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for Ctrl-C


def _exit_interrupted(as_json: bool = False) -> None:
    """Exit 130 at once. A worker may still sit inside an SDK call to a host that never answers (a libvirt
    connect, a socket read): interpreter shutdown can wait on such a thread, so the streams are flushed and the
    process ends without it. Whatever a command undoes on an interrupt has been undone before we get here: a Ctrl-C
    during a change's steps is reported by the command itself (errors.Interrupted), so this one came outside them."""
    import os

    if as_json:  # --json promises one JSON document, an interrupt's too
        try:
            emit_json({"error": "interrupted", "message": "interrupted (Ctrl-C) while no change was being written",
                       "remedy": "`gpupass status HOST` shows what the host holds"})
        except (OSError, ValueError):
            pass
    click.echo("interrupted", err=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(INTERRUPTED_EXIT)


def main(argv: list[str] | None = None) -> None:
    import os

    quiet_stdout()
    # https://no-color.org: any non-empty NO_COLOR turns colour off, even on a terminal.
    color = False if os.environ.get("NO_COLOR") else None
    as_json = "--json" in (sys.argv[1:] if argv is None else argv)
    # --json: one JSON document on stdout, and no spinner on stderr (a backend's waits on its host included); set either
    # way, so that one call of main() in a process (a test's) does not silence the next
    from gpupass.core.progress import quiet

    quiet(as_json)
    try:
        code = cli.main(args=argv, prog_name="gpupass", standalone_mode=False, color=color)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):
            _exit_interrupted(as_json)
        click.echo("aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        _exit_interrupted(as_json)
    except click.exceptions.ClickException as exc:
        if as_json:
            # --json promises one JSON document, errors included: a usage error too.
            emit_json({"error": "usage", "message": exc.format_message(), "remedy": "see `gpupass COMMAND --help`"})
        else:
            exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)

