"""Benchmark harness: bare gRPC ceiling, closed-loop load generator, in-process model baseline.

``python -m bench.run`` measures our stack against baselines taken in the same run and reports
ratios.
"""
