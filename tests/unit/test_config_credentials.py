import os

import pytest

from gpupass.core.config import load_config
from gpupass.core.credentials import env_var_for, resolve_password
from gpupass.core.errors import AuthenticationFailed, UsageError
from gpupass.core.target import Secret, Target


def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_missing_file_is_an_empty_config(tmp_path):
    assert load_config(tmp_path / "none.toml").hosts == {}


def test_hosts_are_read(tmp_path):
    config = load_config(write(tmp_path / "c.toml", '''
[hosts.node1]
uri = "qemu+ssh://admin@node1/system"
[hosts.vc]
uri = "esxi://administrator@vc.example.com/DC1"
password_env = "VC_PASSWORD"
ca_file = "/etc/ssl/vc.pem"
'''))
    assert config.hosts["node1"].uri == "qemu+ssh://admin@node1/system"
    assert config.hosts["vc"].password_env == "VC_PASSWORD" and config.hosts["vc"].ca_file == "/etc/ssl/vc.pem"


def test_bad_toml_and_unknown_keys_say_what_to_fix(tmp_path):
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(write(tmp_path / "a.toml", "[hosts.x\n"))
    with pytest.raises(UsageError, match="b.toml:3: host .x. has an unknown key .pasword."):
        load_config(write(tmp_path / "b.toml", '[hosts.x]\nuri = "qemu:///system"\npasword = "x"\n'))
    with pytest.raises(UsageError, match="has no uri"):
        load_config(write(tmp_path / "c.toml", '[hosts.x]\npassword_env = "X"\n'))


def test_a_password_in_a_readable_file_is_refused(tmp_path):
    path = write(tmp_path / "c.toml", '[hosts.x]\nuri = "esxi://root@h"\npassword = "hunter2"\n', mode=0o644)
    with pytest.raises(UsageError, match="other users can read") as caught:
        load_config(path)
    assert "chmod 600" in caught.value.remedy
    os.chmod(path, 0o600)
    entry = load_config(path).hosts["x"]
    assert resolve_password("x", entry, "root") == Secret("hunter2")
    assert "hunter2" not in repr(entry)


def test_environment_wins_and_named_variable_must_exist(tmp_path, monkeypatch):
    entry = load_config(write(tmp_path / "c.toml", '[hosts.vc]\nuri = "esxi://a@vc"\npassword_env = "VC_PW"\n')).hosts["vc"]
    with pytest.raises(AuthenticationFailed, match=r"\$VC_PW, which is not set"):
        resolve_password("vc", entry, "a")
    monkeypatch.setenv("VC_PW", "s3cret")
    assert resolve_password("vc", entry, "a").reveal() == "s3cret"


def test_per_host_and_generic_variables(monkeypatch):
    assert env_var_for("lab-esxi") == "GPUPASS_PASSWORD_LAB_ESXI"
    assert resolve_password("h", None, None) is None
    monkeypatch.setenv("GPUPASS_PASSWORD", "generic")
    assert resolve_password("h", None, None).reveal() == "generic"
    monkeypatch.setenv("GPUPASS_PASSWORD_H", "specific")
    assert resolve_password("h", None, None).reveal() == "specific"


def test_secrets_do_not_print():
    target = Target(uri="esxi://root@h", password=Secret("hunter2"))
    assert "hunter2" not in repr(target) and "hunter2" not in str(target.password)
    assert target.username == "root" and target.hostname == "h"
