# Benchmarks are run on demand (`python tests/bench/bench_kvm.py`), never collected as tests.
collect_ignore_glob = ["bench_*.py"]
