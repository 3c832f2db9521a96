"""Proxy NAS service: low-cost proxy search of quantization hyperparameters."""
