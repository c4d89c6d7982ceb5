"""Translate vSphere faults into the core's error types by fault TYPE (never by message text)."""

from __future__ import annotations

import http.client
import socket
import ssl

from gpupass.core.errors import (
    AuthenticationFailed,
    Conflict,
    ConnectionFailed,
    GpupassError,
    NotFound,
    NotSupported,
    OperationFailed,
)


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
        return OperationFailed(text, remedy="the account lacks a privilege; docs/esxi.md lists the ones gpupass needs")
    # HostCommunication and its HostNotConnected are vmodl faults (pyVmomi _typeinfo_core: vmodl.fault.*)
    if isinstance(error, (vmodl.fault.HostCommunication, vim.fault.HostConnectFault)):
        return ConnectionFailed(text, remedy="the ESXi host is not connected to vCenter; reconnect it, then run "
                                             "`gpupass status HOST`")
    if isinstance(error, vim.fault.InvalidPowerState):
        return OperationFailed(text, remedy="power the VM off first")
    if isinstance(error, (vim.fault.InvalidDeviceBacking, vim.fault.InvalidDeviceSpec)):
        return OperationFailed(text, remedy="the device is not an active passthrough device on the VM's host; "
                                            "check `gpupass gpus HOST` (passthrough active) and reboot the host "
                                            "after enabling it")
    if isinstance(error, vim.fault.GenericVmConfigFault):
        return OperationFailed(text, remedy="see vSphere's message; `gpupass check` shows what gpupass expects")
    if isinstance(error, vim.fault.InvalidState):
        return OperationFailed(text, remedy="put the host in maintenance mode, or pass --allow-host-reboot")
    if isinstance(error, vim.fault.ConcurrentAccess):
        # what ReconfigVM_Task raises for a ConfigSpec whose changeVersion is no longer the VM's (vSphere API
        # reference, VirtualMachineConfigSpec.changeVersion): the change was not applied
        return Conflict(text, remedy="someone else changed the VM meanwhile; run the command again")
    if isinstance(error, vmodl.fault.ManagedObjectNotFound):
        return NotFound(text, remedy="the object was removed meanwhile; run the command again")
    if isinstance(error, (vmodl.fault.NotSupported, vim.fault.NotSupportedHost)):
        return NotSupported(text)
    if isinstance(error, vmodl.fault.SystemError) or isinstance(error, vim.fault.Timedout):
        return OperationFailed(text, remedy="vSphere failed internally; see the task in the vSphere client")
    return OperationFailed(text, remedy="see vSphere's message; the task is listed in the vSphere client")
