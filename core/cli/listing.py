"""What the listing commands (gpus, vms, status) do: read the host once, print a table or one JSON document.

Their click commands (commands.py) call these functions, and so does the console script (entry.py) for their
plain forms, `gpupass [--config FILE] [--insecure] [--ca-file FILE] gpus [HOST] [--json]` (the global options
before or after the command, as click takes them), without importing click or any command module: a listing as a
program should cost little more than a hand-written SDK script making the same calls (issue 11;
tests/bench/bench_kvm.py). Only command lines click would read the same way take that path (`plain_form`);
anything else (other options, an option twice, --help, shell completion) goes through click, and errors are
reported by the same function the click commands use.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from gpupass.core.cli.app import AppContext
    from gpupass.core.domain.inventory import HostFacts

COMMANDS = ("gpus", "vms", "status")
# The global options (gpupass.core.cli.main.GLOBAL_OPTIONS) a plain form may carry, by AppContext's argument name.
VALUE_OPTIONS = {"--config": "config_path", "--ca-file": "ca_file"}
FLAG_OPTIONS = {"--insecure": "insecure"}
# click's shell completion runs when this variable is set (click.core.BaseCommand.main, `_{PROG}_COMPLETE`).
COMPLETION_VARIABLE = "_GPUPASS_COMPLETE"


class PlainForm(NamedTuple):
    command: str
    host: str | None
    as_json: bool
    options: dict[str, Any]  # AppContext's keyword arguments: config_path, insecure, ca_file


def plain_form(argv: list[str], environ: dict[str, str] | Any) -> PlainForm | None:
    """The command line as a PlainForm when it is one listing command with at most a HOST and --json after it, and
    each global option at most once, before or after the command (`--config FILE` or `--config=FILE`); None for
    anything else, which click parses."""
    if COMPLETION_VARIABLE in environ:
        return None
    words, flags = iter(argv), 0
    positional: list[str] = []
    options: dict[str, Any] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if name in VALUE_OPTIONS and VALUE_OPTIONS[name] not in options:
            value = value if equals else next(words, "")
            if not value or value.startswith("-"):  # click's own reading or error: leave it to click
                return None
            options[VALUE_OPTIONS[name]] = value
        elif word in FLAG_OPTIONS and FLAG_OPTIONS[word] not in options:
            options[FLAG_OPTIONS[word]] = True
        elif word == "--json" and positional and not flags:  # a command's option: after the command only
            flags += 1
        elif not word or word.startswith("-"):
            return None
        else:
            positional.append(word)
    if not positional or positional[0] not in COMMANDS or len(positional) > 2:
        return None
    return PlainForm(positional[0], positional[1] if len(positional) > 1 else None, bool(flags), options)


def read(app: AppContext, host: str | None) -> HostFacts:
    from gpupass.core.cli.complete import remember

    with app.open(host) as backend:
        facts = backend.inventory()
    remember(host or backend.target.label, facts)  # VM and GPU names for shell completion
    return facts


def as_document(command: str, facts: HostFacts) -> dict[str, Any]:
    from gpupass.core import serialize

    if command == "gpus":
        return {"host": serialize.host_to_dict(facts.host), "gpus": [serialize.gpu_to_dict(g) for g in facts.gpus]}
    if command == "vms":
        return {"host": serialize.host_to_dict(facts.host), "vms": [serialize.vm_to_dict(v) for v in facts.vms]}
    return serialize.facts_to_dict(facts)


def as_text(command: str, app: AppContext, host: str | None, facts: HostFacts) -> str:
    from gpupass.core.cli import render

    if command == "gpus":
        # The MMIO policy of the host's platform, from the plugins that opened it (not a scan of every plugin).
        backends = app.registry_for(host).backends
        policy = next((b.mmio_policy for b in backends if b.platform == facts.host.platform), None)
        return render.gpus(facts, policy)
    return render.vms(facts) if command == "vms" else render.status(facts)


def as_json(document: Any) -> str:
    from gpupass.core.jsontext import dumps  # json.dumps(indent=2)'s text, as the click commands print it

    return dumps(document)


def run(command: str, host: str | None, json_output: bool, options: dict[str, Any]) -> None:
    """The console script's quick path: what the click command prints, and the same errors and exit codes."""
    import os

    from gpupass.core.cli.app import AppContext, quiet_stdout
    from gpupass.core.errors import GpupassError

    quiet_stdout()
    app = AppContext(**options)
    try:
        facts = read(app, host)
        text = as_json(as_document(command, facts)) if json_output else as_text(command, app, host, facts)
    except GpupassError as exc:
        from gpupass.core.cli.main import report_error

        # https://no-color.org, as gpupass.core.cli.main.main applies it to click's context
        report_error(exc, json_output, {"host": host, "as_json": json_output},
                     color=False if os.environ.get("NO_COLOR") else None)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        from gpupass.core.cli.main import _exit_interrupted

        _exit_interrupted()
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    sys.exit(0)
