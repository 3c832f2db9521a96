"""Trainer service: QAT with distillation, FLIQS one-shot search, calibration (Celery jobs)."""
