"""What a finished job produced, before it is published to the artifact store."""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.serialization import config as serialization_config

from bitmesh.formats import QuantOption
from bitmesh.quant.qmodel import QuantLayer, plain_state_dict, quantizer_state
from trainer_svc.evaluate import Evaluation

WEIGHTS_MEDIA_TYPE = "application/vnd.bitmesh.weights+torch"

_CRC_OFF = threading.Lock()


@dataclass
class Outcome:
    config: dict[str, QuantOption]
    evaluation: Evaluation
    history: list[dict[str, float]]
    steps_done: int
    #: The torch.save file, as a view of its buffer (not copied out of it);
    #: None when the job changed no weight of a model that has its own file
    #: (a calibration that quantizes no layer of a given state_dict or
    #: program, which is how a given model is evaluated as it is): that file
    #: is the result's weights, and storing a copy cost a resnet18
    #: evaluation 0.25-0.9 s of its 0.8-2 s.
    weights: bytes | memoryview | None
    resumed_from: list[int] = field(default_factory=list)
    final_entropy: float | None = None
    policy: dict[str, dict[str, float]] | None = None
    target: float | None = None
    #: The job's work after loading (quantizing, training, evaluating the result).
    seconds: float = 0.0


def weights_bytes(
    model: nn.Module, layers: Mapping[str, QuantLayer], config: Mapping[str, QuantOption]
) -> memoryview:
    """``torch.save({"state_dict", "quantizers", "config"})``: the state_dict has
    the original model's keys (loadable as ``ModelRef.weights``), the
    quantizers the activation clips of the chosen formats, the config the
    option keys. All tensors and strings: readable with ``weights_only=True``.

    Saved without the zip's CRC-32 of each record: the artifact store names
    the file by its sha256 and checks nothing else, so the CRC was a second
    checksum over 45 MB per resnet18 job, and ``torch.load`` reads such a
    file as it reads any other (a zip tool that checks CRCs would not)."""
    state = plain_state_dict(model, layers, copy=False)  # serialised at once, never kept
    payload: dict[str, Any] = {
        "state_dict": {k: v.cpu() for k, v in state.items()},
        "quantizers": quantizer_state(layers),
        "config": {name: option.key for name, option in config.items()},
    }
    buffer = io.BytesIO()
    # torch's serialisation config is one per process: the lock keeps two
    # jobs' saves from interleaving the patch and its undo (which would leave
    # CRCs off for good); a pool process runs one job at a time anyway.
    with _CRC_OFF, serialization_config.patch({"save.compute_crc32": False}):  # type: ignore[attr-defined]
        torch.save(payload, buffer)
    # A view, not getvalue(): that copied a resnet18's 45 MB once more per job.
    return buffer.getbuffer()
