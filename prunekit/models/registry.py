"""Model registry. Every builder takes (in_channels, input_size, num_classes, **options)."""
from __future__ import annotations

import torch.nn as nn

from ..foundations.registry import Registry

MODELS: Registry = Registry("model")


def build(name: str, in_channels: int = 3, input_size: int = 32, num_classes: int = 10, **kw) -> nn.Module:
    return MODELS.get(name)(in_channels=in_channels, input_size=input_size, num_classes=num_classes, **kw)


def names() -> list[str]:
    return MODELS.names()


# Import the model files so they register themselves.
from . import lenet, mlp, mobilenetv2, resnet_cifar, resnet_imagenet, vgg, vit  # noqa: E402,F401
