"""Translate WinRM and PowerShell failures into the core's error types by structure, never by message text.

What is read: the pywinrm exception class (401 -> InvalidCredentialsError, a WS-Management fault ->
WinRMError with its fault code), the requests exception class (connection refused, TLS), the exit code of
the remote command, the CLIXML error records on stderr (their `FullyQualifiedErrorId` and `CategoryInfo`
fields), and the fields of the JSON the scripts print (`ok`, `errorId`, `step`, `undoErrors`).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any
from dataclasses import dataclass

from gpupass.core.errors import (
    AuthenticationFailed,
    Conflict,
    ConnectionFailed,
    GpupassError,
    NotFound,
    OperationFailed,
)


@dataclass(frozen=True)
class ErrorRecord:
    """One PowerShell error record as CLIXML carries it (the rendered fields, split)."""
    message: str
    fully_qualified_error_id: str = ""
    category: str = ""


_FIELD = re.compile(r"^\s*\+\s*(CategoryInfo|FullyQualifiedErrorId)\s*:\s*(.*)$")


def _unescape(text: str) -> str:
    return re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), text)


def parse_clixml(stderr: bytes | str) -> list[ErrorRecord]:
    """The error records in a `#< CLIXML` stderr stream (empty when there are none or it is not CLIXML)."""
    text = stderr.decode("utf-8", errors="replace") if isinstance(stderr, bytes) else stderr
    if not text.startswith("#< CLIXML"):
        return []
    try:
        root = ET.fromstring(text.split("\n", 1)[1] if "\n" in text else "")
    except ET.ParseError:
        return []
    lines = "".join(_unescape(el.text or "") for el in root.iter() if el.tag.endswith("S")
                    and el.get("S") == "Error").splitlines()
    records: list[ErrorRecord] = []
    message: list[str] = []
    category = ""
    for line in lines:
        match = _FIELD.match(line)
        if match and match.group(1) == "CategoryInfo":
            category = match.group(2).split(":", 1)[0].strip()
        elif match:
            records.append(ErrorRecord(" ".join(message).strip(), match.group(2).strip(), category))
            message, category = [], ""
        elif not line.startswith("At line:") and not line.strip().startswith(("+ ", "~")) and line.strip():
            if not category:
                message.append(line.strip())
    if message:
        records.append(ErrorRecord(" ".join(message).strip()))
    return records


# FullyQualifiedErrorId prefixes (before the first comma) that mean "the thing named is not there".
_NOT_FOUND_IDS = {"InvalidParameter", "ObjectNotFound", "CmdletizationQuery_NotFound"}
# The assign script's steps (scripts.assign_script) that take a device from the host.
_TAKING_FROM_THE_HOST = ("Disable-PnpDevice ", "Dismount-VMHostAssignableDevice ")


class OutcomeNotKnown(ConnectionFailed):
    """A write script whose outcome on the host is not known: it may have made all, part or none of its changes. It
    carries no `rolled_back`, so the core reads the host again (core/service.py `_observed` -> Backend.observe), and an
    undo script failing so is read back too (HypervBackend._read_back_if_lost). A ConnectionFailed: like a lost reply."""


class ScriptStopped(OutcomeNotKnown):
    """A write script that ended before its end, printing no result and no PowerShell error: its process was ended in
    the middle (the lab models it: hostmodel/interp.py, KILLED_EXIT_CODE). Like a lost reply, what it did is not known
    and the host is read again (it carries no `rolled_back`: Backend.observe decides)."""


class ScriptStillRunning(OutcomeNotKnown):
    """A script still running on the host when the host's timeout ran out: WinRM kept answering its Receive requests
    with the OperationTimeout fault (MS-WSMV, Receive: "If no output is available before the wsman:OperationTimeout
    expires, the server MUST return a WSManFault with the Code attribute equal to 2150858793. When the client receives
    this fault, it SHOULD issue another Receive request", as quoted in WinRb/WinRM#123; 2150858793 is
    ERROR_WSMAN_OPERATION_TIMEDOUT in the Windows SDK's winerror.h, and pywinrm turns it into WinRMOperationTimeoutError,
    winrm/protocol.py). gpupass stops polling, asks the host to end the command (Signal terminate: "Terminates the shell
    or command", MS-WSMV 2.2.5.6) and drops the shell; what the script did before is not known."""


class ScriptFailedAfterChanges(OutcomeNotKnown):
    """A write script that failed after it had made some of its changes (its JSON result says so: `changed`): neither
    done nor undone, so the host is read again and what is there reported (the step's observe names it)."""


class RequestOverran(Exception):
    """A WinRM request cut off at its deadline as a whole (bounds.CallBound): the host, or something between, kept it
    alive -- its reply dripping, each read within the socket timeout -- past the time the call had. Not a GpupassError:
    from_exception makes it the host's error (what the request did there is not known)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"cut off after {seconds:.1f} s")
        self.seconds = seconds


def from_script_result(action: str, result: dict[str, Any]) -> GpupassError:
    """A failed write script's JSON result ({ok: false, error, errorId, step, undoErrors, changed}). `changed` true: it
    failed after making part of its changes, which it does not undo itself (the partition removal, the re-add, the
    partition count change and its set-back): not known as a whole, read again (ScriptFailedAfterChanges). Every other
    failed script undid what it changed (the assign script's own rollback; undoErrors lists what it could not undo)."""
    error_id = str(result.get("errorId") or "")
    step = result.get("step") or "?"
    undo_errors = list(result.get("undoErrors") or [])
    message = f"{action}: {step} failed: {result.get('error') or 'no message'} [{error_id or 'no error id'}]"
    if result.get("changed") is True:
        return ScriptFailedAfterChanges(message + "; the script had made part of its changes before: the host is read "
                                                  "again", remedy="run `gpupass status HOST`: it shows what the host holds")
    if undo_errors:
        return OperationFailed(
            message + "; the script's own rollback could not undo: " + "; ".join(undo_errors),
            remedy="run `gpupass status HOST`; mount and enable the listed devices by hand "
                   "(Mount-VMHostAssignableDevice, Enable-PnpDevice)",
            rolled_back=False)
    if error_id.split(",", 1)[0] in _NOT_FOUND_IDS and step in ("lookup", "Get-VM"):
        return NotFound(message, remedy="`gpupass vms HOST` / `gpupass gpus HOST` list what is there")
    if error_id.split(",", 1)[0] in _NOT_FOUND_IDS and str(step).startswith(_TAKING_FROM_THE_HOST):
        # The plan saw the device on the host; now the host no longer has it: another run dismounted it (for
        # another VM) since. Hyper-V's own exclusivity refused the second taker; the script undid its changes.
        return Conflict(message + "; the device left the host after the plan was made (another assignment?)",
                        remedy="run `gpupass gpus HOST` to see who holds it; release it there first if it should move",
                        rolled_back=True)
    return OperationFailed(message, remedy="the script undid its own changes; see the PowerShell error above",
                           rolled_back=True)


def from_exit(action: str, exit_code: int, stderr: bytes, writes: bool = False) -> GpupassError:
    """A remote command that failed without printing a JSON result. A script that reads changed nothing. One that
    `writes` changed nothing only where PowerShell refused to parse it (a ParserError: a script is parsed whole before
    its first statement runs, about_Parsing); any other failure without its result may have come after some of its
    changes, so it is not known (OutcomeNotKnown: the host is read again)."""
    records = parse_clixml(stderr)
    parsed = not records or records[0].category != "ParserError"
    if writes and parsed:
        shown = f"{records[0].message} [{records[0].fully_qualified_error_id or 'no error id'}]" if records else \
            stderr.decode("utf-8", errors="replace").strip()[:500] or "no output"
        return OutcomeNotKnown(f"{action}: the script failed on the host without its result (exit {exit_code}): "
                               f"{shown}; what it changed there is not known",
                               remedy="run `gpupass status HOST`: it shows what the host holds")
    if records:
        first = records[0]
        ident = first.fully_qualified_error_id or "no error id"
        if first.fully_qualified_error_id.split(",", 1)[0] == "CommandNotFoundException":
            return OperationFailed(f"{action}: a cmdlet is missing on the host: {first.message} [{ident}]",
                                   remedy="install the Hyper-V PowerShell module (Install-WindowsFeature "
                                          "Hyper-V-PowerShell) on the host", rolled_back=True)
        return OperationFailed(f"{action}: PowerShell failed (exit {exit_code}): {first.message} [{ident}]",
                               remedy="see the PowerShell error; `gpupass plan --show-changes` shows the script",
                               rolled_back=True)
    text = stderr.decode("utf-8", errors="replace").strip()
    return OperationFailed(f"{action}: the remote command failed (exit {exit_code}): {text[:500] or 'no output'}",
                           remedy="check that the account may run PowerShell over WinRM on the host", rolled_back=True)


def from_exception(action: str, uri: str, exc: BaseException, timeout: int | None = None,
                   sent: bool = False) -> GpupassError | None:
    """pywinrm / requests exceptions by class; None for anything else (a bug: let it propagate). `sent`: the host had
    accepted the command (its Command request was answered), so a WinRM fault or error after that (on a Receive) says
    nothing of what the script did: not known (OutcomeNotKnown), where one before it means the script never ran."""
    import requests
    from winrm import exceptions as wx

    if isinstance(exc, RequestOverran):
        within = f"within the {timeout} s it has" if timeout is not None else "in the time it had"
        return ConnectionFailed(f"{action}: {uri} did not finish its reply {within} (gpupass bounds each WinRM call as a "
                                "whole: this reply kept coming a little at a time, or not at all); gpupass cut it off: "
                                "what the request did there is not known",
                                remedy=f"run `gpupass status {uri}` once the host answers: it shows what the host holds; "
                                       "check the host's load and anything between (a proxy, a load balancer); for a "
                                       "host this slow, raise `timeout` in its [hosts.NAME] table of the config file")
    if isinstance(exc, wx.AuthenticationError):
        return AuthenticationFailed(f"{action}: the host at {uri} refused the user name or password (HTTP 401)",
                                    remedy="check the user in the URI and the password (GPUPASS_PASSWORD_<HOST>, "
                                           "the config file or the keyring); a local account needs "
                                           "LocalAccountTokenFilterPolicy=1 for remote administration")
    if isinstance(exc, requests.exceptions.SSLError):
        return ConnectionFailed(f"{action}: TLS with {uri} failed: {type(exc).__name__}",
                                remedy="pass --ca-file with the CA that signed the WinRM listener's certificate "
                                       "(or --insecure, explicitly, for a test host)")
    if isinstance(exc, requests.exceptions.Timeout):
        within = f" within {timeout}s" if timeout is not None else ""
        return ConnectionFailed(f"{action}: {uri} did not answer{within}; what the request did there is not known",
                                remedy="check that the host and WinRM are up and reachable; for a slow host raise "
                                       "`timeout` in its [hosts.NAME] table of the config file")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return ConnectionFailed(f"{action}: cannot reach {uri}: {type(exc).__name__}",
                                remedy="check the host name and port (5986 HTTPS, 5985 HTTP), that WinRM runs "
                                       "(Test-WSMan) and that the firewall lets it through")
    if isinstance(exc, wx.WinRMOperationTimeoutError):
        return ConnectionFailed(f"{action}: WinRM operation timed out at {uri}", remedy="check the host's load")
    if sent and isinstance(exc, (wx.WSManFaultError, wx.WinRMError)):
        return OutcomeNotKnown(f"{action}: WinRM failed at {uri} after it took the script ({type(exc).__name__}: "
                               f"{exc}); what the script did there is not known",
                               remedy=f"run `gpupass status {uri}`: it shows what the host holds")
    if isinstance(exc, wx.WSManFaultError):
        return OperationFailed(f"{action}: WinRM fault from {uri} (WSManFault {exc.wsman_fault_code}, "
                               f"{exc.fault_subcode or exc.fault_code}): {exc.reason}",
                               remedy="check the WinRM service on the host (winrm get winrm/config); "
                                      "nothing was changed by this request", rolled_back=True)
    if isinstance(exc, wx.WinRMError):
        code = getattr(exc, "code", None)
        return OperationFailed(f"{action}: WinRM error from {uri} (code {code}): {exc}",
                               remedy="check the WinRM service on the host (winrm get winrm/config); "
                                      "nothing was changed by this request", rolled_back=True)
    if isinstance(exc, wx.WinRMTransportError):
        return ConnectionFailed(f"{action}: WinRM transport error at {uri} (HTTP {getattr(exc, 'code', '?')})",
                                remedy="check the transport (?transport=ntlm|kerberos|credssp|basic) and the "
                                       "listener's settings")
    return None
