"""Solver service domain: exact ILP bit allocation, Pareto frontiers, what-if.

Torch-free by design (the solver image has no torch); importing this package
imports nothing heavy. The public entry points live in ``solver_svc.solve``
(``solve``), ``solver_svc.frontier`` (``frontier``, ``what_if``) and
``solver_svc.latency`` (profiles).
"""
