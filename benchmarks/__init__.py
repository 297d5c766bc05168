"""Benchmark harnesses, one per paper comparison: ``python -m benchmarks.<name>``.

Each follows ``docs/benchmarks.md``: ``--quick`` and default sizes, ``--seed``,
``--out``, one ``results.json`` schema (see `benchmarks.common`), MLflow logging.
The library (``paramgen``) never imports this package.
"""
