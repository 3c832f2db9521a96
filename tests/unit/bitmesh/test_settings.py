"""Settings follow the environment, parsed again only when it changes."""

from __future__ import annotations

import pytest

from bitmesh import settings as settings_module
from bitmesh.settings import Settings, load_settings

pytestmark = pytest.mark.unit


def test_a_changed_variable_is_seen_at_the_next_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITMESH_SOLVER_PORT", "6001")
    assert load_settings().solver_port == 6001
    monkeypatch.setenv("BITMESH_SOLVER_PORT", "6002")
    assert load_settings().solver_port == 6002
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert load_settings().redis_url == "redis://127.0.0.1:1/0"
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.delenv("BITMESH_REDIS_URL", raising=False)
    assert load_settings().redis_url is None
    assert load_settings(solver_port=7000).solver_port == 7000  # overrides on top


def test_an_unchanged_environment_is_parsed_once_and_each_caller_gets_a_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BITMESH_SOLVER_PORT", "6003")
    parsed: list[int] = []
    real_init = Settings.__init__

    def counted(self: Settings, **values: object) -> None:
        parsed.append(1)
        real_init(self, **values)

    monkeypatch.setattr(Settings, "__init__", counted)
    first = load_settings()
    first.solver_port = 1  # a caller changing its own copy
    second = load_settings()
    assert len(parsed) == 1
    assert second.solver_port == 6003 and second is not first
    monkeypatch.setattr(settings_module, "_last", None)
    load_settings()
    assert len(parsed) == 2
