"""Generate docs/migration.md from the backends themselves: `python -m gpupass.core.cli.migration_doc`."""

from __future__ import annotations

from gpupass.core.migration import NOT_DONE, SETTINGS
from gpupass.core.plugins import default_registry

PLATFORM_ORDER = ("esxi", "kvm", "hyperv")

INTRO = """\
# Moving GPU VMs between platforms

`gpupass migrate plan SRC_HOST VM DST_HOST` reads the VM's GPU setup at the source (devices, models,
companions, firmware, memory and reservation, MMIO window, hiding, static or dynamic binding), picks
equivalent free GPUs at the destination and prints the destination's plan in the same form as
`gpupass plan`, with the destination's own preflight. Once your migration tool has created the VM at the
destination, `gpupass migrate apply SRC_HOST VM DST_HOST [--release-source]` assigns the GPUs there.

How equivalents are picked: the same vendor:device first; a GPU of the same family (Ampere, Hopper, ...)
only with the warning `migrate-family-substitute`; none free gives the blocker `migrate-no-equivalent`.
All of a VM's GPUs are picked on one host (on a vCenter, one ESXi host), free, passthrough-capable and
alone in their IOMMU group with their companions.

## What maps to what

Generated from each backend's `native_settings` (`python -m gpupass.core.cli.migration_doc > docs/migration.md`;
`tests/unit/test_migration_doc.py` fails when this table is stale). gpupass sets what the GPUs need at the
destination; "—" means the platform has no equivalent and the plan says so.
"""


def _cell(text: str | None) -> str:
    if text is None:
        return "—"
    return f"`{text}`".replace("|", "\\|") if "<" in text else text.replace("|", "\\|")


def render() -> str:
    backends = {b.platform: b for b in default_registry().backends}
    platforms = [p for p in PLATFORM_ORDER if p in backends] + sorted(set(backends) - set(PLATFORM_ORDER))
    lines = [INTRO, "| setting | " + " | ".join(platforms) + " |", "|---" * (len(platforms) + 1) + "|"]
    for setting, meaning in SETTINGS.items():
        cells = [_cell(backends[p].native_settings.get(setting)) for p in platforms]
        lines.append(f"| **{setting}**: {meaning} | " + " | ".join(cells) + " |")
    lines += ["", "## What gpupass does not do", ""] + [f"- {note}" for note in NOT_DONE]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
