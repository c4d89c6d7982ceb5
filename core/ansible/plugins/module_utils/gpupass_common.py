# Licensed under the Apache License, Version 2.0 (see the LICENSE file of gpupass).
"""What the gpupass modules share: connection options the Ansible way, opening a host through gpupass's Python
API, and gpupass errors turned into module failures that keep their kind, codes and remedies.

The modules run on the machine that talks to the hypervisors (usually `delegate_to: localhost`), with an
interpreter that has gpupass installed (`pip install 'gpupass[all]'`).
"""

from __future__ import annotations

import os
import traceback
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:
    from ansible.module_utils.basic import AnsibleModule

    from gpupass.core.api import Host

try:
    import gpupass
    from gpupass.core import serialize
    from gpupass.core.errors import GpupassError, OperationFailed, PreflightFailed, UsageError

    GPUPASS_IMPORT_ERROR = None
except ImportError:  # reported by fail_on_missing_gpupass, as Ansible modules report a missing library
    GPUPASS_IMPORT_ERROR = traceback.format_exc()
    # Keeps `except GpupassError` valid in the modules (a stand-in class, which mypy sees as a redefinition).
    GpupassError = Exception  # type: ignore[misc,assignment]

# The connection options every module takes; documented once in doc_fragments/connection.py.
CONNECTION_ARGUMENT_SPEC = dict(
    host=dict(type="str"),
    platform=dict(type="str", choices=["esxi", "hyperv"], default="esxi"),
    hostname=dict(type="str"),
    username=dict(type="str", aliases=["user"]),
    password=dict(type="str", aliases=["pass", "pwd"], no_log=True),
    port=dict(type="int"),
    datacenter=dict(type="str"),
    validate_certs=dict(type="bool"),
    ca_file=dict(type="path"),
    config=dict(type="path"),
)

# community.vmware's variables, read only for an ESXi host (never sent to another platform).
VMWARE_ENV = {"hostname": "VMWARE_HOST", "username": "VMWARE_USER", "password": "VMWARE_PASSWORD",
              "port": "VMWARE_PORT", "validate_certs": "VMWARE_VALIDATE_CERTS"}
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def fail_on_missing_gpupass(module: AnsibleModule) -> None:
    if GPUPASS_IMPORT_ERROR is not None:
        from ansible.module_utils.basic import missing_required_lib

        module.fail_json(msg=missing_required_lib("gpupass", url="pip install 'gpupass[all]'"),
                         exception=GPUPASS_IMPORT_ERROR)


def _env_bool(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f"${name} is {value!r}, not a boolean", remedy=f"set {name} to true or false")


class Connection:
    """One host opened through gpupass's Python API (`gpupass.open_host`) from the module's options."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.host: Host | None = None

    def _esxi_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The VMWARE_* variables fill what the module's options leave out, as in community.vmware."""
        merged = dict(params)
        for option, variable in VMWARE_ENV.items():
            if merged.get(option) is None and os.environ.get(variable):
                text = os.environ[variable]
                value: bool | int | str | None = text
                if option == "validate_certs":
                    value = _env_bool(variable, text)
                elif option == "port":
                    value = int(text) if text.isdigit() else None
                merged[option] = value
        return merged

    def _host_text(self, params: dict[str, Any]) -> str | None:
        """What to open: `host`, else a URI built from hostname/username/port, else None (gpupass then takes
        the default host from GPUPASS_HOST, LIBVIRT_DEFAULT_URI or GOVC_URL)."""
        if params.get("host"):
            return str(params["host"])
        scheme = params.get("platform") or "esxi"
        given = self._esxi_params(params) if scheme == "esxi" else params
        if not given.get("hostname"):
            return None
        from urllib.parse import quote

        user = given.get("username")
        netloc = (quote(user, safe="") + "@" if user else "") + given["hostname"]
        if given.get("port"):
            netloc += f":{given['port']}"
        path = "/" + quote(params["datacenter"], safe="") if params.get("datacenter") and scheme == "esxi" else ""
        return f"{scheme}://{netloc}{path}"

    def open(self) -> Host:
        params = self.module.params
        text = self._host_text(params)
        esxi = (text or "").startswith("esxi://")
        given = self._esxi_params(params) if esxi else params
        verify = given.get("validate_certs")
        self.host = gpupass.open_host(text, config=params.get("config"), insecure=verify is False,
                                      ca_file=params.get("ca_file"), password=given.get("password"))
        return self.host

    def __enter__(self) -> Host:
        return self.open()

    def __exit__(self, *exc_info: object) -> Literal[False]:
        if self.host is not None:
            self.host.close()
        return False


def fail_from_error(module: AnsibleModule, exc: BaseException, **extra: Any) -> None:
    """A gpupass error as a module failure: its kind, message and remedy; preflight findings and the rollback
    state where they apply, so a playbook can branch on `result.error` or `result.findings`."""
    result = dict(extra)
    result.update(error=getattr(exc, "kind", "error"), remedy=getattr(exc, "remedy", None),
                  exit_code=getattr(exc, "exit_code", 1))
    message = getattr(exc, "message", str(exc))
    if isinstance(exc, PreflightFailed):
        result["findings"] = [serialize.finding_to_dict(f) for f in exc.findings]
        blockers = [f for f in exc.findings if f.blocks]
        # The CLI prints the findings above its error line; a module has one message, so they go into it.
        message += "".join(f"; [{f.code}] {f.message}" for f in blockers)
        result["remedy"] = "; ".join(f.remedy for f in blockers if f.remedy) or None
    if isinstance(exc, OperationFailed):
        result["rolled_back"] = exc.rolled_back
    if result.get("remedy"):
        message = f"{message} (fix: {result['remedy']})"
    module.fail_json(msg=message, **result)


def run_guarded(module: AnsibleModule, body: Callable[[], Any]) -> Any:
    """Run body(); a gpupass error fails the module cleanly, anything else with its traceback."""
    try:
        return body()
    except GpupassError as exc:
        fail_from_error(module, exc)
    except Exception as exc:  # an unexpected failure: keep the traceback for -vvv
        module.fail_json(msg=f"{type(exc).__name__}: {exc}", exception=traceback.format_exc())
