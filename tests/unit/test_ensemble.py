"""models.ensemble: members' logits averaged, over central zooms too; the gate still reads the unzoomed view."""

from __future__ import annotations

import pytest
import timm
import torch

from predictd.models.card import CardError, Label, ModelCard
from predictd.models.ensemble import Ensemble, central_zoom
from predictd.models.features import forward_with_features


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=3, in_chans=1, channels=[8, 8, 16, 16]).eval()


def test_central_zoom_keeps_the_size_and_the_middle() -> None:
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    assert central_zoom(x, 1.0) is x
    zoomed = central_zoom(x, 0.5)
    assert zoomed.shape == x.shape
    assert zoomed.min() >= x[..., 2:6, 2:6].min() and zoomed.max() <= x[..., 2:6, 2:6].max()


@torch.no_grad()
def test_zoomed_ensemble_averages_every_member_at_every_zoom_and_gates_on_the_first_view() -> None:
    members = [_net(0), _net(1)]
    x = torch.rand(2, 1, 64, 64)
    zooms = (1.0, 0.9)
    expected = torch.stack([m(central_zoom(x, z)) for m in members for z in zooms]).mean(0)
    model = Ensemble(members, zooms)
    torch.testing.assert_close(model(x), expected)
    _, plain_features = forward_with_features(Ensemble(members), x)
    logits, features = forward_with_features(model, x)
    torch.testing.assert_close(logits, expected)
    assert [len(f) for f in features] == [len(f) for f in plain_features]
    for got, want in zip(features, plain_features, strict=True):
        for g, w in zip(got, want, strict=True):
            assert (g == w).all()


def test_zooms_start_unzoomed_and_belong_to_an_ensemble() -> None:
    labels = (Label("a", "A"), Label("b", "B"))
    with pytest.raises(ValueError, match=r"start with 1\.0"):
        Ensemble([_net(0)], (0.9, 1.0))
    with pytest.raises(CardError, match="members >= 2"):
        ModelCard(name="m", version="1", task="t", arch="resnet10t", labels=labels, tta_zooms=(1.0, 0.9))
    with pytest.raises(CardError, match=r"start with 1\.0"):
        ModelCard(name="m", version="1", task="t", arch="resnet10t", labels=labels, members=2, tta_zooms=(0.9,))
    card = ModelCard(name="m", version="1", task="t", arch="resnet10t", labels=labels, members=2, tta_zooms=(1.0, 0.9))
    assert ModelCard.from_dict(card.to_dict()).tta_zooms == (1.0, 0.9)
