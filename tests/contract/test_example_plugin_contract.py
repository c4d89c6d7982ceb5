"""The backend contract against docs/plugin-example, as a third-party plugin would run it on itself."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Iterator

import pytest

from gpupass.core import plugins
from gpupass.core.domain.pci import PciAddress
from gpupass.core.target import Target
from gpupass.core.testing import HOSTILE_NAMES, BackendEnv
from gpupass.core.testing.contract import *  # noqa: F401,F403 - the contract's tests and its `backend` fixture

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "plugin-example" / "gpupass_example_backend.py"


@pytest.fixture
def backend_env() -> Iterator[BackendEnv]:
    spec = importlib.util.spec_from_file_location("gpupass_example_backend", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # as an import would (its dataclasses look their module up there)
    spec.loader.exec_module(example)
    plugins.reset_default()
    plugins.register(example, name="example")  # as its entry point would
    open_ = lambda: example.ExampleBackend(Target(uri="example://demo", name="example-demo"))  # noqa: E731
    with open_() as fresh:
        fresh.ex_reset()  # the platform's state lives in the process: start from the seed
    host = example._Api("demo").state  # the platform itself, as another client of it would change it
    for name in HOSTILE_NAMES:  # the example takes any name
        host["vms"][name] = {"state": "off", "memory_gib": 8, "balloon": False, "devices": []}
    try:
        yield BackendEnv(platform="example", open=open_, free_gpu=PciAddress.parse("0000:41:00.0"), off_vm="ml-train",
                         running_vm="web01", owned_gpu=PciAddress.parse("0000:01:00.0"), owner_vm="cad-ws",
                         unreachable=lambda: example.ExampleBackend(Target(uri="example://offline")),
                         remove_vm=lambda name: host["vms"].pop(name), hostile_vms=HOSTILE_NAMES)
    finally:
        plugins.reset_default()
