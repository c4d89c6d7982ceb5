"""Product and lab apart: product code never imports lab code, and the product works without the labs.

Lab code is every module inside a package folder named `lab` (core/lab/, backends/<platform>/lab/): the
simulators, host models, lab servers and lab hosts. Everything else under core/ and backends/ is product.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"gpupass.core": ROOT / "core", "gpupass.backends": ROOT / "backends"}


def _modules():
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join([package, *parts]).removesuffix(".__init__")
            yield name, path


def _lab_package(module: str) -> bool:
    """Whether `module` names a lab package or something inside one (core/cli/lab.py is product: the CLI)."""
    parts = module.split(".")
    return module != "gpupass.core.cli.lab" and "lab" in parts


def _imports(name: str, path: Path):
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def test_the_rule_sees_lab_modules_and_their_imports():
    modules = dict(_modules())
    assert _lab_package("gpupass.backends.esxi.lab.simulator")
    assert _lab_package("gpupass.core.lab.process")
    assert not _lab_package("gpupass.core.cli.lab")
    assert not _lab_package("gpupass.backends.kvm.backend")
    lab_modules = [name for name in modules if _lab_package(name)]
    for platform in ("kvm", "esxi", "hyperv"):
        assert f"gpupass.backends.{platform}.lab.host" in lab_modules
    # The walker resolves relative imports (the Hyper-V lab uses them).
    server = modules["gpupass.backends.hyperv.lab.wsman.server"]
    assert any(target.startswith("gpupass.backends.hyperv.lab.hostmodel")
               for _, target in _imports("gpupass.backends.hyperv.lab.wsman.server", server))


def test_product_code_never_imports_lab_code():
    offences = []
    for name, path in _modules():
        if _lab_package(name):
            continue
        for line, target in _imports(name, path):
            if target.startswith("gpupass.") and _lab_package(target):
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not offences, "product code imports lab code:\n" + "\n".join(offences)


def test_the_product_works_without_the_labs():
    """With every lab package unimportable and no lab entry points, backends load and commands run."""
    code = (
        "import importlib.abc, sys\n"
        "class NoLabs(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        parts = name.split('.')\n"
        "        if name.startswith('gpupass.') and 'lab' in parts and name != 'gpupass.core.cli.lab':\n"
        "            raise ImportError(f'{name} is not installed')\n"
        "sys.meta_path.insert(0, NoLabs())\n"
        "from gpupass.core import plugins\n"
        "plugins._GROUP_PREFIX.pop(plugins.LAB_ENTRY_POINT_GROUP)\n"
        "from gpupass.core.cli.main import main\n"
        "sys.argv = ['gpupass'] + sys.argv[1:]\n"
        "main()\n"
    )
    plugins = subprocess.run([sys.executable, "-c", code, "plugins", "--json"], capture_output=True, text=True)
    assert plugins.returncode == 0, plugins.stderr
    assert '"lab_hosts": []' in plugins.stdout and '"problems": []' in plugins.stdout, plugins.stdout
    gpus = subprocess.run([sys.executable, "-c", code, "gpus", "test:///default", "--json"],
                          capture_output=True, text=True)
    assert gpus.returncode == 0, gpus.stderr
    assert '"gpus"' in gpus.stdout
