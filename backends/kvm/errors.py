"""Translate libvirt errors into the core's error types by error code (never by message text)."""

from __future__ import annotations

from typing import Any

from gpupass.core.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    GpupassError,
    NotFound,
    NotSupported,
    OperationFailed,
)


def translate(libvirt: Any, error: Any, action: str, *, connecting: bool = False) -> GpupassError:
    """`error` (a libvirt.libvirtError) as the core's type, chosen by its error code; `connecting` when it
    came from virConnectOpen, whatever its code."""
    code = error.get_error_code()
    message = f"{action}: {error.get_error_message() or error}"
    auth = {libvirt.VIR_ERR_AUTH_FAILED, getattr(libvirt, "VIR_ERR_AUTH_CANCELLED", -1),
            getattr(libvirt, "VIR_ERR_AUTH_UNAVAILABLE", -1)}
    if code in auth:
        return AuthenticationFailed(message, remedy="check the user and the credential for this host")
    if connecting:
        # Whatever stops virConnectOpen (daemon down, bad socket path, an unreadable test-driver file) means
        # the host could not be opened: nothing was read or changed.
        return ConnectionFailed(message, remedy="check that libvirtd runs on the host and the URI is right")
    if code in {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_NODE_DEVICE}:
        return NotFound(message)
    if code in {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED}:
        return NotSupported(message, remedy="the host's libvirt driver does not offer this call (see libvirt's message)")
    if code == libvirt.VIR_ERR_CONFIG_UNSUPPORTED:
        # e.g. "host doesn't support passthrough of host PCI devices" on a live attach or a VM start.
        return NotSupported(message, remedy="this host or its QEMU cannot run that configuration; for PCI "
                                            "passthrough the host needs the IOMMU on (intel_iommu=on / AMD-Vi) "
                                            "and the vfio-pci module")
    if is_transport_error(libvirt, error):
        return ConnectionFailed(message, remedy="the connection to libvirtd was lost; check the host")
    # The daemon answered this call with a refusal: the call was not carried out (a transport failure, where it may
    # have been, is ConnectionFailed above). A step whose own write went through before this call says "not known"
    # instead (backend.py, _after_its_write).
    return OperationFailed(message, remedy="see libvirt's message above; the host's libvirtd log has details",
                           rolled_back=True)


def is_transport_error(libvirt: Any, error: Any) -> bool:
    """Did the connection fail under this call (so the daemon may or may not have carried it out), as opposed to
    the daemon answering with a refusal?

    Errors of the RPC domain come from the client's own transport (libvirt src/rpc/virnetclient.c and
    virnetsocket.c, VIR_FROM_THIS VIR_FROM_RPC), not from the daemon's drivers: a libvirtd killed under an open
    connection gives "Cannot write data: Broken pipe" (VIR_ERR_SYSTEM_ERROR), then "client socket is closed"
    (VIR_ERR_INTERNAL_ERROR) -- tests/integration/libvirtd/test_kvm_errors_libvirtd.py; a connection closed while
    a reply was awaited gives "End of file while reading data" (VIR_ERR_SYSTEM_ERROR) --
    tests/integration/libvirtd/test_kvm_fault_matrix_libvirtd.py.
    """
    code = error.get_error_code()
    return code in {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC} or (
        error.get_error_domain() == libvirt.VIR_FROM_RPC
        and code in {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR})
