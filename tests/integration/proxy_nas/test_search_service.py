"""The proxy search through the service, on two real Celery workers.

Space: learning rate x weight granularity x activation range estimator, 12
configurations, QAT of digits_cnn at int4. Full fidelity is 120 steps on all
the data; the exhaustive evaluation of the space (itself a search over the
same workers, one full-fidelity rung) costs 1440 steps; the proxy search
(every configuration 8 steps on a quarter of the data, the top quarter 16
steps on half) costs 144.
"""

from __future__ import annotations

import pytest

from bitmesh.errors import InvalidArgument
from bitmesh.v1 import common_pb2 as c
from bitmesh.v1 import proxy_nas_pb2 as p
from proxy_nas_svc.runs import RUN_TRIAL_TASK
from tests.integration.proxy_nas.conftest import ProxyMesh
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

FULL_STEPS = 120
SPACE = [
    p.Hyperparameter(
        name="learning_rate", categorical=p.Categorical(choices=["0.002", "0.02", "0.2"])
    ),
    p.Hyperparameter(
        name="granularity", categorical=p.Categorical(choices=["per_channel", "per_tensor"])
    ),
    p.Hyperparameter(
        name="activation_range", categorical=p.Categorical(choices=["minmax", "percentile"])
    ),
]


def _request(**changes: object) -> p.StartSearchRequest:
    fields: dict[str, object] = {
        "model": c.ModelRef(architecture="digits_cnn"),
        "dataset": c.DatasetRef(kind=c.DATASET_KIND_DIGITS),
        "config": c.QuantConfig(
            layers=[
                c.LayerConfig(layer=name, option=c.QuantOption(weight=c.NumericFormat(name="int4")))
                for name in ("conv1", "conv2", "conv3", "fc1", "fc2")
            ]
        ),
        "space": SPACE,
        "trials": 12,
        "fidelity": [p.Rung(data_fraction=0.25, steps=8), p.Rung(data_fraction=0.5, steps=16)],
        "full_fidelity": p.Rung(data_fraction=1.0, steps=FULL_STEPS),
        "reduction_factor": 4,
        "parallel_trials": 2,
        "seed": 0,
    }
    fields.update(changes)
    return p.StartSearchRequest(**fields)  # type: ignore[arg-type]


def _finished(mesh: ProxyMesh, job_id: str, timeout: float) -> p.SearchResult:
    def done() -> p.SearchResult | None:
        with mesh.client() as client:
            result = client.get_tuning(job_id)
        terminal = result.status.state in (
            c.JOB_STATE_SUCCEEDED,
            c.JOB_STATE_FAILED,
            c.JOB_STATE_CANCELLED,
        )
        return result if terminal else None

    result: p.SearchResult = wait_for(done, timeout, f"search {job_id} to end", poll=0.5)
    assert result.status.state == c.JOB_STATE_SUCCEEDED, result.status.error
    return result


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"space": []}, "empty"),
        (
            {
                "space": [
                    p.Hyperparameter(
                        name="learning_rate", float_range=p.FloatRange(low=0.5, high=0.1)
                    )
                ]
            },
            "low 0.5 > high 0.1",
        ),
        (
            {
                "space": [
                    p.Hyperparameter(name="alpha", float_range=p.FloatRange(low=0.1, high=0.9))
                ]
            },
            "distillation",
        ),
        (
            {
                "fidelity": [
                    p.Rung(data_fraction=0.5, steps=20),
                    p.Rung(data_fraction=0.25, steps=40),
                ]
            },
            "does not increase",
        ),
        ({"trials": 0}, "trial budget"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(
    proxy_mesh: ProxyMesh, changes: dict[str, object], needle: str
) -> None:
    with proxy_mesh.client() as client, pytest.raises(InvalidArgument, match=needle):
        client.start_tuning(_request(**changes))


def test_the_proxy_finds_a_near_best_configuration_at_a_tenth_of_the_compute(
    proxy_mesh: ProxyMesh,
) -> None:
    with proxy_mesh.client() as client:
        exhaustive_id = client.start_tuning(
            _request(
                fidelity=[p.Rung(data_fraction=1.0, steps=FULL_STEPS)],
                sampler="random",
                full_fidelity_checks=0,
            )
        ).job_id
        proxy_id = client.start_tuning(_request(full_fidelity_checks=0)).job_id
        events = list(client.watch_tuning(proxy_id, timeout=120))
    proxy = _finished(proxy_mesh, proxy_id, 120)
    exhaustive = _finished(proxy_mesh, exhaustive_id, 120)

    # The exhaustive search saw every configuration at full fidelity.
    full = {tuple(sorted(t.params.items())): t.score for t in exhaustive.trials}
    assert len(full) == 12 and all(t.state == p.TRIAL_STATE_COMPLETE for t in exhaustive.trials)
    # The proxy ran all 12 at rung 0, promoted 3, pruned 9.
    states = [t.state for t in proxy.trials]
    assert len(proxy.trials) == 12
    assert states.count(p.TRIAL_STATE_COMPLETE) == 3 and states.count(p.TRIAL_STATE_PRUNED) == 9
    winner = full[tuple(sorted(proxy.best_params.items()))]
    assert max(full.values()) - winner <= 0.01, (proxy.best_params, winner, max(full.values()))
    # Compute in training steps: the proxy's against the exhaustive search's.
    assert proxy.quality.full_search_steps == exhaustive.quality.search_steps == 12 * FULL_STEPS
    assert proxy.quality.search_steps == 12 * 8 + 3 * 16
    assert proxy.quality.search_steps <= exhaustive.quality.search_steps / 10
    # Watch streamed the trials (with the best so far) and the final state.
    assert {e.trial.number for e in events if e.HasField("trial")} == {
        t.number for t in proxy.trials
    }
    assert events[-1].status.state == c.JOB_STATE_SUCCEEDED
    assert any(e.best.score > 0 for e in events)


def test_killing_a_worker_mid_search_does_not_stop_it(proxy_mesh: ProxyMesh) -> None:
    with proxy_mesh.client() as client:
        job_id = client.start_tuning(
            _request(
                space=SPACE[:2],
                trials=6,
                fidelity=[p.Rung(data_fraction=1.0, steps=150)],
                full_fidelity=p.Rung(data_fraction=1.0, steps=150),
                full_fidelity_checks=2,
                sampler="random",
            )
        ).job_id

    first = proxy_mesh.workers.workers[0]

    def scored_and_first_worker_mid_run() -> bool:
        with proxy_mesh.client() as client:
            scored = any(t.rung_scores for t in client.get_tuning(job_id).trials)
        return scored and proxy_mesh.workers.running(first, RUN_TRIAL_TASK)

    wait_for(scored_and_first_worker_mid_run, 90, "a first trial result, then a run on worker 0")
    proxy_mesh.workers.kill_worker(first)  # SIGKILL, mid-run
    result = _finished(proxy_mesh, job_id, 120)
    assert len(result.trials) == 6
    assert all(t.state == p.TRIAL_STATE_COMPLETE for t in result.trials), [
        (t.number, t.reason) for t in result.trials
    ]
    assert result.quality.full_fidelity_trials == 2
    assert result.best_score == max(t.score for t in result.trials)
