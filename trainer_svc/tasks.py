"""Celery tasks of the trainer. Thin: ids in, domain function does the work."""

from __future__ import annotations

from trainer_svc.celery_app import app


@app.task(name="bitmesh.ping")
def ping(token: str) -> str:
    """Round trip through the queue; `bitmesh status` uses it to prove a worker runs."""
    return token
