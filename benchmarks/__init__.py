"""Benchmarks: ``python benchmarks/<name>.py`` each, or import their ``run(quick)`` functions."""
