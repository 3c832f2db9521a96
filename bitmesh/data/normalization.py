"""``--normalize imagenet|none|MEAN,STD``: what an image folder's pixels are
normalised with, parsed once for every command (torch-free).

A pretrained torchvision model expects its ImageNet statistics, so that is
the default for image folders: a user who hands over such a model and a
folder of photos gets the preprocessing the weights were trained with.
Built-in datasets (digits, synthetic) come normalised already and take none.
"""

from __future__ import annotations

from bitmesh.errors import InvalidArgument

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZE_HELP",
    "Normalization",
    "parse_normalization",
]

#: torchvision's ImageNet statistics (what its pretrained weights expect).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZE_HELP = (
    "image folders: imagenet (default: what torchvision's pretrained weights expect), none, "
    "or MEAN,STD with one value each or one per channel joined by ':' "
    "(0.5,0.25 or 0.49:0.48:0.45,0.25:0.24:0.26)"
)

#: (mean, std) per channel, or one value for all; both empty = none.
Normalization = tuple[tuple[float, ...], tuple[float, ...]]


def _values(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(":"))
    except ValueError:
        raise InvalidArgument(
            f"--normalize {what} {text!r} must be numbers joined by ':'"
        ) from None
    return values


def parse_normalization(text: str, dataset_kind: str, channels: int) -> Normalization:
    """The (mean, std) ``text`` names for a dataset of ``channels`` channels.

    ``""`` is the default: ImageNet's statistics for an image folder, none
    otherwise. On grey images ImageNet's statistics are averaged over the
    three channels (what a grey copy of an ImageNet photo has).
    """
    choice = text.strip().lower()
    if not choice:
        choice = "imagenet" if dataset_kind == "image_folder" else "none"
    if choice == "none":
        return (), ()
    if dataset_kind != "image_folder":
        raise InvalidArgument(
            f"--normalize {text!r} applies to image folders only; the {dataset_kind} dataset "
            "is normalised already: use --normalize none"
        )
    if choice == "imagenet":
        if channels == 1:
            return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
        return IMAGENET_MEAN, IMAGENET_STD
    mean_text, sep, std_text = choice.partition(",")
    if not sep or "," in std_text:
        raise InvalidArgument(f"--normalize {text!r}: use imagenet, none or MEAN,STD")
    mean, std = _values(mean_text, "mean"), _values(std_text, "std")
    check_normalization(mean, std, channels)
    return mean, std


def check_normalization(mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> None:
    """Both empty, or one value / one per channel each, with every std > 0."""
    if not mean and not std:
        return
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise InvalidArgument(
                f"normalisation {name} has {len(values)} values for {channels}-channel images: "
                f"give 1 or {channels}"
            )
    if any(not s > 0 for s in std):
        raise InvalidArgument(f"normalisation std must be > 0, got {std}")
