"""Pooled stage features of a network (of each member of an Ensemble), caught in the same forward as its logits.

The domain gate (models.gate) measures how far an image's features lie from those of the training images. Forward
hooks on the modules timm's ``feature_info`` names (the end of each stage) catch the maps while the logits are
computed, so gating costs no second forward. Each map is averaged over space, giving (N, C); wider layers are averaged
in channel groups down to MAX_DIMS, so that a covariance stays small (an NFNet's 3072 channels would need 37 MB).
"""

from __future__ import annotations

import numpy as np
import torch

from predictd.models.ensemble import members_of

MAX_DIMS = 512

Features = list[list[np.ndarray]]
"""features[member][stage]: float64 (N, D) array."""


def stage_modules(net: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules at the end of each stage, from timm's ``feature_info``; ValueError for a network without one."""
    info = getattr(net, "feature_info", None)
    if not info:
        raise ValueError(f"{type(net).__name__} has no timm feature_info: its stage features cannot be gated")
    return [net.get_submodule(item["module"]) for item in info]


def _pooled(fmap: torch.Tensor) -> np.ndarray:
    if fmap.ndim == 4:  # (N, C, H, W); channels-last NHWC maps from some timm stages are not used here
        fmap = fmap.float().mean(dim=(2, 3))
    values = fmap.float().flatten(1).detach().cpu().numpy().astype(np.float64)
    if values.shape[1] > MAX_DIMS:
        groups = np.array_split(np.arange(values.shape[1]), MAX_DIMS)
        values = np.stack([values[:, g].mean(axis=1) for g in groups], axis=1)
    return values


def forward_with_features(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
    """(logits, features[member][stage]) of one forward pass of ``model`` (eval mode is the caller's business)."""
    members = members_of(model)
    caught: list[list[torch.Tensor]] = [[] for _ in members]
    handles = []
    for i, member in enumerate(members):
        for module in stage_modules(member):
            handles.append(module.register_forward_hook(lambda _m, _a, out, i=i: caught[i].append(out)))
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    # With zoom test-time augmentation each member runs once per zoom, the unzoomed view first: keep its maps.
    stages = [len(stage_modules(member)) for member in members]
    return logits, [[_pooled(fmap) for fmap in maps[:n]] for maps, n in zip(caught, stages, strict=True)]


def concat(parts: list[Features]) -> Features:
    """Features of several batches joined along the image axis."""
    if not parts:
        return []
    return [[np.concatenate([p[m][s] for p in parts]) for s in range(len(parts[0][m]))] for m in range(len(parts[0]))]
