"""Sums over a service's Prometheus ``/metrics``, for tests and benchmarks
that wait on or report what a server counted (calls taken, refusals)."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def metric_sum(port: int, keep: Callable[[Sample], bool], timeout: float = 10.0) -> float:
    """The sum of the samples on ``127.0.0.1:port/metrics`` that ``keep`` selects."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        text = reply.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if keep(s)
    )
