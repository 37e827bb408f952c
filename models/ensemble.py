"""The K networks of a cross-validated run, read as one model: their logits averaged (over zooms too).

Why one module: the engine, export, Grad-CAM and the card's one sha256 all deal with one ``nn.Module`` and one
weights file; an ensemble's state dict is its members' own under ``members.<i>.``. Averaging logits (not
probabilities) keeps the temperature, fitted on the members' out-of-fold logits, meaningful for the average.

Zoom test-time augmentation (``zooms``, the card's ``tta_zooms``): each member also reads central crops of the input
resized back, and the logits are averaged. Networks trained on a hundred images answer a 3% tighter crop of the same
radiograph by up to 0.58 in probability; averaging over zooms 1.0/0.97/0.94/0.91/0.88 cut that to 0.18-0.22 on the
held-out folds of the three hip members and lowered their log loss (0.415/0.375/0.701 to 0.357/0.283/0.667;
models/shipped/README.md). The unzoomed view runs first, so forward hooks (models.features) see its stage features
first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def central_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """The central ``zoom`` share of each (N, C, H, W) input, resized back to H x W (bilinear)."""
    if zoom == 1.0:
        return x
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * zoom)), max(1, round(w * zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    part = x[..., top : top + ch, left : left + cw]
    return torch.nn.functional.interpolate(part, size=(h, w), mode="bilinear", align_corners=False)


class Ensemble(torch.nn.Module):
    def __init__(self, members: Sequence[torch.nn.Module], zooms: Sequence[float] = (1.0,)) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if not zooms or zooms[0] != 1.0:
            raise ValueError(f"zooms must start with 1.0 (the view the gate reads), not {tuple(zooms)}")
        self.members = torch.nn.ModuleList(members)
        self.zooms = tuple(float(z) for z in zooms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [member(central_zoom(x, zoom)) for member in self.members for zoom in self.zooms]
        return torch.stack(logits).mean(dim=0)


def members_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The networks inside ``model``: an Ensemble's members, else the model itself."""
    return list(model.members) if isinstance(model, Ensemble) else [model]


def ensemble_state(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One state dict for an :class:`Ensemble` from its members' state dicts, in member order."""
    return {f"members.{i}.{key}": value for i, state in enumerate(states) for key, value in state.items()}
