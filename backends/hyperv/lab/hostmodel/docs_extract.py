"""Read cmdlet parameter sets out of Microsoft's cmdlet reference (MicrosoftDocs/windows-powershell-docs).

The host model binds parameters the way these pages document them (``cmdlet_docs.py`` is generated from them).
Each page is platyPS markdown: ``## SYNTAX`` lists the parameter sets (``### Name (Default)``), ``## PARAMETERS``
has one ``### -Param`` section per parameter with a YAML block per group of sets (Type, Parameter Sets,
Aliases, Required, Position, Accept pipeline input, Accept wildcard characters).

Regenerate (needs a checkout or a bare mirror of the docs repository)::

    python -m gpupass.backends.hyperv.lab.hostmodel.docs_extract DOCS_REPO

which rewrites ``cmdlet_docs.py`` and the checked-in extract under ``tests/fixtures/docs/windows-powershell-docs/``
(the SYNTAX and PARAMETERS sections of each page, verbatim), against which a test checks the table.
"""
from __future__ import annotations

import pprint
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

DOCSET = "docset/winserver2022-ps"
PAGES = ("Hyper-V/Get-VMHost.md", "Hyper-V/Get-VM.md", "Hyper-V/Set-VM.md", "Hyper-V/Get-VMSnapshot.md",
         "Hyper-V/Dismount-VMHostAssignableDevice.md", "Hyper-V/Mount-VMHostAssignableDevice.md",
         "Hyper-V/Get-VMHostAssignableDevice.md", "Hyper-V/Add-VMAssignableDevice.md",
         "Hyper-V/Remove-VMAssignableDevice.md", "Hyper-V/Get-VMAssignableDevice.md",
         "Hyper-V/Get-VMHostPartitionableGpu.md", "Hyper-V/Get-VMGpuPartitionAdapter.md",
         "Hyper-V/Add-VMGpuPartitionAdapter.md", "Hyper-V/Remove-VMGpuPartitionAdapter.md",
         "Hyper-V/Set-VMHostPartitionableGpu.md",
         "PnpDevice/Get-PnpDevice.md", "PnpDevice/Get-PnpDeviceProperty.md", "PnpDevice/Disable-PnpDevice.md",
         "PnpDevice/Enable-PnpDevice.md")
ALL_SETS = "__AllParameterSets"      # PowerShell's name for the one set of a cmdlet without named sets


def _section(text: str, title: str) -> str:
    m = re.search(rf"^## {title}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    return m.group(1) if m else ""


def parse_page(text: str) -> dict[str, Any]:
    """The parameter sets and parameters one cmdlet page documents."""
    syntax = _section(text, "SYNTAX")
    heads = re.findall(r"^### (.+?)\s*$", syntax, re.M)
    default = next((h[: -len(" (Default)")] for h in heads if h.endswith(" (Default)")), None)
    sets = [h[: -len(" (Default)")] if h.endswith(" (Default)") else h for h in heads] or [ALL_SETS]
    if default is None:
        default = sets[0]
    params: dict[str, Any] = {}
    for name, body in re.findall(r"^### -(\S+)\s*$(.*?)(?=^### |\Z)", _section(text, "PARAMETERS"), re.M | re.S):
        entry: dict[str, Any] = {"sets": {}}
        for block in re.findall(r"```yaml\s*\n(.*?)```", body, re.S):
            fields = dict((k.strip(), v.strip()) for k, v in
                          (line.split(":", 1) for line in block.splitlines() if ":" in line))
            entry["type"] = fields["Type"]
            entry["aliases"] = [a.strip() for a in fields.get("Aliases", "").split(",") if a.strip()]
            entry["pipeline"] = fields.get("Accept pipeline input", "False")
            entry["wildcards"] = fields.get("Accept wildcard characters", "False") == "True"
            members = fields.get("Parameter Sets", "(All)")
            names = sets if members == "(All)" else [s.strip() for s in members.split(",")]
            if len(sets) == 1:
                # a one-set page naming a set it does not have (Dismount-VMHostAssignableDevice's -ComputerName
                # says "Path"): there is only the one set
                names = sets
            position = fields.get("Position", "Named")
            for s in names:
                entry["sets"][s] = {"required": fields.get("Required", "False") == "True",
                                    "position": None if position == "Named" else int(position)}
        params[name] = entry
    return {"default_set": default, "sets": sets, "parameters": params}


def extract_sections(text: str) -> str:
    """The SYNTAX and PARAMETERS sections of a page, verbatim (what the checked-in extract keeps)."""
    out = []
    for title in ("SYNTAX", "PARAMETERS"):
        m = re.search(rf"^## {title}\s*$.*?(?=^## |\Z)", text, re.M | re.S)
        if m:
            out.append(m.group(0).rstrip() + "\n")
    return "\n".join(out)


def _read(repo: Path, path: str) -> str:
    if (repo / path).exists():
        return (repo / path).read_text(encoding="utf-8")
    return subprocess.run(["git", f"--git-dir={repo}", "show", f"HEAD:{path}"], check=True, capture_output=True,
                          text=True).stdout


def _commit(repo: Path) -> str:
    git = ["git", f"--git-dir={repo / '.git'}"] if (repo / ".git").exists() else ["git", f"--git-dir={repo}"]
    return subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def regenerate(repo: Path, root: Path) -> None:
    commit = _commit(repo)
    table: dict[str, Any] = {}
    fixtures = root / "tests" / "fixtures" / "docs" / "windows-powershell-docs"
    for page in PAGES:
        path = f"{DOCSET}/{page}"
        text = _read(repo, path)
        cmdlet = Path(page).stem
        table[cmdlet] = {"source": path, **parse_page(text)}
        out = fixtures / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"<!-- MicrosoftDocs/windows-powershell-docs {path} @{commit}: the SYNTAX and PARAMETERS "
                       "sections, verbatim -->\n" + extract_sections(text), encoding="utf-8")
    module = Path(__file__).with_name("cmdlet_docs.py")
    module.write_text(
        '"""Parameter sets of the cmdlets the host model runs, as Microsoft documents them.\n\n'
        "Generated by ``python -m gpupass.backends.hyperv.lab.hostmodel.docs_extract`` from\n"
        f"MicrosoftDocs/windows-powershell-docs @{commit} ({DOCSET}); do not edit by hand.\n"
        '"""\n'
        f"REPOSITORY = \"MicrosoftDocs/windows-powershell-docs\"\nCOMMIT = \"{commit}\"\n\n"
        f"CMDLETS = {pprint.pformat(table, width=116, sort_dicts=True)}\n", encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover - a maintenance tool
    if len(sys.argv) != 2:
        sys.exit("usage: python -m gpupass.backends.hyperv.lab.hostmodel.docs_extract DOCS_REPO")
    # the checkout's root (where pyproject.toml is), wherever this module sits in it
    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
    regenerate(Path(sys.argv[1]), root)
