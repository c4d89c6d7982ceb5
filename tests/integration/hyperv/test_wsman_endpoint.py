"""The WS-Management endpoint as real pywinrm sees it (Basic and NTLM with message encryption)."""
from __future__ import annotations

import base64

import pytest
import winrm
from winrm.exceptions import InvalidCredentialsError

from gpupass.backends.hyperv.lab.wsman import CMD_LINE_LIMIT
from hyperv_helpers import PASSWORD, USER, Remote


def test_run_ps_roundtrip(remote):
    r = remote.ps("$ErrorActionPreference = 'Stop'\n(Get-VM).Name")
    assert r.status_code == 0
    assert r.std_out.decode().split("\r\n")[:5] == ["ml-train", "render01", "web01", "cad-ws", "dyn-mem"]
    assert r.std_err == b""


def test_script_reaches_model_verbatim(remote):
    script = "$x = 'caf\u00e9 \u2603 \U0001F600'\n$x"
    r = remote.ps(script)
    assert remote.endpoint.scripts[-1] == script
    assert r.std_out.decode("utf-8").strip() == "caf\u00e9 \u2603 \U0001F600"


def test_wrong_password_is_rejected(auth, lab, endpoint_factory):
    ep = endpoint_factory(lab, auth)
    with pytest.raises(InvalidCredentialsError):
        Remote(ep, auth, password="not-the-password").ps("1")
    with pytest.raises(InvalidCredentialsError):
        Remote(ep, auth, user="nobody", password=PASSWORD).ps("1")
    assert ep.scripts == []           # nothing ran


def test_ntlm_domain_user(lab, endpoint_factory):
    ep = endpoint_factory(lab, "ntlm", users={"LAB\\hvadmin": "S3cret!"})
    assert Remote(ep, "ntlm", user="LAB\\hvadmin", password="S3cret!").ps("'ok'").std_out.strip() == b"ok"
    with pytest.raises(InvalidCredentialsError):
        Remote(ep, "ntlm", user="LAB\\hvadmin", password="wrong").ps("'ok'")


def test_ntlm_messages_are_encrypted(lab, endpoint_factory):
    """Over NTLM the endpoint refuses plain SOAP, as WinRM with AllowUnencrypted=false does."""
    ep = endpoint_factory(lab, "ntlm")
    rem = Remote(ep, "ntlm")
    assert rem.ps("'x'").status_code == 0
    proto = rem.session.protocol
    assert proto.transport.encryption is not None


def test_powershell_error_comes_back_as_clixml(remote):
    proto = remote.session.protocol
    shell = proto.open_shell()
    enc = base64.b64encode("Get-VM -Name 'nope'".encode("utf-16-le")).decode()
    cid = proto.run_command(shell, f"powershell -encodedcommand {enc}")
    out, err, code = proto.get_command_output(shell, cid)
    proto.cleanup_command(shell, cid)
    proto.close_shell(shell)
    assert code == 1 and out == b""
    assert err.startswith(b"#< CLIXML\r\n<Objs Version=\"1.1.0.1\"")
    assert b'<S S="Error">' in err
    # and run_ps turns it back into the text PowerShell prints
    r = remote.ps("Get-VM -Name 'nope'")
    text = r.std_err.decode()
    assert 'Hyper-V was unable to find a virtual machine with name "nope".' in text
    assert "FullyQualifiedErrorId : InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM" in text


def test_command_line_limit(remote):
    prefix = len("powershell -encodedcommand ")
    # largest script whose command line still fits (ASCII: 2 bytes per char in UTF-16, base64 4/3)
    n = ((CMD_LINE_LIMIT - prefix) // 4) * 3 // 2
    ok = "'" + "a" * (n - 2) + "'"
    assert len("powershell -encodedcommand " + base64.b64encode(ok.encode("utf-16-le")).decode()) <= CMD_LINE_LIMIT
    r = remote.ps(ok)
    assert r.status_code == 0 and r.std_out.strip() == b"a" * (n - 2)
    too_long = "'" + "a" * (n + 10) + "'"
    r = remote.ps(too_long)
    assert r.status_code == 1
    assert r.std_err == b"The command line is too long.\r\n"
    assert r.std_out == b""


def test_not_powershell(remote):
    r = remote.session.run_cmd("ipconfig", ["/all"])
    assert r.status_code == 1
    assert b"'ipconfig' is not recognized as an internal or external command" in r.std_err


def test_refused_script_is_reported(remote):
    r = remote.ps('$x = "interpolated $env:COMPUTERNAME"')
    assert r.status_code == 1
    assert "refused" in r.std_err.decode() and "double-quoted" in r.std_err.decode()


def test_fault_injection_through_endpoint(remote):
    remote.endpoint.inject_fault("Get-VMHost", nth=2, message="WMI provider crashed")
    assert remote.ps("(Get-VMHost).IovSupport").std_out.strip() == b"True"
    r = remote.ps("(Get-VMHost).IovSupport")
    assert r.status_code == 1 and "WMI provider crashed" in r.std_err.decode()
    assert remote.ps("(Get-VMHost).IovSupport").std_out.strip() == b"True"


def test_unknown_shell_is_a_wsman_fault(lab, endpoint_factory):
    ep = endpoint_factory(lab, "basic")
    proto = Remote(ep, "basic").session.protocol
    with pytest.raises(winrm.exceptions.WSManFaultError) as ei:
        proto.run_command("00000000-0000-0000-0000-000000000000", "powershell -encodedcommand AAAA")
    assert ei.value.wsman_fault_code == 2150858843


def test_endpoint_binds_loopback_only(lab):
    from gpupass.backends.hyperv.lab.wsman import serve
    with pytest.raises(ValueError):
        serve(lab, host="0.0.0.0")
    ep = serve(lab)
    try:
        assert ep.url.startswith("http://127.0.0.1:") and ep.url.endswith("/wsman")
    finally:
        ep.stop()
    assert USER


def test_wrong_parameter_fails_over_winrm(remote):
    before = remote.model.to_json()
    r = remote.ps("$ErrorActionPreference = 'Stop'\nSet-VM -Name 'ml-train' -AutomaticStopAction TurnOff -Bogus 1\n'x'")
    assert r.status_code == 1 and r.std_out == b""
    text = r.std_err.decode()
    assert "Set-VM : A parameter cannot be found that matches parameter name 'Bogus'." in text
    assert "NamedParameterNotFound,Microsoft.HyperV.PowerShell.Commands.SetVM" in text
    assert remote.model.to_json() == before


def test_concurrent_sessions(lab, endpoint_factory):
    """Several pywinrm clients at once, each on its own NTLM-authenticated connection."""
    import threading
    ep_ntlm = endpoint_factory(lab, "ntlm")
    results, errors = [], []

    def worker(i):
        try:
            rem = Remote(ep_ntlm, "ntlm")
            for _ in range(3):
                results.append(rem.ps(f"'worker {i}'").std_out.strip())
        except Exception as e:      # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(results) == sorted(f"worker {i}".encode() for i in range(6) for _ in range(3))


def test_state_file_survives_restart(tmp_path, auth):
    """The lab endpoint writes the model after every script; a restart resumes from that file."""
    import json
    import subprocess
    import sys
    state = tmp_path / "lab.json"
    cmd = [sys.executable, "-m", "gpupass.backends.hyperv.lab.wsman", "--state", str(state), "--auth", auth,
           "--user", f"{USER}:{PASSWORD}"]

    def start():
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        url = p.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        return p, url

    p, url = start()
    try:
        s = winrm.Session(url, auth=(USER, PASSWORD), transport=auth, proxy=None,
                          ca_trust_path=__import__("os").environ.get("REQUESTS_CA_BUNDLE") or "legacy_requests")
        assert s.run_ps("Set-VM -Name 'ml-train' -AutomaticStopAction TurnOff").status_code == 0
    finally:
        p.terminate()
        p.wait(10)
        p.stdout.close()
    assert json.loads(state.read_text())["vms"][0]["automatic_stop_action"] == "TurnOff"
    p, url = start()
    try:
        s = winrm.Session(url, auth=(USER, PASSWORD), transport=auth, proxy=None,
                          ca_trust_path=__import__("os").environ.get("REQUESTS_CA_BUNDLE") or "legacy_requests")
        assert s.run_ps("(Get-VM -Name 'ml-train').AutomaticStopAction.ToString()").std_out.strip() == b"TurnOff"
    finally:
        p.terminate()
        p.wait(10)
        p.stdout.close()
