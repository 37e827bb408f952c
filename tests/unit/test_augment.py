"""models.augment: seeded, shape-keeping, and it shows the model the framing and clutter of real CR/DX."""

from __future__ import annotations

import dataclasses

import torch

from predictd.models.augment import Augmentation, augment
from predictd.models.card import Preprocessing

PREP = Preprocessing(input_size=64, crop_content=True)
OFF = Augmentation(
    rotation_degrees=0.0, zoom=(1.0, 1.0), shear=0.0, translate=0.0, contrast=(1.0, 1.0), brightness=0.0,
    gamma=(1.0, 1.0), hflip=False, stretch=1.0, reframe=0.0, bars=0.0, markers=0.0, collimation=0.0, noise=0.0,
    quantise=0.0,
)  # fmt: skip


def _batch(n: int = 6) -> torch.Tensor:
    """Landscape 'pelves': textured content in the middle rows, exact black resize padding above and below."""
    gray = torch.zeros(n, 1, 64, 64)
    gen = torch.Generator().manual_seed(0)
    gray[:, :, 12:52, :] = 0.3 + 0.4 * torch.rand(n, 1, 40, 64, generator=gen)
    return (gray - PREP.mean) / PREP.std


def _gray(x: torch.Tensor) -> torch.Tensor:
    return x * PREP.std + PREP.mean


def test_same_seed_same_batch_and_shape_kept() -> None:
    x = _batch()
    a = augment(x, PREP, Augmentation(), torch.Generator().manual_seed(3))
    b = augment(x, PREP, Augmentation(), torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b) and torch.isfinite(a).all()
    assert not torch.equal(a, augment(x, PREP, Augmentation(), torch.Generator().manual_seed(4)))


def test_everything_off_is_the_identity() -> None:
    x = _batch()
    assert torch.allclose(augment(x, PREP, OFF, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_stretch_squashes_the_content_and_keeps_all_of_it() -> None:
    """A random aspect ratio: the 40 lit rows of the landscape image become fewer (or its columns narrower), and
    nothing of it is cut: the total brightness shrinks only by the squash."""
    aug = dataclasses.replace(OFF, stretch=1.6)
    x = _batch()
    out = _gray(augment(x, PREP, aug, torch.Generator().manual_seed(0)))
    lit_rows = (out[:, 0] > 0.05).any(dim=2).sum(dim=1)
    lit_cols = (out[:, 0] > 0.05).any(dim=1).sum(dim=1)
    assert ((lit_rows < 40) | (lit_cols < 64)).any()
    assert (lit_rows <= 41).all() and (lit_cols <= 64).all()
    mass = out.sum(dim=(1, 2, 3)) / _gray(x).sum(dim=(1, 2, 3))
    assert (mass > 1 / 1.6 - 0.05).all() and (mass <= 1.02).all()


def test_reframing_gives_portrait_windows_with_black_side_bars() -> None:
    """A portrait window of a landscape image: content over the full height, black columns left and right."""
    aug = dataclasses.replace(OFF, reframe=1.0, aspect=(0.6, 0.6))
    out = _gray(augment(_batch(), PREP, aug, torch.Generator().manual_seed(0)))
    lit_rows = (out[:, 0] > 0.05).any(dim=2).float().mean(dim=1)
    lit_cols = (out[:, 0] > 0.05).any(dim=1).float().mean(dim=1)
    assert (lit_rows > 0.95).all()  # the window's long side (its height) fills the output
    assert (lit_cols < 0.75).all()  # pillarbox: black bars at the sides


def test_markers_burn_bright_or_dark_letters_into_the_image() -> None:
    aug = dataclasses.replace(OFF, markers=1.0)
    x = (0.3 + 0.4 * torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(5)) - PREP.mean) / PREP.std
    out = _gray(augment(x, PREP, aug, torch.Generator().manual_seed(0)))
    changed = (out - _gray(x)).abs() > 0.2
    assert changed.flatten(1).any(dim=1).all()


def test_collimation_and_bars_fill_an_edge_region() -> None:
    full = (0.3 + 0.4 * torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(5)) - PREP.mean) / PREP.std
    for aug in (dataclasses.replace(OFF, collimation=1.0), dataclasses.replace(OFF, bars=1.0)):
        x = full
        out = _gray(augment(x, PREP, aug, torch.Generator().manual_seed(1)))
        diff = (out - _gray(x)).abs() > 0.1
        edges = torch.stack([diff[:, 0, 0, :].any(1), diff[:, 0, -1, :].any(1), diff[:, 0, :, 0].any(1),
                             diff[:, 0, :, -1].any(1)], 1)  # fmt: skip
        assert edges.any(dim=1).all()


def test_noise_moves_pixels_and_stays_in_range() -> None:
    aug = dataclasses.replace(OFF, noise=0.05, quantise=1.0)
    out = _gray(augment(_batch(), PREP, aug, torch.Generator().manual_seed(2)))
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    levels = torch.unique(torch.round(out[0] * 255))
    assert len(levels) <= 256
