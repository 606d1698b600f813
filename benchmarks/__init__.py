"""Benchmarks and the harness they share (run each script with `.venv/bin/python benchmarks/<name>.py`).

Benchmarks never import the tests (tests/unit/test_architecture.py checks it); the tests may
import harness modules from here, e.g. `benchmarks.redis_proxy` and `benchmarks.reference_metrics`.
"""
