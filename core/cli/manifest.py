"""Where each subcommand lives and its one-line help, readable without importing click or any command.

`gpupass --help` lists the commands from here, and `gpupass gpus ...` imports only the module that defines
`gpus` (the click LazyGroup pattern). tests/unit/test_cli_lazy.py checks every line here against the
command's own docstring, so a changed docstring fails a test instead of drifting silently.
"""

from __future__ import annotations

# name -> (module that registers it on the `cli` group, its short help as click renders it)
COMMANDS: dict[str, tuple[str, str]] = {
    "apply": ("gpupass.core.cli.declarative",
              "Converge the hosts to FILE: each change goes through the normal plan, preflight and rollback."),
    "assign": ("gpupass.core.cli.commands", "Give GPU(s) and their companions to VM."),
    "check": ("gpupass.core.cli.commands", "Run the preflight checks for giving GPU(s) to VM."),
    "completion": ("gpupass.core.cli.completion", "Print the shell completion script for bash, zsh or fish."),
    "diff": ("gpupass.core.cli.declarative", "Show what `apply FILE` would change."),
    "export": ("gpupass.core.cli.declarative",
               "Write the hosts' current assignments as a YAML file that `diff` and `apply` read."),
    "fleet": ("gpupass.core.cli.fleet", "Many hosts at once: where every GPU is, and which hosts can take a VM."),
    "gpus": ("gpupass.core.cli.commands",
             "List the host's GPUs: companions, IOMMU group, MMIO need, passthrough state and owner VM."),
    "hosts": ("gpupass.core.cli.fleet", "Named hosts in the config file (and the lab hosts): add, list, remove, test."),
    "lab": ("gpupass.core.cli.lab", "The built-in lab hosts (no hypervisor needed): status, up, down, reset, demo."),
    "migrate": ("gpupass.core.cli.migrate",
                "Plan (and apply) a GPU VM's move between hosts or platforms; gpupass does not move the VM itself."),
    "plan": ("gpupass.core.cli.commands",
             "Show the ordered steps of an assignment, what needs the VM off or a host reboot, and what the VM loses."),
    "plugins": ("gpupass.core.cli.commands",
                "List the loaded plugins, the backends and URI schemes they provide, and whether their SDK is "
                "installed."),
    "release": ("gpupass.core.cli.commands",
                "Give GPU(s) back to the host (all the VM's GPUs when none is named) and undo what assign changed."),
    "snapshot": ("gpupass.core.cli.commands",
                 "Save the host's facts to FILE, so check, plan, gpus and migrate plans work offline from it."),
    "status": ("gpupass.core.cli.commands",
               "Summarise the host: IOMMU, free and assigned GPUs, and which VM holds which."),
    "vms": ("gpupass.core.cli.commands", "List the host's VMs with power state, firmware, memory and PCI devices."),
}
