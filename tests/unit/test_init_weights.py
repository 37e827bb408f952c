"""models.init_weights: a training run may start from an exported ensemble (its first member's network)."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch

from predictd.models.card import Label, ModelCard
from predictd.models.ensemble import Ensemble
from predictd.models.init_weights import initial_model
from predictd.models.loading import build_model


def _card(labels: int) -> ModelCard:
    return ModelCard(
        name="m",
        version="1",
        task="t",
        arch="resnet10t",
        labels=tuple(Label(key=f"k{i}", display=f"k{i}") for i in range(labels)),
        arch_kwargs={"channels": [8, 8, 16, 16]},
    )


def test_an_ensembles_weights_start_the_run_from_its_first_member(tmp_path: Path) -> None:
    source = _card(2)
    torch.manual_seed(0)
    first, second = build_model(source), build_model(source)
    path = tmp_path / "weights.safetensors"
    state = {k: v.contiguous() for k, v in Ensemble([first, second]).state_dict().items()}
    safetensors.torch.save_file(state, str(path))

    model = initial_model(_card(4), str(path))  # another task: its classifier is not taken

    got, want = model.state_dict(), first.state_dict()
    torch.testing.assert_close(got["conv1.0.weight"], want["conv1.0.weight"])
    torch.testing.assert_close(got["layer4.0.conv1.weight"], want["layer4.0.conv1.weight"])
    assert not torch.equal(got["conv1.0.weight"], second.state_dict()["conv1.0.weight"])
    assert got["fc.weight"].shape[0] == 4
