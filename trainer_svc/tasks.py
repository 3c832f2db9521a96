"""Celery tasks of the trainer. Thin: ids in, domain function does the work.

Tasks are ``shared_task``s: celery_app.make_celery() autodiscovers this module
while it builds the app, so importing the app from here would be circular.
"""

from __future__ import annotations

from celery import shared_task


@shared_task(name="bitmesh.ping")
def ping(token: str) -> str:
    """Round trip through the queue: proves a worker is consuming."""
    return token
