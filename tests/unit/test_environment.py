"""govc's, Ansible's and virsh's variables, read as those tools read them."""

import pytest

from gpupass.core import environment
from gpupass.core.errors import UsageError


def test_default_host_order():
    env = {"LIBVIRT_DEFAULT_URI": "qemu:///system", "GOVC_URL": "vc.example.com", "VMWARE_HOST": "vc2"}
    assert environment.default_host(env) == ("LIBVIRT_DEFAULT_URI", "qemu:///system")
    assert environment.default_host({**env, "GPUPASS_HOST": "lab-kvm"}) == ("GPUPASS_HOST", "lab-kvm")
    assert environment.default_host({"VMWARE_HOST": "vc2"}) == ("VMWARE_HOST", "vc2")
    assert environment.default_host({}) is None


def test_govc_url_forms_and_precedence():
    bare = environment.govc({"GOVC_URL": "vc.example.com", "GOVC_USERNAME": "administrator@vsphere.local",
                             "GOVC_PASSWORD": "pw", "GOVC_INSECURE": "1", "GOVC_DATACENTER": "DC1"})
    target = bare.target()
    assert target.uri == "esxi://administrator%40vsphere.local@vc.example.com/DC1"
    assert target.password.reveal() == "pw" and target.tls.verify is False
    # A user and password inside GOVC_URL win, as in govc.
    full = environment.govc({"GOVC_URL": "https://root:s3cret@esx01:8443/sdk", "GOVC_USERNAME": "other",
                             "GOVC_PASSWORD": "other", "GOVC_TLS_CA_CERTS": "/ca.pem"})
    assert full.target().uri == "esxi://root@esx01:8443" and full.password == "s3cret"
    assert full.target().tls.verify is True and full.target().tls.ca_file == "/ca.pem"
    assert environment.govc({"GOVC_URL": "vc", "GOVC_INSECURE": "false"}).insecure is False


def test_ansible_variables_validate_certs_by_default():
    env = {"VMWARE_HOST": "vc.example.com", "VMWARE_USER": "admin", "VMWARE_PASSWORD": "pw"}
    assert environment.ansible(env).target().tls.verify is True
    assert environment.ansible({**env, "VMWARE_VALIDATE_CERTS": "no"}).insecure is True
    assert environment.ansible({**env, "VMWARE_PORT": "8443"}).target().uri == "esxi://admin@vc.example.com:8443"


def test_passwords_only_for_the_host_the_variables_name():
    env = {"GOVC_URL": "vc.example.com", "GOVC_PASSWORD": "govc-pw", "VMWARE_HOST": "vc2", "VMWARE_PASSWORD": "vmware-pw"}
    assert environment.vsphere_password("VC.example.com", env)[0] == "GOVC_PASSWORD"
    assert environment.vsphere_password("vc2", env)[1].reveal() == "vmware-pw"
    assert environment.vsphere_password("other", env) is None


def test_ansible_host_forms_that_are_a_host():
    for value, uri in (("vc.example.com", "esxi://vc.example.com"), ("10.0.0.5", "esxi://10.0.0.5"),
                       ("fe80::1", "esxi://[fe80::1]"), ("[fe80::1]", "esxi://[fe80::1]"), ("esx_01.lab.", "esxi://esx_01.lab.")):
        assert environment.ansible({"VMWARE_HOST": value}).target().uri == uri, value


@pytest.mark.parametrize("value", ["vc 01", "https://vc01", "vc01:443", "root@vc01", "vc01/sdk", "vc\x1b[31m", "-vc",
                                   "a" * 64 + ".example.com", "vc01?x=1"])
def test_an_ansible_host_that_is_not_a_host_is_a_usage_error_naming_it(value):
    with pytest.raises(UsageError, match=r"\$VMWARE_HOST is .* not a host name or an IP address") as caught:
        environment.ansible({"VMWARE_HOST": value})
    assert "VMWARE_PORT" in caught.value.remedy
    # It names no host, so it gives no password to one named otherwise.
    assert environment.vsphere_password("vc01", {"VMWARE_HOST": value, "VMWARE_PASSWORD": "pw"}) is None


@pytest.mark.parametrize("port", ["abc", "0", "65536", "99999", "8443x", "\u0664\u0664\u0663"])
def test_an_ansible_port_that_is_not_a_port_is_a_usage_error(port):
    with pytest.raises(UsageError, match=r"\$VMWARE_PORT is .* not a port number from 1 to 65535"):
        environment.ansible({"VMWARE_HOST": "vc01", "VMWARE_PORT": port})


def test_the_cli_refuses_a_vmware_host_with_a_space_with_exit_2(monkeypatch):
    from click.testing import CliRunner

    from gpupass.core.cli.main import cli

    for variable in environment.DEFAULT_HOST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("VMWARE_HOST", "vc 01")
    result = CliRunner().invoke(cli, ["gpus"])
    assert result.exit_code == 2 and "$VMWARE_HOST is 'vc 01', which is not a host name" in result.output
    assert "names no user" not in result.output
