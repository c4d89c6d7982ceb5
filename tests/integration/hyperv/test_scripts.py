"""The script builders: clean parses, quoting that cannot turn a value into code, size limits."""
from __future__ import annotations

import json

import pytest

from gpupass.backends.hyperv import scripts as S
from gpupass.backends.hyperv.lab.hostmodel import VirtualMachine, lab_host, run_script
from gpupass.backends.hyperv.lab.hostmodel.interp import _verbatim
from gpupass.backends.hyperv.lab.hostmodel.lab import A100_2_LOC
from hyperv_helpers import G, M, bad_nodes, ps_parse

PREV = S.VmSettings("Save", 128 * M, 512 * M, False)

HOSTILE = [
    "it's",
    "''",
    "'; Remove-VM -Name * -Force; '",
    "$(Remove-VM -Name * -Force)",
    "`$x`n`'",
    "a; b & c | d",
    "line1\nline2\r\nSet-VM -Name x",
    "\u2018curly\u2019 \u201aquotes\u201b'",
    "\u00fcml\u00e4ut \u65e5\u672c \U0001F600",
    "\"double\" $env:USERNAME @(1) ${x} #comment <# block #>",
    "x" * 10_000,
    "'" * 64,
    "*",
    "ml-trai?",
    "[mw]*",
    "web`*",
]


def all_scripts(name: str = "ml-train", paths=(A100_2_LOC,), max_chars=S.MAX_SCRIPT_CHARS) -> dict[str, str]:
    return {
        "inventory": S.inventory_script(),
        "assign": S.assign_script(name, list(paths), 3 * G, 33280 * M, max_chars=max_chars),
        "release": S.release_script(name, list(paths), max_chars=max_chars),
        "release-legacy-record": S.release_script(name, list(paths), PREV, max_chars=max_chars),
        "read-vm": S.read_vm_script(name, max_chars=max_chars),
        "finish-release": S.finish_release_script(name, list(paths), max_chars=max_chars),
        "finish-release-settings-only": S.finish_release_script(name, [], max_chars=max_chars),
        "drop-intent": S.drop_intent_script(name, max_chars=max_chars),
    }


def eight_gpu_paths() -> list[str]:
    # realistic worst case: 8 GPUs each with an HDMI audio function, deep PCIe hierarchy
    return [f"PCIROOT({r:X})#PCI(0{s}00)#PCI(0000)#PCI(1{s}00)#PCI(000{f})" for r in range(0x20, 0xA0, 0x10)
            for s in (1,) for f in (0, 1)]


def test_ps_quote():
    assert S.ps_quote("ml-train") == "'ml-train'"
    assert S.ps_quote("it's") == "'it''s'"
    assert S.ps_quote("\u2019") == "'\u2019\u2019'"
    assert S.ps_quote("") == "''"
    with pytest.raises(ValueError):
        S.ps_quote("a\x00b")
    with pytest.raises(TypeError):
        S.ps_quote(5)  # type: ignore[arg-type]
    for v in HOSTILE:
        assert _verbatim(S.ps_quote(v)) == v      # PowerShell's single-quote rules give the value back


@pytest.mark.parametrize("name", ["ml-train", "a" * 64, "'" * 64])
def test_every_script_parses_cleanly(name):
    for what, script in all_scripts(name).items():
        assert bad_nodes(script) == [], what
    for what, script in all_scripts(name, eight_gpu_paths(), max_chars=None).items():
        assert bad_nodes(script) == [], what


def test_scripts_fit_for_longest_realistic_inputs():
    """With a 64-character name: one GPU with its audio function always fits one script; assign takes up to five
    such GPUs in one script and release one (its restore record check and the intent it writes before its first change
    are longer; with a short name, two); more are sent one script per GPU (HypervBackend.plan_*)."""
    paths = eight_gpu_paths()
    assert len(paths) == 16
    for name in ("v" * 64, "'" * 64, "\u65e5" * 64):
        for what, script in all_scripts(name, paths[:2]).items():
            assert len(script) <= S.MAX_SCRIPT_CHARS, (what, len(script))
            assert S.command_line_length(script) <= S.CMD_LINE_LIMIT, what
        S.assign_script(name, paths[:10], 3 * G, 33280 * M)
        S.release_script(name, paths[:2], PREV)
        S.release_script("ml-train", paths[:4], PREV)
        with pytest.raises(S.ScriptTooLarge):
            S.assign_script(name, paths, 3 * G, 33280 * M)


def test_too_large_is_refused_not_truncated():
    with pytest.raises(S.ScriptTooLarge):
        S.assign_script("x" * 10_000, [A100_2_LOC], 3 * G, 33280 * M)
    with pytest.raises(S.ScriptTooLarge):
        S.release_script("vm", [f"PCIROOT(0)#PCI({i:04X})#PCI(0000)" for i in range(200)], PREV)


def _literal_nodes(script: str) -> list:
    out = []

    def walk(n):
        if n.type == "string_literal":
            out.append(n)
            return
        for c in n.children:
            walk(c)
    walk(ps_parse(script).root_node)
    return out


def _shape(script: str, literal_text: str) -> list[tuple[str, str]]:
    """The parse tree as (type, text) of every node, with the one literal holding the value blanked."""
    shape = []

    def walk(n):
        if n.type == "string_literal" and n.text.decode() == literal_text:
            shape.append(("VALUE", ""))
            return
        shape.append((n.type, n.text.decode() if n.child_count == 0 else ""))
        for c in n.children:
            walk(c)
    walk(ps_parse(script).root_node)
    return shape


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_stay_inside_one_string_literal(name):
    benign = "benign"
    for what in ("assign", "release", "release-legacy-record"):
        script = all_scripts(name, max_chars=None)[what]
        ref = all_scripts(benign, max_chars=None)[what]
        lit = S.ps_quote(name)
        assert bad_nodes(script) == [], what
        hits = [n for n in _literal_nodes(script) if n.text.decode() == lit]
        assert len(hits) == 1, what                                        # exactly one literal holds it
        assert script.count(lit) == 1
        # outside that literal the script is token for token the one built for a benign name
        assert _shape(script, lit) == _shape(ref, S.ps_quote(benign)), what


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_round_trip_through_the_model(name):
    """A VM really called <name> gets the GPU, nothing else happens, and release gives it back."""
    m = lab_host()
    m.vms.append(VirtualMachine(name, generation=2, state="Off"))
    before_others = [(v.name, v.automatic_stop_action, v.high_mmio) for v in m.vms if v.name != name]
    r = run_script(m, S.assign_script(name, [A100_2_LOC], 3 * G, 33280 * M, max_chars=None))
    assert r.exit_code == 0, r.stdout + r.stderr
    assert m.device_by_location(A100_2_LOC).assigned_vm == name
    vm = m.vm(name)
    assert (vm.automatic_stop_action, vm.low_mmio, vm.high_mmio, vm.guest_controlled_cache_types) == \
        ("TurnOff", 3 * G, 33280 * M, True)
    r = run_script(m, S.release_script(name, [A100_2_LOC], PREV, max_chars=None))
    assert r.exit_code == 0, r.stdout + r.stderr
    d = m.device_by_location(A100_2_LOC)
    assert (d.assigned_vm, d.dismounted, d.enabled) == (None, False, True)
    assert [(v.name, v.automatic_stop_action, v.high_mmio) for v in m.vms if v.name != name] == before_others
    assert len(m.vms) == 6


def test_builders_validate_numbers():
    with pytest.raises(ValueError):
        S.assign_script("vm", [A100_2_LOC], -1, 1)
    with pytest.raises(ValueError):
        S.assign_script("vm", [A100_2_LOC], 1, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        S.assign_script("vm", [A100_2_LOC], 1, 1, stop_action="Save; Remove-VM")
    with pytest.raises(ValueError):
        S.VmSettings("TurnOff", 2**32, 1, False)
    with pytest.raises(ValueError):
        S.assign_script("vm", [], 1, 1)
    with pytest.raises(ValueError):
        S.assign_script("vm", [A100_2_LOC, A100_2_LOC.lower()], 1, 1)


def test_wrong_parameter_in_a_script_fails():
    """A builder bug (misspelt parameter) must fail loudly against the model, not be ignored."""
    m = lab_host()
    bad = S.assign_script("ml-train", [A100_2_LOC], 3 * G, 33280 * M).replace("-HighMemoryMappedIoSpace",
                                                                             "-HighMemoryMappedIOSize")
    r = run_script(m, bad)
    assert r.exit_code == 1
    res = json.loads(r.stdout)
    assert res["ok"] is False and res["step"] == "Set-VM"
    assert res["error"] == "A parameter cannot be found that matches parameter name 'HighMemoryMappedIOSize'."
    assert res["errorId"] == "NamedParameterNotFound,Microsoft.HyperV.PowerShell.Commands.SetVM"
    assert m.device_by_location(A100_2_LOC).assigned_vm is None
