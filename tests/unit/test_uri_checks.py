"""Host URIs: no password, a usable port, no control characters; libvirt's parameters allow-listed."""

import json
import stat

import pytest

from gpupass.backends.esxi.backend import EsxiBackend
from gpupass.backends.hyperv.backend import HypervBackend
from gpupass.backends.kvm.backend import KvmBackend
from gpupass.core.errors import UsageError
from gpupass.core.uri import check_uri, redacted
from support.cli import gpupass


@pytest.mark.parametrize("uri, message", [
    ("esxi://root:hunter2@vc/DC", "carries a password"),
    ("qemu+ssh://admin:hunter2@node/system", "carries a password"),
    ("qemu+ssh://node:99999999999999999999/system", "not a number from 1 to 65535"),
    ("qemu+ssh://node:-1/system", "not a number from 1 to 65535"),
    ("hyperv://u@h:0", "port in 'hyperv://u@h:0' is 0"),
    ("esxi://[::1/DC", "is not a valid URI"),
    ("esxi://root@vc/\x1b[2JDC", "contains control characters"),
    ("esxi://root@vc/DC\u202e", "contains control characters"),
    ("", "is empty"),
    ("//node/system", "names no scheme"),
])
def test_core_refuses(uri, message):
    with pytest.raises(UsageError, match=message) as caught:
        check_uri(uri)
    assert "hunter2" not in caught.value.message and "\x1b" not in caught.value.message


def test_redaction_keeps_everything_but_the_password():
    assert redacted("qemu+ssh://admin:pw@node:22/system?mode=direct") == "qemu+ssh://admin:***@node:22/system?mode=direct"
    assert redacted("esxi://root:pw@[::1/DC") == "esxi://root:***@[::1/DC"
    assert redacted("://admin:p@ss@/system") == "://admin:***@/system"
    assert redacted("qemu:///system") == "qemu:///system"


@pytest.mark.parametrize("uri", [
    "qemu:///system", "test:///tmp/lab host.xml", "qemu+unix:///session?socket=/run/user/1/libvirt-sock",
    "qemu+ssh://admin@node/system?keyfile=/root/.ssh/id&no_tty=1&mode=direct&proxy=native",
    "qemu+libssh2://u@h/system?known_hosts=/root/.ssh/known_hosts&known_hosts_verify=normal&sshauth=agent,privkey",
    "qemu+tls://h/system?pkipath=/etc/pki/client&name=qemu:///system",
])
def test_libvirt_parameters_that_only_name_files_or_choices_pass(uri):
    check_uri(uri)
    KvmBackend.check_uri(uri)


@pytest.mark.parametrize("uri, message", [
    ("qemu+ssh://u@h/system?command=/usr/bin/touch", "command= is refused: it names a program"),
    ("qemu+ssh://u@h/system?netcat=/tmp/x", "netcat= is refused"),
    ("qemu+tls://h/system?no_verify=1", "no_verify= is refused"),
    ("qemu+tls://h/system?tls_priority=NORMAL:%2BVERS-SSL3.0", "tls_priority= is refused"),
    ("qemu+libssh://u@h/system?known_hosts_verify=ignore", "must be one of normal"),
    ("qemu+ssh://u@h/system?keyfile=id_rsa", "must be an absolute path"),
    ("qemu+ssh://u@h/system?mode=direct&mode=legacy", "'mode' is given twice"),
    ("qemu+ssh://u@h/system?foo=bar", "do not take the parameter 'foo'"),
    ("qemu+ssh://u@h/system?sshauth=agent,gssapi", "unknown method(s) gssapi"),
])
def test_libvirt_parameters_that_run_programs_or_skip_checks_are_refused(uri, message):
    with pytest.raises(UsageError) as caught:
        KvmBackend.check_uri(uri)
    assert message in caught.value.message


def test_hyperv_takes_only_its_transport_and_esxi_no_parameter():
    HypervBackend.check_uri("hyperv://u@h/?transport=Kerberos")
    with pytest.raises(UsageError, match="must be one of ntlm"):
        HypervBackend.check_uri("hyperv://u@h/?transport=digest")
    with pytest.raises(UsageError, match="do not take the parameter 'command'"):
        HypervBackend.check_uri("hyperv://u@h/?command=x")
    with pytest.raises(UsageError, match="do not take the parameter 'x'"):
        EsxiBackend.check_uri("esxi://root@vc/DC?x=1")


def test_a_read_only_diff_never_runs_a_program_named_in_a_uri(tmp_path):
    marker = tmp_path / "ran"
    program = tmp_path / "fake-ssh"
    program.write_text(f"#!/bin/sh\ntouch {marker}\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    wanted = tmp_path / "gpus.yaml"
    wanted.write_text(f"assignments:\n  - host: qemu+ssh://nobody@127.0.0.1/system?command={program}&no_tty=1\n"
                      "    vm: v\n    gpus: [\"41:00.0\"]\n")
    result = gpupass("diff", str(wanted), expect=2)
    assert "command= is refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_a_password_in_a_uri_is_never_echoed_by_the_cli(tmp_path):
    for args in (["gpus", "esxi://root:hunter2@vc/DC"], ["gpus", "esxi://root:hunter2@vc/DC", "--json"],
                 ["hosts", "add", "vc", "esxi://root:hunter2@vc/DC"]):
        result = gpupass(*args, expect=2)
        assert "hunter2" not in result.stdout + result.stderr and "carries a password" in result.stdout + result.stderr
    listed = gpupass("hosts", "list", "--json")
    assert "vc" not in [row["name"] for row in json.loads(listed.stdout)["hosts"]] and "hunter2" not in listed.stdout


def test_a_keyring_without_a_backend_is_a_clean_authentication_error(tmp_path):
    import os

    config = tmp_path / "config.toml"
    config.write_text('[hosts.vc]\nuri = "esxi://root@127.0.0.1:9/DC"\nkeyring = true\n')
    env = {**os.environ, "GPUPASS_CONFIG": str(config), "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    result = gpupass("gpus", "vc", env=env, expect=1)
    assert "takes its password from the keyring, which cannot be used here: NoKeyringError" in result.stderr
    assert "Traceback" not in result.stderr
