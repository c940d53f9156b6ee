"""plkit's benchmark suite: ``python -m benchmarks [--quick]`` (see ``benchmarks/__main__.py``).

One module per comparison, each with ``run(...) -> dict`` and ``tables(results)``: ``training`` (with its
contenders in ``_contenders`` and its data in ``_data``), ``callbacks`` (export and gradient-norm logging),
``startup``, ``gpu``, ``export_latency`` and ``accuracy`` (time to accuracy, its runs in ``_accuracy_runs``).
"""
