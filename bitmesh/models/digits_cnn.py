"""A small CNN for scikit-learn's digits (1x8x8 images, 10 classes).

Why it exists: nothing can be downloaded here, so the end-to-end tests need a
model that trains to a real accuracy in seconds on real data. It has five
quantizable layers (three convolutions, two linear layers) of different sizes,
so a mixed-precision search has real choices to make.
"""

from __future__ import annotations

import torch
from torch import nn

from bitmesh.errors import InvalidArgument

#: The name under which ``bitmesh.models.loading`` builds this model.
ARCHITECTURE_NAME = "digits_cnn"


class DigitsCNN(nn.Module):
    """conv-bn-relu x2, max-pool, conv-bn-relu, adaptive avg-pool, fc-relu, fc.

    The adaptive pooling makes the head independent of the spatial size, so the
    same model also runs on larger synthetic inputs (any H, W >= 2).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise InvalidArgument(
                f"digits_cnn needs num_classes >= 1 and in_channels >= 1, "
                f"got {num_classes} and {in_channels}"
            )
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 32, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        x = self.avgpool(self.relu(self.bn3(self.conv3(x))))
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        return self.fc2(x)


def build_digits_cnn(num_classes: int, input_shape: tuple[int, ...]) -> DigitsCNN:
    """Builder used by the architecture registry: channels come from the input shape."""
    if len(input_shape) != 3:
        raise InvalidArgument(f"digits_cnn takes (C, H, W) inputs, got input shape {input_shape}")
    return DigitsCNN(num_classes=num_classes, in_channels=input_shape[0])
