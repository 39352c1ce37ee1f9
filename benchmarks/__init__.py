"""Benchmarks: measurements, not tests. Each module has ``main(argv)`` and writes to benchmarks/results/."""
