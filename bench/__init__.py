"""Benchmarks of the tunnel path against baselines and peers: `python -m bench` (see bench/README.md)."""
