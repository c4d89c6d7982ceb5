"""The config file is typed: a wrong type or an unknown key is an error naming the file, the line and the key."""

import os

import pytest

from gpupass.core.config import ConfigError, load_config


def load(tmp_path, text, mode=0o600):
    path = tmp_path / "config.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return load_config(path)


@pytest.mark.parametrize("text, line, message", [
    ('[hosts.a]\nuri = "esxi://root@h"\ninsecure = "false"\n', 3,
     "host 'a': insecure must be true or false, not a string (in quotes)"),
    ('[hosts.a]\nuri = "esxi://root@h"\nkeyring = 1\n', 3, "keyring must be true or false, not a number"),
    ('[hosts.a]\nuri = 5\n', 2, "uri must be a string, not a number"),
    ('[hosts.a]\nuri = "esxi://root@h"\nca_file = ["/a"]\n', 3, "ca_file must be a string, not a list"),
    ('[hosts.a]\nuri = "esxi://root@h"\noptions = "x"\n', 3, "options must be a table, not a string"),
    ('[hosts.a]\nuri = "esxi://root@h"\npassword_env = 1979-05-27\n', 3, "password_env must be a string, not a date"),
    ('# comment\n\n[hosts."my host"]\nuri = "qemu:///system"\n"insecur" = true\n', 5, "unknown key 'insecur'"),
    ('hosts = 5\n', 1, "`hosts` must be a table"),
    ('[hosts]\na = 5\n', 2, "host 'a' must be a table"),
    ('[host.a]\nuri = "qemu:///system"\n', 1, "unknown key 'host'"),
    ('[hosts.a]\nkeyring = true\n', 1, "host 'a' has no uri"),
    ('[hosts.a]\nuri = "qemu+ssh://node:99999/system"\n', 2, "port in 'qemu+ssh://node:99999/system' is not a number"),
    ('[hosts.a]\nuri = "qemu+ssh://node:ssh/system"\n', 2, "is not a number from 1 to 65535"),
    ('[hosts.a]\nuri = "esxi://[::1/DC"\n', 2, "is not a valid URI"),
    ('[hosts.a]\nuri = ""\n', 2, "a host URI is empty"),
])
def test_errors_name_file_line_and_key(tmp_path, text, line, message):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.line == line
    assert caught.value.message.startswith(f"{tmp_path / 'config.toml'}:{line}: ")
    assert message in caught.value.message


def test_a_key_in_a_form_the_scan_cannot_place_still_names_file_and_key(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, 'hosts = { a = { uri = "qemu:///system", insecure = "no" } }\n')
    assert caught.value.line is None and "insecure must be true or false" in caught.value.message


def test_the_string_false_never_turns_verification_off(tmp_path):
    with pytest.raises(ConfigError):
        load(tmp_path, '[hosts.a]\nuri = "esxi://root@h"\ninsecure = "false"\n')
    assert load(tmp_path, '[hosts.a]\nuri = "esxi://root@h"\ninsecure = false\n').hosts["a"].insecure is False


def test_a_password_in_a_uri_is_refused_and_never_echoed(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, '[hosts.a]\nuri = "esxi://root:hunter2@vc/DC"\n')
    assert caught.value.line == 2 and "carries a password" in caught.value.message
    assert "esxi://root:***@vc/DC" in caught.value.message
    assert "hunter2" not in caught.value.message + caught.value.remedy


def test_a_wrong_password_type_is_not_echoed(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, '[hosts.a]\nuri = "esxi://root@h"\npassword = 123456789\n')
    assert "password must be a string" in caught.value.message and "123456789" not in caught.value.message


def test_a_file_that_is_not_text_is_a_clean_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xff\xfe[hosts]\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(path)
