"""Pieces every CLI command shares: model/dataset flags, the client, output."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict
from rich.console import Console

from bitmesh.client import Client
from bitmesh.errors import InvalidArgument
from bitmesh.models.model_files import refuse_torchscript
from bitmesh.settings import load_settings
from bitmesh.v1 import common_pb2

console = Console()
err_console = Console(stderr=True)


def add_client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--timeout", type=float, default=None, help="deadline per call, seconds")


def client_from(args: argparse.Namespace) -> Client:
    return Client(load_settings(), timeout=getattr(args, "timeout", None))


def parse_shape(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        shape = [int(x) for x in text.replace("x", ",").split(",") if x.strip()]
    except ValueError:
        raise InvalidArgument(f"input shape {text!r} must be integers like 3,224,224") from None
    if any(d <= 0 for d in shape):
        raise InvalidArgument(f"input shape {text!r} must be positive")
    return shape


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="torchvision architecture or 'digits_cnn', or a .pt2 file from torch.export.save "
        "with a dynamic batch dimension (TorchScript is not accepted)",
    )
    parser.add_argument(
        "--weights", default="", help="state_dict file (loaded with weights_only=True)"
    )
    parser.add_argument(
        "--input-shape", default="", help="C,H,W (default: 1,8,8 for digits_cnn, else 3,224,224)"
    )
    parser.add_argument("--num-classes", type=int, default=0, help="0 = the architecture's default")


def model_source(model: str) -> str:
    """Which ``ModelRef`` source ``--model`` names: a ``.pt2`` file, a
    TorchScript file (a path ending .pt/.pth/.torchscript/.ts: named so that
    it is refused with the export advice, not as an unknown architecture),
    else an architecture name."""
    if model.endswith(".pt2"):
        return "exported_program"
    if model.endswith((".pt", ".pth", ".torchscript", ".ts")) and (
        "/" in model or os.path.isfile(model)
    ):
        return "torchscript"
    return "architecture"


def model_ref_from(args: argparse.Namespace) -> common_pb2.ModelRef:
    shape = parse_shape(args.input_shape)
    source = model_source(args.model)
    refuse_torchscript(source, args.model, args.weights)  # before anything is sent
    ref = common_pb2.ModelRef(weights=args.weights, input_shape=shape, num_classes=args.num_classes)
    setattr(ref, source, args.model)
    return ref


def dump_json(message: Any) -> None:
    data = (
        MessageToDict(message, preserving_proto_field_name=True)
        if hasattr(message, "DESCRIPTOR")
        else message
    )
    print(json.dumps(data, indent=2))


def emit_job_result(args: argparse.Namespace, result: Any, show: Callable[[Any], None]) -> int:
    """Print a finished job's result (``--json``: as JSON, for scripts) and
    return the exit code: 0 only when the job succeeded, so a pipeline step
    that runs a job fails with it."""
    if args.json:
        dump_json(result)
    else:
        show(result)
    return 0 if result.status.state == common_pb2.JOB_STATE_SUCCEEDED else 1


def human_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def human_bytes(value: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="digits", help="digits, synthetic or folder:PATH")
    parser.add_argument("--data-shape", default="", help="C,H,W of synthetic or folder samples")
    parser.add_argument("--data-classes", type=int, default=0, help="synthetic classes")
    parser.add_argument("--subset", type=int, default=0, help="use N training samples (0 = all)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the subset")
    add_normalize_arg(parser)
    parser.add_argument(
        "--eval-subset", type=int, default=0, help="evaluate on N test samples (0 = all)"
    )


def add_normalize_arg(parser: argparse.ArgumentParser) -> None:
    from bitmesh.data.normalization import NORMALIZE_HELP

    parser.add_argument("--normalize", default="", help=NORMALIZE_HELP)


def dataset_ref_from(args: argparse.Namespace) -> common_pb2.DatasetRef:
    """``digits``, ``synthetic`` (with --data-shape) or ``folder:PATH``, with
    ``--normalize`` (image folders: ImageNet's statistics unless told)."""
    from bitmesh.data.normalization import parse_normalization

    text: str = args.dataset
    ref = common_pb2.DatasetRef(
        subset_size=args.subset,
        seed=args.data_seed,
        eval_subset_size=getattr(args, "eval_subset", 0),
    )
    if text == "digits":
        ref.kind = common_pb2.DATASET_KIND_DIGITS
    elif text == "synthetic":
        ref.kind = common_pb2.DATASET_KIND_SYNTHETIC
        ref.shape.extend(parse_shape(args.data_shape))
        ref.num_classes = args.data_classes
    elif text.startswith("folder:"):
        ref.kind = common_pb2.DATASET_KIND_IMAGE_FOLDER
        ref.path = text.removeprefix("folder:")
        ref.shape.extend(parse_shape(args.data_shape))
    else:
        raise InvalidArgument(f"dataset {text!r}: use digits, synthetic or folder:PATH")
    kind = "image_folder" if ref.kind == common_pb2.DATASET_KIND_IMAGE_FOLDER else text
    channels = int(ref.shape[0]) if ref.shape else 3
    mean, std = parse_normalization(getattr(args, "normalize", ""), kind, channels)
    ref.mean.extend(mean)
    ref.std.extend(std)
    return ref
