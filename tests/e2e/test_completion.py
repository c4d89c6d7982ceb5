"""`gpupass completion SHELL` and the dynamic completion of host, VM and GPU names, as the shells ask for them."""

import os
import subprocess

import pytest

from support.cli import GPUPASS, gpupass


def complete(*words, shell="bash"):
    """What gpupass answers when the shell asks to complete the last word (click's protocol)."""
    env = {**os.environ, "_GPUPASS_COMPLETE": f"{shell}_complete", "COMP_WORDS": " ".join(["gpupass", *words]),
           "COMP_CWORD": str(len(words))}
    result = subprocess.run(GPUPASS, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if "," in line]


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F"), ("zsh", "compdef"),
                                           ("fish", "complete --no-files --command gpupass")])
def test_completion_scripts(shell, marker):
    script = gpupass("completion", shell).stdout
    assert "_GPUPASS_COMPLETE" in script and marker in script


def test_hosts_from_the_config_and_the_lab():
    gpupass("hosts", "add", "node7", "qemu+ssh://admin@node7/system")
    assert complete("gpus", "") == ["node7", "lab-kvm", "lab-hyperv", "lab-esxi"]
    assert complete("check", "lab-") == ["lab-kvm", "lab-hyperv", "lab-esxi"]
    assert complete("hosts", "test", "no") == ["node7"]


def test_vm_and_gpu_names_of_the_kvm_lab():
    assert complete("check", "lab-kvm", "") == ["cad-ws", "ml-train", "render01", "vdi01", "web01"]
    assert complete("assign", "lab-kvm", "ml-train", "0000:4") == ["0000:41:00.0", "0000:42:00.0"]
    assert "10de:2331" in complete("plan", "lab-kvm", "ml-train", "10de:")
    assert complete("migrate", "plan", "lab-kvm", "ml") == ["ml-train"]


def test_names_of_a_remote_host_come_from_its_last_read_never_from_the_network():
    gpupass("lab", "up", "lab-hyperv")
    try:
        assert complete("check", "lab-hyperv", "ml") == []  # never read: completion does not connect
        gpupass("gpus", "lab-hyperv")
        assert complete("check", "lab-hyperv", "ml") == ["ml-train"]
        assert "PCIROOT(40)#PCI(0100)#PCI(0000)#PCI(1000)#PCI(0000)" in complete("check", "lab-hyperv", "ml-train", "PCIROOT(4")
    finally:
        gpupass("lab", "down", "lab-hyperv")
    # The lab is down: the names are still offered, from the cache, without waiting on it.
    assert complete("check", "lab-hyperv", "ml") == ["ml-train"]
