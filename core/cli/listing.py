"""What the listing commands (gpus, vms, status) do: read the host once, print a table or one JSON document.

Their click commands (commands.py) call these functions, and so does the console script (entry.py) for their
plain forms, `gpupass gpus [HOST] [--json]`, without importing click or any command module: a listing as a
program should cost little more than a hand-written SDK script making the same calls (issue 11;
tests/bench/bench_kvm.py). Only command lines click would read the same way take that path (`plain_form`);
anything else (options, --help, shell completion) goes through click, and errors are reported by the same
function the click commands use.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpupass.core.cli.app import AppContext
    from gpupass.core.domain.inventory import HostFacts

COMMANDS = ("gpus", "vms", "status")
# click's shell completion runs when this variable is set (click.core.BaseCommand.main, `_{PROG}_COMPLETE`).
COMPLETION_VARIABLE = "_GPUPASS_COMPLETE"


def plain_form(argv: list[str], environ: dict[str, str] | Any) -> tuple[str, str | None, bool] | None:
    """(command, HOST or None, --json) when argv is one listing command with at most a HOST and --json, in
    either order; None for anything else, which click parses."""
    if not argv or argv[0] not in COMMANDS or COMPLETION_VARIABLE in environ:
        return None
    rest = argv[1:]
    flags = [word for word in rest if word == "--json"]
    hosts = [word for word in rest if word != "--json"]
    if len(flags) > 1 or len(hosts) > 1 or any(not word or word.startswith("-") for word in hosts):
        return None
    return argv[0], (hosts[0] if hosts else None), bool(flags)


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


def run(command: str, host: str | None, json_output: bool) -> None:
    """The console script's quick path: what the click command prints, and the same errors and exit codes."""
    import os

    from gpupass.core.cli.app import AppContext, quiet_stdout
    from gpupass.core.errors import GpupassError

    quiet_stdout()
    app = AppContext()
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
