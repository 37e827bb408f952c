"""Batched, seeded training augmentation on network inputs: contrast, brightness, gamma, zoom, affine warp, rotation,
optional horizontal flip.

It works on whole batches of already-preprocessed tensors (one ``affine_grid`` + ``grid_sample`` per batch), so the
images are decoded once per run, not once per epoch, and the same code runs on CPU and GPU. Intensity changes are
made in [0, 1] gray, before normalisation, and the warp pads with black: what the inference padding shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.card import Preprocessing


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random changes; each image draws its own values uniformly (zoom log-uniformly)."""

    rotation_degrees: float = 15.0
    zoom: tuple[float, float] = (0.85, 1.2)
    """> 1 zooms in."""
    shear: float = 0.1
    translate: float = 0.08
    """Fraction of the image side, each axis."""
    contrast: tuple[float, float] = (0.75, 1.3)
    brightness: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.4)
    hflip: bool = True
    """Only where laterality allows: a bilateral card's half keeps its side, so its trainer turns this off."""


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def augment(x: torch.Tensor, prep: Preprocessing, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """A randomly changed copy of the normalised batch ``x`` (N, C, H, W); random draws come from ``gen`` (CPU)."""
    n = x.shape[0]
    gray = (x * prep.std + prep.mean).clamp(0.0, 1.0)

    contrast = _uniform(n, *aug.contrast, gen).view(n, 1, 1, 1).to(x)
    brightness = _uniform(n, -aug.brightness, aug.brightness, gen).view(n, 1, 1, 1).to(x)
    gamma = _uniform(n, *aug.gamma, gen).view(n, 1, 1, 1).to(x)
    background = gray <= 0.0  # the resize padding stays black, as inference pads
    gray = ((gray - 0.5) * contrast + 0.5 + brightness).clamp(0.0, 1.0) ** gamma
    gray = gray.masked_fill(background, 0.0)

    angle = _uniform(n, -aug.rotation_degrees, aug.rotation_degrees, gen) * (math.pi / 180.0)
    zoom = torch.exp(_uniform(n, math.log(aug.zoom[0]), math.log(aug.zoom[1]), gen))
    shear = _uniform(n, -aug.shear, aug.shear, gen)
    shift = _uniform(2 * n, -2 * aug.translate, 2 * aug.translate, gen).view(n, 2)  # grid coordinates span 2
    flip = torch.ones(n)
    if aug.hflip:
        flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output → input coordinates: rotate · shear · (flip, 1) / zoom
    a11, a12 = cos * flip / zoom, (cos * shear - sin) / zoom
    a21, a22 = sin * flip / zoom, (sin * shear + cos) / zoom
    theta = torch.stack([torch.stack([a11, a12, shift[:, 0]], 1), torch.stack([a21, a22, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    warped = F.grid_sample(gray, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (warped - prep.mean) / prep.std
