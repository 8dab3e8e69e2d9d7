"""Benchmarks (`make bench`): each module's `run()` returns tables to print."""
