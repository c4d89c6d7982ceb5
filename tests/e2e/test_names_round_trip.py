"""On the three labs: every GPU name gpupass prints is accepted back, and fleet find, check and migrate plan
agree on what can take a VM now."""

import json


from support.cli import gpupass


def printed_addresses(host):
    """The ADDRESS column of the table (which ends at the first empty line; the shared GPUs' summary follows)."""
    table = gpupass("gpus", host).stdout.split("\n\n", 1)[0]
    return [line.split()[0] for line in table.splitlines()[1:]]


def test_every_printed_address_is_accepted_back(labs):
    for host, vm in (("lab-kvm", "ml-train"), ("lab-esxi", "ml-train"), ("lab-hyperv", "ml-train")):
        printed = printed_addresses(host)
        assert printed, host
        for name in printed:
            result = gpupass("check", host, vm, name, "--json", expect=None)
            document = json.loads(result.stdout)
            assert "findings" in document, (host, name, document)  # a preflight ran: the name was understood


def test_esxi_qualified_address_model_and_ids(labs):
    assert "esx02.lab.local/0000:3b:00.0" in printed_addresses("lab-esxi")
    gpupass("check", "lab-esxi", "ml-train", "esx02.lab.local/0000:3b:00.0")
    ambiguous = gpupass("check", "lab-esxi", "ml-train", "A100", expect=2)
    assert "esx02.lab.local/0000:3b:00.0" in ambiguous.stderr and "esx02.lab.local/0000:af:00.0" in ambiguous.stderr
    gpupass("check", "lab-kvm", "ml-train", "pci_0000_42_00_0")
    gpupass("check", "lab-kvm", "ml-train", "10de:2331")
    gpupass("check", "lab-kvm", "ml-train", "H100")


def test_hyperv_tables_show_the_location_path(labs):
    printed = printed_addresses("lab-hyperv")
    assert all(name.startswith("PCIROOT(") for name in printed), printed
    vms = gpupass("vms", "lab-hyperv").stdout
    assert "PCIROOT(20)#PCI(0300)#PCI(0000)#PCI(0800)#PCI(0000)" in vms


def test_fleet_find_agrees_with_check_on_a_card_that_needs_a_host_reboot(labs):
    # esx02's second A100 is not enabled for passthrough: check blocks on host-reboot-required...
    check = json.loads(gpupass("check", "lab-esxi", "ml-train", "esx02.lab.local/0000:af:00.0", "--json",
                               expect=3).stdout)
    assert "host-reboot-required" in [f["code"] for f in check["findings"] if f["severity"] == "blocker"]
    # ...so fleet find does not offer it as free now, and the enabled one it does offer passes check.
    found = json.loads(gpupass("fleet", "find", "--model", "A100 80GB", "--hosts", "lab-esxi", "--json").stdout)
    assert [c["free"] for c in found["candidates"]] == [["0000:3b:00.0"]]
    gpupass("check", "lab-esxi", "ml-train", "esx02.lab.local/0000:3b:00.0")
    gpupass("fleet", "find", "--model", "A100", "--count", "2", "--hosts", "lab-esxi", expect=3)


def test_migrate_plan_searches_every_host_of_the_destination(labs):
    # cad-ws exists on lab-esxi on esx01 (which has no free A100); esx02 has one that fleet find shows.
    plan = json.loads(gpupass("migrate", "plan", "lab-hyperv", "cad-ws", "lab-esxi", "--json", expect=3).stdout)
    assert [(g["destination"], g["destination_location"]) for g in plan["gpus"]] == [("0000:3b:00.0", "esx02.lab.local")]
    assert "migrate-vm-on-other-host" in [f["code"] for f in plan["findings"]]
    assert "migrate-no-equivalent" not in [f["code"] for f in plan["findings"]]
