"""The K networks of a cross-validated run, read as one model: their logits averaged.

Why one module: the engine, export, Grad-CAM and the card's one sha256 all deal with one ``nn.Module`` and one
weights file; an ensemble's state dict is its members' own under ``members.<i>.``. Averaging logits (not
probabilities) keeps the temperature, fitted on the members' out-of-fold logits, meaningful for the average.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Ensemble(torch.nn.Module):
    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def members_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The networks inside ``model``: an Ensemble's members, else the model itself."""
    return list(model.members) if isinstance(model, Ensemble) else [model]


def ensemble_state(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One state dict for an :class:`Ensemble` from its members' state dicts, in member order."""
    return {f"members.{i}.{key}": value for i, state in enumerate(states) for key, value in state.items()}
