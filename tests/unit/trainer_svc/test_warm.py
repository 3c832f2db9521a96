"""Pool processes import the job modules before their first task."""

from __future__ import annotations

import sys

import pytest
from celery.signals import worker_process_init

import trainer_svc.tasks  # noqa: F401  (connects the signal receiver)
from trainer_svc import warm

pytestmark = pytest.mark.unit


def test_modules_are_imported_and_a_missing_one_does_not_stop_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    assert warm.warm_imports(["no_such_module_bitmesh", "colorsys"]) >= 0.0
    assert "colorsys" in sys.modules


@pytest.mark.parametrize(("setting", "warmed"), [(None, 1), ("0", 0)])
def test_worker_process_init_warms_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, warmed: int
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(warm, "warm_imports", lambda: calls.append(1) or 0.0)
    if setting is None:
        monkeypatch.delenv("BITMESH_TRAINER_WARM_IMPORTS", raising=False)
    else:
        monkeypatch.setenv("BITMESH_TRAINER_WARM_IMPORTS", setting)
    worker_process_init.send(sender="test")
    assert len(calls) == warmed
