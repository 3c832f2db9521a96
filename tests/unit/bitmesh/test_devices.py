"""BITMESH_DEVICE: auto, cpu, cuda[:N] and the errors a wrong choice gets."""

from __future__ import annotations

import pytest
import torch

from bitmesh.devices import check_cuda_index, free_memory_bytes, parse_device, resolve_device
from bitmesh.errors import FailedPrecondition, InvalidArgument

pytestmark = pytest.mark.unit

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@pytest.mark.parametrize(
    ("text", "kind", "index"),
    [("auto", "auto", None), ("CPU", "cpu", None), ("cuda", "cuda", None), (" cuda:1 ", "cuda", 1)],
)
def test_parse_accepts_the_documented_values(text: str, kind: str, index: int | None) -> None:
    choice = parse_device(text)
    assert (choice.kind, choice.index) == (kind, index)


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:-1", "cpu:0", "auto:1", "", "mps"])
def test_parse_refuses_anything_else(text: str) -> None:
    with pytest.raises(InvalidArgument, match="auto, cpu, cuda or cuda:N"):
        parse_device(text)


def test_cpu_is_always_the_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


@needs_no_gpu
def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setenv("BITMESH_DEVICE", "auto")
    assert resolve_device() == torch.device("cpu")  # the setting, read from the environment
    for text in ("cuda", "cuda:1"):
        with pytest.raises(FailedPrecondition, match="torch sees no CUDA device"):
            resolve_device(text)
    monkeypatch.setenv("BITMESH_DEVICE", "tpu")
    with pytest.raises(InvalidArgument, match="got 'tpu'"):
        resolve_device()


def test_an_index_past_the_visible_gpus_is_refused() -> None:
    check_cuda_index(1, 2)
    with pytest.raises(FailedPrecondition, match=r"cuda:2 but this machine has 2 .*cuda:0..cuda:1"):
        check_cuda_index(2, 2)
    with pytest.raises(FailedPrecondition, match="no CUDA device"):
        check_cuda_index(0, 0)


def test_free_memory_of_the_cpu_is_the_machines() -> None:
    free = free_memory_bytes(torch.device("cpu"))
    assert free is None or free > 0
