"""Model of a Hyper-V host and a small PowerShell interpreter that drives it."""
from .interp import RunResult, ScriptError, UnsupportedConstruct, parse, run_script, syntax_errors
from .lab import lab_host, load_lab
from .model import Checkpoint, HostModel, HyperVError, PnpDevice, VirtualMachine

__all__ = ["Checkpoint", "HostModel", "HyperVError", "PnpDevice", "RunResult", "ScriptError",
           "UnsupportedConstruct", "VirtualMachine", "lab_host", "load_lab", "parse", "run_script", "syntax_errors"]
