"""Helpers for bench/run.py: fake upstream, gateway process, load generators, report."""
