"""What a platform can do, as its backend declares it (Backend.capabilities)."""

from __future__ import annotations

from gpupass.core.domain.sharing import ShareMode
from gpupass.core.records import record


@record(frozen=True)
class Capabilities:
    """What a platform can do; requests for anything else get a clear 'not supported on X'."""

    live_attach: bool = False
    firmware_change: bool = True
    hide_hypervisor: bool = False
    dynamic_binding: bool = False
    # ESXi-style: the host must switch a device to passthrough (and may need a reboot) before any VM uses it.
    host_passthrough_switch: bool = False
    # The share modes (core/domain/sharing.py) the backend can give to a VM and take back; a share of another
    # mode is listed by `gpus` but refused by assign with "not supported on X".
    share_modes: tuple[ShareMode, ...] = ()
    # The platform-only settings a share request may carry (AssignOptions.ex_share_options), by name; any other is
    # refused with "not supported on X".
    ex_share_options: tuple[str, ...] = ()
