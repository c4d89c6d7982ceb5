"""A host whose password is in the keyring: the lookup is bounded by the host's `timeout` like every call to a host,
since a keyring backend may wait on D-Bus, a remote vault or an unlock prompt nobody answers. The keyrings here are
real keyring backends (keyring.backend.KeyringBackend subclasses) installed with keyring.set_keyring, the API the
keyring package offers for choosing one."""

from __future__ import annotations

import json
import os
import threading

import pytest
from click.testing import CliRunner

keyring = pytest.importorskip("keyring")
from keyring.backend import KeyringBackend  # noqa: E402
from keyring.errors import KeyringLocked  # noqa: E402

from gpupass.core.cli.main import cli  # noqa: E402
from gpupass.core.config import HostEntry  # noqa: E402
from gpupass.core.credentials import resolve_password  # noqa: E402
from gpupass.core.errors import AuthenticationFailed  # noqa: E402


class _Keyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def set_password(self, service, username, password):
        raise NotImplementedError

    def delete_password(self, service, username):
        raise NotImplementedError


class WaitingForUnlock(_Keyring):
    """Answers only once `unlocked` is set, as a Secret Service collection behind an unanswered prompt."""

    unlocked = threading.Event()

    def get_password(self, service, username):
        self.unlocked.wait(60)
        return "late"


class Holding(_Keyring):
    def get_password(self, service, username):
        return "s3cret" if (service, username) == ("gpupass", "root@vc") else None


class Locked(_Keyring):
    def get_password(self, service, username):
        raise KeyringLocked("the collection is locked")


@pytest.fixture
def use_keyring():
    before = keyring.get_keyring()

    def use(backend):
        keyring.set_keyring(backend)

    yield use
    WaitingForUnlock.unlocked.set()  # the abandoned lookup thread ends
    WaitingForUnlock.unlocked = threading.Event()
    keyring.set_keyring(before)


def test_a_keyring_that_never_answers_is_given_up_after_the_hosts_timeout(use_keyring):
    use_keyring(WaitingForUnlock())
    with pytest.raises(AuthenticationFailed) as caught:
        resolve_password("vc", HostEntry(name="vc", uri="esxi://root@vc", keyring=True, timeout=0.3), "root")
    assert "takes its password from the keyring, which did not answer within 0.3s" in caught.value.message
    assert "GPUPASS_PASSWORD_VC" in caught.value.remedy and "timeout" in caught.value.remedy


def test_a_keyring_that_answers_gives_the_password_and_its_errors_still_say_what_to_do(use_keyring):
    use_keyring(Holding())
    entry = HostEntry(name="vc", uri="esxi://root@vc", keyring=True, timeout=5)
    assert resolve_password("vc", entry, "root").reveal() == "s3cret"
    with pytest.raises(AuthenticationFailed, match="no password for 'admin@vc' in the keyring"):
        resolve_password("vc", entry, "admin")
    use_keyring(Locked())
    with pytest.raises(AuthenticationFailed, match="which cannot be used here: KeyringLocked: the collection is locked"):
        resolve_password("vc", entry, "root")


def test_the_cli_reports_the_silent_keyring_as_a_clean_error_naming_the_host(use_keyring, tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('[hosts.vc]\nuri = "esxi://root@vc.example.com/DC1"\nkeyring = true\ntimeout = 0.3\n')
    os.chmod(config, 0o600)
    monkeypatch.setenv("GPUPASS_CONFIG", str(config))
    for variable in [v for v in os.environ if v.startswith(("GPUPASS_PASSWORD", "GOVC_", "VMWARE_"))]:
        monkeypatch.delenv(variable)
    use_keyring(WaitingForUnlock())
    result = CliRunner().invoke(cli, ["gpus", "vc", "--json"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    document = json.loads(result.output)
    assert document["error"] == "authentication-failed" and "host 'vc'" in document["message"]
    assert "did not answer within 0.3s" in document["message"]
