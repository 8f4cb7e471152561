"""Benchmarks (``python -m bench``): medians over repeated runs, written into docs/benchmarks.md."""
