"""The habits admins bring from virsh, govc and Unix tools: options after the subcommand, NO_COLOR, Ctrl-C is
130, a closed pipe keeps the exit code, -v/--debug log every SDK call and never a password."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from gpupass.core import logs, paths
from gpupass.core.plugins import default_registry
from gpupass.core.target import Secret
from support.cli import GPUPASS, gpupass


def test_global_options_after_the_subcommand():
    gpupass("gpus", "lab-kvm", "--insecure")
    gpupass("gpus", "lab-kvm", "--ca-file", "/nonexistent-but-unused.pem", "-v")
    missing = gpupass("status", "lab-kvm", "--config", "/no/such/gpupass.toml", expect=2)
    assert "/no/such/gpupass.toml" in missing.stderr


def test_unknown_command_suggests_the_nearest():
    result = gpupass("gupss", expect=2)
    assert "Did you mean 'gpus'" in result.stderr


def test_no_color_strips_styles_even_when_forced():
    # The child pretends its stdout is a terminal (click keeps styles unless told the colour is off).
    env = {**os.environ, "NO_COLOR": "1"}
    script = ("import sys, click\nfrom gpupass.core.cli import main as m\n"
              "click.utils.should_strip_ansi = lambda stream=None, color=None: color is False\n"
              "m.main(['check', 'lab-kvm', 'ml-train', '02:00.0'])\n")
    plain = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert plain.returncode == 3 and "BLOCKER" in plain.stdout and "\x1b[" not in plain.stdout + plain.stderr
    del env["NO_COLOR"]
    styled = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert "\x1b[" in styled.stdout  # the same run without NO_COLOR is coloured: the test can fail


def test_closed_pipe_keeps_the_exit_code_and_prints_no_traceback():
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write gets EPIPE
    result = subprocess.run([*GPUPASS, "check", "lab-kvm", "ml-train", "02:00.0"], stdout=writer,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    os.close(writer)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


@pytest.mark.parametrize("as_json", [False, True])
def test_ctrl_c_exits_130(as_json):
    # A host that accepts the connection and never answers: the read waits until interrupted. (Ctrl-C during a
    # change: tests/integration/hyperv/test_hyperv_interrupted.py, tests/integration/esxi/test_esxi_interrupted.py.)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        uri = f"qemu+tcp://127.0.0.1:{silent.getsockname()[1]}/system"
        process = subprocess.Popen([*GPUPASS, "fleet", "gpus", "--hosts", f"lab-kvm,{uri}", "--timeout", "60",
                                    *(["--json"] if as_json else [])],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.5)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends
        out, err = process.communicate(timeout=20)
        assert process.returncode == 130, err
        assert "Traceback" not in err
        if as_json:  # one JSON document, an interrupt's too
            document = json.loads(out)
            assert document["error"] == "interrupted" and "no change was being written" in document["message"]
    finally:
        silent.close()


@pytest.mark.parametrize("lab", ["lab-esxi", "lab-hyperv"])
def test_debug_shows_sdk_calls_and_never_the_password(lab):
    gpupass("lab", "up", lab)
    try:
        password = default_registry().lab_host(lab).target(paths.data_dir()).password.reveal()
        assert len(password) >= 8
        result = gpupass("--debug", "gpus", lab)
        assert ("SOAP RetrievePropertiesEx" if lab == "lab-esxi" else "WinRM: ") in result.stderr
        assert password not in result.stderr + result.stdout
        after = gpupass("vms", lab, "--debug")
        assert "DEBUG" in after.stderr and password not in after.stderr + after.stdout
    finally:
        gpupass("lab", "down", lab)


def test_a_library_that_logs_a_revealed_secret_is_redacted(caplog):
    secret = Secret("hunter2-very-secret")
    secret.reveal()
    handler = logging.StreamHandler()
    handler.addFilter(logs.RedactSecrets())
    record = logging.LogRecord("urllib3", logging.DEBUG, __file__, 1, "auth=%s", ("hunter2-very-secret",), None)
    handler.filter(record)
    assert record.getMessage() == "auth=***"


def test_default_host_from_libvirt_default_uri_and_no_default_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k not in ("GPUPASS_HOST", "GOVC_URL", "VMWARE_HOST")}
    listed = gpupass("gpus", env={**env, "LIBVIRT_DEFAULT_URI": "lab-kvm"})
    assert "0000:42:00.0" in listed.stdout
    none = gpupass("status", env={k: v for k, v in env.items() if k != "LIBVIRT_DEFAULT_URI"}, expect=2)
    assert "LIBVIRT_DEFAULT_URI" in none.stderr and "GOVC_URL" in none.stderr


def test_govc_and_ansible_variables_reach_the_vsphere_lab():
    gpupass("lab", "up", "lab-esxi")
    try:
        target = default_registry().lab_host("lab-esxi").target(paths.data_dir())
        base = {k: v for k, v in os.environ.items() if not k.startswith(("GOVC_", "VMWARE_", "LIBVIRT_", "GPUPASS_HOST"))}
        govc = {**base, "GOVC_URL": f"https://{target.hostname}:{target.uri.split(':')[-1].split('/')[0]}/sdk",
                "GOVC_USERNAME": target.username.replace("%40", "@"), "GOVC_PASSWORD": target.password.reveal(),
                "GOVC_TLS_CA_CERTS": target.tls.ca_file, "GOVC_DATACENTER": target.uri.rsplit("/", 1)[1]}
        assert "esx02.lab.local/0000:3b:00.0" in gpupass("gpus", env=govc).stdout
        # Without the CA the certificate is refused (TLS verified by default), with GOVC_INSECURE it is not checked.
        untrusted = {k: v for k, v in govc.items() if k != "GOVC_TLS_CA_CERTS"}
        gpupass("gpus", env=untrusted, expect=1)
        gpupass("gpus", env={**untrusted, "GOVC_INSECURE": "1"})
        # An explicit esxi:// URI of the same host takes GOVC_PASSWORD when nothing else gives one.
        explicit = {k: v for k, v in govc.items() if k != "GOVC_DATACENTER"}
        gpupass("vms", target.uri, "--ca-file", target.tls.ca_file, env=explicit)
        port = target.uri.split(":")[-1].split("/")[0]
        ansible = {**base, "VMWARE_HOST": target.hostname, "VMWARE_PORT": port,
                   "VMWARE_USER": target.username.replace("%40", "@"), "VMWARE_PASSWORD": target.password.reveal(),
                   "VMWARE_VALIDATE_CERTS": "false"}
        assert "esx02.lab.local" in gpupass("vms", env=ansible).stdout
        missing = gpupass("vms", env={k: v for k, v in ansible.items() if k != "VMWARE_PASSWORD"}, expect=1)
        assert "GPUPASS_PASSWORD_127_0_0_1" in missing.stderr and "VMWARE_PASSWORD" in missing.stderr
    finally:
        gpupass("lab", "down", "lab-esxi")


def test_lab_status_json_has_pid_and_url_fields():
    gpupass("lab", "up", "lab-hyperv")
    try:
        rows = {r["name"]: r for r in json.loads(gpupass("lab", "status", "--json").stdout)["lab_hosts"]}
        server = rows["lab-hyperv"]["server"]
        assert rows["lab-hyperv"]["up"] is True and isinstance(server["pid"], int) and server["pid"] > 0
        assert server["url"].startswith("http://127.0.0.1:") and server["url"].endswith("/wsman")
        os.kill(server["pid"], 0)  # the PID is the running server's
        assert rows["lab-esxi"]["up"] is False and rows["lab-esxi"]["server"] is None
    finally:
        gpupass("lab", "down", "lab-hyperv")


def test_export_and_lab_demo_take_json(tmp_path):
    exported = json.loads(gpupass("export", "lab-kvm", "--json").stdout)
    assert exported["assignments"] == [{"host": "lab-kvm", "vm": "cad-ws", "gpus": ["0000:01:00.0"]},
                                       {"host": "lab-kvm", "vm": "vdi01",
                                        "shares": [{"gpu": "0000:81:00.0", "type": "nvidia-46"}]}]
    assert "version: 1" in exported["yaml"]
    written = json.loads(gpupass("export", "lab-kvm", "-o", str(tmp_path / "a.yaml"), "--json").stdout)
    assert written["written"] == str(tmp_path / "a.yaml") and (tmp_path / "a.yaml").is_file()
    gpupass("export", "lab-kvm", "-o", str(tmp_path / "missing" / "a.yaml"), expect=2)
    demo = json.loads(gpupass("lab", "demo", "--json").stdout)["demo"]
    assert [s["exit_code"] for s in demo][:4] == [0, 0, 0, 3]
    assert all(isinstance(s["output"], dict) for s in demo), [s["command"] for s in demo if not isinstance(s["output"], dict)]
    assert demo[0]["output"]["gpus"][1]["address"] == "0000:01:00.0"  # after the SR-IOV PF 00:02.0


def test_snapshot_into_a_missing_folder_is_a_clear_error(tmp_path):
    result = gpupass("snapshot", "lab-kvm", "-o", str(tmp_path / "missing" / "lab.json"), expect=2)
    assert "does not exist" in result.stderr and "mkdir -p" in result.stderr and "Traceback" not in result.stderr
