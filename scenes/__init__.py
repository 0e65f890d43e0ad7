"""Synthetic, deterministic scenes with known objects, for the demo, tests and benchmarks."""
