"""In-memory datasets and the transforms shared by every loader.

Every dataset here fits in memory (the largest is CIFAR at 180 MB as uint8), so a
dataset is just a pair of tensors. The trainer indexes them directly by batch, which is
much faster than a per-item DataLoader on small data and keeps data order fully
determined by (seed, epoch) - what resume and DDP equivalence rely on. Augmentation is
applied per batch with an explicit generator, so its randomness is checkpointable too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


class TensorData:
    """(x, y) tensors; ``get_batch(idx)`` returns float inputs and int64 labels."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y = x, y.long()

    def __len__(self) -> int:
        return len(self.y)

    def get_batch(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]

    def subset(self, idx) -> "TensorData":
        return TensorData(self.x[idx], self.y[idx])


@dataclass
class DataBundle:
    name: str
    train: TensorData
    test: TensorData
    num_classes: int
    val: TensorData | None = None
    augment: dict = field(default_factory=dict)  # e.g. {"crop_pad": 4, "flip": True}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    @property
    def input_size(self) -> int:
        return self.input_shape[-1]

    def example_inputs(self, n: int = 2) -> torch.Tensor:
        return self.train.x[:n].clone()


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def pad_images(x: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(x, (pad, pad, pad, pad)) if pad else x


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - torch.as_tensor(mean, dtype=x.dtype).view(shape)) / torch.as_tensor(std, dtype=x.dtype).view(shape)


def stratified_split(y: torch.Tensor, n_second: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic stratified split of indices; the second part gets n_second items
    (or that fraction), spread over classes in proportion to their frequency."""
    from sklearn.model_selection import train_test_split

    idx = torch.arange(len(y)).numpy()
    a, b = train_test_split(idx, test_size=n_second, stratify=y.numpy(), random_state=seed)
    return torch.as_tensor(sorted(a)), torch.as_tensor(sorted(b))


def augment_batch(x: torch.Tensor, gen: torch.Generator, crop_pad: int = 0, flip: bool = False) -> torch.Tensor:
    """Random crop (after zero padding) and horizontal flip, per sample, on a batch."""
    if crop_pad:
        n, _, h, w = x.shape
        xp = F.pad(x, (crop_pad,) * 4)
        # draws on the CPU generator, so augmentation is identical whatever the device
        dx = torch.randint(0, 2 * crop_pad + 1, (n,), generator=gen).to(x.device)
        dy = torch.randint(0, 2 * crop_pad + 1, (n,), generator=gen).to(x.device)
        ar = lambda k: torch.arange(k, device=x.device)  # noqa: E731
        rows = (dy[:, None] + ar(h)[None])  # n x h
        cols = (dx[:, None] + ar(w)[None])  # n x w
        x = xp[ar(n)[:, None, None, None], ar(x.shape[1])[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        m = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
        x = torch.where(m.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)
    return x
