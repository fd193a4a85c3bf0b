"""Experiment entry points and configs (``python -m experiments.train``)."""
