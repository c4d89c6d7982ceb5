"""Inputs that were still tracebacks after issue 10's first round (an independent re-measurement found them):
each is now a clean error naming the problem, with the documented exit code. Run as a user does: a separate
`gpupass` process (the console script's own paths: the quick listings, the scoped plugin registry, --help),
against the lab and URIs refused before any connection."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from support.cli import GPUPASS


def run(*args, env=None, stdout=subprocess.PIPE):
    result = subprocess.run([*GPUPASS, *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, timeout=120)
    assert "Traceback" not in result.stderr + (result.stdout or ""), result.stderr
    return result


# -- a URI that urlsplit refuses: the plugin registry for its scheme was looked up before check_uri saw it ---------
@pytest.mark.parametrize("uri", ["esxi://u@[::1/DC", "qemu+tcp://[::1/system", "hyperv://u@[::1:443/",
                                 "esxi://u@[zz]/DC"])
@pytest.mark.parametrize("command", [["gpus"], ["gpus", "--json"], ["check", "-", "vm", "41:00.0"], ["export"],
                                     ["snapshot", "-", "-o", "/tmp/never-written.json"]])
def test_a_malformed_host_uri_is_a_usage_error_on_every_command(uri, command):
    args = [uri if arg == "-" else arg for arg in command]
    args = args if "-" in command else [*args, uri]
    result = run(*args)
    assert result.returncode == 2, result.stderr
    said = json.loads(result.stdout)["message"] if "--json" in args else result.stderr
    assert "is not a valid URI" in said and uri in said


def test_a_malformed_uri_in_a_fleet_is_its_rows_clear_error_and_the_other_hosts_are_read():
    result = run("fleet", "gpus", "--hosts", "esxi://u@[::1/DC,lab-kvm", "--json")
    assert result.returncode == 4
    rows = {row["host"]: row for row in json.loads(result.stdout)["hosts"]}
    assert "is not a valid URI" in rows["esxi://u@[::1/DC"]["error"]["message"]
    assert rows["lab-kvm"]["ok"] is True


@pytest.mark.parametrize("variables, named", [
    ({"GOVC_URL": "https://[::1"}, "$GOVC_URL"),
    ({"GOVC_URL": "https://root:s3cret@[zz]/sdk"}, "$GOVC_URL"),
    ({"GOVC_URL": "https://root:s3cret@esx01:99999/sdk"}, "$GOVC_URL"),
    ({"VMWARE_HOST": "[::1", "VMWARE_USER": "root"}, "$VMWARE_HOST"),
])
def test_govc_and_ansible_variables_that_make_no_url_are_a_usage_error_naming_the_variable(variables, named):
    cleared = {name: "" for name in ("GPUPASS_HOST", "LIBVIRT_DEFAULT_URI", "GOVC_URL", "VMWARE_HOST")}
    result = run("gpus", env={**cleared, **variables})
    assert result.returncode == 2 and named in result.stderr, result.stderr
    assert "s3cret" not in result.stderr


# -- timeouts: inf or 1e300 seconds reached threading's wait (OverflowError) or math.ceil ----------------------------
@pytest.mark.parametrize("value", ["inf", "nan", "1e300", "99999999999", "86401"])
def test_a_config_timeout_past_a_day_is_refused_at_load(tmp_path, value):
    config = tmp_path / "config.toml"
    config.write_text(f'[hosts.node]\nuri = "qemu+tcp://127.0.0.1:1/system"\ntimeout = {value}\n')
    result = run("gpus", "node", env={"GPUPASS_CONFIG": str(config)})
    assert result.returncode == 2
    assert f"{config}:3: host 'node': timeout must be more than 0 and at most 86400 seconds" in result.stderr


def test_a_day_is_still_a_timeout(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[hosts.node]\nuri = "qemu+tcp://127.0.0.1:1/system"\ntimeout = 86400\n')
    result = run("gpus", "node", env={"GPUPASS_CONFIG": str(config)})
    assert result.returncode == 1 and "127.0.0.1" in result.stderr  # connection refused: the timeout was taken


@pytest.mark.parametrize("value", ["inf", "nan", "-5", "0", "1e300"])
def test_fleet_timeout_must_be_a_bounded_number_of_seconds(value):
    result = run("fleet", "gpus", "--hosts", "lab-kvm", "--timeout", value)
    assert result.returncode == 2 and "--timeout" in result.stderr
    assert "did not answer" not in result.stdout + result.stderr  # -5 was reported as a host that did not answer


# -- output that cannot be written: `> file` on a full disk (/dev/full) --------------------------------------------
@pytest.mark.parametrize("args, code", [
    (["gpus", "lab-kvm"], 1),               # the quick listing, without click
    (["status", "lab-kvm", "--json"], 1),
    (["plan", "lab-kvm", "ml-train", "41:00.0"], 1),   # through click
    (["--help"], 1),                        # the cached help, which loads nothing of gpupass's
    (["check", "lab-kvm", "render01", "42:00.0"], 3),  # a command that fails keeps its own code
])
def test_output_to_a_full_disk_is_an_error_not_a_traceback(args, code):
    with open("/dev/full", "w") as full:
        result = run(*args, stdout=full)
    assert result.returncode == code, result.stderr
    assert result.stderr.count("error: cannot write the output: No space left on device") == 1


def test_a_closed_pipe_after_help_is_not_an_error():
    reader = subprocess.Popen([*GPUPASS, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    reader.stdout.close()  # as `gpupass --help | head -0`
    assert reader.wait(60) == 0
    assert b"Traceback" not in reader.stderr.read()
    reader.stderr.close()


# -- declarative files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry, message", [
    ('model: H100\n    count: "\u00b2"', "count '\u00b2' is not a positive number (a whole number from 1 to 9999)"),  # isdigit(), not int()
    ("model: H100\n    count: " + "9" * 5000, "count '999999999999...' is not a positive number"),  # past int()'s limit
    ('gpus: !x ["42:00.0"]', "a.yaml:4: expected a single value here"),
])
def test_hostile_assignment_files_are_clean_errors(tmp_path, entry, message):
    path = tmp_path / "a.yaml"
    path.write_text(f"assignments:\n  - host: lab-kvm\n    vm: ml-train\n    {entry}\n", encoding="utf-8")
    result = run("diff", str(path))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "a.yaml:4: a.yaml:4" not in result.stderr


def test_a_python_tag_in_an_assignment_file_is_no_name(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text('assignments:\n  - host: lab-kvm\n    vm: !!python/object/apply:os.system ["true"]\n'
                    '    gpus: ["42:00.0"]\n')
    result = run("diff", str(path))
    assert result.returncode == 2 and "a.yaml:3: expected a single value here" in result.stderr
    assert "ScalarNode" not in result.stderr


# -- a data folder the lab hosts cannot use (GPUPASS_DATA_DIR=/dev/null): an OSError from inside a lab host -------
@pytest.mark.parametrize("args", [["gpus", "lab-kvm"], ["lab", "reset"], ["lab", "up", "lab-hyperv"], ["hosts", "list"],
                                  ["snapshot", "lab-kvm", "-o", "/tmp/never-written.json"]])
def test_a_data_folder_that_cannot_be_made_is_a_usage_error_naming_it(args):
    result = run(*args, env={"GPUPASS_DATA_DIR": "/dev/null"})
    assert result.returncode == 2
    assert "gpupass's data folder /dev/null cannot be used for the lab hosts: Not a directory" in result.stderr


# -- a CA file the TLS library cannot load: an OSError / ssl.SSLError from inside pyVmomi's or requests' session ---
@pytest.mark.parametrize("ca_file, reason", [("/nonexistent/ca.pem", "No such file or directory"),
                                             ("/tmp", "Is a directory"),
                                             ("/dev/null", "no certificate or crl found")])
@pytest.mark.parametrize("uri", ["esxi://root@127.0.0.1:1/DC", "hyperv://Administrator@127.0.0.1:1/"])
def test_a_ca_file_that_cannot_be_loaded_is_a_usage_error_before_any_connection(uri, ca_file, reason):
    result = run("gpus", uri, "--ca-file", ca_file, env={"GPUPASS_PASSWORD": "x"})
    assert result.returncode == 2, result.stderr
    assert f"the CA file {ca_file} cannot be used" in result.stderr and reason in result.stderr


def test_a_ca_file_from_the_config_file_is_checked_too(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[hosts.vc]\nuri = "esxi://root@127.0.0.1:1/DC"\nca_file = "/nonexistent/ca.pem"\n')
    result = run("gpus", "vc", env={"GPUPASS_CONFIG": str(config), "GPUPASS_PASSWORD": "x"})
    assert result.returncode == 2 and "the CA file /nonexistent/ca.pem cannot be used" in result.stderr
