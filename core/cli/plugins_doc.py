"""Keep docs/plugins.md's samples true: every block between `<!-- generated: NAME -->` and
`<!-- end generated -->` is made here from the code, and tests/unit/test_plugins_doc.py fails when one is stale.

    python -m gpupass.core.cli.plugins_doc            # rewrite the blocks of docs/plugins.md in place

What is generated: the hooks and the signature of the `register` each receives (core/hookspecs.py); the
entry-point sections of the example's and gpupass's pyproject.toml; `gpupass plugins` and `plugins --json` as
they print with the example installed beside gpupass; the error table (core/errors.py); and the parts of
docs/plugin-example/gpupass_example_backend.py the guide quotes. A developer tool: it reads the source tree.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "plugins.md"
EXAMPLE = ROOT / "docs" / "plugin-example"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def signature(function: Callable[..., Any], *, drop_self: bool = False) -> str:
    """`inspect.signature` as the source spells it (annotations are strings under `from __future__ import
    annotations`; shown without their quotes)."""
    sig = inspect.signature(function)
    if drop_self:
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])
    return re.sub(r"'([^']*)'", lambda m: m.group(1) if m.group(1) != "assign" else m.group(0), str(sig))


def hook_names() -> list[str]:
    from gpupass.core import hookspecs

    marker = f"{hookspecs.hookspec.project_name}_spec"
    return sorted(name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, marker))


def _hooks() -> str:
    from gpupass.core import hookspecs

    lines = ["```python"]
    for name in hook_names():
        hook = getattr(hookspecs, name)
        register = hook.__annotations__["register"]
        lines += [f"def {name}{signature(hook)}", f"    # {inspect.getdoc(hook)}",
                  f"    # {register}: register{signature(getattr(hookspecs, register).__call__, drop_self=True)}", ""]
    return "\n".join(lines[:-1] + ["```"])


def _entry_points(pyproject: Path, group: str, keys: tuple[str, ...] | None = None) -> str:
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    points = data["project"]["entry-points"][group]
    section = group if re.fullmatch(r"[\w-]+", group) else json.dumps(group)
    lines = ["```toml", f"[project.entry-points.{section}]"]
    lines += [f'{key} = "{value}"' for key, value in points.items() if keys is None or key in keys]
    return "\n".join([*lines, "```"])


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpupass_example_backend", EXAMPLE / "gpupass_example_backend.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def _installed_with_the_example() -> Any:
    """The registry `gpupass plugins` shows after `pip install ./docs/plugin-example` beside gpupass: the
    built-in plugins and labs, the example, and the versions their distributions declare."""
    from importlib.metadata import entry_points, version

    from gpupass.core import plugins

    built_in = [(point.name, point.load()) for group in (plugins.ENTRY_POINT_GROUP, plugins.LAB_ENTRY_POINT_GROUP)
                for point in entry_points(group=group) if point.value.startswith("gpupass.")]
    manager = plugins.make_plugin_manager(load_entry_points=False)
    for name, module in built_in:
        manager.register(module, name=name if not name.startswith("lab-") else f"labs:{name}")
    manager.register(load_example(), name="example")
    registry = plugins.collect(manager)
    example = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    registry.versions = {**{name: version("gpupass") for name, _ in built_in}, "example": example}
    return registry


def _plugins_command(*arguments: str) -> str:
    from click.testing import CliRunner

    from gpupass.core.cli.commands import plugins as command
    from gpupass.core.cli.main import AppContext

    app = AppContext()
    app.__dict__["registry"] = _installed_with_the_example()  # functools.cached_property reads it from here
    result = CliRunner().invoke(command, list(arguments), obj=app, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output.rstrip("\n")


def _plugins_text() -> str:
    return "\n".join(["```console", "$ gpupass plugins", _plugins_command(), "```"])


def _plugins_json() -> str:
    document = json.loads(_plugins_command("--json"))
    document["backends"] = [b for b in document["backends"] if b["plugin"] == "example"] + ["..."]
    document["lab_hosts"] = document["lab_hosts"][:1] + ["..."]
    document["rules"] = [r for r in document["rules"] if r["plugin"] == "example"] + ["..."]
    text = json.dumps(document, indent=2)
    return "\n".join(["```json", "$ gpupass plugins --json   (shortened where it says \"...\")",
                      text.replace('"..."', "..."), "```"])


def _errors() -> str:
    from gpupass.core import errors

    classes = [c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, errors.GpupassError)
               and c is not errors.GpupassError and c.__module__ == errors.__name__]
    rows = ["| class | `kind` | exit | when |", "| --- | --- | --- | --- |"]
    for error in classes:
        when = " ".join((error.__dict__.get("__doc__") or "").split())  # its own, not a base class's
        rows.append(f"| `{error.__name__}` | `{error.kind}` | {error.exit_code} | {when} |")
    return "\n".join(rows)


def _source(*names: str, path: Path = EXAMPLE / "gpupass_example_backend.py") -> Callable[[], str]:
    """The definitions `names` (top-level or `Class.method`) of a module, as they are in its file."""
    def render() -> str:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        lines = text.splitlines()
        chunks = []
        for name in names:
            node = _find(tree, name.split("."))
            start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            assert node.end_lineno is not None
            chunks.append("\n".join(lines[start - 1:node.end_lineno]))
        return "\n".join(["```python", "\n\n".join(chunks), "```"])
    return render


def _find(tree: ast.AST, path: list[str]) -> ast.stmt:
    body = getattr(tree, "body", [])
    for node in body:
        names = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        if getattr(node, "name", None) == path[0] or path[0] in names:
            return node if len(path) == 1 else _find(node, path[1:])
    raise KeyError(".".join(path))


GENERATORS: dict[str, Callable[[], str]] = {
    "hooks": _hooks,
    "example-entry-point": lambda: _entry_points(EXAMPLE / "pyproject.toml", "gpupass"),
    "lab-entry-point": lambda: _entry_points(ROOT / "pyproject.toml", "gpupass.labs", ("lab-kvm",)),
    "plugins": _plugins_text,
    "plugins-json": _plugins_json,
    "errors": _errors,
    "example-errors": _source("ERRORS", "ExampleBackend._call"),
    "example-ex-reset": _source("ExampleBackend.ex_reset"),
    "example-backend-hook": _source("gpupass_register_backends"),
    "example-rules-hook": _source("gpupass_register_rules"),
    "kvm-backend-hook": _source("gpupass_register_backends", path=ROOT / "backends" / "kvm" / "plugin.py"),
    "kvm-lab-hook": _source("gpupass_register_lab_hosts", path=ROOT / "backends" / "kvm" / "lab" / "plugin.py"),
}


def render(text: str) -> str:
    """`text` (docs/plugins.md) with every generated block made again; an unknown block name is an error."""
    def fill(match: re.Match[str]) -> str:
        return match.group(1) + GENERATORS[match["name"]]() + "\n" + match.group(4)

    return BLOCK.sub(fill, text)


def blocks(text: str) -> list[str]:
    return [m["name"] for m in BLOCK.finditer(text)]


if __name__ == "__main__":
    GUIDE.write_text(render(GUIDE.read_text(encoding="utf-8")), encoding="utf-8")
    sys.stdout.write(f"rewrote {len(blocks(GUIDE.read_text(encoding='utf-8')))} generated blocks of {GUIDE}\n")
