"""`hosts add|remove` keep comments and hand edits; the file written loads back to the same hosts."""

import os
import stat

import pytest

from gpupass.core.config import HostEntry, load_config, save_config, with_host, without_host
from gpupass.core.errors import UsageError

HAND_WRITTEN = """\
# my lab, edited by hand
[hosts.node7]   # the big one
uri = "qemu+ssh://admin@node7/system"  # via the jump host
# keep this note

[hosts.vc]
uri = "esxi://administrator%40vsphere.local@vc.example.com/DC1"
password_env = "VC_PASSWORD"
"""


@pytest.fixture
def path(tmp_path):
    target = tmp_path / "config.toml"
    target.write_text(HAND_WRITTEN)
    os.chmod(target, 0o600)
    return target


def test_adding_a_host_keeps_every_comment_and_line(path):
    save_config(path, with_host(load_config(path), HostEntry(name="hv01", uri="hyperv://Administrator@hv01",
                                                             keyring=True)))
    text = path.read_text()
    assert text.startswith(HAND_WRITTEN.rstrip("\n"))
    assert '[hosts.hv01]\nuri = "hyperv://Administrator@hv01"\nkeyring = true' in text
    assert set(load_config(path).hosts) == {"node7", "vc", "hv01"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_removing_a_host_keeps_the_others_comments(path):
    save_config(path, without_host(load_config(path), "vc"))
    text = path.read_text()
    assert "# my lab, edited by hand" in text and "# the big one" in text and "# via the jump host" in text
    assert "# keep this note" in text and "vc.example.com" not in text
    assert set(load_config(path).hosts) == {"node7"}


def test_replacing_a_host_changes_only_its_keys(path):
    config = load_config(path)
    save_config(path, with_host(config, HostEntry(name="node7", uri="qemu+ssh://root@node7/system")))
    text = path.read_text()
    assert 'uri = "qemu+ssh://root@node7/system"' in text and "# keep this note" in text
    assert "[hosts.node7]   # the big one" in text


def test_a_new_file_has_a_header_and_loads_back(tmp_path):
    path = tmp_path / "sub" / "config.toml"
    entry = HostEntry(name="odd name", uri="qemu:///system", options={"persist": "/x y"})
    save_config(path, with_host(load_config(path), entry))
    assert path.read_text().startswith("# gpupass hosts")
    loaded = load_config(path).hosts["odd name"]
    assert loaded.uri == "qemu:///system" and dict(loaded.options) == {"persist": "/x y"}


def test_an_unknown_table_is_refused_not_erased(path):
    path.write_text(HAND_WRITTEN + '\n[host.node8]\nuri = "qemu+ssh://node8/system"\n')
    with pytest.raises(UsageError, match="unknown key 'host'"):
        load_config(path)
