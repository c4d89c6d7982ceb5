"""Translate vSphere faults into the core's error types by fault TYPE (never by message text)."""

from __future__ import annotations

import http.client
import socket
import ssl

from gpupass.backends.esxi.deadline import CallTimedOut
from gpupass.core.errors import (
    AuthenticationFailed,
    Conflict,
    ConnectionFailed,
    GpupassError,
    NotFound,
    NotSupported,
    OperationFailed,
)


class OutcomeUnknown(GpupassError):
    """A write failed in a way that does not say what it left on the host (a fault the vSphere API reference does not
    document as a refusal before any change). It carries no `rolled_back`: the service reads the host again
    (Backend.observe) instead of believing the step changed nothing."""

    kind = "operation-failed"


class TaskUnfinished(OutcomeUnknown):
    """A vSphere task gpupass sent and stopped waiting for (the host's `task_timeout_s`): still queued or running, so
    the host may carry it out yet. Read back, the step is said to be not known while the task has not ended, and no
    undo of the run writes to the host meanwhile (it would race the task)."""

    def __init__(self, message: str, *, remedy: str | None = None, task: str = "", vm: str = "") -> None:
        super().__init__(message, remedy=remedy)
        self.task, self.vm = task, vm


def _fault_text(fault: object) -> str:
    msg = getattr(fault, "msg", None) or getattr(fault, "reason", None)
    if not msg:
        for lm in getattr(fault, "faultMessage", None) or ():
            msg = getattr(lm, "message", None)
            if msg:
                break
    return f"{type(fault).__name__.split('.')[-1]}" + (f": {msg}" if msg else "")


def translate(error: BaseException | object, action: str, timeout: float | None = None,
              host: str = "the host") -> GpupassError:
    """One core error for a pyvmomi fault (raised or from task.info.error), an ssl error or a socket error."""
    if isinstance(error, GpupassError):
        return error
    if isinstance(error, CallTimedOut) and error.partial:  # answering, too slowly: the call's deadline (deadline.py)
        return ConnectionFailed(f"{action}: {host} was still sending its answer when the call's {error.seconds:g}s ran "
                                "out (the host's timeout bounds each call as a whole); what that request did there is "
                                "not known",
                                remedy="check the host's load and the network to it; for a host this slow raise "
                                       "`timeout` in its [hosts.NAME] table of the config file")
    if isinstance(error, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
        within = f" within {timeout:g}s" if timeout is not None else ""
        return ConnectionFailed(f"{action}: {host} did not answer{within}; what that request did there is not known",
                                remedy="check that vCenter/ESXi is up and reachable; for a slow one raise `timeout` "
                                       "in its [hosts.NAME] table of the config file")
    if isinstance(error, ssl.SSLCertVerificationError):
        return ConnectionFailed(f"{action}: the server's TLS certificate is not trusted ({error.verify_message})",
                                remedy="pass --ca-file with the CA that signed the vCenter/ESXi certificate "
                                       "(or ca_file in the config); --insecure turns verification off")
    if isinstance(error, ssl.SSLError):
        return ConnectionFailed(f"{action}: TLS failed ({error})", remedy="check the port and the TLS setup")
    if isinstance(error, http.client.HTTPException):  # an answer that is no SOAP answer: the endpoint went away
        return ConnectionFailed(f"{action}: {host} closed the connection without an answer ({type(error).__name__}: "
                                f"{error}); what that request did there is not known",
                                remedy="check that the host is up and vpxd/hostd runs")
    if isinstance(error, ConnectionRefusedError):  # nothing listens: the request never reached the host
        return ConnectionFailed(f"{action}: {host} refused the connection ({error}); the request did not reach it",
                                remedy="check the host name, the port and that vpxd/hostd runs")
    if isinstance(error, (socket.error, OSError)) and not hasattr(error, "_wsdlName"):
        return ConnectionFailed(f"{action}: {host}: {error}; what that request did there is not known",
                                remedy="check the host name, the port and that vpxd/hostd runs")
    from pyVmomi import vim, vmodl

    text = f"{action}: {_fault_text(error)}"
    if isinstance(error, (vim.fault.InvalidLogin, vim.fault.NotAuthenticated)):
        return AuthenticationFailed(text, remedy="check the user (percent-encode '@' in the URI) and the password")
    if isinstance(error, vim.fault.NoPermission):
        # "Thrown when an operation is denied because of a privilege not held on a managed object" (pyVmomi's
        # docs/vim/fault/NoPermission.rst, from the API reference): denied, so not carried out
        return OperationFailed(text, remedy="the account lacks a privilege; docs/esxi.md lists the ones gpupass needs",
                               rolled_back=True)
    # HostCommunication and its HostNotConnected are vmodl faults (pyVmomi _typeinfo_core: vmodl.fault.*)
    if isinstance(error, (vmodl.fault.HostCommunication, vim.fault.HostConnectFault)):
        return ConnectionFailed(text, remedy="the ESXi host is not connected to vCenter; reconnect it, then run "
                                             "`gpupass status HOST`")
    if isinstance(error, vim.fault.InvalidPowerState):
        # "thrown if the power operation attempted could not be performed given the current power state of the virtual
        # machine" (pyVmomi docs/vim/fault/InvalidPowerState.rst): not performed
        return OperationFailed(text, remedy="power the VM off first", rolled_back=True)
    if isinstance(error, (vim.fault.InvalidDeviceBacking, vim.fault.InvalidDeviceSpec)):
        # "thrown if a virtual machine creation or configuration fails because a device specification contains an
        # invalid value" (pyVmomi docs/vim/fault/InvalidDeviceSpec.rst): the spec was refused
        return OperationFailed(text, remedy="the device is not an active passthrough device on the VM's host; "
                                            "check `gpupass gpus HOST` (passthrough active) and reboot the host "
                                            "after enabling it", rolled_back=True)
    if isinstance(error, vim.fault.GenericVmConfigFault):
        # "Thrown when a running virtual machine reports an error" (pyVmomi docs/vim/fault/GenericVmConfigFault.rst):
        # nothing says the change was refused before any of it was made, so the host is read again
        return OutcomeUnknown(text, remedy="see vSphere's message; `gpupass check` shows what gpupass expects")
    if isinstance(error, vim.fault.InvalidState):
        # "thrown if the operation failed due to the current state of the system" (pyVmomi
        # docs/vim/fault/InvalidState.rst): refused by its precondition
        return OperationFailed(text, remedy="put the host in maintenance mode, or pass --allow-host-reboot",
                               rolled_back=True)
    if isinstance(error, vim.fault.ConcurrentAccess):
        # what ReconfigVM_Task raises for a ConfigSpec whose changeVersion is no longer the VM's (vSphere API
        # reference, VirtualMachineConfigSpec.changeVersion): the change was not applied
        return Conflict(text, remedy="someone else changed the VM meanwhile; run the command again", rolled_back=True)
    if isinstance(error, vmodl.fault.ManagedObjectNotFound):
        return NotFound(text, remedy="the object was removed meanwhile; run the command again")
    if isinstance(error, (vmodl.fault.NotSupported, vim.fault.NotSupportedHost)):
        return NotSupported(text)
    if isinstance(error, vmodl.fault.SystemError) or isinstance(error, vim.fault.Timedout):
        # an internal error, or Timedout: "thrown when a server abandons an operation that is taking longer than
        # expected" (pyVmomi docs/vim/fault/Timedout.rst): abandoned, not undone -- what it did is not known
        return OutcomeUnknown(text, remedy="vSphere failed internally; see the task in the vSphere client")
    # any other fault: not known to be a refusal before any change, so the host is read again
    return OutcomeUnknown(text, remedy="see vSphere's message; the task is listed in the vSphere client")
