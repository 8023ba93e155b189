"""Benchmarks of cm-mqtt-bridge (run: .venv/bin/python benchmarks/bench.py)."""
