"""Benchmarks: each module with a `main()` prints `name figure key=value ...` lines (make bench)."""
