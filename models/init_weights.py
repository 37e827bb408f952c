"""Starting weights of a training run: random, or local pretrained weights made to fit the card's network."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import timm
import torch

from predictd.models.card import ModelCard
from predictd.models.loading import build_model
from predictd.models.train_options import TrainError


def _adapt_state(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Pretrained weights made to fit: RGB stem summed to one channel, a classifier of another size dropped."""
    own = model.state_dict()
    fitted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape == target.shape:
            fitted[key] = value
        elif value.ndim == 4 and value.shape[1] == 3 and target.shape[1] == 1 and value.shape[0] == target.shape[0]:
            fitted[key] = value.sum(dim=1, keepdim=True)
    return fitted


ENSEMBLE_PREFIX = "members."


def _first_member(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ensemble's weights (``members.K.…``, as predictd exports them) start from its first member's network."""
    first = ENSEMBLE_PREFIX + "0."
    if not any(key.startswith(first) for key in state):
        return state
    return {key[len(first) :]: value for key, value in state.items() if key.startswith(first)}


def initial_model(card: ModelCard, init: str | None) -> torch.nn.Module:
    model = build_model(card)
    if init is None:
        return model
    path = Path(init)
    if path.is_file():
        if path.suffix == ".safetensors":
            state = safetensors.torch.load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            state = loaded.get("state_dict") or loaded.get("model") or loaded
    else:  # a timm model name: downloads its pretrained weights (needs the network)
        state = timm.create_model(init, pretrained=True).state_dict()
    fitted = _adapt_state(_first_member(state), model)
    if not fitted:
        raise TrainError(f"no tensor of {init} fits {card.arch}")
    model.load_state_dict(fitted, strict=False)
    return model
