"""The Hyper-V backend: Discrete Device Assignment with PowerShell sent over WinRM (pywinrm).

Every host call is one PowerShell script from :mod:`gpupass.backends.hyperv.scripts`, run with one WinRM
command (`self.round_trips` counts them): inventory is one script, an assignment is one script (which
rolls itself back), a release is one script. pywinrm is imported only when a host is opened.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import dataclasses
import math
import logging
import json
import time
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

from gpupass.backends.hyperv import partitioning, scripts
from gpupass.backends.hyperv.records import (count_changes, give_back_by_hand, left_on_host, partition_releases,
                                             stopped_runs)
from gpupass.backends.hyperv.addressing import address_map
from gpupass.backends.hyperv.errors import (RequestOverran, ScriptFailedAfterChanges, ScriptStillRunning,
                                            ScriptStopped, from_exception, from_exit, from_script_result, parse_clixml)
from gpupass.backends.hyperv.state import LegacySettings
from gpupass.backends.hyperv.steps import (AddPartition, Assign, FinishCountChange, FinishRelease, Release,
                                            RemovePartitions, SetPartitionCount)
from gpupass.core.domain import catalog
from gpupass.core.domain.context import Capabilities, CheckContext
from gpupass.core.domain.findings import FeatureLoss
from gpupass.core.domain.grouping import group_gpus
from gpupass.core.domain.inventory import Firmware, Gpu, Host, HostFacts, PassthroughState, PowerState, Vm
from gpupass.core.domain.mmio import GiB, MiB, MmioPolicy, format_bytes
from gpupass.core.domain.pci import Bar, PciAddress, PciFunction
from gpupass.core.domain.plan import Step
from gpupass.core.domain.sharing import ShareMode
from gpupass.core.errors import (BackendUnavailable, Conflict, ConnectionFailed, GpupassError, OperationFailed,
                                  UsageError)
from gpupass.core.ports import Backend, StepState
from gpupass.core.progress import waiting
from gpupass.core.target import Target

log = logging.getLogger("gpupass.hyperv")

TRANSPORTS = ("ntlm", "kerberos", "credssp", "basic")
# Microsoft's DDA guide sets the low MMIO space to 3 GB for devices with 32-bit BARs.
LOW_MMIO = 3 * GiB
# PnP classes -> PCI class codes, only for a function whose ids carry no CC_ part (the PCI bus driver
# always reports one: "Identifiers for PCI Devices"); these are the usual codes for each class.
_CLASS_CODES = {"display": 0x030000, "media": 0x040300, "net": 0x020000, "usb": 0x0C0300, "scsiadapter": 0x010800}


def class_code(fn: dict[str, Any]) -> int:
    """The PCI class code of an inventory function: the hex after CC_ in its hardware/compatible ids
    (6 digits: class, subclass, interface; 4 digits: class and subclass), else guessed from the PnP class."""
    text = str(fn.get("ClassCode") or "")
    try:
        value = int(text, 16)
    except ValueError:
        return _CLASS_CODES.get(str(fn.get("Class") or "").lower(), 0xFF0000)
    return value << 8 if len(text) == 4 else value
# A poll of a script's output is answered at its OperationTimeout, the whole seconds left (at least 1: up to 1 s past
# the call's deadline), plus its way back on a loaded host: the margin each request of a call has past that deadline.
_REPLY_MARGIN = 3.0
# Ending a script that outran the host's timeout (Signal terminate, then the shell's Delete): at most this long, or the
# host's timeout where that is shorter.
_WIND_DOWN_S = 10
_STATES = {"off": PowerState.OFF, "running": PowerState.RUNNING, "paused": PowerState.PAUSED,
           "saved": PowerState.SUSPENDED}


def _winrm() -> Any:
    try:
        import winrm
    except ImportError as exc:
        raise BackendUnavailable("the hyperv backend needs pywinrm, which is not installed",
                                 remedy="pip install 'gpupass[hyperv]'") from exc
    return winrm


def _ids(instance_id: str) -> tuple[int, int]:
    vendor = device = 0
    for part in instance_id.split("\\", 2)[1:2][0].split("&") if "\\" in instance_id else ():
        if part.upper().startswith("VEN_"):
            vendor = int(part[4:], 16)
        elif part.upper().startswith("DEV_"):
            device = int(part[4:], 16)
    return vendor, device


FOUR_GIB = 4 * GiB


def memory_bars(mem: Any) -> tuple[Bar, ...] | None:
    """The BARs a function holds on the host, from the inventory's "Mem" ([start0, end0, start1, end1, ...], the
    inclusive bounds of each Win32_DeviceMemoryAddress range); None when it holds none (disabled, dismounted, absent:
    Win32_PnPAllocatedResource lists only resources in use), so the catalog can stand in.

    Windows reports where each range lies, not the BAR's type: a range that ends above 4 GiB is a 64-bit BAR; one
    wholly below 4 GiB is counted as 32-bit (it may be a 64-bit BAR the firmware placed low), so it is planned into
    the low MMIO window, which gpupass then sets to 3 GB as Microsoft's DDA guide does.  Ranges are numbered in the
    order Windows lists them: the numbers are not BAR indexes.
    """
    if not mem:
        return None
    values = [int(v) for v in mem]
    if len(values) % 2:
        raise OperationFailed(f"the host reported an odd number of memory range bounds ({len(values)})",
                              rolled_back=True)  # a read: nothing was changed
    bars = []
    for i, (start, end) in enumerate(zip(values[0::2], values[1::2], strict=True)):
        if end < start:
            raise OperationFailed(f"the host reported a memory range that ends before it starts ({start:#x}-{end:#x})",
                                  rolled_back=True)  # a read: nothing was changed
        bars.append(Bar(i, end - start + 1, is_64bit=end >= FOUR_GIB))
    return tuple(bars)


def survey(fn: dict[str, Any]) -> dict[str, Any]:
    """The per-device checks of Microsoft's DDA survey script; None where the host did not say."""
    acs, kind, irq = fn.get("Acs"), fn.get("DeviceType"), fn.get("Interrupts")
    return {"rmrr": None if fn.get("Rmrr") is None else bool(fn["Rmrr"]),
            "acs": None if acs is None else int(acs) != 0,
            "express_endpoint": None if kind is None else int(kind) == 2,
            "msi": None if irq is None else bool(int(irq) & 6)}


def passthrough_state(fn: dict[str, Any]) -> PassthroughState:
    """Microsoft's survey-script checks for one function, as the core's passthrough state."""
    reasons = []
    if fn.get("Rmrr"):
        reasons.append("the firmware reserves memory for it (RMRR): Hyper-V will not assign it")
    if fn.get("Acs") is not None and int(fn.get("Acs") or 0) == 0:
        reasons.append("no ACS up the PCIe hierarchy: it cannot be isolated from its neighbours")
    if fn.get("DeviceType") is not None and int(fn["DeviceType"]) != 2:
        reasons.append("not a PCI Express endpoint (legacy PCI or a bridge)")
    if fn.get("Interrupts") is not None and not int(fn["Interrupts"]) & 6:
        reasons.append("line-based interrupts only (no MSI/MSI-X)")
    dismounted = bool(fn.get("Dismounted"))
    return PassthroughState(capable=not reasons, enabled=dismounted, active=dismounted, reasons=tuple(reasons))


@dataclasses.dataclass(frozen=True)
class HypervState:
    """What the Hyper-V planner needs beyond the neutral facts (HostFacts.state): each function's location
    path (what the DDA cmdlets take) and each VM's inventory record (its MMIO and stop action now)."""

    location_paths: Mapping[PciAddress, str] = dataclasses.field(default_factory=dict)
    vms: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


def _state(facts: HostFacts) -> HypervState:
    if not isinstance(facts.state, HypervState):
        raise OperationFailed("these facts carry no Hyper-V location paths to plan from",
                              remedy="read the host again (or take a new snapshot of it)", rolled_back=True)
    return facts.state


def _with_partitions(gpus: list[Gpu], partitionable: Any, vms_raw: list[dict[str, Any]]) -> list[Gpu]:
    """Each partitionable GPU's partition types and the VMs holding a partition of it (see partitioning.py)."""
    if not partitionable:
        return gpus
    holders: dict[str, list[str]] = {}
    for v in vms_raw:
        for path in v.get("Partitions") or []:
            holders.setdefault(str(path).lower(), []).append(v["Name"])
    records = {partitioning.instance_id_of(str(r.get("Name") or "")): r for r in partitionable}
    shared, mapped = [], set()
    for gpu in gpus:
        record = records.get(str(gpu.extra.get("instance_id") or "").upper())
        if record is None:
            shared.append(gpu)
            continue
        name = str(record.get("Name")).lower()
        mapped.add(name)
        # Get-VMHostPartitionableGpu's Name is what Add-VMGpuPartitionAdapter -InstancePath takes.
        shared.append(dataclasses.replace(gpu, sharing=partitioning.sharing_of(record, holders.get(name, [])),
                                          extra={**gpu.extra, "partition_instance_path": str(record.get("Name")),
                                                 "gpu_partitioning": partitioning.facts_of(record)}))
    for path in set(holders) - mapped:
        log.warning("GPU partition adapters of %s name %s, which is no GPU of this host's inventory",
                    ", ".join(sorted(holders[path])), path)
    return shared


def _partitioning_support(partitionable: Any, caption: str) -> dict[str, Any]:
    """Whether the host offers GPU partitioning, as `gpus` and the share rules say it: `gpu_partitioning` is
    "unavailable" (Get-VMHostPartitionableGpu failed or does not exist: Windows 10 has none, Easy-GPU-PV issue #224),
    "no-partitionable-gpu" (the cmdlet lists none: no GPU driver offers GPU-P) or "available"; `sharing_unavailable`
    (read by the core when a share is asked of a GPU offering none) says why not, and `gpu_partitioning_os_documented`
    whether Microsoft documents GPU-P for this Windows (partitioning.DOCUMENTED_HOSTS)."""
    documented = partitioning.os_documented(caption) if caption else None
    if partitionable is None:
        state, why = "unavailable", ("GPU partitioning is not supported on this host: Get-VMHostPartitionableGpu is "
                                     "not available or failed (Microsoft documents GPU partitioning for Windows "
                                     "Server 2025 and Azure Stack HCI hosts)")
    elif not partitionable:
        state, why = "no-partitionable-gpu", ("no GPU of this host offers GPU partitioning: Get-VMHostPartitionableGpu "
                                              "lists none (the GPU's driver must support GPU-P: Microsoft's "
                                              "\"Partition and assign GPUs to a virtual machine\", \"Verify GPU driver "
                                              "installation\")")
    else:
        state, why = "available", None
    return {"gpu_partitioning": state, "sharing_unavailable": why, "gpu_partitioning_os_documented": documented}


class HypervBackend(Backend):
    platform = "hyperv"
    schemes = ("hyperv", "hyperv+http")
    # WS-Management's default ports (MS-WSMV 2.2.4.5 ClientDefaultPortsType: HTTP 5985, HTTPS 5986), as endpoint uses.
    default_ports = {"hyperv": 5986, "hyperv+http": 5985}
    description = "Hyper-V Discrete Device Assignment: PowerShell over WinRM (pywinrm)"
    sdk_modules = ("winrm",)
    extra = "hyperv"
    # High MMIO = the devices' need plus Hyper-V's 512 MB default as headroom, in MiB steps.
    mmio_policy = MmioPolicy(default_window=512 * MiB, headroom=512 * MiB, power_of_two=False, granularity=MiB)
    capabilities = Capabilities(live_attach=False, firmware_change=False, hide_hypervisor=False,
                                dynamic_binding=False, share_modes=(ShareMode.GPU_PARTITION,),
                                # Add-VMGpuPartitionAdapter's partition settings (partitioning.SETTINGS)
                                ex_share_options=partitioning.SETTINGS)

    @classmethod
    def check_uri(cls, uri: str) -> None:
        """The one query parameter: ?transport= (pywinrm's authentication transports, see TRANSPORTS)."""
        from gpupass.core.uri import parameters

        parameters(uri, {"transport": lambda value: None if value.lower() in TRANSPORTS
                         else f"it must be one of {', '.join(TRANSPORTS)}"}, "Hyper-V")
    native_settings = {
        "firmware": "VM generation: Gen 2 = UEFI, Gen 1 = BIOS (fixed at creation)",
        "memory_reservation": "static memory (Set-VM -StaticMemory); DDA refuses dynamic memory",
        "mmio_window": "Set-VM -HighMemoryMappedIoSpace / -LowMemoryMappedIoSpace",
        "binding": "Dismount-VMHostAssignableDevice + Add-VMAssignableDevice by LocationPath",
        "stop_action": "Set-VM -AutomaticStopAction TurnOff",
        "dynamic_memory": "Set-VM -DynamicMemory (must be off)",
    }

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._session: Any = None
        self._bound: Any = None     # bounds.CallBound of the session's requests (set by _open)
        self._shell_id: str | None = None
        # The location paths the last inventory mapped to addresses: read_back maps a VM's devices with them
        # (planners read HostFacts.state, never this).
        self._paths: dict[PciAddress, str] = {}
        # The devices the last inventory found neither a VM's nor the host's for use (records.left_on_host), with
        # the PowerShell that gives each back: observe reports them as partial, never as back on the host.
        self._left: dict[PciAddress, str] = {}

    # -- connection ---------------------------------------------------------------------------------
    @property
    def ex_transport(self) -> str:
        query = parse_qs(urlsplit(self.target.uri).query)
        transport = (query.get("transport") or ["ntlm"])[-1].lower()
        if transport not in TRANSPORTS:
            raise UsageError(f"unknown WinRM transport {transport!r}",
                             remedy="use ?transport=ntlm (default), kerberos, credssp or basic")
        return transport

    @property
    def ex_endpoint(self) -> str:
        parts = urlsplit(self.target.uri)
        https = parts.scheme == "hyperv"
        if not parts.hostname:
            raise UsageError(f"{self.target.uri} names no host", remedy="write hyperv://USER@HOST[:PORT]")
        port = parts.port or (5986 if https else 5985)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{'https' if https else 'http'}://{host}:{port}/wsman"

    def _open(self) -> Any:
        if self._session is not None:
            return self._session
        parts = urlsplit(self.target.uri)
        transport, endpoint = self.ex_transport, self.ex_endpoint
        if transport == "basic" and parts.scheme == "hyperv+http" and parts.hostname not in ("127.0.0.1", "::1"):
            raise UsageError("Basic authentication over plain HTTP would send the password in clear text",
                             remedy="use hyperv:// (HTTPS) or ?transport=ntlm")
        if not parts.username:
            raise UsageError(f"{self.target.uri} names no user", remedy="write hyperv://USER@HOST (DOMAIN\\user: "
                                                                       "DOMAIN%5Cuser)")
        if self.target.password is None:
            from gpupass.core.credentials import missing_password

            raise missing_password(self.target)
        winrm = _winrm()
        # Plain HTTP has no certificate to check; HTTPS verifies against --ca-file, else the system store.
        https = parts.scheme == "hyperv"
        options: dict[str, Any] = {
            "transport": transport, "proxy": None,
            "server_cert_validation": "validate" if https and self.target.tls.verify else "ignore",
            "ca_trust_path": self.target.tls.ca_file if https else None,
            # Every HTTP request waits at most read_timeout_sec; a Receive is answered by the host after
            # operation_timeout_sec at the latest, and pywinrm polls again, so a long script still finishes.
            # pywinrm takes whole seconds and needs read > operation >= 1 (winrm/protocol.py).
            "read_timeout_sec": self._read_timeout,
            "operation_timeout_sec": max(1, self._read_timeout - 10) if self._read_timeout > 11
            else self._read_timeout // 2,
        }
        from urllib.parse import unquote
        log.info("connecting to %s as %s (%s)", endpoint, unquote(parts.username), transport)
        session = winrm.Session(endpoint, auth=(unquote(parts.username), self.target.password.reveal()), **options)
        from gpupass.backends.hyperv.bounds import bound_transport

        # every request bounded as a whole, not only each read (bounds.py); _run_ps sets each call's deadline
        self._bound = bound_transport(session.protocol, per_request=self._read_timeout)
        self._session = session
        return self._session

    def _run_ps(self, script: str, action: str) -> tuple[int, bytes, bytes]:
        """One script, one WinRM command: (exit code, stdout, raw stderr with its CLIXML).

        Every script of one backend (one gpupass command) runs in one remote shell on one authenticated
        connection: Command + Receive + Signal per script, Create and Delete once. pywinrm's Session.run_cmd
        opens a shell and closes its connection for each command (two more requests, and a new NTLM
        handshake, every time). A script that fails in transport drops the shell; the next one opens another.
        """
        session = self._open()
        self.round_trips += 1
        log.debug("WinRM: %s (%d characters of PowerShell)", action, len(script))
        encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
        protocol = session.protocol
        sent = False  # the host took the command: from then on, a failure says nothing of what the script did
        # The whole call has the host's timeout: its shell, its command and every poll of the output (each request
        # cut off at that deadline, plus the margin a poll's own answer may take: bounds.py); ending a script that
        # outran it has a wind-down of its own (_receive).
        polls_end = time.monotonic() + self._read_timeout
        self._bound.deadline = polls_end + _REPLY_MARGIN
        try:
            try:
                if self._shell_id is None:
                    self._shell_id = protocol.open_shell()
                command_id = protocol.run_command(self._shell_id, f"powershell -encodedcommand {encoded}")
                sent = True
                out, err, code = self._receive(protocol, self._shell_id, command_id, action, polls_end)
            except Exception as exc:
                overran = isinstance(exc, RequestOverran)
                self._drop_shell()
                if overran:   # the connection is cut: the next script starts a session of its own
                    self._drop_session()
                if isinstance(exc, GpupassError):
                    raise
                translated = from_exception(action, self.target.label, exc, timeout=self._read_timeout, sent=sent)
                if translated is None:
                    raise
                raise translated from exc
            try:
                protocol.cleanup_command(self._shell_id, command_id)
            except Exception as exc:  # noqa: BLE001 - the result is in hand; the next script opens another shell
                log.debug("%s: ending the command on %s failed (%s): the shell is dropped", action, self.target.label,
                          type(exc).__name__)
                self._drop_shell()
        finally:
            self._bound.deadline = None
        return code, out, err

    def _drop_session(self) -> None:
        """Forget the session and close its connections (nothing is sent): after a request cut off at its deadline."""
        session, self._session, self._shell_id = self._session, None, None
        if session is not None:
            session.protocol.transport.close_session()

    def _receive(self, protocol: Any, shell_id: str, command_id: str, action: str,
                 deadline: float) -> tuple[bytes, bytes, int]:
        """The command's output, polled with WinRM Receive requests until it is done, for at most the host's timeout
        in all. pywinrm's own loop (Protocol.get_command_output) polls again after every OperationTimeout fault,
        forever: a script that never ends would hold gpupass for ever. Each Receive is answered within the
        OperationTimeout (WinRM answers the fault when no output came, MS-WSMV; see ScriptStillRunning), which is cut
        to the time left, so the last poll ends by the deadline. Past it, the command is ended (Signal terminate) and
        ScriptStillRunning raised: what the script did is not known, and the host is read again."""
        from winrm.exceptions import WinRMOperationTimeoutError

        limit = self._read_timeout
        usual = protocol.operation_timeout_sec
        stdout: list[bytes] = []
        stderr: list[bytes] = []
        waited = contextlib.ExitStack()
        shown = False
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # whole seconds, at least 1 (WS-Man's OperationTimeout is "PT{n}S" here, winrm/protocol.py), not past
                # the deadline where a whole second is left, and below the read timeout pywinrm's transport waits for
                # any reply
                protocol.operation_timeout_sec = max(1, min(usual, math.floor(left)))
                try:
                    out, err, code, done = protocol.get_command_output_raw(shell_id, command_id)
                except WinRMOperationTimeoutError:
                    if not shown:  # the first fault: the wait is a long one, say so (on a terminal, not --json)
                        shown = True
                        waited.enter_context(waiting(f"{self.target.label}: {action}: the host is still running the "
                                                     f"script (gpupass waits up to {limit} s)", delay=0))
                    continue
                stdout.append(out)
                stderr.append(err)
                if done:
                    return b"".join(stdout), b"".join(stderr), code
        finally:
            protocol.operation_timeout_sec = usual
            waited.close()
        # ending it, and dropping its shell after (_run_ps), have a short time of their own (bounds.py)
        self._bound.deadline = time.monotonic() + min(limit, _WIND_DOWN_S)
        try:  # ask the host to end it ("terminate", MS-WSMV 2.2.5.6); _run_ps then drops the shell too
            protocol.cleanup_command(shell_id, command_id)
        except Exception as exc:  # noqa: BLE001 - the shell is dropped next, which ends its commands
            log.debug("%s: the terminate signal to %s failed (%s)", action, self.target.label, type(exc).__name__)
        raise ScriptStillRunning(
            f"{action}: the script sent to {self.target.label} was still running on the host after {limit} s (the "
            "host's timeout); gpupass stopped waiting and asked the host to end it: what it did there is not known",
            remedy=f"run `gpupass status {self.target.label}`: it shows what the host holds; for a host this slow, raise "
                   "`timeout` in its [hosts.NAME] table of the config file")

    def _drop_shell(self) -> None:
        """Close the remote shell and its connection, if any; a failure here changes nothing on the host."""
        shell_id, self._shell_id = self._shell_id, None
        if shell_id is not None and self._session is not None:
            try:
                self._session.protocol.close_shell(shell_id)
            except Exception:  # noqa: BLE001 - the shell or the connection is gone already
                pass

    def _run_json(self, script: str, action: str, writes: bool = False) -> tuple[int, dict[str, Any], bytes]:
        """Run a script and read the one JSON line it prints last. A script that `writes` and ends without it and
        without a PowerShell error (its process ended mid-script: everything after the last statement run is missing,
        its own rollback included) did part of its work or none: ScriptStopped, read back like a lost reply."""
        code, out, err = self._run_ps(script, action)
        text = out.decode("utf-8", errors="replace").strip()
        try:
            data = json.loads(text.splitlines()[-1]) if text else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            if writes and not parse_clixml(err):
                raise ScriptStopped(f"{action}: the script on {self.target.label} ended before its end (exit {code}, "
                                    "no result and no PowerShell error): what it did there is not known",
                                    remedy=f"run `gpupass status {self.target.label}`: it shows what the host holds")
            raise from_exit(action, code, err, writes=writes)
        if code != 0 and data.get("ok") is True:
            # its result printed whole, its process ended after (the last statement only exits on failure): done
            log.warning("%s: the script printed its result, then ended with exit code %s", action, code)
        return code, data, err

    @property
    def _read_timeout(self) -> int:
        return max(2, math.ceil(self.target.timeout))

    def close(self) -> None:
        self._drop_shell()
        self._session = None

    # -- inventory ----------------------------------------------------------------------------------
    def inventory(self) -> HostFacts:
        code, data, err = self._run_json(scripts.inventory_script(), "reading the host")
        if code != 0:
            raise from_exit("reading the host", code, err)
        vms_raw = data.get("Vms") or []
        # every PCI function in a slot that holds a GPU (scripts.inventory_script); group_gpus groups them below
        functions_raw = data.get("Functions") or []
        vm_paths = [p for v in vms_raw for p in (v.get("Devices") or [])]
        addresses = address_map([f["LocationPath"] for f in functions_raw] + vm_paths)
        self._paths = {a: p for p, a in addresses.items()}
        instance_ids = {fn["LocationPath"]: str(fn.get("InstanceId") or "") for fn in functions_raw}
        self._left = {addresses[p]: give_back_by_hand(p, instance_ids[p], how)
                      for p, how in left_on_host(functions_raw).items() if p in addresses}
        functions: dict[PciAddress, PciFunction] = {}
        states: dict[PciAddress, PassthroughState] = {}
        extra: dict[PciAddress, dict[str, Any]] = {}
        for fn in functions_raw:
            address = addresses.get(fn["LocationPath"])
            if address is None or address in functions:
                continue
            vendor, device = _ids(fn.get("InstanceId") or "")
            bars = memory_bars(fn.get("Mem"))
            # None here: group_gpus fills the BARs from the catalog where it knows the card (an estimate).
            functions[address] = PciFunction(
                address=address, vendor_id=vendor, device_id=device,
                class_code=class_code(fn),
                name=fn.get("Name") or "", driver=None, bars=bars,
            )
            states[address] = passthrough_state(fn)
            known = catalog.lookup(vendor, device)
            bars_source = ("host" if bars is not None else
                           "catalog (estimated: the device holds no memory resources now)"
                           if known is not None and known.bars is not None else None)
            extra[address] = {"location_path": fn["LocationPath"], "instance_id": fn.get("InstanceId"),
                              "status": fn.get("Status"), "present": fn.get("Present"),
                              "mmio_bytes": None if bars is None else sum(b.size for b in bars),
                              "bars_source": bars_source,
                              "dismounted": bool(fn.get("Dismounted")), "survey": survey(fn)}
        owners: dict[PciAddress, str] = {}
        vms = []
        records: dict[str, dict[str, Any]] = {}
        for v in vms_raw:
            held = tuple(sorted(addresses[p] for p in (v.get("Devices") or []) if p in addresses))
            for address in held:
                owners[address] = v["Name"]
            records[v["Name"]] = v
            vms.append(_vm(v, held))
        gpus = []
        for gpu in group_gpus(functions.values(), {}, owners, states):
            paths = [extra[f.address]["location_path"] for f in gpu.functions]
            gpus.append(dataclasses.replace(gpu, extra={
                **extra[gpu.address], "location_paths": paths,
                "companion_survey": {str(c.address): extra[c.address]["survey"] for c in gpu.companions}}))
        gpus = _with_partitions(gpus, data.get("Partitionable"), vms_raw)
        # What stopped runs left, from the gpupass restore records the inventory returned with the VMs (records.py).
        left = stopped_runs(vms_raw, functions_raw, addresses, self.target.label)
        for name, unfinished in left.items():
            if unfinished.as_state() is not None:
                records[name] = {**records[name], "ex_finish": unfinished.as_state()}
        notes = {name: [unfinished.note] for name, unfinished in left.items()}
        # A partition count change an assign of a partition left when it stopped before the add (its intent in the
        # VM's notes, read with the counts the host has now).
        partitioned = {str(g.extra["partition_instance_path"]).lower(): g for g in gpus
                       if g.extra.get("partition_instance_path")}
        counts = {path: (g.extra.get("gpu_partitioning") or {}).get("partition_count") for path, g in partitioned.items()}
        changes = count_changes(vms_raw, counts, {path: g.address for path, g in partitioned.items()}, self.target.label)
        for name, (note, change) in changes.items():
            notes.setdefault(name, []).append(note)
            if change is not None:
                records[name] = {**records[name], "ex_count": {"gpu": change.gpu, "was": change.was, "to": change.to}}
        # A release of several GPUs' partitions stopped between its steps (its intent in the VM's notes).
        releases = partition_releases(vms_raw, {path: g.address for path, g in partitioned.items()}, self.target.label)
        for name, (note, only_note) in releases.items():
            notes.setdefault(name, []).append(note)
            records[name] = {**records[name], "ex_partition_release_noted": True,
                             **({"ex_partition_release_left": only_note} if only_note else {})}
        vms = [dataclasses.replace(vm, unfinished=vm.unfinished + tuple(notes[vm.name])) if vm.name in notes else vm
               for vm in vms]
        host_raw = data.get("Host") or {}
        os_raw = data.get("Os") or {}
        iov = host_raw.get("IovSupport")
        reasons = host_raw.get("IovSupportReasons") or []
        host = Host(
            uri=self.target.uri, platform=self.platform,
            name=host_raw.get("Name") or self.target.name or urlsplit(self.target.uri).hostname or "",
            iommu_enabled=None if iov is None else bool(iov),
            iommu_reasons=tuple(str(r) for r in ([reasons] if isinstance(reasons, str) else reasons)),
            # False: the host has no Get-VMHostPartitionableGpu (or it failed), so GPU partitions are not known
            settings={"iov_support": iov, "gpu_partitioning_read": data.get("Partitionable") is not None,
                      "os": {"caption": os_raw.get("Caption"), "build": os_raw.get("BuildNumber"),
                             "product_type": os_raw.get("ProductType")},
                      **_partitioning_support(data.get("Partitionable"), str(os_raw.get("Caption") or ""))},
        )
        return HostFacts(host, tuple(gpus), tuple(sorted(vms, key=lambda vm: vm.name)),
                         {("", a): f for a, f in functions.items()},
                         state=HypervState({a: p for p, a in addresses.items()}, records))

    def read_back(self, vm: str, devices: Sequence[PciAddress]) -> Vm | None:
        """The VM's record, read by one script (one WinRM command) instead of the whole host's inventory."""
        code, data, err = self._run_json(scripts.read_vm_script(vm), f"reading VM {vm!r}")
        if code != 0:
            raise from_exit(f"reading VM {vm!r}", code, err)
        raw = next((v for v in data.get("Vms") or () if v.get("Name") == vm), None)
        if raw is None:
            return None
        paths = list(raw.get("Devices") or ())
        known = {path: address for address, path in self._paths.items()}
        if any(path not in known for path in paths):  # a device the last inventory did not list
            known = address_map(list(known) + paths)
        return _vm(raw, tuple(sorted(known[p] for p in paths if p in known)))

    @classmethod
    def state_to_json(cls, state: Any) -> dict[str, Any]:
        if not isinstance(state, HypervState):
            return {}
        return {"location_paths": {str(a): p for a, p in state.location_paths.items()}, "vms": dict(state.vms)}

    @classmethod
    def state_from_json(cls, data: dict[str, Any]) -> HypervState:
        return HypervState({PciAddress.parse(a): p for a, p in (data.get("location_paths") or {}).items()},
                           dict(data.get("vms") or {}))

    # -- planning -----------------------------------------------------------------------------------
    @property
    def _legacy(self) -> LegacySettings:
        """Restore records an older gpupass kept on the workstation (state.py); new ones live in the VM's notes."""
        return LegacySettings.for_target(self.target)

    @staticmethod
    def _path(facts: HostFacts, address: PciAddress) -> str:
        try:
            return _state(facts).location_paths[address]
        except KeyError:
            raise OperationFailed(f"no location path known for {address}; read the host first",
                                  rolled_back=True) from None  # planning: nothing was changed

    def prepare_planned_vm(self, facts: HostFacts, vm: Vm) -> HostFacts:
        """A VM not created yet plans with Hyper-V's defaults (128 MB low MMIO): nothing is recorded for it."""
        state = _state(facts)
        return dataclasses.replace(facts, state=HypervState(state.location_paths, {**state.vms, vm.name: {}}))

    def plan_assign(self, ctx: CheckContext) -> list[Step]:
        vm = ctx.vm
        raw = _state(ctx.facts).vms.get(vm.name, {})
        low_now = int(raw.get("LowMmio") or 128 * MiB)
        high_now = vm.mmio_window_bytes if vm.mmio_window_bytes is not None else ctx.policy.default_window
        need = ctx.need
        high = high_now if need is None or ctx.policy.fits(need, high_now) else ctx.policy.window_for(need)
        low = max(low_now, LOW_MMIO) if need is None or need.low else low_now
        new = [gpu for gpu in ctx.gpus if gpu.address not in vm.assigned]
        groups = [[self._path(ctx.facts, f.address) for f in (gpu.functions if ctx.include_companions else (gpu.function,))]
                  for gpu in new]
        # A VM an older gpupass assigned has its restore record on the workstation: this assign moves it into the
        # VM's notes (where none is yet). A VM without devices has nothing to restore from before.
        legacy = self._legacy.get(vm.id) if vm.assigned and not self.read_only else None
        batches, previews = _batches(groups, lambda batch: scripts.assign_script(vm.name, batch, low, high,
                                                                                 record=legacy),
                                     f"the assign script for {vm.name!r}")
        changes = (f"Set-VM -AutomaticStopAction TurnOff -GuestControlledCacheTypes $true "
                   f"-LowMemoryMappedIoSpace {format_bytes(low)} -HighMemoryMappedIoSpace {format_bytes(high)}",
                   "the VM's notes gain a gpupass restore record of its settings before (in the same Set-VM; one "
                   "already there is kept)" + (", moved there from this workstation's record" if legacy else ""))
        steps = []
        for batch, preview in zip(batches, previews, strict=True):
            steps.append(Step(
                action="hyperv.assign",
                description=f"give {', '.join(batch)} to VM '{vm.name}' (Set-VM, Disable-PnpDevice, "
                            "Dismount-VMHostAssignableDevice, Add-VMAssignableDevice)",
                undo="run the release script: Remove-VMAssignableDevice, Mount-VMHostAssignableDevice, "
                     "Enable-PnpDevice, Set-VM with the previous settings",
                changes=changes + tuple(f"assign {p}" for p in batch),
                needs_vm_off=True, preview=preview,
                payload=Assign(
                    vm.name, vm.id, tuple(batch), low, high,
                    tuple(str(a) for a, path in _state(ctx.facts).location_paths.items() if path in batch),
                    legacy=legacy is not None),
            ))
        return steps

    def plan_release(self, ctx: CheckContext) -> list[Step]:
        vm = ctx.vm
        state = _state(ctx.facts)
        moving = set(ctx.addresses)
        groups = [[self._path(ctx.facts, f.address) for f in gpu.functions if f.address in moving and
                   f.address in vm.assigned] for gpu in ctx.gpus]
        groups = [g for g in groups if g]
        remaining = set(vm.assigned) - set(ctx.addresses)
        legacy = self._legacy.get(vm.id) if not remaining and not self.read_only else None
        # One script, or one per GPU where they do not fit one: the last to leave the VM without devices restores.
        batches, previews = _batches(groups, lambda batch: scripts.release_script(vm.name, batch, legacy),
                                     f"the release script for {vm.name!r}")
        raw = state.vms.get(vm.name, {})
        current = {"stop_action": raw.get("StopAction") or "TurnOff", "low_mmio": int(raw.get("LowMmio") or 0),
                   "high_mmio": int(raw.get("HighMmio") or 0), "guest_cache": bool(raw.get("GuestCache"))}
        if remaining:
            restore = "VM settings (stop action, MMIO) left as they are: it keeps other devices"
        elif legacy is not None:
            restore = (f"Set-VM back to -AutomaticStopAction {legacy.stop_action} -HighMemoryMappedIoSpace "
                       f"{format_bytes(legacy.high_mmio)} (recorded by an older gpupass on this workstation), unless "
                       "the VM's notes hold a gpupass restore record")
        else:
            restore = ("Set-VM back to the stop action, MMIO and cache settings in the gpupass restore record in the "
                       "VM's notes (written when gpupass assigned), and the record taken out of the notes; a VM "
                       "without one keeps its settings")
        # An intent an earlier release left with nothing to give back (records._intent_left) is taken out first: the
        # release script has no room to (scripts.release_script), and this release writes its own.
        left = raw.get("ex_finish")
        steps = [self._finish_release_step(ctx, left)] if left and left.get("intent_only") else []
        for batch, preview in zip(batches, previews, strict=True):
            steps.append(Step(
                action="hyperv.release",
                description=f"take {', '.join(batch)} back from VM '{vm.name}' and give them to the host "
                            "(Remove-VMAssignableDevice, Mount-VMHostAssignableDevice, Enable-PnpDevice)",
                undo="run the assign script again with the VM's current settings",
                changes=tuple(f"release {p}" for p in batch) + (restore,),
                needs_vm_off=True, preview=preview,
                payload=Release(vm.name, vm.id, tuple(batch),
                                tuple(str(a) for a, path in state.location_paths.items() if path in batch),
                                legacy=legacy is not None, current=current),
            ))
        return steps

    def plan_finish_release(self, ctx: CheckContext) -> list[Step]:
        """A release of this VM that stopped half-way (records.stopped_runs read its intent from the restore record
        in the VM's notes): the devices it left dismounted or disabled go back to the host, and the VM's settings are
        restored from the record where it holds no device. A record without an intent on a VM without devices: its
        settings are restored, and the devices the release names among those left dismounted or disabled (the admin
        says which were this VM's) go back to the host. Nothing where the facts show no such run."""
        steps = self._finish_count_change(ctx) + self._finish_partition_release(ctx)
        left = (_state(ctx.facts).vms.get(ctx.vm.name) or {}).get("ex_finish")
        if not left:
            return steps
        return steps + [self._finish_release_step(ctx, left)]

    def plan_finish_assign(self, ctx: CheckContext) -> list[Step]:
        """An assign of GPUs the VM holds, on a VM whose restore record names a release that left nothing to give back
        (records._intent_left: it failed before taking any device): the admin keeps the devices, so the intent is taken
        out of the record (nothing else changes)."""
        left = (_state(ctx.facts).vms.get(ctx.vm.name) or {}).get("ex_finish")
        if not left or not left.get("intent_only"):
            return []
        return [self._finish_release_step(ctx, left)]

    def _finish_release_step(self, ctx: CheckContext, left: Mapping[str, Any]) -> Step:
        state = _state(ctx.facts)
        paths = tuple(str(p) for p in left.get("paths") or ())
        restore = bool(left.get("restore"))
        named = {state.location_paths.get(f.address) for gpu in ctx.gpus for f in gpu.functions}
        paths += tuple(p for p in left.get("candidates") or () if p in named)
        addresses = tuple(str(a) for a, path in state.location_paths.items() if path in paths)
        changes = tuple(f"Mount-VMHostAssignableDevice (where still dismounted) and Enable-PnpDevice {p}" for p in paths)
        changes += (("Set-VM back to the stop action, MMIO and cache settings in the gpupass restore record in the VM's "
                     "notes, and the record taken out of the notes",) if restore else
                    ("the release's intent taken out of the gpupass restore record (the VM keeps other devices)",))
        if left.get("intent_only"):
            description = (f"take the intent of a release of VM '{ctx.vm.name}' that left nothing to give back out of "
                           "its gpupass restore record")
            changes = ("the release's intent (Releasing) taken out of the gpupass restore record (Set-VM -Notes)",)
        else:
            description = (f"finish the release of VM '{ctx.vm.name}' that stopped half-way"
                           + (f": give {', '.join(addresses) or ', '.join(paths)} back to the host" if paths else "")
                           + (" and restore the VM's settings from its restore record" if restore else ""))
        return Step(
            action="hyperv.finish-release",
            description=description,
            undo="nothing to undo: it puts the host where the stopped release would have",
            changes=changes, needs_vm_off=True,
            preview=scripts.finish_release_script(ctx.vm.name, list(paths)),
            payload=FinishRelease(ctx.vm.name, ctx.vm.id, paths, addresses, restore, note=str(left.get("note") or "")),
        )

    def _finish_partition_release(self, ctx: CheckContext) -> list[Step]:
        """A release of several GPUs' partitions that stopped after its last removal, its intent left in the VM's notes
        (records.partition_releases): a removal of none of the partitions of one of its GPUs, which takes the intent
        out (the VM holds none of them)."""
        path = (_state(ctx.facts).vms.get(ctx.vm.name) or {}).get("ex_partition_release_left")
        if not path:
            return []
        return [Step(
            action="hyperv.remove-gpu-partition",
            description=f"take the note of a release of GPU partitions that stopped after its last removal out of VM "
                        f"'{ctx.vm.name}''s notes",
            undo="nothing to undo: it removes no partition, only the spent note",
            changes=(f"the note {scripts.RELEASE_BEGIN!r} out of the VM's notes (Set-VM -Notes)",),
            needs_vm_off=True, preview=scripts.partition_remove_script(ctx.vm.name, str(path), 0, ends_release=True),
            payload=RemovePartitions(ctx.vm.name, str(path), 0, held=0, ends_release=True),
        )]

    def _finish_count_change(self, ctx: CheckContext) -> list[Step]:
        """A partition count change an assign of a partition to this VM left (records.count_changes): the count set back
        where no VM holds a partition of the GPU, and the intent taken out of the VM's notes."""
        change = (_state(ctx.facts).vms.get(ctx.vm.name) or {}).get("ex_count")
        if not change:
            return []
        path, was, to = str(change["gpu"]), int(change["was"]), int(change["to"])
        return [Step(
            action="hyperv.finish-count-change",
            description=f"take back the partition count change of {path} ({was} -> {to}) an assign of a partition to "
                        f"VM '{ctx.vm.name}' left when it stopped: the count back to {was} where it is {to} and no VM "
                        "holds a partition of the GPU, and its note out of the VM's notes",
            undo="nothing to undo: it puts the host where the stopped assign's own undo would have",
            changes=(f"Set-VMHostPartitionableGpu -PartitionCount {was} (where it is {to} and no VM holds a partition)",
                     f"the note {scripts.COUNT_BEGIN!r} out of the VM's notes (Set-VM -Notes)"),
            needs_vm_off=True, preview=scripts.count_set_back_script(path, was, to, ctx.vm.name, strict=False),
            payload=FinishCountChange(ctx.vm.name, path, was, to,
                                      seen=next(iter(_partition_counts(ctx.facts, path)), None)),
        )]

    # -- GPU partitioning (GPU-P) shares ------------------------------------------------------------
    @staticmethod
    def _instance_path(gpu: Gpu) -> str:
        path = str(gpu.extra.get("partition_instance_path") or "")
        if not path:
            raise OperationFailed(f"GPU {gpu.address} has no GPU-P instance path in these facts",
                                  remedy="read the host again (or take a new snapshot of it)", rolled_back=True)
        return path

    def plan_assign_share(self, ctx: CheckContext) -> list[Step]:
        (gpu,), vm, (change,) = ctx.gpus, ctx.vm, ctx.shares
        path = self._instance_path(gpu)
        settings = partitioning.request_settings(ctx.assign_options.ex_share_options)
        steps = []
        current = (gpu.extra.get("gpu_partitioning") or {}).get("partition_count")
        wanted = change.type.max_instances
        if wanted and current and wanted != current:
            # Another valid count: the host's count changes first (rules.partition_count_set allows it only while no VM
            # holds a partition of the GPU), and back on undo.
            steps.append(Step(
                action="hyperv.set-partition-count",
                description=f"split GPU {gpu.address} into {wanted} partitions instead of {current} "
                            "(Set-VMHostPartitionableGpu; no VM holds a partition of it)",
                undo=f"Set-VMHostPartitionableGpu -PartitionCount {current} again",
                changes=(f"the VM's notes gain a note of the change ({scripts.COUNT_BEGIN!r}: the GPU, {current} -> "
                         f"{wanted}), which the partition's add takes out again",
                         f"Set-VMHostPartitionableGpu -PartitionCount {wanted} (now {current}) on {path}"),
                needs_vm_off=False, preview=scripts.partition_count_script(path, wanted, current, vm.name),
                payload=SetPartitionCount(path, wanted, current, vm.name),
            ))
        shown = "".join(f" -{name} {value}" for name, value in settings)
        steps.append(Step(
            action="hyperv.add-gpu-partition",
            description=f"give VM '{vm.name}' one partition of GPU {gpu.address} (Add-VMGpuPartitionAdapter"
                        + (f" with {', '.join(f'{n} {v}' for n, v in settings)})" if settings else ")"),
            undo="Remove-VMGpuPartitionAdapter of the adapter it added",
            changes=(f"Add-VMGpuPartitionAdapter -InstancePath {path}{shown}",),
            needs_vm_off=True, preview=scripts.partition_add_script(vm.name, path, settings),
            payload=AddPartition(vm.name, path, settings, held=len(gpu.sharing.held_by(vm.name))),
        ))
        return steps

    def plan_release_share(self, ctx: CheckContext) -> list[Step]:
        """One step per GPU. Where there are several, the first writes the release's intent into the VM's notes and
        the last takes it out (scripts.RELEASE_BEGIN), so a run stopped between them is shown by `status` and finished
        by the same release again (records.partition_releases); a release of a VM whose notes hold one takes it out."""
        vm, steps = ctx.vm, []
        paths = [self._instance_path(gpu) for gpu in ctx.gpus]
        noted = bool((_state(ctx.facts).vms.get(vm.name) or {}).get("ex_partition_release_noted"))
        for index, gpu in enumerate(ctx.gpus):
            count = sum(1 for c in ctx.shares if (c.location, c.gpu) == (gpu.location, gpu.address))
            path = paths[index]
            intent = tuple(paths) if index == 0 and len(paths) > 1 else ()
            ends = index == len(paths) - 1 and (len(paths) > 1 or noted)
            try:
                preview = scripts.partition_remove_script(vm.name, path, count, intent=intent, ends_release=ends)
            except scripts.ScriptTooLarge as exc:
                raise UsageError(f"the release of VM '{vm.name}''s partitions of {len(paths)} GPUs does not fit "
                                 f"WinRM's command line: {exc}",
                                 remedy="release them one GPU at a time: `gpupass release HOST VM GPU`") from exc
            steps.append(Step(
                action="hyperv.remove-gpu-partition",
                description=f"take {count} partition(s) of GPU {gpu.address} back from VM '{vm.name}' "
                            "(Remove-VMGpuPartitionAdapter)",
                undo="Add-VMGpuPartitionAdapter again, one per partition removed",
                changes=(f"Remove-VMGpuPartitionAdapter x{count} (InstancePath {path})",)
                + ((f"the VM's notes gain a note of this release ({scripts.RELEASE_BEGIN!r}: the {len(paths)} GPUs), "
                    "which its last step takes out",) if intent else ())
                + (("the note of the release taken out of the VM's notes once it holds none of its GPUs",)
                   if ends else ()),
                needs_vm_off=True, preview=preview,
                payload=RemovePartitions(vm.name, path, count, held=len(gpu.sharing.held_by(vm.name)), intent=intent,
                                         ends_release=ends),
            ))
        return steps

    def features_kept(self, ctx: CheckContext) -> list[FeatureLoss]:
        if not ctx.is_share:
            return []
        incoming = [str(g.address) for g in ctx.gpus
                    if (g.extra.get("gpu_partitioning") or {}).get("supports_incoming_live_migration") is False]
        return [FeatureLoss("live migration, on Windows Server 2025 and Azure Stack HCI 24H2 hosts",
                            "Microsoft's GPU partitioning page: \"Beginning with Windows Server 2025, live migration is "
                            "supported with GPU partitioning\" (and \"Windows Server 2025 and Azure Stack HCI 24H2\": the "
                            "Windows Server blog, \"Use GPUs with clustered VMs through Direct Device Assignment\", 2024); "
                            "it needs IOMMU DMA bit tracking capable processors (without them the VM is restarted where "
                            "GPU resources are available) and NVIDIA vGPU software 18.x or later, and falls back to "
                            "TCP/IP with compression" + (f"; GPU {', '.join(incoming)} reports "
                                                         "SupportsIncomingLiveMigration False" if incoming else ""))]

    def features_lost(self, ctx: CheckContext) -> list[FeatureLoss]:
        if ctx.is_share:
            # DDA's losses do not apply; Azure Stack HCI 22H2/23H2: "Currently, GPU partitioning on Azure Stack HCI
            # doesn't support live migration of VMs" (gpu-partitioning.md, Azure Stack HCI pivot, 2023)
            if "azure stack hci" in str((ctx.facts.host.settings.get("os") or {}).get("caption") or "").lower():
                return [FeatureLoss("live migration, on Azure Stack HCI 22H2 and 23H2", "Microsoft's GPU partitioning "
                                    "page for those versions: live migration of VMs with GPU partitions is not supported; "
                                    "VMs are restarted where GPU resources are available after a failure")]
            return []
        return [
            FeatureLoss("save / restore", "a VM with an assigned device cannot be saved; its stop action is TurnOff"),
            FeatureLoss("live migration", "Hyper-V cannot move a VM that holds an assigned device"),
            FeatureLoss("dynamic memory", "DDA needs static memory: the device DMAs into guest RAM"),
            FeatureLoss("checkpoints that save state", "standard checkpoints capture device state, which DDA "
                                                       "cannot; only production checkpoints work"),
            FeatureLoss("high-availability failover", "a clustered VM with a device cannot fail over to a host "
                                                      "without the same device"),
        ]

    # -- applying -----------------------------------------------------------------------------------
    # apply, undo and observe pick their handler by the payload's type (backends/hyperv/steps.py), never by the
    # step's action label.
    def apply(self, step: Step) -> Any:
        return self._apply(step.payload, step)

    @functools.singledispatchmethod
    def _apply(self, payload: object, step: Step) -> Any:
        raise OperationFailed(f"the hyperv backend cannot carry out a step of type {type(payload).__name__}",
                              remedy="plan again with this version of gpupass", rolled_back=True)  # refused unsent

    @_apply.register
    def _apply_assign(self, payload: Assign, step: Step) -> dict[str, Any]:
        try:
            previous = self._assign(payload.vm, list(payload.paths), payload.low, payload.high, step.preview)
        except OperationFailed as error:
            raise self._lost_to_another(payload, error) from error
        if payload.legacy:
            self._forget_legacy(payload.vm_id)   # now in the VM's notes
        return previous

    @_apply.register
    def _apply_release(self, payload: Release, step: Step) -> str | None:
        try:
            restored = self._release(payload.vm, list(payload.paths), step.preview)
        except _PartialRelease as partial:
            raise self._give_back(payload, partial) from None
        if restored and payload.legacy:
            self._forget_legacy(payload.vm_id)   # restored (or superseded by the VM's own record)
        return restored

    def _forget_legacy(self, vm_id: str) -> None:
        """Drop an older gpupass's workstation record after the host took the change. The step is done on the host
        whatever happens here: a file that cannot be rewritten must not fail it (an error from a done step would
        say "nothing was changed" with the change made), so it is a warning naming the file."""
        try:
            self._legacy.delete(vm_id)
        except (OperationFailed, OSError) as error:
            log.warning("the change was made on %s, but the old workstation record of VM %s could not be removed: %s",
                        self.target.label, vm_id, getattr(error, "message", error))

    @_apply.register
    def _apply_finish_release(self, payload: FinishRelease, step: Step) -> None:
        self._done_if_lost(lambda: self._finish_release(payload),
                           lambda facts: self._finish_release_state(payload, facts).state == "after")

    def _done_if_lost(self, finish: Callable[[], Any], done: Callable[[HostFacts], bool]) -> None:
        """Run a finishing step's script (FinishRelease, FinishCountChange: no undo, they put the host where a stopped
        run would have). Where its reply is lost (ConnectionFailed: a timeout, a dropped connection, a script stopped or
        failed part-way) the host is read again: where `done` finds the step made there, it is done -- the reply alone
        was lost; anything else, or a read that fails too, re-raises the loss, and the core reads the host once more
        (Backend.observe) and says what is there."""
        try:
            finish()
        except ConnectionFailed as lost:
            try:
                facts = self.inventory()
            except GpupassError:
                raise lost from None
            if not done(facts):
                raise
            log.info("%s: the reply was lost, and the host read again shows it done", lost.message)

    def _finish_release_state(self, payload: FinishRelease, facts: HostFacts) -> StepState:
        """The stopped release a FinishRelease finishes, in `facts` (the host read again): finished ("after": nothing of
        it left on the VM, and none of its devices left dismounted or disabled), as planned ("before": what `status`
        says of it is what it said when planned), or anything else ("unknown", with what the host shows)."""
        vm = facts.find_vm(payload.vm)
        if vm is None:
            return StepState("unknown", detail=f"VM '{payload.vm}' is no longer on the host")
        left = (_state(facts).vms.get(payload.vm) or {}).get("ex_finish")
        stuck = sorted(a for a in map(PciAddress.parse, payload.addresses) if a in self._left)
        if not left and not stuck:
            return StepState("after")
        if left and payload.note and left.get("note") == payload.note:
            return StepState("before")
        shown = [f"VM '{payload.vm}': {'; '.join(vm.unfinished)}"] if vm.unfinished else []
        shown += [f"{a} is on no VM but not given back to the host; by hand, in PowerShell on the host: {self._left[a]}"
                  for a in stuck]
        return StepState("unknown", detail=f"the host, read again, shows the release part-way finished: "
                                           f"{'; '.join(shown) or 'not as planned'}; `gpupass status "
                                           f"{self.target.label}` shows it with the command that finishes it")

    def _finish_release(self, payload: FinishRelease) -> None:
        action = f"finishing the release of VM '{payload.vm}'"
        code, data, err = self._run_json(scripts.finish_release_script(payload.vm, list(payload.paths)), action,
                                         writes=True)
        taken = data.get("taken") or []
        taken = [t for t in ([taken] if isinstance(taken, dict) else taken) if isinstance(t, dict)]
        held = ", ".join(f"{t.get('Path')} by VM '{t.get('Vm')}'" for t in taken)
        if not data.get("ok"):
            stage = dict(data.get("stage") or {})
            damage = data.get("recordDamage")
            cause = from_script_result(action, data)
            if damage:
                raise OperationFailed(f"{action}: the gpupass restore record in the VM's notes is damaged: "
                                      f"{scripts.RECORD_DAMAGE.get(str(damage), str(damage))}; nothing was changed",
                                      remedy="look at the VM's notes (Get-VM | Select-Object Name, Notes): repair the "
                                             "record, or delete it and finish by hand", rolled_back=True)
            if not stage:
                raise OperationFailed(f"{cause.message}; nothing was changed", remedy=cause.remedy, rolled_back=True)
            done = ", ".join(f"{p}: {s}" for p, s in stage.items())
            raise OperationFailed(f"{cause.message}; devices back on the host so far: {done}",
                                  remedy=f"run `gpupass status {self.target.label}`: the same release again finishes "
                                         "the rest", rolled_back=False)
        if taken:
            # Another run assigned the device after this release was planned: Hyper-V added it to that VM (it was
            # dismounted), so it stays there; this VM's own part (its settings, its record) is done all the same.
            log.warning("%s: %s held now (another run assigned it after this release was planned): left there",
                        action, held)

    def undo(self, step: Step, token: Any) -> None:
        self._undo(step.payload, token)

    @functools.singledispatchmethod
    def _undo(self, payload: object, token: Any) -> None:
        raise OperationFailed(f"the hyperv backend cannot undo a step of type {type(payload).__name__}",
                              rolled_back=True)  # refused before sending anything

    @_undo.register
    def _undo_assign(self, payload: Assign, token: dict[str, Any] | None) -> None:
        # The release script restores the settings from the record the assign wrote into the VM's notes (and
        # leaves them, and the record, where the VM still holds a device from before).
        def release() -> None:
            try:
                self._release(payload.vm, list(payload.paths), None)
            except _PartialRelease as partial:
                raise partial.error from None
        self._read_back_if_lost(release, self._devices_are(payload.vm, payload.addresses, on_vm=False))

    def _read_back_if_lost(self, undo: Callable[[], Any], done: Callable[[HostFacts], bool]) -> None:
        """Run an undo script. Where its reply is lost (ConnectionFailed: the host may well have run it), the host is
        read again: where `done` finds the undo made there, it went through -- not an undo to make by hand; anything
        else, or a read that fails too, leaves the loss as it was."""
        try:
            undo()
        except ConnectionFailed as lost:
            try:
                facts = self.inventory()
            except GpupassError:
                raise lost from None
            if not done(facts):
                raise
            log.info("%s: the reply was lost, and the host read again shows it done", lost.message)

    def _back_on_host(self, facts: HostFacts) -> set[PciAddress]:
        """The functions the host has for its own use: on no VM, and not left dismounted or disabled by a stopped run
        (self._left, from the inventory that read `facts`)."""
        return {f.address for gpu in facts.gpus if gpu.assigned_to is None for f in gpu.functions} - set(self._left)

    def _devices_are(self, vm: str, addresses: tuple[str, ...], on_vm: bool) -> Callable[[HostFacts], bool]:
        """The devices at `addresses` all on VM `vm` (`on_vm`) or all back on the host, with nothing unfinished on the
        VM (a release script stopped half-way leaves its intent: records.py)."""
        def done(facts: HostFacts) -> bool:
            held = facts.find_vm(vm)
            wanted = {PciAddress.parse(a) for a in addresses}
            free = self._back_on_host(facts)
            return bool(addresses) and held is not None and not held.unfinished and (
                wanted <= set(held.assigned) if on_vm else not wanted & set(held.assigned) and wanted <= free)
        return done

    @_undo.register
    def _undo_finish_release(self, payload: FinishRelease, token: None) -> None:
        if not payload.paths and not payload.restore:
            # it took out only an intent that named nothing left to do (records._intent_left), before a release that
            # failed: not put back, so a rerun has nothing of it to clear
            log.info("the spent release intent taken out of VM %s's record is not put back", payload.vm)
            return
        raise OperationFailed(f"finishing the release of VM '{payload.vm}' is not undone: it puts the host where the "
                              "stopped release would have", rolled_back=False)

    @_undo.register
    def _undo_release(self, payload: Release, token: str | None) -> None:
        current = payload.current
        # The assign script records the settings the release had restored, in the notes again.
        script = scripts.assign_script(payload.vm, list(payload.paths), current["low_mmio"],
                                       current["high_mmio"], current["stop_action"], current["guest_cache"])
        self._read_back_if_lost(lambda: self._run_change(script, f"giving the devices back to VM '{payload.vm}'"),
                                self._devices_are(payload.vm, payload.addresses, on_vm=True))

    def _lost_to_another(self, payload: Assign, error: OperationFailed) -> OperationFailed:
        """An assign script that undid itself because another run took a device first (Hyper-V's own rule: a
        dismounted device is added to one VM only, so the later script finds no device to dismount) is a Conflict,
        as on every platform; the host is read to tell, never the error's text."""
        if error.rolled_back is not True or not payload.paths:
            return error
        try:
            code, data, _ = self._run_json(scripts.owners_script(list(payload.paths)), "reading who holds the devices")
        except GpupassError:
            return error
        held = data.get("Held") or []
        owners = sorted({str(h.get("Vm")) for h in (held if isinstance(held, list) else [held])
                         if isinstance(h, dict) and h.get("Vm")})
        if code != 0 or not owners:
            return error
        holders = "VM " + ", ".join(f"'{o}'" for o in owners)
        mine = owners == [payload.vm]
        return Conflict(f"assigning to VM '{payload.vm}': another run took the device first; it is now held by "
                        f"{holders}; this run's own change was undone",
                        remedy="nothing to do: the VM already holds it" if mine else
                        f"release it from {holders} first, or pick another GPU (`gpupass gpus HOST`)",
                        rolled_back=True)

    # -- GPU partitioning (GPU-P) share steps ----------------------------------------------------------
    @_apply.register
    def _apply_add_partition(self, payload: AddPartition, step: Step) -> str:
        return self._add_partition(payload.vm, payload.instance_path, payload.settings)

    @_apply.register
    def _apply_set_partition_count(self, payload: SetPartitionCount, step: Step) -> int:
        self._run_change(scripts.partition_count_script(payload.instance_path, payload.count, payload.previous,
                                                        payload.vm or None),
                         f"setting the partition count of {payload.instance_path} to {payload.count}")
        return payload.previous

    @_undo.register
    def _undo_set_partition_count(self, payload: SetPartitionCount, token: int) -> None:
        action = f"setting the partition count of {payload.instance_path} back to {payload.previous}"
        # with the intent (payload.vm), the set-back takes it out of the VM's notes, and finds the count already back
        # (a change that never went through, its intent alone written) with nothing to set
        script = (scripts.count_set_back_script(payload.instance_path, payload.previous, payload.count, payload.vm)
                  if payload.vm else
                  scripts.partition_count_script(payload.instance_path, payload.previous, payload.count))
        self._read_back_if_lost(
            lambda: self._run_change(script, action),
            lambda facts: (_partition_counts(facts, payload.instance_path) == [payload.previous]
                           and not self._count_change_of(facts, payload.vm, payload.instance_path)))

    @staticmethod
    def _holds_partitions(vm: str, instance_path: str, count: int | None,
                          settled: tuple[str, ...] = ()) -> Callable[[HostFacts], bool]:
        """VM `vm` holds `count` partitions of the GPU `instance_path` (None: not known, never true); `settled`: the GPUs
        of a release whose note the script settles: where the VM holds a partition of each, no note is left either."""
        def done(facts: HostFacts) -> bool:
            by_path = {str(g.extra.get("partition_instance_path") or "").lower(): g for g in facts.gpus}
            gpu = by_path.get(instance_path.lower())
            if count is None or gpu is None or len(gpu.sharing.held_by(vm)) != count:
                return False
            whole = all(p.lower() in by_path and by_path[p.lower()].sharing.held_by(vm) for p in settled)
            noted = (_state(facts).vms.get(vm) or {}).get("ex_partition_release_noted")
            return not (settled and whole and noted)
        return done

    @staticmethod
    def _count_change_of(facts: HostFacts, vm: str, instance_path: str) -> bool:
        """Whether VM `vm`'s notes hold the intent of a count change of the GPU `instance_path` (records.count_changes)."""
        change = (_state(facts).vms.get(vm) or {}).get("ex_count") if vm else None
        return change is not None and str(change["gpu"]).lower() == instance_path.lower()

    @_apply.register
    def _apply_finish_count_change(self, payload: FinishCountChange, step: Step) -> None:
        self._done_if_lost(lambda: self._finish_count_change_now(payload),
                           lambda facts: self._finish_count_state(payload, facts).state == "after")

    def _finish_count_state(self, payload: FinishCountChange, facts: HostFacts) -> StepState:
        """The count change a FinishCountChange takes back, in `facts` (the host read again): its note out of the VM's
        notes ("after": the script's last write, made once the count is set back or left where another run holds it),
        the note and the count as planned ("before"), or the note with another count ("unknown")."""
        if facts.find_vm(payload.vm) is None:
            return StepState("unknown", detail=f"VM '{payload.vm}' is no longer on the host")
        if not self._count_change_of(facts, payload.vm, payload.instance_path):
            return StepState("after")
        counts = _partition_counts(facts, payload.instance_path)
        if payload.seen is not None and counts == [payload.seen]:
            return StepState("before")
        return StepState("unknown", detail=f"the partition count of {payload.instance_path} is "
                                           f"{counts[0] if counts else 'not readable'} ({payload.seen} when planned) "
                                           f"and the note of the change is still in VM '{payload.vm}''s notes: "
                                           f"`gpupass status {self.target.label}` shows it with the release that "
                                           "takes it out")

    def _finish_count_change_now(self, payload: FinishCountChange) -> None:
        action = f"taking back the partition count change of {payload.instance_path} left on VM '{payload.vm}'"
        data = self._run_change(scripts.count_set_back_script(payload.instance_path, payload.back_to,
                                                              payload.changed_to, payload.vm, strict=False), action)
        if not data.get("setBack") and data.get("count") != payload.back_to:
            held = data.get("held") or []
            log.warning("%s: the count stays %s (%s); its note was taken out", action, data.get("count"),
                        f"VM {', '.join(map(str, held if isinstance(held, list) else [held]))} hold partitions at it"
                        if held else "changed since")

    @_undo.register
    def _undo_finish_count_change(self, payload: FinishCountChange, token: None) -> None:
        raise OperationFailed(f"taking back the partition count change left on VM '{payload.vm}' is not undone: it puts "
                              "the host where the stopped assign's own undo would have", rolled_back=False)

    @_undo.register
    def _undo_add_partition(self, payload: AddPartition, token: str) -> None:
        # exactly the adapter it added, by the Id Add-VMGpuPartitionAdapter -Passthru returned; a reply lost: the VM's
        # partitions of the GPU counted again (as many as before the add: done)
        self._read_back_if_lost(
            lambda: self._remove_partitions(payload.vm, payload.instance_path, 1, adapter_id=token or None),
            self._holds_partitions(payload.vm, payload.instance_path, payload.held))

    @_apply.register
    def _apply_remove_partitions(self, payload: RemovePartitions, step: Step) -> list[dict[str, Any]]:
        return self._remove_partitions(payload.vm, payload.instance_path, payload.count, intent=payload.intent,
                                       ends_release=payload.ends_release)

    @_undo.register
    def _undo_remove_partitions(self, payload: RemovePartitions, token: list[dict[str, Any]]) -> None:
        # each partition back with the settings it had (what the remove script read from its adapter); the first step
        # of a release of several GPUs' partitions undone: its last add settles the release's note
        back = token or [{}] * payload.count
        for index, removed in enumerate(back):
            last = index == len(back) - 1

            def add(removed: Mapping[str, Any] = removed, last: bool = last) -> None:
                self._add_partition(payload.vm, payload.instance_path, _settings_of(removed),
                                    release=payload.intent if last else ())
            # a reply lost: counted again (the partitions it held before the removal, and this one's add made: done)
            self._read_back_if_lost(
                add,
                self._holds_partitions(payload.vm, payload.instance_path,
                                       None if payload.held is None else payload.held - payload.count + index + 1,
                                       settled=payload.intent if last else ()))

    def observe(self, step: Step) -> StepState:
        """After a script whose reply was lost (timeout, dropped connection): what the host holds now."""
        return self._observe(step.payload, step)

    @functools.singledispatchmethod
    def _observe(self, payload: object, step: Step) -> StepState:
        return StepState("unknown", detail=f"{step.description} cannot be read back")

    @_observe.register
    def _observe_assign(self, payload: Assign, step: Step) -> StepState:
        return self._observe_devices(payload.vm, payload.addresses, step, assigning=True)

    @_observe.register
    def _observe_set_partition_count(self, payload: SetPartitionCount, step: Step) -> StepState:
        """The GPU's partition count now: the new one (the change went through), the old one, or neither. The old one
        with the step's intent still in the VM's notes (the script stopped between its two writes) is "after" too: its
        undo (count_set_back_script) finds the count back and takes the intent out."""
        facts = self.inventory()
        counts = _partition_counts(facts, payload.instance_path)
        if counts == [payload.count]:
            return StepState("after")
        if counts == [payload.previous]:
            return StepState("after" if self._count_change_of(facts, payload.vm, payload.instance_path) else "before")
        return StepState("unknown", detail=f"the partition count of {payload.instance_path} is "
                                           f"{counts[0] if counts else 'not readable'}, neither {payload.previous} "
                                           f"nor {payload.count}")

    @_observe.register
    def _observe_finish_release(self, payload: FinishRelease, step: Step) -> StepState:
        return _finished(self._finish_release_state(payload, self.inventory()))

    @_observe.register
    def _observe_finish_count_change(self, payload: FinishCountChange, step: Step) -> StepState:
        return _finished(self._finish_count_state(payload, self.inventory()))

    @_observe.register
    def _observe_release(self, payload: Release, step: Step) -> StepState:
        return self._observe_devices(payload.vm, payload.addresses, step, assigning=False)

    @_observe.register
    def _observe_add_partition(self, payload: AddPartition, step: Step) -> StepState:
        # "after": the undo removes one of the VM's partitions of that GPU (the reply carrying the new adapter's Id
        # was lost; the partitions of one GPU are equal, one of PartitionCount)
        return self._observe_partitions(payload.vm, payload.instance_path, payload.held, 1, step)

    @_observe.register
    def _observe_remove_partitions(self, payload: RemovePartitions, step: Step) -> StepState:
        return self._observe_partitions(payload.vm, payload.instance_path, payload.held, -payload.count, step,
                                        intent=bool(payload.intent))

    def _observe_partitions(self, vm_name: str, path: str, held: int | None, change: int, step: Step,
                            intent: bool = False) -> StepState:
        """How many partitions of the GPU `path` the VM holds now (one inventory read), against the `held` the plan
        saw: as many (before), as many as the step makes (after), or anything else (unknown, said with the counts)."""
        if held is None:
            return StepState("unknown", detail=f"{step.description} cannot be read back (planned by an older gpupass)")
        facts = self.inventory()
        gpu = next((g for g in facts.gpus if str(g.extra.get("partition_instance_path") or "").lower()
                    == path.lower()), None)
        if gpu is None or facts.find_vm(vm_name) is None:
            return StepState("unknown", detail=f"VM '{vm_name}' or the GPU {path} is no longer on the host")
        now = len(gpu.sharing.held_by(vm_name))
        if now == held and intent and (_state(facts).vms.get(vm_name) or {}).get("ex_partition_release_noted"):
            # stopped after the release's note and before its first removal: not as it was, and not to be undone by
            # adding partitions back; `status` shows the note with the release that finishes it
            return StepState("unknown", detail=f"VM '{vm_name}' holds its {held} partition(s) of GPU {gpu.address}, but "
                                               "the note of this release is in its notes: `gpupass status` shows it")
        if now == held:
            return StepState("before")
        if now == held + change and change > 0:
            return StepState("after")
        if now == held + change:
            # Taken back, but the reply carrying their -Min/-Max/-Optimal settings was lost: adding them back without
            # would not be "as they were", so the release is left done and said so.
            return StepState("unknown", detail=f"the host took {-change} partition(s) of GPU {gpu.address} back from "
                                               f"VM '{vm_name}' (the release went through), but the reply carrying "
                                               "their partition settings was lost, so gpupass does not add them back")
        return StepState("unknown", detail=f"VM '{vm_name}' holds {now} partition(s) of GPU {gpu.address}, {held} "
                                           f"before the step and {held + change} after it; `gpupass status` shows them")

    def _observe_devices(self, vm_name: str, addresses: tuple[str, ...], step: Step, assigning: bool) -> StepState:
        """Where the step's devices are now: all on the VM, all back on the host, or anything else (unknown).
        An assign that is on the VM is undone by a release (which restores from the record the same script wrote
        into the notes); a release that went through is undone by assigning again."""
        if not addresses:
            return StepState("unknown", detail=f"{step.description} cannot be read back")
        facts = self.inventory()
        vm = facts.find_vm(vm_name)
        if vm is None:
            return StepState("unknown", detail=f"VM '{vm_name}' is no longer on the host")
        wanted = {PciAddress.parse(a) for a in addresses}
        held = wanted & set(vm.assigned)
        # a device on no VM is the host's only where it is mounted and enabled: one dismounted (a release stopped
        # after Remove-VMAssignableDevice, an assign's own undo stopped before Mount-VMHostAssignableDevice) or
        # disabled is neither before nor after, whatever the step
        stuck = sorted(wanted & set(self._left))
        free = self._back_on_host(facts)
        on_vm, on_host = held == wanted, not held and wanted <= free
        holds = f"VM '{vm_name}' holds {', '.join(sorted(map(str, held))) or 'none'} of {', '.join(sorted(map(str, wanted)))}"
        if (on_vm or on_host) and not vm.unfinished:
            return StepState("after" if on_vm == assigning else "before")
        # Neither: the devices part-way, or where they were but with the script stopped between its writes (the host's
        # PowerShell ended mid-script: an assign's Set-VM made, its devices not; a release's intent written, its
        # settings not restored), which the restore record shows and `status` says (records.stopped_runs).
        partial = [f"the host shows a run stopped half-way: {'; '.join(vm.unfinished)}"] if vm.unfinished else []
        if stuck:
            by_hand = "; ".join(f"{a}: {self._left[a]}" for a in stuck)
            partial.append(f"{', '.join(map(str, stuck))} is on no VM but not given back to the host (dismounted, or "
                           f"disabled): `gpupass status {self.target.label}` shows what the stopped run left and the "
                           f"command that finishes it; by hand, in PowerShell on the host: {by_hand}")
        if partial:
            return StepState("unknown", detail=f"{holds}, and {'; '.join(partial)}")
        again = "assign" if assigning else "release"
        return StepState("unknown", detail=f"{holds}; `gpupass release` or the same {again} again finishes it")

    def _add_partition(self, vm: str, path: str, settings: Sequence[tuple[str, int]] = (),
                       release: tuple[str, ...] = ()) -> str:
        data = self._run_change(scripts.partition_add_script(vm, path, settings, release=release),
                                f"adding a GPU partition to VM '{vm}'")
        return str(data.get("id") or "")

    def _remove_partitions(self, vm: str, path: str, count: int, adapter_id: str | None = None,
                           intent: tuple[str, ...] = (), ends_release: bool = False) -> list[dict[str, Any]]:
        data = self._run_change(scripts.partition_remove_script(vm, path, count, adapter_id, intent=intent,
                                                                ends_release=ends_release),
                                f"removing GPU partitions from VM '{vm}'")
        removed = data.get("removed") or []
        return [r for r in (removed if isinstance(removed, list) else [removed]) if isinstance(r, dict)]

    def _run_change(self, script: str, action: str) -> dict[str, Any]:
        code, data, err = self._run_json(script, action, writes=True)
        if not data.get("ok"):
            raise from_script_result(action, data)
        return data

    def _assign(self, vm: str, paths: list[str], low: int, high: int, script: str | None) -> dict[str, Any]:
        script = script or scripts.assign_script(vm, paths, low, high)
        data = self._run_change(script, f"assigning to VM '{vm}'")
        prev = data.get("previous") or {}
        return {"stop_action": prev["StopAction"], "low_mmio": int(prev["LowMmio"]),
                "high_mmio": int(prev["HighMmio"]), "guest_cache": bool(prev["GuestCache"])}

    def _release(self, vm: str, paths: list[str], script: str | None) -> str | None:
        """Run the release script; what it restored the VM's settings from ("notes", "legacy") or None."""
        script = script or scripts.release_script(vm, paths)
        action = f"releasing from VM '{vm}'"
        code, data, err = self._run_json(script, action, writes=True)
        if not data.get("ok"):
            damage = data.get("recordDamage")
            if damage:
                # The script stopped before its first change: nothing to give back.
                raise OperationFailed(
                    f"{action}: the gpupass restore record in the VM's notes is damaged: "
                    f"{scripts.RECORD_DAMAGE.get(str(damage), str(damage))}; nothing was changed",
                    remedy="look at the VM's notes (Get-VM | Select-Object Name, Notes): repair the record, or delete "
                           f"it from {scripts.RECORD_BEGIN!r} to {scripts.RECORD_END!r} with Set-VM -Notes and put "
                           "the stop action and MMIO back by hand; then release again", rolled_back=True)
            stage = dict(data.get("stage") or {})
            if data.get("intentLeft") and not stage:
                # It took no device, but its intent stays in the VM's record: not "as it was"; the core reads the host
                # again (Backend.observe), which shows the intent (records._intent_left) and what finishes it.
                cause = from_script_result(action, data)
                raise ScriptFailedAfterChanges(
                    f"{cause.message}; it took no device, but taking its intent back out of the gpupass restore record "
                    "in the VM's notes failed too: the host is read again",
                    remedy=f"run `gpupass status {self.target.label}`: it shows the intent with the command that "
                           "takes it out")
            # The release script stops at the first failure and says how far each device got.
            raise _PartialRelease(from_script_result(action, data), stage)
        restored = data.get("restored")
        return str(restored) if restored else None

    def _give_back(self, payload: Release, partial: "_PartialRelease") -> OperationFailed:
        """A release failed half way: give the devices it touched back to the VM, so nothing is left ownerless."""
        touched = [p for p in payload.paths if p in partial.stage]
        cause = partial.error
        if not touched:
            return OperationFailed(cause.message, remedy=cause.remedy, rolled_back=True)
        current = payload.current
        # 'removed' devices are still dismounted: only Add them back; mounted/enabled ones go the whole way.
        removed = [p for p in touched if partial.stage[p] == "removed"]
        mounted = [p for p in touched if partial.stage[p] != "removed"]
        action = f"giving the devices back to VM '{payload.vm}'"
        # each write whose reply is lost is read back (_read_back_if_lost), so one made on the host lets the next go on:
        # a take-back left half-way would leave the release's intent on a VM holding its devices (records._intent_left)
        readd = scripts.readd_script(payload.vm, removed) if removed else None
        mount = scripts.assign_script(payload.vm, mounted, current["low_mmio"], current["high_mmio"],
                                      current["stop_action"], current["guest_cache"]) if mounted else None
        try:
            if readd is not None:
                self._read_back_if_lost(lambda: self._run_change(readd, action), _holds(payload.vm, removed))
            if mount is not None:
                self._read_back_if_lost(lambda: self._run_change(mount, action), _holds(payload.vm, mounted))
            # the devices are the VM's again: the release's intent in its restore record names nothing left to do
            self._read_back_if_lost(lambda: self._run_change(scripts.drop_intent_script(payload.vm), action),
                                    self._devices_are(payload.vm, payload.addresses, on_vm=True))
        except OperationFailed as again:
            stages = ", ".join(f"{p}: {partial.stage[p]}" for p in touched)
            return OperationFailed(f"{cause.message}; giving the devices back to the VM failed too "
                                   f"({again.message}); devices are now: {stages}",
                                   remedy="finish by hand: Enable-PnpDevice for 'mounted' devices, or run "
                                          "`gpupass release` again", rolled_back=False)
        return OperationFailed(f"{cause.message}; the devices it had taken were given back to VM "
                               f"'{payload.vm}'", remedy=cause.remedy, rolled_back=True)


def _holds(vm: str, paths: Sequence[str]) -> Callable[[HostFacts], bool]:
    """VM `vm` holds the devices at location paths `paths` (read in the facts' own map of paths)."""
    def done(facts: HostFacts) -> bool:
        held = facts.find_vm(vm)
        at = {path: address for address, path in _state(facts).location_paths.items()}
        return held is not None and all(p in at and at[p] in held.assigned for p in paths)
    return done


def _finished(state: StepState) -> StepState:
    """A finishing step read back: "after" is said as it is, not as a step to undo (it has none: the core would try,
    and list it as one to undo by hand)."""
    if state.state != "after":
        return state
    return StepState("unknown", detail="the host, read again, shows it done: nothing of what it finishes is left there")


def _partition_counts(facts: HostFacts, instance_path: str) -> list[Any]:
    """The partition count of the GPU whose GPU-P instance path is `instance_path` (one entry; none where it is gone)."""
    return [(g.extra.get("gpu_partitioning") or {}).get("partition_count") for g in facts.gpus
            if str(g.extra.get("partition_instance_path") or "").lower() == instance_path.lower()]


def _settings_of(removed: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """An adapter's partition settings as the remove script read them (Select-Object of Min/Max/OptimalPartition*)."""
    return tuple((name, int(removed[name])) for name in partitioning.SETTINGS
                 if isinstance(removed.get(name), int) and not isinstance(removed.get(name), bool))


def _batches(groups: list[list[str]], build: Callable[[list[str]], str],
             what: str) -> tuple[list[list[str]], list[str]]:
    """All the devices in one script, or one script per GPU (with its companions) where they do not fit one."""
    try:
        whole = [p for group in groups for p in group]
        return [whole], [build(whole)]
    except scripts.ScriptTooLarge:
        batches, previews = [], []
        for group in groups:
            try:
                previews.append(build(group))
            except scripts.ScriptTooLarge as exc:
                raise UsageError(f"{what} does not fit WinRM's command line: {exc}",
                                 remedy="rename the VM to a shorter name") from exc
            batches.append(group)
        return batches, previews


class _PartialRelease(Exception):
    def __init__(self, error: GpupassError, stage: dict[str, str]) -> None:
        super().__init__(error.message)
        self.error, self.stage = error, stage


def _vm(raw: dict[str, Any], held: tuple[PciAddress, ...]) -> Vm:
    generation = int(raw.get("Generation") or 0)
    dynamic = bool(raw.get("DynamicMemory"))
    memory = int(raw.get("MemoryStartup") or 0)
    checkpoints = raw.get("Checkpoints") or []
    return Vm(
        name=raw["Name"], id=str(raw.get("Id") or ""),
        power_state=_STATES.get(str(raw.get("State") or "").lower(), PowerState.UNKNOWN),
        firmware={2: Firmware.EFI, 1: Firmware.BIOS}.get(generation, Firmware.UNKNOWN),
        memory_bytes=memory, memory_reserved_bytes=None if dynamic else memory,
        mmio_window_bytes=int(raw["HighMmio"]) if raw.get("HighMmio") is not None else None,
        assigned=held, snapshots=len(checkpoints),
        # DDA gives a device by its location path: one host device.
        binding="address", stop_action=raw.get("StopAction"), dynamic_memory=dynamic,
        settings={"generation": generation, "low_mmio": raw.get("LowMmio"),
                  "high_mmio": raw.get("HighMmio"), "guest_controlled_cache_types": raw.get("GuestCache"),
                  "state": raw.get("State"), "checkpoint_types": [c.get("Type") for c in checkpoints]},
    )
