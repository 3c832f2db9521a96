"""The Optuna study behind a search: sampler, distributions and shared storage.

Optuna samples the configurations (TPE by default) and records every trial,
its intermediate value per rung and its end (COMPLETE, PRUNED or FAIL), so a
search is inspectable with Optuna's own tools. The storage is a journal: on
Redis (``JournalRedisBackend``) when ``REDIS_URL`` is set, so every replica
and worker sees one study, else a journal file under the artifact root.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bitmesh.jobs.plumbing import PROXY_NAS
from proxy_nas_svc.space import Categorical, FloatRange, Hyperparameter, IntRange

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.storages import BaseStorage

log = logging.getLogger(__name__)

JOURNAL_PREFIX = f"{PROXY_NAS.redis_prefix}:optuna:"


def open_storage(redis_url: str | None, artifact_root: str) -> BaseStorage:
    """The journal storage every process of the mesh shares."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    if redis_url:
        with warnings.catch_warnings():  # "experimental" since optuna 3.1; still the API in 5.0
            warnings.simplefilter("ignore", category=ExperimentalWarning)
            return JournalStorage(JournalRedisBackend(redis_url, prefix=JOURNAL_PREFIX))
    folder = Path(artifact_root.removeprefix("file://")) / PROXY_NAS.store
    folder.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(folder / "optuna-journal.log")))


def distributions(space: Mapping[str, Hyperparameter]) -> dict[str, BaseDistribution]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, BaseDistribution] = {}
    for name, hp in space.items():
        domain = hp.domain
        if isinstance(domain, Categorical):
            out[name] = CategoricalDistribution(list(domain.choices))
        elif isinstance(domain, FloatRange):
            out[name] = FloatDistribution(domain.low, domain.high, log=domain.log)
        elif isinstance(domain, IntRange):
            out[name] = IntDistribution(domain.low, domain.high)
    return out


def create_study(
    name: str, sampler_name: str, seed: int, trials: int, storage: BaseStorage | None = None
) -> optuna.Study:
    """A maximising study (held-out accuracy) named after the search job.

    TPE starts from random samples; with a small trial budget it keeps a
    third of them random (at least two) so it has something to model."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler: optuna.samplers.BaseSampler
    if sampler_name == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(2, min(10, trials // 3))
        )
    return optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        direction="maximize",
        load_if_exists=True,
    )
