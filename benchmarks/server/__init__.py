"""Helpers of `benchmarks/bench_server.py`: the load generator and the MLServer runtime."""
