"""--normalize: ImageNet's statistics by default for image folders, none for
the built-in datasets, and what a user types checked with a message."""

from __future__ import annotations

import pytest

from bitmesh.data.normalization import IMAGENET_MEAN, IMAGENET_STD, parse_normalization
from bitmesh.errors import InvalidArgument

pytestmark = pytest.mark.unit


def test_defaults_follow_the_dataset() -> None:
    assert parse_normalization("", "image_folder", 3) == (IMAGENET_MEAN, IMAGENET_STD)
    assert parse_normalization("", "digits", 1) == ((), ())
    assert parse_normalization("none", "image_folder", 3) == ((), ())
    (mean,), (std,) = parse_normalization("imagenet", "image_folder", 1)
    assert mean == pytest.approx(0.449) and std == pytest.approx(0.226)


def test_numbers_one_or_per_channel() -> None:
    assert parse_normalization("0.5,0.25", "image_folder", 3) == ((0.5,), (0.25,))
    assert parse_normalization("0.1:0.2:0.3,1:2:3", "image_folder", 3) == (
        (0.1, 0.2, 0.3),
        (1.0, 2.0, 3.0),
    )


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("imagenet", "digits", "image folders only"),
        ("0.5", "image_folder", "use imagenet, none or MEAN,STD"),
        ("a,b", "image_folder", "must be numbers"),
        ("0.1:0.2,0.3", "image_folder", "mean has 2 values for 3-channel"),
        ("0.5,0", "image_folder", "std must be > 0"),
    ],
)
def test_bad_text_says_what_to_write(text: str, kind: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_normalization(text, kind, 3)
