"""The trainer's worker knobs, from ``BITMESH_TRAINER_*`` environment variables.

Kept apart from :mod:`bitmesh.settings` because only the trainer's Celery
workers read them. Defaults suit real jobs; the integration tests shorten
the timeouts so a killed worker's job is picked up in seconds.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BITMESH_TRAINER_", extra="ignore")

    #: Redis redelivers a task not acknowledged for this long. Running
    #: trainer tasks keep their delivery fresh (see trainer_svc.keepalive),
    #: so this bounds how long a dead worker's job waits, not how long a job
    #: may run. Other tasks of the app (proxy NAS) do not refresh theirs.
    visibility_timeout_s: float = 7200.0
    #: How often each worker looks for deliveries past the visibility timeout.
    restore_interval_s: float = 10.0
    #: A running job holds a lease renewed every third of this; a second
    #: delivery of the same job waits until the lease lapses or the job ends.
    lease_ttl_s: float = 30.0
    #: Deliveries of one job that run it before it is marked FAILED: the
    #: first, and one more after each worker death or store-outage hand-back.
    max_attempts: int = 5
    #: Import torch and the job modules when a pool process starts (before
    #: its first task) rather than in its first job: ``trainer_svc.warm``.
    warm_imports: bool = True


def load_trainer_settings() -> TrainerSettings:
    return TrainerSettings()
