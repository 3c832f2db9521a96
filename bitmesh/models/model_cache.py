"""Loaded models remembered per process, handed out as private copies.

A pipeline hands one model to every stage, and each stage loads it in
several processes: ListLayers, the sensitivity analysis (at submission and
in its job), each training job at submission (the trainer validates before
it queues) and again in the worker. A load builds the architecture (its
random initialisation alone is 0.18 s for a resnet18, then overwritten),
reads the weights file and probes a forward: 0.3 s for a resnet18 at
3x32x32 on the shared 2-core machine, seconds for a ViT-B. A deep copy of
the loaded model costs 0.04 s, and every caller still gets a model of its
own to quantize, train or move to a device.

Only models that do not depend on the random state are remembered: a
weights file given (any source) or an exported program (its weights are in
the file). A randomly initialised architecture is built afresh each time,
from the caller's seed. The key holds each file's identity (device, inode,
size, modification time), so a file replaced under the same path is loaded
again. Loading a remembered kind runs with the random state saved and
restored, so a caller's random stream is the same on a hit and on a miss.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict

import torch
from torch import nn

from bitmesh.models.hashing import model_hash
from bitmesh.models.loading import load_model
from bitmesh.models.spec import ModelSpec

#: Models kept per process: the one a pipeline is working on, and one more.
MAX_ENTRIES = 2

_FileIdentity = tuple[int, int, int, int]
_Key = tuple[ModelSpec, tuple[_FileIdentity, ...]]

_loaded: OrderedDict[_Key, nn.Module] = OrderedDict()
_hashes: OrderedDict[tuple[_Key, tuple[str, ...]], str] = OrderedDict()
_lock = threading.Lock()


def _identity(path: str) -> _FileIdentity:
    status = os.stat(path)
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _key(spec: ModelSpec) -> _Key | None:
    """The cache key, or None when the model is not remembered (random init,
    or a file that cannot be read: the load then says why)."""
    paths = [p for p in (spec.weights_path,) if p is not None]
    if spec.source != "architecture":
        paths.append(spec.name_or_path)
    elif spec.weights_path is None:
        return None
    try:
        return (spec, tuple(_identity(p) for p in paths))
    except OSError:
        return None


def load_model_copy(spec: ModelSpec) -> nn.Module:
    """``load_model(spec)``, from this process's cache where it can be: a
    model of the caller's own, on CPU, in eval mode. Raises as ``load_model``."""
    key = _key(spec)
    if key is None:
        return load_model(spec)
    return copy.deepcopy(_remembered(key, spec))


def load_model_for_reading(spec: ModelSpec) -> nn.Module:
    """``load_model(spec)`` for a caller that only reads its tensors: checks
    at submission, layer discovery, costing, hashing.

    Its module tree is the caller's own (layer discovery may rewrite
    modules, as it does attention), but its parameters and buffers are the
    remembered model's, not copies. Why: copying a resnet18's 45 MB is
    mostly page faults on fresh memory, measured at 0.05-0.3 s on the
    2-core machine, paid by every request a service validates; sharing costs
    0.01 s. The caller must not write to them, train, or move the model to
    another device in place; it takes :func:`load_model_copy` for that."""
    key = _key(spec)
    if key is None:
        return load_model(spec)
    cached = _remembered(key, spec)
    shared: dict[int, object] = {id(t): t for t in (*cached.parameters(), *cached.buffers())}
    return copy.deepcopy(cached, shared)


def model_hash_of(spec: ModelSpec, model: nn.Module) -> str:
    """``model_hash(model)`` for a model loaded from ``spec`` by this module
    and unchanged since (module rewrites such as layer discovery's aside),
    remembered per file identity and state_dict names: hashing a resnet18's
    weights is 0.05 s of every analysis and layer table of the same model."""
    key = _key(spec)
    if key is None:
        return model_hash(model)
    names = tuple(model.state_dict())
    with _lock:
        known = _hashes.get((key, names))
    if known is None:
        known = model_hash(model)
        with _lock:
            _hashes[(key, names)] = known
            while len(_hashes) > 4 * MAX_ENTRIES:
                _hashes.popitem(last=False)
    return known


def _remembered(key: _Key, spec: ModelSpec) -> nn.Module:
    """The remembered model of ``key``, loaded now if it is not (never handed out)."""
    with _lock:
        cached = _loaded.get(key)
        if cached is not None:
            _loaded.move_to_end(key)
    if cached is None:
        with torch.random.fork_rng(devices=[]):
            cached = load_model(spec)
        with _lock:
            _loaded[key] = cached
            while len(_loaded) > MAX_ENTRIES:
                _loaded.popitem(last=False)
    return cached


def forget_models() -> None:
    """Drop every remembered model (tests; memory pressure)."""
    with _lock:
        _loaded.clear()
        _hashes.clear()
