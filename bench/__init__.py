"""Benchmark scripts and what they share (docs/benchmarks.md says which file does what)."""
