"""Ratio benchmarks, each a module run from the repository root: ``python -m benchmarks.<name>``
(``make bench`` runs them all). Siblings and test helpers import as packages (``benchmarks.comfy_bench_host``,
``tests.support.llm_server``) because ``-m`` puts the repository root on ``sys.path``."""
