"""Reuse the trainer's mesh fixture (real Redis, a real Celery worker)."""

from tests.integration.trainer.conftest import mesh

__all__ = ["mesh"]
