"""A config file behind a folder gpupass may not enter is a clear error naming the file, not a traceback.

Path.exists() and is_file() raise PermissionError there (CPython 3.11 pathlib ignores only ENOENT, ENOTDIR, EBADF
and ELOOP). Root enters any folder, so as root the check runs in a forked child that has dropped to `nobody`."""

from __future__ import annotations

import os
import pickle

import pytest

from gpupass.core.cli.app import AppContext
from gpupass.core.config import ConfigError, load_config
from gpupass.core.errors import GpupassError

NOBODY = 65534


def _as_unprivileged(call):
    """The outcome of call() in a process that cannot enter folders closed to others: ("ok"|"error"|"crash", text)."""
    if os.geteuid() != 0:
        return _outcome(call)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run, report, exit without running the parent's cleanup
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write, pickle.dumps(_outcome(call)))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def _outcome(call):
    try:
        return "ok", repr(call())
    except GpupassError as error:
        return "error", f"{type(error).__name__}: {error.message} | {error.remedy}"
    except BaseException as error:  # noqa: BLE001 - the point: anything else is the traceback this guards against
        return "crash", f"{type(error).__name__}: {error}"


@pytest.fixture
def closed_folder(tmp_path):
    tmp_path.chmod(0o755)
    folder = tmp_path / "closed"
    folder.mkdir()
    (folder / "config.toml").write_text('[hosts.lab]\nuri = "test:///default"\n')
    folder.chmod(0o700 if os.geteuid() == 0 else 0o000)
    yield folder / "config.toml"
    folder.chmod(0o755)


def test_the_default_config_behind_a_closed_folder_is_a_config_error(closed_folder):
    kind, text = _as_unprivileged(lambda: load_config(closed_folder))
    assert kind == "error" and ConfigError.__name__ in text, text
    assert str(closed_folder) in text and "cannot be read" in text and "permissions" in text


def test_a_config_named_with_dash_dash_config_behind_a_closed_folder_is_a_config_error(closed_folder):
    kind, text = _as_unprivileged(lambda: AppContext(config_path=str(closed_folder)).config)
    assert kind == "error" and str(closed_folder) in text and "cannot be read" in text, text


def test_a_missing_config_is_still_no_config(tmp_path):
    assert load_config(tmp_path / "absent" / "config.toml").path is None
    (tmp_path / "file").write_text("")
    assert load_config(tmp_path / "file" / "config.toml").path is None  # a file where a folder should be
