"""A regular (non-editable) install of this checkout in a throw-away virtualenv, for start-up benchmarks.

An editable install adds a path-hook finder that every start pays for, so `gpupass --help` is timed in a
regular install: `pip install --no-deps --no-build-isolation .` into a fresh venv whose site-packages sees
the current environment's other packages (click, pluggy, libvirt ...) through a .pth file that names a
folder of links to them (never the current environment's own gpupass or its editable hook).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def clean_env() -> dict[str, str]:
    """The environment to run the install with: no PYTHONPATH/PYTHONHOME that could put a checkout first."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def build(directory: Path) -> Path:
    """Create the venv under `directory`; return its bin folder (with python and gpupass)."""
    env = directory / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True, env=clean_env()).stdout.strip())
    links = directory / "deps"
    links.mkdir()
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        name = entry.name
        if name.startswith(("gpupass", "__editable__")) or name.endswith(".pth") or name == "__pycache__":
            continue
        os.symlink(entry, links / name)
    (site / "deps.pth").write_text(f"{links}\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-compile", str(ROOT)], check=True, capture_output=True,
                   env=clean_env())
    # Compile once now, as an installer would, so no timed run pays for writing bytecode: gpupass, and the
    # single-file modules linked above (libvirt.py is one), whose bytecode would sit in a __pycache__ beside the
    # link. Without it every run compiles libvirt.py's 390 kB from source (PYTHONDONTWRITEBYTECODE, set here, or
    # a read-only folder stop Python from keeping it), which a real install never does: the anchor script, which
    # imports little else, would be timed tens of milliseconds slow.
    subprocess.run([str(python), "-m", "compileall", "-q", str(site / "gpupass")], check=True, capture_output=True,
                   env=clean_env())
    subprocess.run([str(python), "-m", "compileall", "-q", "-l", str(links)], check=True, capture_output=True,
                   env=clean_env())
    return env / "bin"
