"""Checkpoints: a round trip through the artifact store, weights-only reading."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch

from bitmesh.artifacts import ArtifactStore
from bitmesh.errors import FailedPrecondition
from trainer_svc import checkpoints

pytestmark = pytest.mark.unit


def _state() -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(5)
    return {
        "step": 40,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "hook": {
            "logits": torch.randn(2, 3),
            "baseline": -0.25,
            "generator": generator.get_state(),
        },
        "rng": {"cpu": torch.get_rng_state()},
        "history": [{"step": 20.0, "loss": 0.5}],
        "resumed_from": [],
    }


def test_round_trip_through_the_store(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    assert checkpoints.load(store, "job-1") is None
    state = _state()
    checkpoints.save(store, "job-1", state, 40)
    later = {**state, "step": 80}
    checkpoints.save(store, "job-1", later, 80)
    assert checkpoints.latest(store, "job-1")["step"] == 80
    loaded = checkpoints.load(store, "job-1")
    assert loaded is not None and loaded["step"] == 80
    for key, value in state["model"].items():
        torch.testing.assert_close(loaded["model"][key], value)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    torch.testing.assert_close(
        loaded["optimizer"]["state"][0]["momentum_buffer"],
        state["optimizer"]["state"][0]["momentum_buffer"],
    )
    assert loaded["hook"]["baseline"] == -0.25 and loaded["history"] == state["history"]
    restored = torch.Generator()
    restored.set_state(loaded["hook"]["generator"])
    original = torch.Generator().manual_seed(5)
    assert torch.equal(torch.rand(3, generator=restored), torch.rand(3, generator=original))
    assert checkpoints.load(store, "job-2") is None  # keyed by job id


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this would run on load",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_checkpoint_that_needs_unpickling_is_refused() -> None:
    buffer = io.BytesIO()
    torch.save({"step": 1, "evil": _Payload()}, buffer)
    with pytest.raises(FailedPrecondition, match="weights-only"):
        checkpoints.from_bytes(buffer.getvalue())
    with pytest.raises(FailedPrecondition):
        checkpoints.from_bytes(pickle.dumps([1, 2]))
