"""Benchmarks of fastpause against NGINX, HAProxy and Caddy.

``python -m benchmarks`` runs the whole comparison (see ``--help``) and writes
``BENCHMARKS.md`` plus plots in ``benchmarks/results/``. ``pytest
benchmarks/test_micro.py`` runs the pytest-benchmark micro benchmarks. The
method is in BENCHMARKS.md ("How it was measured"): same-run ratios,
interleaved rounds, medians.
"""
