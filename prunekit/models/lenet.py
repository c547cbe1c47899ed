"""LeNet-5-Caffe: conv(20, 5x5) -> pool -> conv(50, 5x5) -> pool -> fc 500 -> fc classes."""
from __future__ import annotations

import torch.nn as nn

from .registry import MODELS


class LeNet5Caffe(nn.Module):
    """LeNet-5-Caffe: conv 20, conv 50 (5x5, max-pool), fc 500, fc 10 (ESPN's MNIST net)."""

    def __init__(self, in_channels=1, input_size=28, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        s = ((input_size - 4) // 2 - 4) // 2
        if s < 1:
            raise ValueError(f"lenet5-caffe needs input_size >= 16, got {input_size}")
        self.fc1 = nn.Linear(50 * s * s, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


MODELS.register("lenet5-caffe", LeNet5Caffe)
