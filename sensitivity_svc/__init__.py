"""Sensitivity service: per-layer Hessian traces and the perturbation (Omega) table."""
