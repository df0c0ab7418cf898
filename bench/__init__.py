"""Benchmarks: each script prints one JSON object on stdout and a small table on stderr."""
