"""The hyperv lab: a modelled Hyper-V host behind a WS-Management endpoint (`lab-hyperv`) to try gpupass without a hypervisor, and what the tests run against.

Not part of the hyperv backend: product code never imports this package (tests/unit/test_layering.py).
"""
