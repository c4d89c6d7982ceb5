"""Host tasks whose answer did not come: what gpupass learns before it sends anything else to that host.

A host task (EnterMaintenanceMode_Task, RebootHost_Task, ExitMaintenanceMode_Task) may have been carried out, may be
running, or may still reach the host when its answer is lost (a timeout, a connection dropped, a frozen endpoint).
A cleanup write sent blind then races it: an ExitMaintenanceMode_Task served before a late RebootHost_Task makes the
reboot fail, served after it leaves the host rebooted -- which one, nobody can say. So gpupass first learns the
task's state from vCenter, and while it cannot, sends nothing more to that host and says what it read.

vSphere API reference (Web Services API, the fields relied on here):
- TaskInfo.state (TaskInfoState): "queued", "running", "success", "error"; TaskInfo.error: "If the task state is
  'error', then this property contains the fault code"; TaskInfo.entity, TaskInfo.descriptionId ("Identifier for
  this task type"), TaskInfo.queueTime ("Time stamp when the task was created").
- TaskManager.recentTask: "A list of Task managed objects that completed recently, that are currently running, or
  that are queued to run" -- where a task whose reference never reached the client is found. Completed ones are listed
  "by default" only for "the past 10 minutes" (and, on vCenter, among the last 200); the same reference says it
  "should not be used for tracking Task completion" and that it may not send update notifications, so it is read once
  with RetrievePropertiesEx, seconds after the answer was lost, and a task not found there counts as not known, never
  as not sent (pyVmomi's docs/vim/TaskManager.rst).
- ServiceInstance.CurrentTime: "Returns the current time on the server" -- the server's clock, against which the
  queueTime of a task sent after it is compared (no client clock involved).
- HostSystem.runtime.connectionState (HostSystemConnectionState: "connected", "notResponding", "disconnected"),
  runtime.inMaintenanceMode, runtime.bootTime ("The time when the host was booted"), config.pciPassthruInfo
  (passthruEnabled; passthruActive "meaning enabled + rebooted").
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from typing import Any, Iterable

from gpupass.core.errors import ConnectionFailed, GpupassError

# TaskInfo.descriptionId of each host task, as a real vCenter names them in TaskManager.description.methodInfo
# (recorded from one in vmware/govmomi simulator/vpx/task_manager.go: "HostSystem.enterMaintenanceMode",
# "HostSystem.exitMaintenanceMode", "HostSystem.reboot").
ENTER_MAINTENANCE = "HostSystem.enterMaintenanceMode"
EXIT_MAINTENANCE = "HostSystem.exitMaintenanceMode"
REBOOT = "HostSystem.reboot"

TASK_PROPS = ["info.entity", "info.descriptionId", "info.state", "info.queueTime", "info.error"]
HOST_PROPS = ["runtime.connectionState", "runtime.inMaintenanceMode", "runtime.bootTime", "config.pciPassthruInfo"]


class Unsettled(Exception):
    """A host task gpupass sent whose end it could not learn: the host may still carry it out. `reason` says what
    failed and what was read; nothing more is sent to the host (see the module's docstring)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(reason)
        self.host, self.reason = host, reason


def no_answer(error: BaseException) -> bool:
    """The request's outcome is not known: no answer came (a timeout, a connection lost or refused), as opposed to
    a fault the server answered with. Told by the error's cause, not by its text."""
    cause = error.__cause__ if isinstance(error, GpupassError) else error
    return isinstance(error, ConnectionFailed) and isinstance(cause, (OSError, http.client.HTTPException))


@dataclass(frozen=True)
class FoundTask:
    ref: Any
    state: str
    error: Any


def newest_task(objects: Iterable[Any], host_id: str, description_id: str, since: Any) -> FoundTask | None:
    """Of the ObjectContents of TaskManager.recentTask (TASK_PROPS), the newest task of kind `description_id` on host
    `host_id` (its managed object id) queued at or after `since` (the server's time before the task was sent)."""
    best: tuple[Any, FoundTask] | None = None
    for obj in objects:
        values = {p.name: p.val for p in obj.propSet}
        entity, queued = values.get("info.entity"), values.get("info.queueTime")
        if getattr(entity, "_moId", None) != host_id or str(values.get("info.descriptionId")) != description_id:
            continue
        if since is not None and queued is not None and queued < since:
            continue  # an older task of the same kind: not the one this run sent
        if best is None or (queued is not None and best[0] is not None and queued > best[0]):
            best = (queued, FoundTask(obj.obj, str(values.get("info.state")), values.get("info.error")))
    return best[1] if best else None


def host_report(host: str, values: dict[str, Any], ids: Iterable[str], boot_before: Any,
                entered: bool) -> str:
    """The host as read now, in words: connection, maintenance mode, whether it booted since the step began, and the
    passthrough state of the step's devices."""
    state = str(values.get("runtime.connectionState"))
    maintenance = bool(values.get("runtime.inMaintenanceMode"))
    boot = values.get("runtime.bootTime")
    parts = [f"host {host} is {state}" + (" (vCenter does not hear from it: a reboot under way shows so)"
                                          if state == "notResponding" else "")]
    parts.append("in maintenance mode" + (" (this run put it there)" if entered else "") if maintenance
                 else "not in maintenance mode")
    if boot_before is not None and boot is not None:
        parts.append("rebooted since the step began" if boot != boot_before else "not rebooted since the step began "
                     "(as vCenter has heard so far)")
    infos = {info.id: info for info in values.get("config.pciPassthruInfo") or ()}
    for pci in ids:
        info = infos.get(pci)
        if info is not None:
            parts.append(f"passthrough of {pci} " + ("enabled" if info.passthruEnabled else "disabled") + ", "
                         + ("active" if info.passthruActive else "not active (until a reboot)"))
    return ", ".join(parts)
