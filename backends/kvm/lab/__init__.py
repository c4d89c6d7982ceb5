"""The kvm lab: a libvirt test-driver host file (`lab-kvm`) to try gpupass without a hypervisor, and what the tests run against.

Not part of the kvm backend: product code never imports this package (tests/unit/test_layering.py).
"""
