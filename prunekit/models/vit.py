"""A small Vision Transformer: patch embedding, pre-norm encoder blocks with Linear q/k/v.

Attention keeps ``num_heads`` and ``head_dim`` as plain attributes so the structured
engine can prune whole heads and update them.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import MODELS


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q(x).reshape(b, n, h, d).transpose(1, 2)
        k = self.k(x).reshape(b, n, h, d).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, d).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (d ** -0.5)
        out = att.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, h * d))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, in_channels=3, input_size=32, num_classes=10, patch=4, dim=192, depth=6, heads=3, mlp_ratio=4.0):
        super().__init__()
        if input_size % patch:
            raise ValueError(f"input_size {input_size} not divisible by patch {patch}")
        n = (input_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@MODELS.register("vit")
def vit(in_channels=3, input_size=32, num_classes=10, patch=4, dim=192, depth=6, heads=3, mlp_ratio=4.0):
    """A small Vision Transformer (patch embedding, pre-norm blocks, class token)."""
    return ViT(in_channels, input_size, num_classes, patch, dim, depth, heads, mlp_ratio)
