"""govc's, Ansible's and virsh's variables, read as those tools read them."""

from gpupass.core import environment


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
