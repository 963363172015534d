"""Benchmarks: ``python -m bench <name> [--quick]``, one module per subject.

Each ``bench/<name>.py`` has ``main(argv) -> int``; it prints a table and
writes its figures as JSON under ``bench/results/``. Figures are compared as
ratios measured side by side in one run: the machine is shared and noisy.
"""
