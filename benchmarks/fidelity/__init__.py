"""The fidelity benchmark's parts (``benchmarks/bench_fidelity.py`` runs them).

One module per job: ``protocol`` (what is measured, fixed before any result),
``prepare`` (a seed's FP32 model and its sensitivity), ``allocate`` (every
method's configuration at a budget), ``runs`` (PTQ and QAT of a
configuration), ``stats`` (intervals and rank correlation) and ``report``
(``docs/fidelity.md`` and its plot).
"""
