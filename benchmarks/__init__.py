"""Benchmarks of vader-tf (not tests): run `python benchmarks/run_all.py [--quick]`."""
