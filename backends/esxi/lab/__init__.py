"""The esxi lab: a vSphere simulator (`lab-esxi`) to try gpupass without a hypervisor, and what the tests run against.

Not part of the esxi backend: product code never imports this package (tests/unit/test_layering.py).
"""
