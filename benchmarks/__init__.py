"""Benchmarks, the train-step profiler and the loss figures (``python -m benchmarks.NAME``)."""
