"""scikit-learn's digits as an ImageFolder: real images, nothing downloaded.

Each 8x8 digit (grey levels 0..16) is scaled to 0..255, enlarged to
``size`` x ``size`` and written as an RGB PNG under ``<root>/<split>/<digit>/``,
``per_class`` training and ``per_class // 4`` test images per digit (the
first images of each class train, the next ones test), so a folder of a few
hundred files behaves like a user's photo folder with ``train/`` and
``test/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_digits_folder(root: Path, per_class: int = 20, size: int = 32) -> Path:
    """The folder written (``root``); its splits have 10 classes each."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    counts = {"train": per_class, "test": max(1, per_class // 4)}
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        start = 0
        for split, count in counts.items():
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for index in members[start : start + count]:
                pixels = (images[index].reshape(8, 8) * (255 / 16)).astype(np.uint8)
                grey = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
                grey.convert("RGB").save(folder / f"{index}.png")
            start += count
    return root
