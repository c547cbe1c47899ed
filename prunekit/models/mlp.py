"""MLP-7-Linear (TPP's dynamical-isometry testbed) and LeNet-300-100."""
from __future__ import annotations

import torch.nn as nn

from .registry import MODELS


class MLP(nn.Module):
    """Flatten, then Linear layers with an activation between them; the last is the classifier."""

    def __init__(self, in_features: int, widths: list[int], num_classes: int, act: str = "relu"):
        super().__init__()
        acts = {"relu": nn.ReLU, "linear": nn.Identity, "tanh": nn.Tanh}
        if act not in acts:
            raise ValueError(f"unknown activation {act!r}; valid: {sorted(acts)}")
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for w in widths:
            layers += [nn.Linear(d, w), acts[act]()]
            d = w
        layers.append(nn.Linear(d, num_classes))
        self.features = nn.Sequential(*layers[:-1])
        self.classifier = layers[-1]

    def forward(self, x):
        return self.classifier(self.features(x))


@MODELS.register("mlp7-linear")
def mlp7_linear(in_channels=1, input_size=32, num_classes=10, width: int = 100, act: str = "linear",
                in_features: int | None = None):
    """7 Linear layers (1024->100, five 100->100, 100->10), identity activation, no BN.
    ``in_features`` overrides channels x size x size (e.g. 40 for 1-D MNIST-1D signals)."""
    return MLP(in_features or in_channels * input_size * input_size, [width] * 6, num_classes, act=act)


@MODELS.register("lenet-300-100")
def lenet_300_100(in_channels=1, input_size=28, num_classes=10, in_features: int | None = None):
    """``in_features`` overrides channels x size x size (e.g. 40 for 1-D MNIST-1D signals)."""
    return MLP(in_features or in_channels * input_size * input_size, [300, 100], num_classes, act="relu")
